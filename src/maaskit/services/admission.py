"""Admission: the hot path every gateway request runs through.

``admit`` turns a credential and a request into an :class:`Admission` or a precise error:

1. the API key is validated (malformed / unknown / revoked / disabled / expired);
2. the model name is checked (well-formed, allowed for the key, priced);
3. the request's maximum cost is computed: prompt estimate + ``max_tokens`` x ``n`` completion
   tokens (a configured cap when the request has none, so the maximum exists; the larger of
   ``max_tokens`` and ``max_completion_tokens`` when both are given) at the model's prices;
4. rate limits (requests and tokens per minute) and the budget reservation of that maximum
   cost are applied in one atomic step (:class:`~maaskit.services.rate_limit.LimitsGate`: one
   Redis round trip with the Redis backend).

``settle`` commits the actual cost (never more than was reserved, so committed spend never
exceeds the budget), corrects the token counters and records usage; ``release`` gives the
reservation back when the upstream call failed. Each happens at most once per admission.

Example::

    admission = await admission_service.admit(credential, "gpt-4o-mini", body)
    try:
        result = await ai_api.chat_completion(admission.upstream_body(body))
    except MaasError:
        await admission_service.release(admission)
        raise
    await admission_service.settle(admission, result.usage)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, runtime_checkable

import attrs

from maaskit._tasks import shared_task
from maaskit.clock import Clock, SystemClock
from maaskit.errors import ForbiddenError, MaasError, NotFoundError, ValidationError
from maaskit.money import MAX_MICROS
from maaskit.services.ai_api import Usage
from maaskit.services.api_keys import ApiKey, ApiKeyService
from maaskit.services.budget import Settlement
from maaskit.services.model_names import MAX_MODEL_NAME_LENGTH, is_valid_model_name
from maaskit.services.pricing import MAX_TOKENS, ModelPrice, PricingService, StaticPricing
from maaskit.services.rate_limit import AdmissionPlan, DefaultLimitsGate, GateDecision, LimitsGate, RateKind
from maaskit.services.tokens_estimate import CharTokenEstimator, TokenEstimator
from maaskit.services.usage import MAX_ID_LENGTH, UsageRecord, UsageService

__all__ = [
    "MAX_CHOICES",
    "MAX_MODEL_NAME_LENGTH",
    "USE_MODELS",
    "Admission",
    "AdmissionService",
    "AvailabilityCheck",
    "DefaultAdmissionService",
    "KeyAuthorizer",
    "Remaining",
    "SettleResult",
    "new_request_id",
    "validate_model_name",
]

#: Bounds of the per-service caches (validated model names / upstream names, per-key plans).
_MAX_CACHED_NAMES: Final = 4096
#: The most completions one request may ask for (``n``; OpenAI's own limit).
MAX_CHOICES: Final = 128
_MAX_CACHED_PLANS: Final = 100_000
_MAX_COUNT: Final = 2**63 - 1
_MAX_LATENCY_MS: Final = 2**31 - 1

# Request ids: a random per-process prefix (64 bits) plus a counter - unique across replicas and
# far cheaper than uuid4. A forked child draws a new prefix, so workers never share one.
_id_prefix = os.urandom(8).hex()
# the ids themselves, formatted by a C-level iterator: next(_ids) is the next request id
_ids: Iterator[str] = map(f"{_id_prefix}%x".__mod__, itertools.count(1))


def _reseed_ids() -> None:
    global _id_prefix, _ids
    _id_prefix = os.urandom(8).hex()
    _ids = map(f"{_id_prefix}%x".__mod__, itertools.count(1))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)


def new_request_id() -> str:
    """A request id unique across processes and replicas (random prefix + counter, hex)."""
    return next(_ids)


def _fits(value: object) -> bool:
    """Whether *value* is a valid id for a usage record (what :class:`UsageRecord` checks)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def validate_model_name(model: object) -> str:
    """Return *model* if it is a well-formed model name, else raise ``admission.invalid_model``.

    Names like ``gpt-4o-mini``, ``openai/gpt-4o`` or ``meta-llama/Llama-3.1-8B:q4`` pass; path
    tricks (``..``, leading ``/``, backslashes), URLs (``http://...``), whitespace, control
    characters and names longer than :data:`MAX_MODEL_NAME_LENGTH` do not.
    """
    if not isinstance(model, str) or not model:
        raise ValidationError("admission.invalid_model", reason="the model must be a non-empty string")
    if len(model) > MAX_MODEL_NAME_LENGTH:
        raise ValidationError("admission.invalid_model", reason="the model name is too long")
    if not is_valid_model_name(model):
        raise ValidationError("admission.invalid_model", reason="the model name has invalid characters")
    return model


