"""CredentialPool: the upstream API keys and cookies a gateway spends, rotated and cooled down.

A pool holds the credentials of one or more upstreams (an
:class:`~maaskit.services.upstream.Upstream` name each), picks one per request with a
:class:`Strategy`, cools a credential down when the upstream refuses it (401/403/429, honouring
``Retry-After``), disables it after repeated authentication failures until someone re-enables it,
and counts usage and errors per credential. It also owns the **model map**: the model names
clients ask for, mapped to each upstream's (or credential's) own names::

    pool = DefaultCredentialPool(
        MemoryCredentialStore(), secrets=secret_service, clock=clock,
        strategy=Strategy.WEIGHTED,
        model_map={"gpt-4o": {"azure-eu": "gpt4o-prod", "openai": "gpt-4o-2024-08-06"}},
    )
    await pool.load()
    await pool.add("azure-eu", "key-1", weight=3)
    await pool.add("openai", "sk-...", weight=1)

    lease = pool.acquire("gpt-4o")                 # synchronous, no I/O
    headers = {lease.header_name: lease.header_value}
    ...send with lease.upstream_model...
    lease.release(status, retry_after=seconds)      # or report_success / report_failure + release

Storage: the pool's :class:`~maaskit.storage.ports.credentials.CredentialStore` keeps only the
definition and a reference (``credential/<id>``); the secret material goes through the
:class:`~maaskit.services.secrets.SecretService` (AES-256-GCM at rest). **Without a
SecretService** the secrets live in the pool's process memory only (tests and development):
they are lost on restart and such credentials then load as unusable (``secret_missing``).

Speed: selection state lives in memory. :meth:`DefaultCredentialPool.acquire` and
:meth:`Lease.release` never do I/O; usage is written to the store by :meth:`~DefaultCredentialPool.flush`
(call it, or let :meth:`~DefaultCredentialPool.start` flush every ``flush_interval`` seconds) as
increments, so several replicas add up.

Failure policy:

* ``401``/``403``/``429`` (*cooldown_statuses*): the credential rests for the upstream's
  ``Retry-After`` (capped at *max_cooldown*), else *auth_cooldown* (401/403) or
  *rate_limit_cooldown* (429).
* *disable_after* consecutive failures with a *disable_statuses* status (401/403 by default)
  disable it (persisted at the next flush) until :meth:`~DefaultCredentialPool.enable`.
* Other failures (5xx, no answer: status ``0``) are counted but change nothing: they are the
  upstream's fault, which the circuit breaker handles.
"""

from __future__ import annotations

import asyncio
import builtins
import math
import re
import secrets as _secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import structlog

from maaskit._tasks import cancel_and_wait
from maaskit.clock import Clock, SystemClock
from maaskit.errors import MaasError, NotFoundError, UnavailableError, ValidationError
from maaskit.services.upstream import defer_retry
from maaskit.storage.ports.credentials import (
    CredentialRecord,
    CredentialStore,
    CredentialUsage,
    CredentialUsageDelta,
)

if TYPE_CHECKING:
    from maaskit.services.secrets import SecretService

__all__ = [
    "DEFAULT_COOLDOWN_STATUSES",
    "DEFAULT_DISABLE_STATUSES",
    "Credential",
    "CredentialKind",
    "CredentialPool",
    "CredentialStats",
    "DefaultCredentialPool",
    "Lease",
    "Strategy",
    "smooth_weighted_schedule",
]

_log = structlog.get_logger(__name__)

#: Statuses that cool a credential down (the upstream refused *this* credential).
DEFAULT_COOLDOWN_STATUSES: frozenset[int] = frozenset({401, 403, 429})
#: Statuses whose consecutive repetition disables a credential (it is broken, not just busy).
DEFAULT_DISABLE_STATUSES: frozenset[int] = frozenset({401, 403})

_MAX_WEIGHT = 1000
_MAX_SECRET = 8192
_MAX_SCHEDULE = 4096
_HEADER_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "content-type"})
_PLACEHOLDER = "{secret}"
_SEQ_SHIFT = 1 << 40
_INF = math.inf


class CredentialKind(StrEnum):
    """What a credential is; decides the default header."""

    API_KEY = "api_key"
    """An API key: ``Authorization: Bearer <secret>`` by default."""
    COOKIE = "cookie"
    """A session cookie: ``Cookie: <secret>`` by default (give ``header_format="name={secret}"``)."""


_DEFAULT_HEADERS: dict[CredentialKind, tuple[str, str]] = {
    CredentialKind.API_KEY: ("Authorization", "Bearer {secret}"),
    CredentialKind.COOKIE: ("Cookie", _PLACEHOLDER),
}


class Strategy(StrEnum):
    """How the pool picks among the healthy credentials that serve a model."""

    ROUND_ROBIN = "round_robin"
    """Each healthy credential in turn."""
    LEAST_USED = "least_used"
    """The one with the fewest requests in flight; ties go to the one used longest ago."""
    WEIGHTED = "weighted"
    """Smooth weighted round robin (nginx's algorithm): deterministic, interleaved, proportions
    exact over every cycle of ``sum(weights)`` picks."""


# --------------------------------------------------------------------------------------------
# value objects


@attrs.frozen
class Credential:
    """A credential's public view (never its secret).

    Attributes:
        id: ``cred_...``.
        upstream: the upstream it authenticates against.
        name: a human label.
        kind: api key or cookie.
        header: the header carrying it.
        header_format: the header value, ``{secret}`` standing for the secret.
        weight: weight for :attr:`Strategy.WEIGHTED`.
        models: client model names it is restricted to (``None``: every model).
        enabled: ``False`` while disabled.
        disabled_reason: ``manual``, ``failures`` or ``secret_missing`` when disabled.
        created_at: creation time.
    """

    id: str
    upstream: str
    name: str
    kind: CredentialKind
    header: str
    header_format: str
    weight: int
    models: tuple[str, ...] | None
    enabled: bool
    disabled_reason: str | None
    created_at: datetime