@attrs.frozen
class Remaining:
    """What the caller has left after an admission (for headers and dashboards).

    Attributes:
        budget_micros: budget left after this request's reservation, ``None`` without a budget.
        requests: requests left in the rate window, ``None`` without a request limit.
        tokens: tokens left in the rate window, ``None`` without a token limit.
        requests_reset_after: seconds until the request window is full again.
        tokens_reset_after: seconds until the token window is full again.
    """

    budget_micros: int | None
    requests: int | None
    tokens: int | None
    requests_reset_after: float | None
    tokens_reset_after: float | None


@attrs.define(slots=True, eq=False)
class Admission:
    """An admitted request: who, which model, what was reserved. Settle or release it once.

    Attributes:
        request_id: unique id (usage is recorded idempotently under it).
        key: the validated API key.
        model: the requested model.
        max_tokens: the completion-token cap of one choice the upstream gets (the request's, the
            larger of ``max_completion_tokens`` and ``max_tokens`` when both are given, or the
            default).
        prompt_tokens_estimate: the prompt estimate used for the reservation.
        reserved_micros: the maximum cost reserved on the budget.
        decision: the rate-limit and budget decision (``headers()`` renders it).
        started: monotonic start time (latency is measured from it).
        settled: whether settle or release already ran.
        choices: the completions asked for (``n``); the reservation covers ``max_tokens`` x
            ``choices`` completion tokens.
    """

    request_id: str
    key: ApiKey
    model: str
    max_tokens: int
    prompt_tokens_estimate: int
    reserved_micros: int
    decision: GateDecision
    started: float
    settled: bool = False
    choices: int = 1

    def headers(self) -> dict[str, str]:
        """``x-ratelimit-*`` headers for the response (what OpenAI clients read)."""
        return self.decision.headers()

    @property
    def remaining(self) -> Remaining:
        """What remains in the budget and the rate windows after this admission."""
        requests = tokens = None
        requests_reset = tokens_reset = None
        for rate in self.decision.rates:
            if rate.kind is RateKind.REQUESTS and (requests is None or rate.remaining < requests):
                requests, requests_reset = rate.remaining, rate.reset_after
            elif rate.kind is RateKind.TOKENS and (tokens is None or rate.remaining < tokens):
                tokens, tokens_reset = rate.remaining, rate.reset_after
        budgets = self.decision.budget_available_micros
        return Remaining(min(budgets) if budgets else None, requests, tokens, requests_reset, tokens_reset)

    def upstream_body(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """*body* with the completion cap the reservation assumed (``max_tokens`` when neither
        ``max_tokens`` nor ``max_completion_tokens`` is given; a ``null`` counts as not given)."""
        out = dict(body)
        if out.get("max_tokens") is None and out.get("max_completion_tokens") is None:
            out["max_tokens"] = self.max_tokens
        return out

    def upstream_json(self, body: Mapping[str, Any], raw: bytes) -> bytes:
        """The JSON text of :meth:`upstream_body` from *raw*, the text *body* was parsed from.

        When the cap is missing, ``"max_tokens":N`` is spliced in before the object's closing
        brace; nothing is parsed or serialised again. *raw* must be the JSON object *body* came
        from (as a server's request parser left it).

        Raises:
            ValidationError: ``admission.invalid_body`` when *raw* does not end a JSON object, or
                when the body must be serialised again and is nested too deeply for that.
        """
        if body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None:
            return raw
        if "max_tokens" in body or "max_completion_tokens" in body:  # a null cap: no duplicate key
            try:
                text = json.dumps(self.upstream_body(body), separators=(",", ":"), ensure_ascii=False)
            except RecursionError:  # orjson parses 1,024 levels; json.dumps stops near the stack limit
                raise ValidationError(
                    "admission.invalid_body", reason="the body is nested too deeply"
                ) from None
            return text.encode()
        end = raw.rstrip(b" \t\r\n")
        if not end.endswith(b"}"):
            raise ValidationError("admission.invalid_body", reason="the body is not a JSON object")
        head = end[:-1]
        separator = b"," if body else b""
        return b'%s%s"max_tokens":%d}' % (head, separator, self.max_tokens)


@attrs.frozen
class SettleResult:
    """The outcome of :meth:`AdmissionService.settle`.

    Attributes:
        cost_micros: what was charged (at most the reservation).
        uncharged_micros: the part of the actual cost above the reservation (logged, not charged).
        settlement: the ledger's settlement, ``None`` when no budget applies.
        replayed: ``True`` when the admission had already been settled (nothing was done).
    """

    cost_micros: int
    uncharged_micros: int
    settlement: Settlement | None
    replayed: bool = False


_REPLAYED: Final = SettleResult(0, 0, None, replayed=True)


@runtime_checkable
class AdmissionService(Protocol):
    """Authenticate, authorise, rate-limit and reserve budget for a request; settle it after."""

    async def admit(
        self, credential: str, model: str, body: Mapping[str, Any], *, max_output_tokens: int | None = None
    ) -> Admission:
        """Admit a request or raise the precise :class:`~maaskit.errors.MaasError`.

        *max_output_tokens* overrides the completion cap (``0`` for embeddings); by default it is
        the body's ``max_completion_tokens``/``max_tokens``, or the configured default.
        """
        ...

    async def settle(
        self,
        admission: Admission,
        usage: Usage,
        *,
        status: Literal["ok", "error", "cancelled"] = "ok",
        streamed: bool = False,
        upstream: str | None = None,
    ) -> SettleResult:
        """Commit the actual cost, correct token counters and record usage (once)."""
        ...

    async def release(self, admission: Admission, *, upstream: str | None = None) -> None:
        """The call failed before any output: give everything back and record the failure (once)."""
        ...


#: The permission every way of calling a model needs (API keys included).
USE_MODELS = "models:use"


class _Allows(Protocol):
    def allows(self, permission: str) -> bool: ...


class KeyAuthorizer(Protocol):
    """What admission needs from :class:`~maaskit.services.auth.Authenticator`."""

    async def principal_for_key(self, key: ApiKey) -> _Allows:
        """The principal acting through *key* (its owner's permissions, never more)."""
        ...


class AvailabilityCheck(Protocol):
    """What admission needs from :class:`~maaskit.services.catalog.ModelCatalog`."""

    async def require_available(self, model_id: str) -> Any:
        """Raise ``model.unavailable`` when *model* is gone upstream."""
        ...


class _KeyPlan:
    """What admission derives from one ApiKey object (rebuilt when the key object changes)."""

    __slots__ = ("authorized_until", "authorizing", "key", "plan", "prices", "usage_ok")

    def __init__(self, key: ApiKey, plan: AdmissionPlan, usage_ok: bool) -> None:
        self.key = key
        self.plan = plan
        self.usage_ok = usage_ok
        # models this key was admitted for, with their (static) prices: every check passed
        self.prices: dict[str, ModelPrice] = {}
        # monotonic time until which the owner's ``models:use`` permission is known to hold
        self.authorized_until = -1.0
        # the permission check under way (concurrent requests of the key share it)
        self.authorizing: asyncio.Future[None] | None = None


class DefaultAdmissionService:
    """The :class:`AdmissionService` over API keys, pricing, the limits gate and usage.

    The hot path keeps three small caches: validated model names, validated upstream names and,
    per API key object (a changed key is a new object), its limits as an
    :class:`~maaskit.services.rate_limit.AdmissionPlan`. With a
    :class:`~maaskit.services.rate_limit.DefaultLimitsGate` over an in-process store the gate is
    called synchronously.

    Args:
        api_keys: validates credentials.
        pricing: model prices (static table or the model catalog).
        gate: rate limits and budget reservations in one atomic step.
        usage: records one usage row per settled request.
        clock: latency and timestamps.
        default_max_tokens: completion cap for requests without ``max_tokens``.
        estimator: prompt-token estimates for the reservation.
        authorizer: when given, a key is admitted only if its principal (the owner's RBAC
            permissions, see :meth:`maaskit.services.auth.DefaultAuthenticator.principal_for_key`)
            holds ``models:use`` — the same check the admin endpoints make. A positive answer is
            remembered for *permission_ttl* seconds per key.
        catalog: when given, requests for models the catalog marks unavailable are refused with
            ``model.unavailable``.
        permission_ttl: seconds a positive permission check is reused.
    """

    def __init__(
        self,
        api_keys: ApiKeyService,
        pricing: PricingService,
        gate: LimitsGate,
        usage: UsageService,
        clock: Clock,
        *,
        default_max_tokens: int = 4096,
        estimator: TokenEstimator | None = None,
        authorizer: KeyAuthorizer | None = None,
        catalog: AvailabilityCheck | None = None,
        permission_ttl: float = 5.0,
    ) -> None:
        if (
            isinstance(default_max_tokens, bool)
            or not isinstance(default_max_tokens, int)
            or default_max_tokens < 1
        ):
            raise ValidationError(
                "config.invalid", setting="MAASKIT_DEFAULT_MAX_TOKENS", reason="must be >= 1"
            )
        self._keys = api_keys
        self._validate_cached: Callable[[str], ApiKey | None] | None = getattr(
            api_keys, "validate_cached", None
        )
        self._pricing = pricing
        # StaticPricing never changes: admit reads its table directly
        self._static_prices: dict[str, ModelPrice] | None = (
            pricing._prices if type(pricing) is StaticPricing else None
        )
        self._gate = gate
        self._plan_gate = gate if isinstance(gate, DefaultLimitsGate) else None
        self._sync_gate = gate if isinstance(gate, DefaultLimitsGate) and gate.synchronous else None
        self._usage = usage
        self._clock = clock
        # the system clock's monotonic() is time.monotonic(): call it directly on the hot path
        self._monotonic = time.monotonic if type(clock) is SystemClock else clock.monotonic
        self._now: Callable[[], datetime] = (
            functools.partial(datetime.now, UTC) if type(clock) is SystemClock else clock.now
        )
        self._default_max_tokens = default_max_tokens
        self._max_cap = default_max_tokens * 64  # larger caps are refused (see _max_tokens)
        self._estimator = estimator or CharTokenEstimator()
        self._prompt_tokens = self._estimator.prompt_tokens
        self._models: set[str] = set()
        self._upstreams: set[str] = set()
        self._plans: dict[str, _KeyPlan] = {}
        self._authorizer = authorizer
        self._catalog = catalog
        self._permission_ttl = permission_ttl

    def __repr__(self) -> str:
        return f"DefaultAdmissionService(default_max_tokens={self._default_max_tokens})"

    def _output_caps(self, body: Mapping[str, Any]) -> tuple[int, int]:
        """The completion cap of one choice and the number of choices (``n``) of *body*.

        The reservation covers cap x ``n`` completion tokens. Both ``max_completion_tokens`` and
        ``max_tokens`` are checked when both are given, and the larger counts: an upstream may
        honour either. A ``null`` is the same as an absent field (as upstreams read it).
        """
        caps = []
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(
                    "admission.invalid_max_tokens", reason=f"{name} must be a positive integer"
                )
            if value > self._max_cap:
                raise ValidationError(
                    "admission.invalid_max_tokens", reason=f"{name} is larger than any model allows"
                )
            caps.append(value)
        choices = body.get("n")
        if choices is None:
            choices = 1
        elif isinstance(choices, bool) or not isinstance(choices, int) or not 1 <= choices <= MAX_CHOICES:
            raise ValidationError(
                "admission.invalid_body", reason=f"n must be an integer from 1 to {MAX_CHOICES}"
            )
        return (max(caps) if caps else self._default_max_tokens), choices

    def _check_model(self, model: object) -> None:
        validate_model_name(model)
        assert isinstance(model, str)
        if model.__class__ is str:
            models = self._models
            if len(models) >= _MAX_CACHED_NAMES:
                models.clear()
            models.add(model)

    def _plan(self, key: ApiKey) -> _KeyPlan:
        budget = key.budget_micros
        plan = AdmissionPlan.simple(
            key.id,
            rpm=key.rpm_limit,
            tpm=key.tpm_limit,
            budget_account=None if budget is None else "key:" + key.id,
            budget_limit_micros=budget,
        )
        entry = _KeyPlan(
            key, plan, _fits(key.id) and _fits(key.owner_id) and (key.team_id is None or _fits(key.team_id))
        )
        plans = self._plans
        plans.pop(key.id, None)
        if len(plans) >= _MAX_CACHED_PLANS:
            del plans[next(iter(plans))]
        plans[key.id] = entry
        return entry

    async def admit(
        self, credential: str, model: str, body: Mapping[str, Any], *, max_output_tokens: int | None = None
    ) -> Admission:
        """See :meth:`AdmissionService.admit`."""
        cached = self._validate_cached
        key = None if cached is None else cached(credential)  # a cache hit needs no coroutine
        if key is None:
            key = await self._keys.validate(credential)
        entry = self._plans.get(key.id)
        if entry is None or entry.key is not key:
            entry = self._plan(key)
        prices = self._static_prices
        price = entry.prices.get(model) if model.__class__ is str else None
        if price is None:  # the first request of this key for this model, or not a static price
            price = await self._price_for(key, entry, model)
        choices = 1
        if max_output_tokens is not None:
            max_tokens = output = max_output_tokens
        else:  # _output_caps(body), with its common case inlined: at most one cap, no n
            cap = body.get("max_completion_tokens")
            other = body.get("max_tokens")
            if cap is None:
                cap, other = other, None
            if (
                other is None
                and body.get("n") is None
                and (cap is None or (cap.__class__ is int and 0 < cap <= self._max_cap))
            ):
                max_tokens = output = self._default_max_tokens if cap is None else cap
            else:  # (raises the precise error)
                max_tokens, choices = self._output_caps(body)
                output = max_tokens * choices
        prompt = self._prompt_tokens(body)
        if prices is None:
            reserve = self._pricing.max_cost_micros(model, prompt, output)
        elif (
            prompt.__class__ is int
            and 0 <= prompt <= MAX_TOKENS
            and output.__class__ is int
            and 0 <= output <= MAX_TOKENS
        ):  # StaticPricing.max_cost_micros is the price's cost_micros; inlined for counts in range
            reserve = -(-(prompt * price._in + output * price._out + price._req) // price._den)
        else:  # (the checking call says what is wrong)
            reserve = price.cost_micros(prompt, output)
        if self._authorizer is not None and entry.authorized_until < self._monotonic():
            await self._authorize(key, entry)
        request_id = next(_ids)  # new_request_id(); also names the reservation
        estimate = prompt + output
        gate = self._sync_gate
        if gate is not None:
            acquire = entry.plan._acquire  # the plan compiled by this gate (see _compile_acquire)
            if acquire is not None:
                decision = acquire(estimate, reserve, request_id)
            else:
                decision = gate._acquire_plan_now(entry.plan, estimate, reserve, request_id)
        elif self._plan_gate is not None:
            decision = await self._plan_gate.acquire_plan(
                entry.plan, estimate, reserve, reservation_id=request_id
            )
        else:
            decision = await self._gate.acquire(entry.plan.limits(estimate, reserve))
        refusal = decision._refusal
        if refusal is not None:
            raise refusal
        return Admission(
            request_id, key, model, max_tokens, prompt, reserve, decision, self._monotonic(), False, choices
        )

    async def _price_for(self, key: ApiKey, entry: _KeyPlan, model: str) -> ModelPrice:
        """Check *model* for *key* (name, allow-list, catalog, price); remember a static price."""
        if model.__class__ is not str or model not in self._models:
            self._check_model(model)
        allowed = key.allowed_models  # ApiKey.allows_model, inlined: empty allows every model
        if allowed and model not in allowed:
            raise ForbiddenError("admission.model_not_allowed", model=model)
        if self._catalog is not None:
            await self._catalog.require_available(model)
        prices = self._static_prices
        price = self._pricing.price(model) if prices is None else prices.get(model)
        if price is None:
            raise NotFoundError("admission.unknown_model", model=model)
        if prices is not None and self._catalog is None and model.__class__ is str:
            # nothing about this answer can change while the key object stays the same
            if len(entry.prices) >= _MAX_CACHED_NAMES:
                entry.prices.clear()
            entry.prices[model] = price
        return price

    async def _authorize(self, key: ApiKey, entry: _KeyPlan) -> None:
        """Check the owner's ``models:use`` once for all concurrent requests of *key*."""
        check = entry.authorizing
        if check is None:

            def forget(done: asyncio.Future[None]) -> None:
                if entry.authorizing is done:
                    entry.authorizing = None

            check = entry.authorizing = shared_task(self._check_permission(key, entry), forget)
        await asyncio.shield(check)  # a caller that goes away does not cancel the others' check

    async def _check_permission(self, key: ApiKey, entry: _KeyPlan) -> None:
        assert self._authorizer is not None
        principal = await self._authorizer.principal_for_key(key)
        if not principal.allows(USE_MODELS):
            raise ForbiddenError("rbac.forbidden", permission=USE_MODELS)
        entry.authorized_until = self._monotonic() + self._permission_ttl

    def _usage_record(
        self,
        admission: Admission,
        usage: Usage,
        cost: int,
        status: Literal["ok", "error", "cancelled"],
        streamed: bool,
        upstream: str | None,
    ) -> UsageRecord:
        """The usage row of *admission*, every value checked (before anything is settled)."""
        key = admission.key
        prompt, completion, total = usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
        latency = int((self._monotonic() - admission.started) * 1000)
        if latency < 0:
            latency = 0
        created_at = self._now()
        entry = self._plans.get(key.id)
        if (
            entry is not None
            and entry.key is key
            and entry.usage_ok
            and (upstream is None or (upstream.__class__ is str and upstream in self._upstreams))
            and prompt.__class__ is int
            and completion.__class__ is int
            and total.__class__ is int
            and cost.__class__ is int
            and 0 <= prompt <= _MAX_COUNT
            and 0 <= completion <= _MAX_COUNT
            and 0 <= total <= _MAX_COUNT
            and 0 <= cost <= MAX_MICROS
            and latency <= _MAX_LATENCY_MS
            and (usage.source == "reported" or usage.source == "estimated")  # (no hashing: any
            and (status == "ok" or status == "error" or status == "cancelled")  # value is safe)
            and streamed.__class__ is bool
            and created_at.tzinfo is UTC
        ):
            # Every value is known good (the key's ids were checked when its plan was built,
            # the model by admit): skip UsageRecord's validators.
            return UsageRecord._unchecked(
                admission.request_id,
                key.id,
                key.owner_id,
                admission.model,
                prompt,
                completion,
                total,
                cost,
                created_at,
                key.team_id,
                upstream,
                usage.source,
                status,
                streamed,
                latency,
            )
        record = UsageRecord(
            request_id=admission.request_id,
            key_id=key.id,
            owner_id=key.owner_id,
            team_id=key.team_id,
            model=admission.model,
            upstream=upstream,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            cost_micros=cost,
            usage_source=usage.source,
            status=status,
            streamed=streamed,
            latency_ms=latency,
            created_at=created_at,
        )
        if upstream is not None and upstream.__class__ is str:
            upstreams = self._upstreams
            if len(upstreams) >= _MAX_CACHED_NAMES:
                upstreams.clear()
            upstreams.add(upstream)
        return record

    async def settle(
        self,
        admission: Admission,
        usage: Usage,
        *,
        status: Literal["ok", "error", "cancelled"] = "ok",
        streamed: bool = False,
        upstream: str | None = None,
    ) -> SettleResult:
        """See :meth:`AdmissionService.settle`.

        Every value is checked before anything is settled: a bad *usage*, *status* or *upstream*
        raises ``ValidationError`` and leaves the admission open (release it or settle again).

        The ledger gets the actual cost: it commits at most the reservation and records (and logs)
        the excess as overage on the period's counters. If the limits store fails (a Redis or
        database blip), the usage is recorded all the same (idempotent by request id), the error
        propagates and the admission stays open: settling it again commits the ledger.
        """
        if admission.settled:
            return _REPLAYED
        actual = self._pricing.cost_micros(admission.model, usage.prompt_tokens, usage.completion_tokens)
        reserved = admission.reserved_micros
        charged = actual if actual < reserved else reserved
        record = self._usage_record(admission, usage, charged, status, streamed, upstream)
        total = usage.total_tokens  # checked by _usage_record
        admission.settled = True
        decision = admission.decision
        settlement = None
        gate = self._sync_gate
        if gate is not None and decision._allowed:
            settlement = gate._settle_admitted_now(decision, total, actual)
        else:
            ticket = decision.ticket
            if ticket is not None:
                try:
                    settlement = await self._gate.settle(ticket, actual_tokens=total, actual_micros=actual)
                except BaseException:
                    admission.settled = False  # the ledger did not answer: settling again commits it
                    with contextlib.suppress(MaasError):  # (a full usage buffer: the store's error wins)
                        self._usage.record(record)  # the request happened: accounting keeps it
                    raise
        self._usage.record(record)
        return SettleResult(charged, actual - charged, settlement)

    async def release(self, admission: Admission, *, upstream: str | None = None) -> None:
        """See :meth:`AdmissionService.release`."""
        if admission.settled:
            return
        record = self._usage_record(admission, Usage(0, 0, 0, "reported"), 0, "error", False, upstream)
        admission.settled = True
        decision = admission.decision
        gate = self._sync_gate
        if gate is not None and decision._allowed:
            gate._settle_admitted_now(decision, None, None)
        else:
            ticket = decision.ticket
            if ticket is not None:
                try:
                    await self._gate.release(ticket)
                except BaseException:
                    admission.settled = False  # the ledger did not answer: release again
                    raise
        self._usage.record(record)