@attrs.frozen
class CredentialStats:
    """A credential's usage and error statistics (totals include what earlier runs flushed).

    Attributes:
        credential_id: whose statistics.
        upstream: its upstream.
        name: its label.
        requests: requests handed out.
        successes: requests reported successful.
        failures: failures by HTTP status (``0``: no answer).
        tokens: tokens reported with :meth:`Lease.release` / :meth:`Lease.report_success`.
        in_flight: leases not yet released.
        consecutive_failures: failures (of *disable_statuses*) since the last success.
        last_used_at: when it was last handed out.
        last_failure_at: when a failure was last reported.
        cooldown_until: the end of its cooldown (``None`` when not cooling down).
        enabled: ``False`` while disabled.
        disabled_reason: why it is disabled.
        available: whether :meth:`CredentialPool.acquire` may pick it now.
    """

    credential_id: str
    upstream: str
    name: str
    requests: int
    successes: int
    failures: Mapping[int, int]
    tokens: int
    in_flight: int
    consecutive_failures: int
    last_used_at: datetime | None
    last_failure_at: datetime | None
    cooldown_until: datetime | None
    enabled: bool
    disabled_reason: str | None
    available: bool


# --------------------------------------------------------------------------------------------
# in-memory state


class _Cred:
    """The pool's live state of one credential (never shown: it holds the secret)."""

    __slots__ = (
        "base_failures",
        "base_requests",
        "base_successes",
        "base_tokens",
        "consecutive",
        "cooldown_dirty",
        "cooldown_until",
        "failures",
        "header_value",
        "id",
        "in_flight",
        "last_failure",
        "last_seq",
        "last_used",
        "public",
        "record",
        "record_dirty",
        "requests",
        "score",
        "secret",
        "successes",
        "tokens",
        "upstream",
        "usable",
        "weight",
    )

    def __init__(self, record: CredentialRecord, secret: str | None) -> None:
        self.id = record.id
        self.upstream = record.upstream
        self.record = record
        self.secret = secret
        self.header_value = record.header_format.replace(_PLACEHOLDER, secret) if secret is not None else ""
        self.weight = record.weight
        self.usable = record.enabled and secret is not None
        self.cooldown_until = 0.0
        self.cooldown_dirty = False
        self.record_dirty = False
        self.in_flight = 0
        self.requests = 0
        self.successes = 0
        self.tokens = 0
        self.failures: dict[int, int] = {}
        self.base_requests = 0
        self.base_successes = 0
        self.base_tokens = 0
        self.base_failures: dict[int, int] = {}
        self.consecutive = 0
        self.last_used: float | None = None
        self.last_failure: float | None = None
        self.last_seq = 0
        self.score = 0
        self.public = _public(record, secret is not None)

    def __repr__(self) -> str:
        return f"_Cred({self.id!r}, upstream={self.upstream!r})"


def _public(record: CredentialRecord, has_secret: bool = True) -> Credential:
    enabled = record.enabled and has_secret
    reason = record.disabled_reason if record.enabled is False else None if has_secret else "secret_missing"
    return Credential(
        id=record.id,
        upstream=record.upstream,
        name=record.name,
        kind=CredentialKind(record.kind),
        header=record.header,
        header_format=record.header_format,
        weight=record.weight,
        models=record.models,
        enabled=enabled,
        disabled_reason=reason,
        created_at=record.created_at,
    )


_score = attrgetter("score")


def smooth_weighted_schedule(weights: Iterable[int]) -> list[int]:
    """One full cycle of nginx's smooth weighted round robin over *weights* (indices picked).

    Each step adds every weight to its current value, picks the largest (the first on ties) and
    subtracts the total from it. Over ``sum(weights)`` steps index ``i`` is picked exactly
    ``weights[i]`` times, and picks of a heavy entry are spread out rather than bunched.
    """
    w = list(weights)
    total = sum(w)
    current = [0] * len(w)
    out: list[int] = []
    for _ in range(total):
        best = 0
        best_value = -_INF
        for i, weight in enumerate(w):
            value = current[i] + weight
            current[i] = value
            if value > best_value:
                best, best_value = i, value
        current[best] -= total
        out.append(best)
    return out


class _Group:
    """The credentials serving one (model, upstream) pair and its selection state."""

    __slots__ = (
        "current",
        "gen",
        "healthy",
        "members",
        "names",
        "pos",
        "recheck_at",
        "schedule",
        "strategy",
        "total",
        "weights",
    )

    def __init__(self, members: list[_Cred], names: dict[str, str], strategy: Strategy) -> None:
        self.members = members
        self.names = names
        self.strategy = strategy
        self.healthy: list[_Cred] = []
        self.schedule: list[_Cred] = []
        self.current: list[int] = []
        self.weights: list[int] = []
        self.total = 0
        self.pos = 0
        self.gen = -1
        self.recheck_at = -_INF

    def rebuild(self, now: float, gen: int) -> None:
        healthy: list[_Cred] = []
        recheck = _INF
        for c in self.members:
            if not c.usable:
                continue
            if c.cooldown_until > now:
                recheck = min(recheck, c.cooldown_until)
            else:
                healthy.append(c)
        self.healthy = healthy
        self.recheck_at = recheck
        self.gen = gen
        if self.strategy is Strategy.WEIGHTED:
            weights = [c.weight for c in healthy]
            divisor = math.gcd(*weights) if weights else 1
            weights = [w // divisor for w in weights]
            total = sum(weights)
            self.pos = 0
            if total <= _MAX_SCHEDULE:
                self.schedule = [healthy[i] for i in smooth_weighted_schedule(weights)]
            else:
                self.schedule = []
                self.weights = weights
                self.current = [0] * len(weights)
                self.total = total

    def pick(self) -> _Cred | None:
        healthy = self.healthy
        if not healthy:
            return None
        strategy = self.strategy
        if strategy is Strategy.ROUND_ROBIN:
            pos = self.pos
            self.pos = pos + 1
            return healthy[pos % len(healthy)]
        if strategy is Strategy.LEAST_USED:
            return min(healthy, key=_score)
        schedule = self.schedule
        if schedule:
            pos = self.pos
            self.pos = pos + 1
            return schedule[pos % len(schedule)]
        return self._live_weighted()

    def _live_weighted(self) -> _Cred:
        current = self.current
        best = 0
        best_value = -_INF
        for i, weight in enumerate(self.weights):
            value = current[i] + weight
            current[i] = value
            if value > best_value:
                best, best_value = i, value
        current[best] -= self.total
        return self.healthy[best]

    def pick_excluding(self, exclude: frozenset[str] | set[str]) -> _Cred | None:
        # rare path (failover within one request): the strategy's pick, else any healthy one left
        for _ in range(len(self.healthy) + 1):
            cred = self.pick()
            if cred is None or cred.id not in exclude:
                return cred
        for cred in self.healthy:
            if cred.id not in exclude:
                return cred
        return None


# --------------------------------------------------------------------------------------------
# leases


class Lease:
    """One credential handed out for one request: send with it, report the outcome, release it.

    :meth:`release` is idempotent; a lease is also a (sync) context manager that releases on exit
    (without a verdict unless one was reported). The secret is only in :attr:`header_value`,
    never in the repr.

    Attributes:
        model: the client-facing model asked for (``None`` for model-less calls).
        upstream_model: the upstream's name for it (the model map applied), or ``None``.
        mapped: whether the model map named it (else ``upstream_model`` is the client's name).
    """

    __slots__ = ("_cred", "_group", "_pool", "_released", "_reported", "mapped", "model", "upstream_model")

    def __init__(
        self,
        pool: DefaultCredentialPool,
        cred: _Cred,
        model: str | None,
        upstream_model: str | None,
        mapped: bool,
        group: _Group | None = None,
    ) -> None:
        self._pool = pool
        self._cred = cred
        self._group = group
        self.model = model
        self.upstream_model = upstream_model
        self.mapped = mapped
        self._released = False
        self._reported = False

    @property
    def credential_id(self) -> str:
        """The credential's id."""
        return self._cred.id

    @property
    def credential(self) -> Credential:
        """The credential's public view."""
        return self._cred.public

    @property
    def upstream(self) -> str:
        """The credential's upstream."""
        return self._cred.upstream

    @property
    def header_name(self) -> str:
        """The header to send (``Authorization``, ``Cookie``...)."""
        return self._cred.record.header

    @property
    def header_value(self) -> str:
        """The header's value, secret included: send it, never log it."""
        return self._cred.header_value

    @property
    def secret(self) -> str:
        """The raw secret (to scrub it from upstream messages); never log it."""
        return self._cred.secret or ""

    @property
    def released(self) -> bool:
        """Whether :meth:`release` ran."""
        return self._released

    def report_success(self, tokens: int | None = None) -> None:
        """The upstream accepted the request (resets the consecutive-failure count)."""
        if not self._reported:
            self._reported = True
            self._pool._success(self._cred, tokens)

    def report_failure(self, status: int, retry_after: float | None = None) -> None:
        """The request failed with HTTP *status* (``0``: no answer); *retry_after* in seconds.

        When this cools the credential down and leaves none of the lease's candidates usable,
        a running :class:`~maaskit.services.upstream.RetryPolicy` is told (through
        :func:`~maaskit.services.upstream.defer_retry`) how long until one is back, so it does
        not retry into ``credentials.exhausted``.
        """
        if not self._reported:
            self._reported = True
            self._pool._failure(self._cred, status, retry_after, self._group)

    def release(
        self, outcome: int | None = None, *, retry_after: float | None = None, tokens: int | None = None
    ) -> None:
        """Give the credential back; with *outcome* (an HTTP status, ``0`` for no answer) report it first.

        A 2xx *outcome* is a success (with *tokens* if given), anything else a failure.
        """
        if self._released:
            return
        if outcome is not None and not self._reported:
            if 200 <= outcome < 300:
                self.report_success(tokens)
            else:
                self.report_failure(outcome, retry_after)
        elif tokens is not None:
            self._pool._tokens(self._cred, tokens)
        self._released = True
        cred = self._cred
        cred.in_flight -= 1
        cred.score = cred.in_flight * _SEQ_SHIFT + cred.last_seq

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease(credential={self._cred.id!r}, model={self.model!r}, released={self._released})"


# --------------------------------------------------------------------------------------------
# the protocol


@runtime_checkable
class CredentialPool(Protocol):
    """Upstream credentials: selection, cooldown, statistics and the model map."""

    def acquire(
        self, model: str | None = None, *, upstream: str | None = None, exclude: Iterable[str] = ()
    ) -> Lease:
        """Pick a healthy credential serving *model* (of *upstream*) and lease it (no I/O)."""
        ...

    def resolve(self, model: str, *, upstream: str | None = None) -> tuple[Credential, str]:
        """The credential the strategy picks for *model* and the upstream's model name (no lease)."""
        ...

    def upstream_model(self, model: str, upstream: str, credential_id: str | None = None) -> str:
        """The upstream's name of *model* by the model map (the name itself when unmapped)."""
        ...

    async def add(
        self,
        upstream: str,
        secret: str,
        *,
        kind: CredentialKind | str = CredentialKind.API_KEY,
        name: str | None = None,
        header: str | None = None,
        header_format: str | None = None,
        weight: int = 1,
        models: Iterable[str] | None = None,
    ) -> Credential:
        """Add a credential (its secret stored encrypted)."""
        ...

    async def remove(self, credential_id: str) -> bool:
        """Remove a credential and its secret."""
        ...

    async def enable(self, credential_id: str) -> Credential:
        """Re-enable a credential (cooldown and failure count cleared)."""
        ...

    async def disable(self, credential_id: str, reason: str = "manual") -> Credential:
        """Disable a credential until :meth:`enable`."""
        ...

    def list(self) -> list[Credential]:
        """Every credential's public view."""
        ...

    def stats(self) -> builtins.list[CredentialStats]:
        """Every credential's usage and error statistics."""
        ...

    async def flush(self) -> None:
        """Write the statistics gathered since the last flush to the store."""
        ...


# --------------------------------------------------------------------------------------------
# the default implementation


def _check_model_map(value: Mapping[str, Mapping[str, str]] | None) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if value is None:
        return out
    if not isinstance(value, Mapping):
        raise ValidationError("credentials.invalid_config", reason="the model map must be a mapping")
    for model, targets in value.items():
        if not isinstance(model, str) or not model or not isinstance(targets, Mapping) or not targets:
            raise ValidationError(
                "credentials.invalid_config",
                reason="the model map maps model names to non-empty {upstream: model} mappings",
            )
        inner: dict[str, str] = {}
        for where, name in targets.items():
            if not isinstance(where, str) or not where or not isinstance(name, str) or not name:
                raise ValidationError(
                    "credentials.invalid_config", reason="model map entries must be non-empty strings"
                )
            inner[where] = name
        out[model] = inner
    return out


def _seconds(value: float, label: str, *, allow_zero: bool = False) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        raise ValidationError("credentials.invalid_config", reason=f"{label} must be a positive number")
    return float(value)


_PASS = object()


class DefaultCredentialPool:
    """The default :class:`CredentialPool`: selection state in memory, definitions and totals in a store.

    Call :meth:`load` once before use (it reads the store and decrypts the secrets).

    Args:
        store: where definitions and usage totals are kept.
        secrets: encrypts the secret material; ``None`` keeps secrets in process memory only
            (tests, development: they are lost on restart).
        clock: time source (cooldowns, statistics).
        strategy: how a credential is picked.
        model_map: ``{client_model: {upstream_or_credential_id: upstream_model}}``. A model listed
            here is served only by the upstreams / credentials it names; a credential id entry
            wins over its upstream's. Models not listed pass through unchanged to the credentials
            without a ``models`` restriction (unless *passthrough* is false).
        passthrough: serve models missing from the map (see above).
        cooldown_statuses: statuses that cool a credential down.
        disable_statuses: statuses counted towards disabling a credential.
        disable_after: consecutive *disable_statuses* failures that disable it (``0``: never).
        auth_cooldown: seconds of cooldown after a 401/403 without ``Retry-After``.
        rate_limit_cooldown: seconds of cooldown after a 429 (or other cooldown status) without ``Retry-After``.
        max_cooldown: the longest cooldown, whatever ``Retry-After`` says.
        flush_interval: seconds between background flushes once :meth:`start` ran.
        sleep: the coroutine the background flusher waits with (inject a fake in tests).
    """

    def __init__(
        self,
        store: CredentialStore,
        *,
        secrets: SecretService | None = None,
        clock: Clock | None = None,
        strategy: Strategy | str = Strategy.ROUND_ROBIN,
        model_map: Mapping[str, Mapping[str, str]] | None = None,
        passthrough: bool = True,
        cooldown_statuses: Iterable[int] = DEFAULT_COOLDOWN_STATUSES,
        disable_statuses: Iterable[int] = DEFAULT_DISABLE_STATUSES,
        disable_after: int = 3,
        auth_cooldown: float = 300.0,
        rate_limit_cooldown: float = 30.0,
        max_cooldown: float = 3600.0,
        flush_interval: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        try:
            self._strategy = Strategy(strategy)
        except ValueError:
            raise ValidationError(
                "credentials.invalid_config", reason="strategy must be round_robin, least_used or weighted"
            ) from None
        if not isinstance(disable_after, int) or isinstance(disable_after, bool) or disable_after < 0:
            raise ValidationError("credentials.invalid_config", reason="disable_after must be >= 0")
        self._store = store
        self._secrets = secrets
        self._memory_secrets: dict[str, str] = {}
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._monotonic = self._clock.monotonic
        self._model_map = _check_model_map(model_map)
        self._passthrough = bool(passthrough)
        self._cooldown_statuses = frozenset(cooldown_statuses)
        self._disable_statuses = frozenset(disable_statuses)
        self._disable_after = disable_after
        self._auth_cooldown = _seconds(auth_cooldown, "auth_cooldown", allow_zero=True)
        self._rate_limit_cooldown = _seconds(rate_limit_cooldown, "rate_limit_cooldown", allow_zero=True)
        self._max_cooldown = _seconds(max_cooldown, "max_cooldown")
        self._flush_interval = _seconds(flush_interval, "flush_interval")
        self._sleep = sleep
        self._creds: dict[str, _Cred] = {}
        self._groups: dict[tuple[Any, str | None], _Group] = {}
        self._known_models: frozenset[str] = frozenset()
        self._gen = 0
        self._seq = 0
        self._loaded = False
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"DefaultCredentialPool(strategy={self._strategy.value}, credentials={len(self._creds)})"

    @property
    def strategy(self) -> Strategy:
        """The selection strategy."""
        return self._strategy

    @property
    def model_map(self) -> Mapping[str, Mapping[str, str]]:
        """The model map (read-only view)."""
        return MappingProxyType({k: MappingProxyType(v) for k, v in self._model_map.items()})

    def set_model_map(self, model_map: Mapping[str, Mapping[str, str]] | None) -> None:
        """Replace the model map (takes effect for the next :meth:`acquire`)."""
        self._model_map = _check_model_map(model_map)
        self._reindex()

    # -- loading and administration -------------------------------------------------------------

    async def load(self) -> None:
        """Read the definitions and usage totals from the store and decrypt the secrets.

        Credentials whose secret cannot be read load as unusable (``secret_missing``), logged
        without the secret.
        """
        records = await self._store.list()
        usage = await self._store.usage()
        creds: dict[str, _Cred] = {}
        for record in records:
            secret = await self._read_secret(record)
            cred = _Cred(record, secret)
            totals = usage.get(record.id)
            if totals is not None:
                self._restore(cred, totals)
            creds[record.id] = cred
        self._creds = creds
        self._loaded = True
        self._reindex()
        _log.info("credentials.loaded", count=len(creds))

    async def _read_secret(self, record: CredentialRecord) -> str | None:
        try:
            if self._secrets is None:
                secret = self._memory_secrets.get(record.secret_ref)
            else:
                secret = (await self._secrets.retrieve(record.secret_ref)).decode("utf-8")
        except MaasError as exc:
            _log.error("credentials.secret_unreadable", credential=record.id, code=exc.code)
            return None
        except UnicodeDecodeError:
            _log.error("credentials.secret_unreadable", credential=record.id, code="not_utf8")
            return None
        header = record.header_format.replace(_PLACEHOLDER, secret) if secret is not None else ""
        if secret is not None and not (
            _secret_ok(secret, record.kind) and header.isascii() and header.isprintable()
        ):
            # stored before secrets had to be ASCII: it cannot be sent (nor may it reach an
            # exception), so the credential loads as unusable
            _log.error("credentials.secret_unreadable", credential=record.id, code="not_ascii")
            return None
        return secret

    def _restore(self, cred: _Cred, totals: CredentialUsage) -> None:
        cred.requests = cred.base_requests = totals.requests
        cred.successes = cred.base_successes = totals.successes
        cred.tokens = cred.base_tokens = totals.tokens
        cred.failures = dict(totals.failures)
        cred.base_failures = dict(totals.failures)
        now_wall = self._clock.now()
        now = self._monotonic()
        if totals.last_used_at is not None:
            cred.last_used = now - (now_wall - totals.last_used_at).total_seconds()
        if totals.last_failure_at is not None:
            cred.last_failure = now - (now_wall - totals.last_failure_at).total_seconds()
        if totals.cooldown_until is not None:
            remaining = (totals.cooldown_until - now_wall).total_seconds()
            if remaining > 0:
                cred.cooldown_until = now + remaining

    def _reindex(self) -> None:
        known: set[str] = set(self._model_map)
        for cred in self._creds.values():
            if cred.record.models:
                known.update(cred.record.models)
        self._known_models = frozenset(known)
        self._groups = {}
        self._gen += 1

    def _get(self, credential_id: str) -> _Cred:
        cred = self._creds.get(credential_id) if isinstance(credential_id, str) else None
        if cred is None:
            raise NotFoundError("credentials.not_found", id=str(credential_id)[:64])
        return cred

    async def add(
        self,
        upstream: str,
        secret: str,
        *,
        kind: CredentialKind | str = CredentialKind.API_KEY,
        name: str | None = None,
        header: str | None = None,
        header_format: str | None = None,
        weight: int = 1,
        models: Iterable[str] | None = None,
    ) -> Credential:
        """Add a credential: the secret goes to the secret service, the definition to the store.

        Args:
            upstream: the upstream's name (as in :class:`~maaskit.services.upstream.Upstream`).
            secret: the API key or cookie value.
            kind: ``api_key`` or ``cookie`` (sets the default header and format).
            name: a label (default: the id).
            header: the header name (default by kind).
            header_format: the header value with ``{secret}`` (default by kind).
            weight: 1-1000, for the weighted strategy.
            models: client model names it is restricted to (``None``: every model).

        Raises:
            ValidationError: ``credentials.invalid`` (bad secret, header, format, weight, models).
        """
        self._require_loaded()
        try:
            kind = CredentialKind(kind)
        except ValueError:
            raise ValidationError("credentials.invalid", reason="kind must be api_key or cookie") from None
        if not isinstance(upstream, str) or not upstream or len(upstream) > 100:
            raise ValidationError("credentials.invalid", reason="the upstream must be 1-100 characters")
        _check_secret(secret, kind)
        default_header, default_format = _DEFAULT_HEADERS[kind]
        header = _check_header(header if header is not None else default_header)
        header_format = _check_format(header_format if header_format is not None else default_format)
        weight = _check_weight(weight)
        model_tuple = _check_models(models)
        credential_id = "cred_" + _secrets.token_hex(12)
        label = name if name is not None else credential_id
        if not isinstance(label, str) or not label or len(label) > 200 or not label.isprintable():
            raise ValidationError("credentials.invalid", reason="the name must be 1-200 printable characters")
        now = self._clock.now()
        record = CredentialRecord(
            id=credential_id,
            upstream=upstream,
            name=label,
            kind=kind.value,
            header=header,
            header_format=header_format,
            weight=weight,
            models=model_tuple,
            secret_ref=f"credential/{credential_id}",
            enabled=True,
            disabled_reason=None,
            created_at=now,
            updated_at=now,
        )
        await self._write_secret(record.secret_ref, secret)
        try:
            await self._store.insert(record)
        except BaseException:
            await self._delete_secret(record.secret_ref)
            raise
        self._creds[credential_id] = _Cred(record, secret)
        self._reindex()
        _log.info("credentials.added", credential=credential_id, upstream=upstream, kind=kind.value)
        return self._creds[credential_id].public

    async def _write_secret(self, ref: str, secret: str) -> None:
        if self._secrets is None:
            self._memory_secrets[ref] = secret
        else:
            await self._secrets.store(ref, secret)

    async def _delete_secret(self, ref: str) -> None:
        if self._secrets is None:
            self._memory_secrets.pop(ref, None)
        else:
            await self._secrets.delete(ref)

    async def rotate_secret(self, credential_id: str, secret: str) -> Credential:
        """Replace a credential's secret (e.g. a renewed cookie); its statistics are kept.

        Raises:
            NotFoundError: ``credentials.not_found``.
            ValidationError: ``credentials.invalid``.
        """
        cred = self._get(credential_id)
        _check_secret(secret, cred.record.kind)
        await self._write_secret(cred.record.secret_ref, secret)
        # in place: leases still open on this credential report into the same live state
        # (their release, outcome and tokens count; in_flight comes back down)
        cred.secret = secret
        cred.header_value = cred.record.header_format.replace(_PLACEHOLDER, secret)
        cred.usable = cred.record.enabled
        cred.public = _public(cred.record, True)
        self._reindex()
        _log.info("credentials.rotated", credential=credential_id)
        return cred.public

    async def update(
        self,
        credential_id: str,
        *,
        name: str | None = None,
        weight: int | None = None,
        models: Iterable[str] | Any | None = ...,
    ) -> Credential:
        """Change a credential's label, weight or model restriction (``models=None``: every model).

        Raises:
            NotFoundError: ``credentials.not_found``.
            ValidationError: ``credentials.invalid``.
        """
        cred = self._get(credential_id)
        changes: dict[str, Any] = {"updated_at": self._clock.now()}
        if name is not None:
            if not isinstance(name, str) or not name or len(name) > 200 or not name.isprintable():
                raise ValidationError(
                    "credentials.invalid", reason="the name must be 1-200 printable characters"
                )
            changes["name"] = name
        if weight is not None:
            changes["weight"] = _check_weight(weight)
        if models is not ...:
            changes["models"] = _check_models(models)
        await self._replace_record(cred, attrs.evolve(cred.record, **changes))
        return self._creds[credential_id].public

    async def _replace_record(self, cred: _Cred, record: CredentialRecord) -> None:
        if not await self._store.update(record):
            raise NotFoundError("credentials.not_found", id=cred.id)
        cred.record = record
        cred.record_dirty = False
        cred.weight = record.weight
        cred.usable = record.enabled and cred.secret is not None
        cred.public = _public(record, cred.secret is not None)
        self._reindex()

    async def remove(self, credential_id: str) -> bool:
        """Remove a credential, its statistics and its secret; ``False`` if it did not exist."""
        cred = self._creds.get(credential_id)
        if cred is None:
            return False
        await self._store.delete(credential_id)
        await self._delete_secret(cred.record.secret_ref)
        del self._creds[credential_id]
        self._reindex()
        _log.info("credentials.removed", credential=credential_id)
        return True

    async def enable(self, credential_id: str) -> Credential:
        """Re-enable a credential: cooldown and consecutive failures are cleared.

        Raises:
            NotFoundError: ``credentials.not_found``.
        """
        cred = self._get(credential_id)
        record = attrs.evolve(cred.record, enabled=True, disabled_reason=None, updated_at=self._clock.now())
        await self._replace_record(cred, record)
        cred.consecutive = 0
        if cred.cooldown_until:
            cred.cooldown_until = 0.0
            cred.cooldown_dirty = True
        _log.info("credentials.enabled", credential=credential_id)
        return cred.public

    async def disable(self, credential_id: str, reason: str = "manual") -> Credential:
        """Disable a credential until :meth:`enable` (persisted at once).

        Raises:
            NotFoundError: ``credentials.not_found``.
        """
        cred = self._get(credential_id)
        if not isinstance(reason, str) or not reason or len(reason) > 32:
            raise ValidationError("credentials.invalid", reason="the reason must be 1-32 characters")
        record = attrs.evolve(
            cred.record, enabled=False, disabled_reason=reason, updated_at=self._clock.now()
        )
        await self._replace_record(cred, record)
        _log.info("credentials.disabled", credential=credential_id, reason=reason)
        return cred.public

    def get(self, credential_id: str) -> Credential:
        """One credential's public view.

        Raises:
            NotFoundError: ``credentials.not_found``.
        """
        return self._get(credential_id).public

    def list(self) -> list[Credential]:
        """Every credential's public view, oldest first."""
        return [c.public for c in self._creds.values()]

    # -- selection (the hot path) -------------------------------------------------------------

    def acquire(
        self, model: str | None = None, *, upstream: str | None = None, exclude: Iterable[str] = ()
    ) -> Lease:
        """Lease a healthy credential serving *model* (of *upstream*, or any upstream), by the strategy.

        No I/O. Release the lease when the request is over (with its outcome).

        Args:
            model: the client-facing model name; ``None`` for model-less calls (any credential).
            upstream: only credentials of this upstream.
            exclude: credential ids not to pick (e.g. those this request already tried).

        Raises:
            NotFoundError: ``credentials.model_not_served`` (no credential serves *model*).
            UnavailableError: ``credentials.exhausted`` (all cooling down; ``retry_after`` says
                when the first one is back), ``credentials.disabled`` (all disabled),
                ``credentials.not_loaded``.
        """
        group = self._groups.get((model, upstream))
        if group is None:
            group = self._group_for(model, upstream)
        now = self._monotonic()
        if group.gen != self._gen or now >= group.recheck_at:
            group.rebuild(now, self._gen)
        cred = group.pick_excluding(frozenset(exclude)) if exclude else group.pick()
        if cred is None:
            raise self._exhausted(group, model, now)
        seq = self._seq = self._seq + 1
        cred.last_seq = seq
        flight = cred.in_flight = cred.in_flight + 1
        cred.score = flight * _SEQ_SHIFT + seq
        cred.requests += 1
        cred.last_used = now
        name = group.names.get(cred.id)
        if name is None:
            return Lease(self, cred, model, model, False, group)
        return Lease(self, cred, model, name, True, group)

    def resolve(self, model: str, *, upstream: str | None = None) -> tuple[Credential, str]:
        """The credential the strategy picks next for *model*, and the upstream's name of *model*.

        Advances the strategy like :meth:`acquire` but takes no lease and counts no request (for
        callers that only want to know where a model goes).

        Raises:
            the errors of :meth:`acquire`.
        """
        lease = self.acquire(model, upstream=upstream)
        cred = lease._cred
        cred.requests -= 1
        lease.release()
        return cred.public, lease.upstream_model or model

    def upstream_model(self, model: str, upstream: str, credential_id: str | None = None) -> str:
        """The upstream's name of *model* by the model map (*model* itself when unmapped)."""
        targets = self._model_map.get(model)
        if targets is None:
            return model
        if credential_id is not None and credential_id in targets:
            return targets[credential_id]
        return targets.get(upstream, model)

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise UnavailableError("credentials.not_loaded")

    def _group_for(self, model: str | None, upstream: str | None) -> _Group:
        self._require_loaded()
        if model is not None and not isinstance(model, str):
            raise ValidationError("credentials.invalid", reason="the model must be a string")
        if model is not None and model not in self._known_models:
            if not self._passthrough:
                raise NotFoundError("credentials.model_not_served", model=model[:200])
            key: tuple[Any, str | None] = (_PASS, upstream)
            group = self._groups.get(key)
            if group is None:
                members = [
                    c
                    for c in self._creds.values()
                    if (upstream is None or c.upstream == upstream) and c.record.models is None
                ]
                group = self._groups[key] = _Group(members, {}, self._strategy)
            if not group.members:
                raise NotFoundError("credentials.model_not_served", model=model[:200])
            return group
        members = []
        names: dict[str, str] = {}
        targets = self._model_map.get(model) if model is not None else None
        for c in self._creds.values():
            if upstream is not None and c.upstream != upstream:
                continue
            if model is not None:
                models = c.record.models
                if models is not None and model not in models:
                    continue
                if targets is not None:
                    target = targets.get(c.id) or targets.get(c.upstream)
                    if target is None:
                        continue
                    names[c.id] = target
            members.append(c)
        group = _Group(members, names, self._strategy)
        if len(self._groups) < 10_000:
            self._groups[(model, upstream)] = group
        if not members:
            raise NotFoundError("credentials.model_not_served", model=(model or "*")[:200])
        return group

    def _exhausted(self, group: _Group, model: str | None, now: float) -> MaasError:
        if not group.members:
            return NotFoundError("credentials.model_not_served", model=(model or "*")[:200])
        label = (model or "*")[:200]
        if group.recheck_at < _INF:
            return UnavailableError(
                "credentials.exhausted", model=label, retry_after=round(max(group.recheck_at - now, 0.001), 3)
            )
        cooling = [c.cooldown_until for c in group.members if c.usable and c.cooldown_until > now]
        if cooling:  # only excluded credentials were healthy
            return UnavailableError(
                "credentials.exhausted", model=label, retry_after=round(max(min(cooling) - now, 0.001), 3)
            )
        if any(c.usable for c in group.members):
            return UnavailableError("credentials.exhausted", model=label, retry_after=0.001)
        return UnavailableError("credentials.disabled", model=label)

    # -- outcomes -----------------------------------------------------------------------------

    def _success(self, cred: _Cred, tokens: int | None) -> None:
        cred.successes += 1
        cred.consecutive = 0
        if tokens is not None:
            self._tokens(cred, tokens)

    @staticmethod
    def _tokens(cred: _Cred, tokens: int) -> None:
        if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0:
            cred.tokens += tokens

    def _failure(
        self, cred: _Cred, status: int, retry_after: float | None, group: _Group | None = None
    ) -> None:
        if not isinstance(status, int) or isinstance(status, bool) or not 0 <= status <= 999:
            status = 0
        now = self._monotonic()
        cred.failures[status] = cred.failures.get(status, 0) + 1
        cred.last_failure = now
        changed = False
        if status in self._cooldown_statuses:
            if (
                retry_after is not None
                and isinstance(retry_after, int | float)
                and math.isfinite(retry_after)
            ):
                seconds = max(0.0, float(retry_after))
            else:
                seconds = self._rate_limit_cooldown if status == 429 else self._auth_cooldown
            seconds = min(seconds, self._max_cooldown)
            until = now + seconds
            if until > cred.cooldown_until:
                cred.cooldown_until = until
                cred.cooldown_dirty = True
                changed = True
            _log.info(
                "credentials.cooldown",
                credential=cred.id,
                upstream=cred.upstream,
                status=status,
                seconds=seconds,
            )
        if status in self._disable_statuses:
            cred.consecutive += 1
            if self._disable_after and cred.consecutive >= self._disable_after and cred.usable:
                record = attrs.evolve(cred.record, enabled=False, disabled_reason="failures")
                cred.record = record
                cred.record_dirty = True
                cred.usable = False
                cred.public = _public(record, cred.secret is not None)
                changed = True
                _log.warning(
                    "credentials.auto_disabled",
                    credential=cred.id,
                    upstream=cred.upstream,
                    failures=cred.consecutive,
                )
        if changed:
            self._gen += 1
        if group is not None and (status in self._cooldown_statuses or status in self._disable_statuses):
            defer_retry(self._until_available(group, now))

    @staticmethod
    def _until_available(group: _Group, now: float) -> float | None:
        """Seconds until one of *group*'s credentials can be leased again: ``None`` when one can
        now, ``inf`` when none ever will (all disabled)."""
        soonest = _INF
        for c in group.members:
            if not c.usable:
                continue
            if c.cooldown_until <= now:
                return None
            soonest = min(soonest, c.cooldown_until - now)
        return soonest

    # -- statistics ---------------------------------------------------------------------------

    def _wall(self, mono: float | None, now_wall: datetime, now: float) -> datetime | None:
        if mono is None:
            return None
        return now_wall - timedelta(seconds=now - mono)

    def stats(self) -> builtins.list[CredentialStats]:
        """Every credential's statistics (totals since the store's first record), oldest first."""
        now = self._monotonic()
        now_wall = self._clock.now()
        out = []
        for c in self._creds.values():
            cooling = c.cooldown_until > now
            out.append(
                CredentialStats(
                    credential_id=c.id,
                    upstream=c.upstream,
                    name=c.record.name,
                    requests=c.requests,
                    successes=c.successes,
                    failures=MappingProxyType(dict(c.failures)),
                    tokens=c.tokens,
                    in_flight=c.in_flight,
                    consecutive_failures=c.consecutive,
                    last_used_at=self._wall(c.last_used, now_wall, now),
                    last_failure_at=self._wall(c.last_failure, now_wall, now),
                    cooldown_until=self._wall(c.cooldown_until, now_wall, now) if cooling else None,
                    enabled=c.public.enabled,
                    disabled_reason=c.public.disabled_reason,
                    available=c.usable and not cooling,
                )
            )
        return out

    async def flush(self) -> None:
        """Write the usage gathered since the last flush (as increments) and automatic disables,
        in one store transaction. On a store error nothing is lost: the next flush retries."""
        async with self._flush_lock:
            now = self._monotonic()
            now_wall = self._clock.now()
            deltas: list[CredentialUsageDelta] = []
            taken: list[tuple[_Cred, int, int, int, dict[int, int], bool]] = []
            records: list[CredentialRecord] = []
            dirty_records: list[_Cred] = []
            for c in list(self._creds.values()):
                d_req = c.requests - c.base_requests
                d_ok = c.successes - c.base_successes
                d_tok = c.tokens - c.base_tokens
                d_fail = {s: n - c.base_failures.get(s, 0) for s, n in c.failures.items()}
                d_fail = {s: n for s, n in d_fail.items() if n}
                cooldown = c.cooldown_dirty
                if c.record_dirty:
                    records.append(attrs.evolve(c.record, updated_at=now_wall))
                    dirty_records.append(c)
                if not (d_req or d_ok or d_tok or d_fail or cooldown):
                    continue
                deltas.append(
                    CredentialUsageDelta(
                        c.id,
                        requests=d_req,
                        successes=d_ok,
                        failures=d_fail,
                        tokens=d_tok,
                        last_used_at=self._wall(c.last_used, now_wall, now),
                        last_failure_at=self._wall(c.last_failure, now_wall, now),
                        cooldown_until=(
                            self._wall(c.cooldown_until, now_wall, now) if c.cooldown_until > now else None
                        ),
                        set_cooldown=cooldown,
                    )
                )
                taken.append((c, d_req, d_ok, d_tok, d_fail, cooldown))
            if not deltas and not records:
                return
            for c, d_req, d_ok, d_tok, d_fail, _cooldown in taken:
                c.base_requests += d_req
                c.base_successes += d_ok
                c.base_tokens += d_tok
                for s, n in d_fail.items():
                    c.base_failures[s] = c.base_failures.get(s, 0) + n
                c.cooldown_dirty = False
            for c in dirty_records:
                c.record_dirty = False
            try:
                await self._store.add_usage(deltas, records)
            except BaseException:
                for c, d_req, d_ok, d_tok, d_fail, cooldown in taken:
                    c.base_requests -= d_req
                    c.base_successes -= d_ok
                    c.base_tokens -= d_tok
                    for s, n in d_fail.items():
                        c.base_failures[s] -= n
                    c.cooldown_dirty = c.cooldown_dirty or cooldown
                for c in dirty_records:
                    c.record_dirty = True
                raise

    # -- background flushing ------------------------------------------------------------------

    async def start(self) -> None:
        """Load (if not yet loaded) and start flushing every ``flush_interval`` seconds."""
        if not self._loaded:
            await self.load()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="maaskit-credential-flush")

    async def _run(self) -> None:
        while True:
            await self._sleep(self._flush_interval)
            try:
                await self.flush()
            except Exception as exc:  # keep flushing later; the deltas stay pending
                _log.warning("credentials.flush_failed", error=type(exc).__name__)

    async def aclose(self) -> None:
        """Stop the background flusher and flush what is pending."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._loaded:
            await self.flush()


# --------------------------------------------------------------------------------------------
# validation


def _secret_ok(secret: object, kind: CredentialKind | str) -> bool:
    """A secret goes into a header as is, so it must be ASCII (httpx raises on anything else,
    with the whole header value in the exception): visible ASCII for an API key; a cookie may
    also hold inner spaces (``a=1; b=2``)."""
    if not isinstance(secret, str) or not secret or len(secret) > _MAX_SECRET:
        return False
    if not (secret.isascii() and secret.isprintable()):  # no control character, tab or line break
        return False
    if kind == CredentialKind.COOKIE:
        return secret.strip() == secret
    return " " not in secret


def _check_secret(secret: object, kind: CredentialKind | str = CredentialKind.API_KEY) -> str:
    if not _secret_ok(secret, kind):
        what = "visible ASCII characters (a cookie may also contain spaces)"
        raise ValidationError("credentials.invalid", reason=f"the secret must be 1-{_MAX_SECRET} {what}")
    assert isinstance(secret, str)
    return secret


def _check_header(header: object) -> str:
    if not isinstance(header, str) or not _HEADER_RE.match(header) or header.lower() in _FORBIDDEN_HEADERS:
        raise ValidationError("credentials.invalid", reason="the header name is not allowed")
    return header


def _check_format(value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value) > 200
        or value.count(_PLACEHOLDER) != 1
        or not (value.isascii() and value.isprintable())
    ):
        raise ValidationError(
            "credentials.invalid",
            reason="the header format must be printable ASCII containing {secret} once",
        )
    return value


def _check_weight(weight: object) -> int:
    if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= _MAX_WEIGHT:
        raise ValidationError("credentials.invalid", reason=f"the weight must be an integer 1-{_MAX_WEIGHT}")
    return weight


def _check_models(models: object) -> tuple[str, ...] | None:
    if models is None:
        return None
    if isinstance(models, str) or not isinstance(models, Iterable):
        raise ValidationError("credentials.invalid", reason="models must be a list of model names")
    out = tuple(dict.fromkeys(models))
    if not out or any(not isinstance(m, str) or not m or len(m) > 200 for m in out):
        raise ValidationError("credentials.invalid", reason="models must be a non-empty list of model names")
    return out
