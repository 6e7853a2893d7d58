"""LiteLLM control plane: model info, health and key/team/user management over HTTP.

:class:`DefaultLiteLLMService` talks to a LiteLLM proxy's admin API with the httpx API (pass
your own ``httpx.AsyncClient``, e.g. one over ``httpx.MockTransport``), authenticated with the
proxy's master key, through the same :class:`~maaskit.services.upstream.RetryPolicy` and
:class:`~maaskit.services.upstream.CircuitBreaker` as the data plane. The master key never
appears in a repr, a log line or an error.

Answers are parsed defensively: JSON is read with ``parse_float=Decimal`` (no float ever touches a
price), and an answer that is HTML, truncated, not the expected shape, or that names a model with a
path-like or URL-like id, a negative / non-finite / absurd price or a duplicate name becomes a typed
:class:`~maaskit.errors.UpstreamError` (``litellm.invalid_response``) that also counts as a
failure for the circuit breaker.

Example::

    import httpx
    from maaskit.services.litellm import DefaultLiteLLMService, LiteLLMConfig

    litellm = DefaultLiteLLMService(LiteLLMConfig(base_url="http://127.0.0.1:4000", master_key="sk-master"))
    for model in await litellm.get_model_info():
        print(model.model_name, model.input_cost_per_token, model.capabilities)
    await litellm.aclose()
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final, NoReturn, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlencode

import attrs
import structlog

from maaskit.clock import Clock, SystemClock
from maaskit.errors import (
    MaasError,
    NotFoundError,
    RateLimitedError,
    UpstreamError,
    ValidationError,
)
from maaskit.services.upstream import (
    CircuitBreaker,
    HttpxTransport,
    RetryPolicy,
    Timeouts,
    TransportConnectError,
    TransportError,
    TransportTimeoutError,
    Upstream,
    UpstreamResponse,
    UpstreamTransport,
    parse_retry_after,
)

__all__ = [
    "MAX_CATALOG_PRICE_PER_TOKEN",
    "MAX_TOKEN_LIMIT",
    "ConnectionCheck",
    "DefaultLiteLLMService",
    "FingerprintedModelSource",
    "LiteLLMConfig",
    "LiteLLMKey",
    "LiteLLMModel",
    "LiteLLMService",
    "LiteLLMTeam",
    "LiteLLMUser",
    "ModelInfo",
    "ModelProblem",
    "ModelSnapshot",
    "ModelSource",
    "check_model_id",
    "check_price",
    "decode_json",
    "encode_json",
    "hash_key",
    "model_info_fingerprint",
    "parse_model_info",
]

_log = structlog.get_logger(__name__)

#: The highest price per token the catalog accepts (USD); anything above is treated as hostile.
MAX_CATALOG_PRICE_PER_TOKEN: Final = Decimal(1)
#: The most decimal places a catalog price may have (prices are stored as USD x 10^18).
PRICE_PLACES: Final = 18
#: The largest token limit (context window, max output) accepted.
MAX_TOKEN_LIMIT: Final = 2**40
_MAX_ID_LEN: Final = 256
#: ``segment(/segment)*``; each segment starts with a letter or digit: no ``..``, no absolute
#: paths, no backslashes, no empty segments, no URL schemes (``http://`` has an empty segment).
_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]*(?:/[A-Za-z0-9][A-Za-z0-9._:@+=-]*)*$")
_MAX_BODY: Final = 256 * 1024 * 1024
_T = TypeVar("_T")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_CAP_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_DEFAULT_TIMEOUTS: Final = Timeouts(connect=5.0, read=30.0, total=60.0)


# --------------------------------------------------------------------------------------------
# validation helpers (shared with the catalog)


def check_model_id(value: object) -> str:
    """Check a model id / name and return it.

    Accepted: 1-256 characters, ``segment(/segment)*`` where a segment starts with a letter or
    digit and holds letters, digits and ``. _ : @ + = -`` (``openai/gpt-4o``,
    ``meta-llama/Llama-3.1-8B``). Refused: path traversal (``..``), absolute paths, backslashes,
    empty segments, URLs (``http://...``), whitespace and control characters.

    Raises:
        ValidationError: ``catalog.invalid_model_id`` with the reason.
    """
    if not isinstance(value, str) or not value:
        raise ValidationError("catalog.invalid_model_id", reason="must be a non-empty string")
    if len(value) > _MAX_ID_LEN:
        raise ValidationError("catalog.invalid_model_id", reason=f"longer than {_MAX_ID_LEN} characters")
    if "://" in value:
        raise ValidationError("catalog.invalid_model_id", reason="looks like a URL")
    if not _ID_RE.fullmatch(value):
        raise ValidationError(
            "catalog.invalid_model_id", reason="path separators, traversal, spaces or control characters"
        )
    return value


def check_price(value: object, *, field: str) -> Decimal | None:
    """Check a price per token (USD) and return it as a normalised ``Decimal`` (``None`` passes).

    Accepts ``Decimal``, ``int`` and decimal strings; refuses floats, booleans, NaN, infinities,
    negative values, values above :data:`MAX_CATALOG_PRICE_PER_TOKEN` and more than 18 places.

    Raises:
        ValidationError: ``catalog.invalid_price`` naming *field* and the reason.
    """
    if value is None:
        return None
    if isinstance(value, bool | float):
        raise ValidationError("catalog.invalid_price", field=field, reason="floats are not accepted")
    if isinstance(value, Decimal):
        price = value
    elif isinstance(value, int | str):
        try:
            price = Decimal(str(value).strip())
        except (InvalidOperation, ValueError):
            raise ValidationError(
                "catalog.invalid_price", field=field, reason="not a decimal number"
            ) from None
    else:
        raise ValidationError("catalog.invalid_price", field=field, reason="not a number")
    if not price.is_finite():
        raise ValidationError("catalog.invalid_price", field=field, reason="not finite")
    if price < 0:
        raise ValidationError("catalog.invalid_price", field=field, reason="negative")
    if price > MAX_CATALOG_PRICE_PER_TOKEN:
        raise ValidationError(
            "catalog.invalid_price", field=field, reason=f"above {MAX_CATALOG_PRICE_PER_TOKEN} per token"
        )
    if price == 0:
        return Decimal(0)
    # count the places on the exact digits: normalize() rounds to the context, and a tiny
    # non-zero value (1e-1000028) would come back as 0
    _sign, digits, exponent = price.as_tuple()
    assert isinstance(exponent, int)
    trailing = len(digits) - len(bytes(digits).rstrip(b"\x00"))
    if -(exponent + trailing) > PRICE_PLACES:
        raise ValidationError("catalog.invalid_price", field=field, reason=f"more than {PRICE_PLACES} places")
    # at most 18 places and at most 1: at most 19 significant digits, exact in the context
    price = price.normalize()
    if price == 0:  # cannot happen after the check above; a non-zero price never becomes zero
        raise ValidationError("catalog.invalid_price", field=field, reason=f"more than {PRICE_PLACES} places")
    return price


def _check_limit(value: object, *, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("catalog.invalid_limit", field=field, reason="not an integer")
    if value <= 0 or value > MAX_TOKEN_LIMIT:
        raise ValidationError("catalog.invalid_limit", field=field, reason="out of range")
    return value


def _optional_text(value: object, *, field: str, limit: int = 256) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or _CONTROL.search(value):
        raise ValidationError("catalog.invalid_field", field=field, reason="not a short printable string")
    return value or None


def _capabilities(value: object) -> frozenset[str]:
    if isinstance(value, frozenset) and all(isinstance(v, str) for v in value):
        caps = value
    elif isinstance(value, list | tuple | set) and all(isinstance(v, str) for v in value):
        caps = frozenset(value)
    else:
        raise ValidationError("catalog.invalid_field", field="capabilities", reason="expected strings")
    for cap in caps:
        if not _CAP_RE.fullmatch(cap):
            raise ValidationError("catalog.invalid_field", field="capabilities", reason="bad capability name")
    return caps


# --------------------------------------------------------------------------------------------
# JSON with exact decimals


def _reject_constant(name: str) -> Decimal:
    return Decimal(name)  # NaN / Infinity / -Infinity: kept so validation names the field


def decode_json(body: bytes) -> Any:
    """Parse JSON with ``parse_float=Decimal`` (NaN/Infinity become ``Decimal`` to be refused later)."""
    return json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)


def encode_json(obj: Any) -> bytes:
    """Serialise *obj* to JSON, writing ``Decimal`` values as exact JSON numbers (never via float).

    Sets are written as sorted lists, other mappings as objects. Mapping keys should be strings
    (or numbers, written as JSON writes them).

    Raises:
        ValidationError: ``catalog.invalid_price`` for a non-finite ``Decimal``.
    """
    numbers: list[str] = []
    nonce = secrets.token_hex(8)

    def default(value: Any) -> Any:
        # called by the C encoder only for what JSON cannot write natively
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ValidationError("catalog.invalid_price", field="json", reason="not finite")
            numbers.append(str(value))
            return f"\x00{nonce}{len(numbers) - 1}\x00"
        if isinstance(value, set | frozenset):
            return sorted(value)
        if isinstance(value, Mapping):
            return {str(k): v for k, v in value.items()}
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    try:
        text = json.dumps(obj, default=default, separators=(",", ":"), allow_nan=False)
    except TypeError:
        # e.g. a key JSON cannot write (a Decimal): convert the whole tree the slow way
        numbers.clear()
        text = json.dumps(_plain(obj, default), separators=(",", ":"), allow_nan=False)
    if numbers:
        text = re.sub(f'"\\\\u0000{nonce}(\\d+)\\\\u0000"', lambda m: numbers[int(m.group(1))], text)
    return text.encode()


def _plain(value: Any, default: Callable[[Any], Any]) -> Any:
    """*value* with every mapping key a string and every non-JSON value passed through *default*."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, default) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, default) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return _plain(default(value), default)


# --------------------------------------------------------------------------------------------
# value objects


@attrs.frozen
class LiteLLMModel:
    """One entry of ``GET /v1/models``."""

    id: str
    owned_by: str | None = None
    created: int | None = None


@attrs.frozen
class ModelInfo:
    """One model of ``GET /model/info``, validated (see :func:`check_model_id`, :func:`check_price`).

    Attributes:
        model_name: the public model name clients ask for (the catalog id).
        provider: ``litellm_provider`` (``openai``, ``anthropic``...).
        upstream_model: ``litellm_params.model`` (``openai/gpt-4o``).
        litellm_id: LiteLLM's own deployment id.
        input_cost_per_token: USD per prompt token (``None``: no price).
        output_cost_per_token: USD per completion token (``None``: no price).
        max_input_tokens: the longest prompt, if known.
        max_output_tokens: the longest completion, if known.
        max_tokens: LiteLLM's legacy combined limit, if known.
        mode: ``chat``, ``embedding``...
        capabilities: ``supports_<x>`` flags that are true, as ``<x>`` names
            (``function_calling``, ``vision``, ``tool_choice``, ``streaming``...).
    """

    model_name: str = attrs.field(converter=check_model_id)
    provider: str | None = attrs.field(default=None, kw_only=True)
    upstream_model: str | None = attrs.field(default=None, kw_only=True)
    litellm_id: str | None = attrs.field(default=None, kw_only=True)
    input_cost_per_token: Decimal | None = attrs.field(default=None, kw_only=True)
    output_cost_per_token: Decimal | None = attrs.field(default=None, kw_only=True)
    max_input_tokens: int | None = attrs.field(default=None, kw_only=True)
    max_output_tokens: int | None = attrs.field(default=None, kw_only=True)
    max_tokens: int | None = attrs.field(default=None, kw_only=True)
    mode: str | None = attrs.field(default=None, kw_only=True)
    capabilities: frozenset[str] = attrs.field(default=frozenset(), kw_only=True, converter=_capabilities)

    def __attrs_post_init__(self) -> None:
        for name in ("input_cost_per_token", "output_cost_per_token"):
            object.__setattr__(self, name, check_price(getattr(self, name), field=name))
        for name in ("max_input_tokens", "max_output_tokens", "max_tokens"):
            object.__setattr__(self, name, _check_limit(getattr(self, name), field=name))
        for name in ("provider", "upstream_model", "litellm_id", "mode"):
            object.__setattr__(self, name, _optional_text(getattr(self, name), field=name))

    @property
    def context_window(self) -> int | None:
        """The context window: ``max_input_tokens``, else ``max_tokens``."""
        return self.max_input_tokens if self.max_input_tokens is not None else self.max_tokens


@attrs.frozen
class ModelProblem:
    """A model entry that was refused while parsing (``index`` in the answer, name if readable)."""

    index: int
    model_name: str | None
    reason: str


@attrs.frozen
class ModelSnapshot:
    """The models a source offers right now, plus the entries it refused.

    Attributes:
        models: the valid models (names unique).
        problems: refused entries (bad id, bad price, duplicate name...).
        source: where they came from (``"litellm"``, ``"fallback"``, ``"static"``).
        is_fallback: the development fallback catalog was used (the source was unreachable);
            a sync from a fallback never marks models unavailable.
        fingerprint: a digest of the exact answer the snapshot was parsed from (see
            :class:`FingerprintedModelSource`), or ``None``; not part of equality.
    """

    models: tuple[ModelInfo, ...]
    problems: tuple[ModelProblem, ...] = ()
    source: str = "static"
    is_fallback: bool = False
    fingerprint: str | None = attrs.field(default=None, eq=False)


@runtime_checkable
class ModelSource(Protocol):
    """Anything that can list the models upstream (``LiteLLMService`` is one)."""

    async def fetch_models(self) -> ModelSnapshot:
        """The current models and any refused entries.

        Raises:
            MaasError: when the source cannot be read at all.
        """
        ...


@runtime_checkable
class FingerprintedModelSource(ModelSource, Protocol):
    """A :class:`ModelSource` that can tell an answer it has seen before without parsing it."""

    async def fetch_models_since(self, fingerprint: str | None) -> ModelSnapshot | None:
        """``None`` when the answer is byte-identical to the one *fingerprint* (a
        :attr:`ModelSnapshot.fingerprint`) was taken of; otherwise the snapshot, as
        :meth:`ModelSource.fetch_models` returns it.
        """
        ...


def model_info_fingerprint(upstream: str, body: bytes) -> str:
    """The :attr:`ModelSnapshot.fingerprint` of a ``/model/info`` *body* parsed for *upstream*."""
    digest = hashlib.sha256(upstream.encode())
    digest.update(b"\x00")
    digest.update(body)
    return digest.hexdigest()


@attrs.frozen
class ConnectionCheck:
    """The result of :meth:`LiteLLMService.test_connection`.

    Attributes:
        ok: liveliness and readiness both answered 2xx.
        alive: ``/health/liveliness`` answered 2xx.
        ready: ``/health/readiness`` answered 2xx.
        status: readiness ``status`` field (``"healthy"``...), if any.
        database: readiness ``db`` field (``"connected"`` / ``"Not connected"``), if any.
        latency_ms: time of the two calls.
        error: the error code when a call failed.
    """

    ok: bool
    alive: bool
    ready: bool
    status: str | None
    database: str | None
    latency_ms: float
    error: str | None = None


def _money(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal | int) and not isinstance(value, bool):
        return Decimal(value)
    return None


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@attrs.frozen
class LiteLLMKey:
    """A LiteLLM virtual key. ``key`` (the secret, only after generation) is never in a repr."""

    token: str | None
    key: str | None = attrs.field(repr=False)
    key_alias: str | None
    user_id: str | None
    team_id: str | None
    models: tuple[str, ...]
    max_budget: Decimal | None
    spend: Decimal | None
    raw: Mapping[str, Any] = attrs.field(repr=False, eq=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LiteLLMKey:
        """Read a LiteLLM key object (``/key/generate``, ``/key/update`` or ``/key/info``'s ``info``)."""
        key = _str(data.get("key"))
        token = _str(data.get("token")) or _str(data.get("token_id"))
        if token is None and key is not None:
            token = hash_key(key)
        return cls(
            token=token,
            key=key,
            key_alias=_str(data.get("key_alias")),
            user_id=_str(data.get("user_id")),
            team_id=_str(data.get("team_id")),
            models=_strs(data.get("models")),
            max_budget=_money(data.get("max_budget")),
            spend=_money(data.get("spend")),
            raw=data,
        )


@attrs.frozen
class LiteLLMTeam:
    """A LiteLLM team."""

    team_id: str
    team_alias: str | None
    models: tuple[str, ...]
    max_budget: Decimal | None
    raw: Mapping[str, Any] = attrs.field(repr=False, eq=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LiteLLMTeam:
        """Read a LiteLLM team object."""
        return cls(
            team_id=str(data.get("team_id") or ""),
            team_alias=_str(data.get("team_alias")),
            models=_strs(data.get("models")),
            max_budget=_money(data.get("max_budget")),
            raw=data,
        )


@attrs.frozen
class LiteLLMUser:
    """A LiteLLM internal user."""

    user_id: str
    user_email: str | None
    user_role: str | None
    models: tuple[str, ...]
    max_budget: Decimal | None
    raw: Mapping[str, Any] = attrs.field(repr=False, eq=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LiteLLMUser:
        """Read a LiteLLM user object."""
        return cls(
            user_id=str(data.get("user_id") or ""),
            user_email=_str(data.get("user_email")),
            user_role=_str(data.get("user_role")),
            models=_strs(data.get("models")),
            max_budget=_money(data.get("max_budget")),
            raw=data,
        )


def hash_key(key: str) -> str:
    """LiteLLM's token hash of a virtual key (sha256 hex), used instead of the key in URLs."""
    return hashlib.sha256(key.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# parsing /model/info


def _invalid(name: str, reason: str) -> UpstreamError:
    return UpstreamError("litellm.invalid_response", upstream=name, reason=reason)


def _model_from_entry(entry: Any) -> ModelInfo:
    if not isinstance(entry, Mapping):
        raise ValidationError("catalog.invalid_field", field="entry", reason="not an object")
    info = entry.get("model_info")
    info = info if isinstance(info, Mapping) else {}
    params = entry.get("litellm_params")
    params = params if isinstance(params, Mapping) else {}
    caps = frozenset(
        k[len("supports_") :]
        for k, v in info.items()
        if isinstance(k, str) and k.startswith("supports_") and v is True
    )
    return ModelInfo(
        entry.get("model_name"),
        provider=info.get("litellm_provider"),
        upstream_model=params.get("model"),
        litellm_id=info.get("id"),
        input_cost_per_token=info.get("input_cost_per_token"),
        output_cost_per_token=info.get("output_cost_per_token"),
        max_input_tokens=info.get("max_input_tokens"),
        max_output_tokens=info.get("max_output_tokens"),
        max_tokens=info.get("max_tokens"),
        mode=info.get("mode"),
        capabilities=caps,
    )


# Validation results for values seen before (prices repeat across a catalog; a capability
# name is one of a few dozen). Only values that passed the full check are remembered.
_PRICE_CACHE: dict[Decimal, Decimal] = {}
_GOOD_CAPS: set[str] = set()
_CACHE_LIMIT: Final = 65536
_set = object.__setattr__


def _fast_price(value: Any, field: str) -> Decimal | None:
    """:func:`check_price` for a value from JSON, remembering accepted ``Decimal`` values."""
    if value is None:
        return None
    if type(value) is Decimal and value.is_finite():
        cached = _PRICE_CACHE.get(value)
        if cached is not None:
            return cached
        price = check_price(value, field=field)
        assert price is not None
        if len(_PRICE_CACHE) >= _CACHE_LIMIT:
            _PRICE_CACHE.clear()
        _PRICE_CACHE[value] = price
        return price
    return check_price(value, field=field)


def _fast_model(entry: Any) -> ModelInfo | None:
    """The :class:`ModelInfo` of one ``/model/info`` entry when every value passes the cheap
    checks (the same rules as the validators, cheaper); ``None`` when any needs the full
    validation (which then also produces the exact error).
    """
    if type(entry) is not dict:
        return None
    name = entry.get("model_name")
    if type(name) is not str or len(name) > _MAX_ID_LEN or _ID_RE.fullmatch(name) is None:
        return None
    info = entry.get("model_info")
    if type(info) is not dict:
        if isinstance(info, Mapping):
            return None
        info = {}
    params = entry.get("litellm_params")
    if type(params) is not dict:
        if isinstance(params, Mapping):
            return None
        params = {}
    texts = (info.get("litellm_provider"), params.get("model"), info.get("id"), info.get("mode"))
    for text in texts:
        if text is not None and (type(text) is not str or len(text) > _MAX_ID_LEN or not text.isprintable()):
            return None
    limits = (info.get("max_input_tokens"), info.get("max_output_tokens"), info.get("max_tokens"))
    for limit in limits:
        if limit is not None and (type(limit) is not int or not 0 < limit <= MAX_TOKEN_LIMIT):
            return None
    caps: list[str] = []
    for key, flag in info.items():
        if flag is True and type(key) is str and key.startswith("supports_"):
            cap = key[9:]
            if cap not in _GOOD_CAPS:
                if _CAP_RE.fullmatch(cap) is None:
                    return None
                if len(_GOOD_CAPS) < _CACHE_LIMIT:
                    _GOOD_CAPS.add(cap)
            caps.append(cap)
    try:
        inp = _fast_price(info.get("input_cost_per_token"), "input_cost_per_token")
        out = _fast_price(info.get("output_cost_per_token"), "output_cost_per_token")
    except ValidationError:
        return None
    model: ModelInfo = object.__new__(ModelInfo)
    _set(model, "model_name", name)
    _set(model, "provider", texts[0] or None)
    _set(model, "upstream_model", texts[1] or None)
    _set(model, "litellm_id", texts[2] or None)
    _set(model, "input_cost_per_token", inp)
    _set(model, "output_cost_per_token", out)
    _set(model, "max_input_tokens", limits[0])
    _set(model, "max_output_tokens", limits[1])
    _set(model, "max_tokens", limits[2])
    _set(model, "mode", texts[3] or None)
    _set(model, "capabilities", frozenset(caps))
    return model


def parse_model_info(body: bytes, *, upstream: str = "litellm") -> ModelSnapshot:
    """Parse a ``/model/info`` answer into a :class:`ModelSnapshot`.

    Entries with an invalid id, price or limit, and every entry of a duplicated name, are listed
    in ``problems`` instead of ``models``. Every entry is validated exactly as
    :class:`ModelInfo` validates (entries made of common, plainly valid values take a cheaper
    path to the same result).

    Raises:
        UpstreamError: ``litellm.invalid_response`` when the body is not JSON (HTML, truncated)
            or not ``{"data": [...]}``.
    """
    try:
        data = decode_json(body)
    except (ValueError, RecursionError):
        raise _invalid(upstream, "the body is not JSON") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
        raise _invalid(upstream, "expected an object with a data list")
    models: list[ModelInfo] = []
    problems: list[ModelProblem] = []
    fast = _fast_model
    for index, entry in enumerate(data["data"]):
        model = fast(entry)
        if model is not None:
            models.append(model)
            continue
        name = entry.get("model_name") if isinstance(entry, Mapping) else None
        try:
            models.append(_model_from_entry(entry))
        except ValidationError as exc:
            shown = name if isinstance(name, str) and len(name) <= _MAX_ID_LEN else None
            problems.append(ModelProblem(index, shown, _reason(exc)))
    names = {model.model_name for model in models}
    if len(names) != len(models):
        counts: dict[str, int] = {}
        for model in models:
            counts[model.model_name] = counts.get(model.model_name, 0) + 1
        kept: list[ModelInfo] = []
        for index, model in enumerate(models):
            if counts[model.model_name] > 1:
                problems.append(ModelProblem(index, model.model_name, "duplicate model name"))
            else:
                kept.append(model)
        models = kept
    return ModelSnapshot(tuple(models), tuple(problems), source=upstream)


def _reason(exc: MaasError) -> str:
    field = exc.params.get("field")
    reason = str(exc.params.get("reason", exc.code))
    return f"{field}: {reason}" if field else reason


# --------------------------------------------------------------------------------------------
# the service


def _check_base_url(value: str) -> str:
    return Upstream(name="litellm", base_url=value).base_url


@attrs.frozen
class LiteLLMConfig:
    """Where the LiteLLM proxy is and how to reach it.

    Attributes:
        base_url: the proxy's root (``http://127.0.0.1:4000``; no ``/v1``).
        master_key: the proxy's master key (``str`` or ``SecretStr``); never in a repr.
        timeouts: request timeouts (a stalled proxy fails after ``read`` seconds; every call,
            retries aside, ends within ``total`` seconds, a slowly trickled answer included).
        name: label in errors, logs and the circuit breaker.
    """

    base_url: str = attrs.field(converter=_check_base_url)
    master_key: Any = attrs.field(repr=False)
    timeouts: Timeouts = _DEFAULT_TIMEOUTS
    name: str = "litellm"

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> LiteLLMConfig:
        """The proxy configured by ``MAASKIT_LITELLM_URL`` / ``MAASKIT_LITELLM_MASTER_KEY``."""
        if settings.litellm_url is None or settings.litellm_master_key is None:
            raise ValidationError("litellm.not_configured")
        return cls(base_url=settings.litellm_url, master_key=settings.litellm_master_key, **overrides)


@runtime_checkable
class LiteLLMService(Protocol):
    """The LiteLLM proxy's admin API (models, health, keys, teams, users)."""

    async def get_models(self) -> tuple[LiteLLMModel, ...]:
        """``GET /v1/models``."""
        ...

    async def get_model_info(self) -> tuple[ModelInfo, ...]:
        """``GET /model/info``, strictly: any refused entry raises ``litellm.invalid_response``."""
        ...

    async def fetch_models(self) -> ModelSnapshot:
        """``GET /model/info`` leniently (refused entries listed); the fallback catalog if configured."""
        ...

    async def test_connection(self) -> ConnectionCheck:
        """``/health/liveliness`` and ``/health/readiness``; never raises for an unreachable proxy."""
        ...

    async def generate_key(self, **fields: Any) -> LiteLLMKey:
        """``POST /key/generate``."""
        ...

    async def update_key(self, key: str, **fields: Any) -> LiteLLMKey:
        """``POST /key/update``."""
        ...

    async def delete_keys(self, keys: Sequence[str]) -> tuple[str, ...]:
        """``POST /key/delete``."""
        ...

    async def key_info(self, key: str) -> LiteLLMKey:
        """``GET /key/info``."""
        ...

    async def new_team(self, **fields: Any) -> LiteLLMTeam:
        """``POST /team/new``."""
        ...

    async def update_team(self, team_id: str, **fields: Any) -> LiteLLMTeam:
        """``POST /team/update``."""
        ...

    async def delete_teams(self, team_ids: Sequence[str]) -> None:
        """``POST /team/delete``."""
        ...

    async def team_info(self, team_id: str) -> LiteLLMTeam:
        """``GET /team/info``."""
        ...

    async def new_user(self, **fields: Any) -> LiteLLMUser:
        """``POST /user/new``."""
        ...

    async def user_info(self, user_id: str) -> LiteLLMUser:
        """``GET /user/info``."""
        ...


_KEY_FIELDS = frozenset(
    {
        "key",
        "key_alias",
        "user_id",
        "team_id",
        "models",
        "max_budget",
        "duration",
        "metadata",
        "tpm_limit",
        "rpm_limit",
        "budget_duration",
        "blocked",
    }
)
_TEAM_FIELDS = frozenset(
    {
        "team_id",
        "team_alias",
        "models",
        "max_budget",
        "metadata",
        "tpm_limit",
        "rpm_limit",
        "budget_duration",
        "blocked",
    }
)
_USER_FIELDS = frozenset(
    {"user_id", "user_email", "user_role", "models", "max_budget", "metadata", "team_id", "auto_create_key"}
)


class DefaultLiteLLMService:
    """:class:`LiteLLMService` over httpx with retries and a circuit breaker.

    Args:
        config: the proxy's URL, master key and timeouts.
        client: an ``httpx.AsyncClient`` to send through (yours is not closed by :meth:`aclose`);
            ``None`` creates one.
        transport: an :class:`~maaskit.services.upstream.UpstreamTransport` instead of *client*.
        clock: time source for the breaker and ``Retry-After``.
        breaker: the proxy's circuit breaker (default: 5 failures in 60 s open it for 30 s).
        retry: retry policy for reads (writes are retried only when nothing was sent).
        fallback_models: a development catalog served by :meth:`fetch_models` and
            :meth:`get_model_info` when the proxy fails; ``None`` (the default) means never.
    """

    def __init__(
        self,
        config: LiteLLMConfig,
        client: Any = None,
        *,
        transport: UpstreamTransport | None = None,
        clock: Clock | None = None,
        breaker: CircuitBreaker | None = None,
        retry: RetryPolicy | None = None,
        fallback_models: Sequence[ModelInfo] | None = None,
    ) -> None:
        self._config = config
        self._upstream = Upstream(
            name=config.name,
            base_url=config.base_url,
            api_key=_secret(config.master_key),
            timeouts=config.timeouts,
        )
        if transport is None:
            # the size cap applies while reading (after decompression), and the total timeout
            # is a deadline over the whole exchange
            transport = HttpxTransport(client, timeouts=config.timeouts, max_response_bytes=_MAX_BODY)
        self._transport = transport
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._breaker = breaker if breaker is not None else CircuitBreaker(config.name, self._clock)
        self._retry = retry if retry is not None else RetryPolicy()
        self._write_retry = attrs.evolve(self._retry, retry_statuses=frozenset())
        self._headers = self._upstream.auth_headers(json=True)
        if fallback_models is not None:
            names = [m.model_name for m in fallback_models]
            if len(set(names)) != len(names) or not all(isinstance(m, ModelInfo) for m in fallback_models):
                raise ValidationError("litellm.invalid_fallback")
        self._fallback = tuple(fallback_models) if fallback_models is not None else None

    def __repr__(self) -> str:
        return f"DefaultLiteLLMService({self._upstream.base_url!r}, breaker={self._breaker.state.value})"

    @property
    def breaker(self) -> CircuitBreaker:
        """The proxy's circuit breaker."""
        return self._breaker

    @property
    def name(self) -> str:
        """The proxy's label."""
        return self._config.name

    async def aclose(self) -> None:
        """Close the HTTP client if this service created it."""
        await self._transport.aclose()

    # -- models ---------------------------------------------------------------------------

    async def get_models(self) -> tuple[LiteLLMModel, ...]:
        """``GET /v1/models``: the model names the proxy serves.

        Raises:
            UpstreamError: ``litellm.*`` for transport failures, error statuses and bad answers.
            UnavailableError: ``upstream.circuit_open`` while the breaker is open.
        """

        def parse(data: Any) -> tuple[LiteLLMModel, ...]:
            entries = data.get("data") if isinstance(data, Mapping) else None
            if not isinstance(entries, list):
                raise _invalid(self.name, "expected an object with a data list")
            out: list[LiteLLMModel] = []
            for entry in entries:
                if not isinstance(entry, Mapping):
                    raise _invalid(self.name, "a model entry is not an object")
                try:
                    model_id = check_model_id(entry.get("id"))
                except ValidationError as exc:
                    raise _invalid(self.name, f"model id refused ({exc.params.get('reason')})") from None
                created = entry.get("created")
                out.append(
                    LiteLLMModel(
                        model_id,
                        _str(entry.get("owned_by")),
                        created if isinstance(created, int) and not isinstance(created, bool) else None,
                    )
                )
            if len({m.id for m in out}) != len(out):
                raise _invalid(self.name, "duplicate model ids")
            return tuple(out)

        return await self._request("GET", "/v1/models", parse=parse)

    async def fetch_models(self) -> ModelSnapshot:
        """``GET /model/info`` as a :class:`ModelSnapshot` (refused entries in ``problems``).

        With ``fallback_models`` configured, an unreachable or failing proxy yields the fallback
        snapshot (``is_fallback=True``, logged as a warning) instead of an error. A snapshot read
        from the proxy carries the answer's ``fingerprint``.
        """
        snapshot = await self.fetch_models_since(None)
        assert snapshot is not None
        return snapshot

    async def fetch_models_since(self, fingerprint: str | None) -> ModelSnapshot | None:
        """:meth:`fetch_models`, but ``None`` (nothing parsed) when the answer is byte-identical
        to the one *fingerprint* was taken of (see :class:`FingerprintedModelSource`).

        The answer is still fetched, size-checked and counted for the circuit breaker; only the
        parse is skipped, so the caller must only pass a fingerprint of an answer it parsed.
        """
        name = self.name

        def parse(body: bytes) -> ModelSnapshot | None:
            digest = model_info_fingerprint(name, body)
            if digest == fingerprint:
                return None
            return attrs.evolve(parse_model_info(body, upstream=name), fingerprint=digest)

        try:
            return await self._request("GET", "/model/info", parse_body=parse)
        except MaasError as exc:
            if self._fallback is None or isinstance(exc, ValidationError | NotFoundError):
                raise
            _log.warning(
                "litellm.fallback_catalog", upstream=self.name, error=exc.code, models=len(self._fallback)
            )
            return ModelSnapshot(self._fallback, source="fallback", is_fallback=True)

    async def get_model_info(self) -> tuple[ModelInfo, ...]:
        """``GET /model/info``, typed: every model with prices as ``Decimal``.

        Raises:
            UpstreamError: ``litellm.invalid_response`` if any entry is refused (bad id, bad
                price, duplicate name), the body is not JSON, or the shape is wrong; other
                ``litellm.*`` errors for failures (see :meth:`get_models`).
        """
        snapshot = await self.fetch_models()
        if snapshot.problems:
            first = snapshot.problems[0]
            raise _invalid(
                self.name,
                f"{len(snapshot.problems)} model entries refused, first: #{first.index} {first.reason}",
            )
        return snapshot.models

    # -- health ---------------------------------------------------------------------------

    async def test_connection(self) -> ConnectionCheck:
        """Call ``/health/liveliness`` and ``/health/readiness`` (no retries, breaker bypassed)."""
        started = time.perf_counter()
        alive = ready = False
        status = database = error = None
        try:
            alive = await self._probe("/health/liveliness") is not None
            data = await self._probe("/health/readiness")
            ready = data is not None
            if isinstance(data, Mapping):
                status = _str(data.get("status"))
                database = _str(data.get("db"))
        except MaasError as exc:
            error = exc.code
        latency = round((time.perf_counter() - started) * 1000, 3)
        return ConnectionCheck(alive and ready, alive, ready, status, database, latency, error)

    async def ping(self) -> bool:
        """Health hook for ``app.health()``: raises when the proxy is not alive."""
        await self._probe("/health/liveliness")
        return True

    async def _probe(self, path: str) -> Any:
        try:
            resp = await self._transport.request(
                "GET", self._upstream.url(path), headers=self._headers, timeout=self._config.timeouts
            )
        except TransportError as exc:
            raise self._transport_error(exc) from None
        except UpstreamError as exc:
            raise self._oversized(exc) from None
        if not 200 <= resp.status < 300:
            self._raise_for_status(resp)
        try:
            return decode_json(resp.body)
        except ValueError:
            return True  # liveliness answers a JSON string, but plain text is fine too

    # -- keys, teams, users ---------------------------------------------------------------

    async def generate_key(self, **fields: Any) -> LiteLLMKey:
        """``POST /key/generate``; *fields*: key_alias, user_id, team_id, models, max_budget
        (``Decimal``), duration, metadata, tpm_limit, rpm_limit, budget_duration, blocked, key."""
        body = _fields(fields, _KEY_FIELDS)
        return await self._request(
            "POST", "/key/generate", body=body, parse=_obj(self.name, LiteLLMKey.from_json)
        )

    async def update_key(self, key: str, **fields: Any) -> LiteLLMKey:
        """``POST /key/update`` for *key* (the secret or its token hash)."""
        body = _fields(fields, _KEY_FIELDS - {"key"})
        body["key"] = _nonempty(key, "key")
        return await self._request(
            "POST", "/key/update", body=body, parse=_obj(self.name, LiteLLMKey.from_json)
        )

    async def delete_keys(self, keys: Sequence[str]) -> tuple[str, ...]:
        """``POST /key/delete``; returns the deleted keys as LiteLLM reports them."""
        body = {"keys": [_nonempty(k, "key") for k in keys]}

        def parse(data: Any) -> tuple[str, ...]:
            if not isinstance(data, Mapping):
                raise _invalid(self.name, "expected an object")
            return _strs(data.get("deleted_keys"))

        return await self._request("POST", "/key/delete", body=body, parse=parse)

    async def key_info(self, key: str) -> LiteLLMKey:
        """``GET /key/info``; a raw key is sent as its sha256 hash, never in the URL."""
        key = _nonempty(key, "key")
        token = key if re.fullmatch(r"[0-9a-f]{64}", key) else hash_key(key)

        def parse(data: Any) -> LiteLLMKey:
            info = data.get("info") if isinstance(data, Mapping) else None
            if not isinstance(info, Mapping):
                raise _invalid(self.name, "expected an info object")
            merged = {"token": token, **info}
            return LiteLLMKey.from_json(merged)

        return await self._request("GET", "/key/info?" + urlencode({"key": token}), parse=parse)

    async def new_team(self, **fields: Any) -> LiteLLMTeam:
        """``POST /team/new``; *fields*: team_id, team_alias, models, max_budget, metadata..."""
        body = _fields(fields, _TEAM_FIELDS)
        return await self._request(
            "POST", "/team/new", body=body, parse=_obj(self.name, LiteLLMTeam.from_json)
        )

    async def update_team(self, team_id: str, **fields: Any) -> LiteLLMTeam:
        """``POST /team/update``."""
        body = _fields(fields, _TEAM_FIELDS - {"team_id"})
        body["team_id"] = _nonempty(team_id, "team_id")

        def parse(data: Any) -> LiteLLMTeam:
            inner = (
                data.get("data")
                if isinstance(data, Mapping) and isinstance(data.get("data"), Mapping)
                else data
            )
            return _obj(self.name, LiteLLMTeam.from_json)(inner)

        return await self._request("POST", "/team/update", body=body, parse=parse)

    async def delete_teams(self, team_ids: Sequence[str]) -> None:
        """``POST /team/delete``."""
        body = {"team_ids": [_nonempty(t, "team_id") for t in team_ids]}
        await self._request("POST", "/team/delete", body=body, parse=lambda _data: None)

    async def team_info(self, team_id: str) -> LiteLLMTeam:
        """``GET /team/info``."""
        team_id = _nonempty(team_id, "team_id")

        def parse(data: Any) -> LiteLLMTeam:
            info = data.get("team_info") if isinstance(data, Mapping) else None
            return _obj(self.name, LiteLLMTeam.from_json)(info)

        return await self._request("GET", "/team/info?" + urlencode({"team_id": team_id}), parse=parse)

    async def new_user(self, **fields: Any) -> LiteLLMUser:
        """``POST /user/new``; *fields*: user_id, user_email, user_role, models, max_budget..."""
        body = _fields(fields, _USER_FIELDS)
        return await self._request(
            "POST", "/user/new", body=body, parse=_obj(self.name, LiteLLMUser.from_json)
        )

    async def user_info(self, user_id: str) -> LiteLLMUser:
        """``GET /user/info``."""
        user_id = _nonempty(user_id, "user_id")

        def parse(data: Any) -> LiteLLMUser:
            info = data.get("user_info") if isinstance(data, Mapping) else None
            if isinstance(info, Mapping):
                info = {"user_id": user_id, **info}
            return _obj(self.name, LiteLLMUser.from_json)(info)

        return await self._request("GET", "/user/info?" + urlencode({"user_id": user_id}), parse=parse)

    # -- plumbing -------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        parse: Callable[[Any], _T] | None = None,
        parse_body: Callable[[bytes], _T] | None = None,
    ) -> _T:
        breaker = self._breaker
        probe = breaker.before_call()
        url = self._upstream.url(path)
        payload = encode_json(body) if body is not None else None
        headers = self._headers
        transport = self._transport
        timeouts = self._config.timeouts

        def attempt() -> Awaitable[UpstreamResponse]:
            return transport.request(method, url, headers=headers, json_body=payload, timeout=timeouts)

        policy = self._retry if method == "GET" else self._write_retry
        try:
            resp = await policy.call(attempt, self._clock, name=self.name)
        except TransportError as exc:
            breaker.record_failure(probe)
            raise self._transport_error(exc) from None
        except UpstreamError as exc:
            if exc.code != "upstream.invalid_response":
                breaker.release(probe)
                raise
            breaker.record_failure(probe)  # as the size check after reading always did
            raise self._oversized(exc) from None
        except BaseException:
            breaker.release(probe)
            raise
        status = resp.status
        if not 200 <= status < 300:
            if status >= 500 or status == 408:
                breaker.record_failure(probe)
            else:
                breaker.record_success(probe)
            self._raise_for_status(resp)
        try:
            if len(resp.body) > _MAX_BODY:
                raise _invalid(self.name, "the body is too large")
            if parse_body is not None:
                result = parse_body(resp.body)
            else:
                try:
                    data = decode_json(resp.body)
                except (ValueError, RecursionError):
                    raise _invalid(self.name, "the body is not JSON") from None
                assert parse is not None
                result = parse(data)
        except UpstreamError:
            breaker.record_failure(probe)
            raise
        except BaseException:
            breaker.release(probe)
            raise
        breaker.record_success(probe)
        return result

    def _transport_error(self, exc: TransportError) -> MaasError:
        if isinstance(exc, TransportConnectError):
            return UpstreamError("litellm.unreachable", upstream=self.name)
        if isinstance(exc, TransportTimeoutError):
            return UpstreamError("litellm.timeout", upstream=self.name)
        # a dropped connection, or a body its content-encoding cannot decode
        return _invalid(self.name, "the connection broke off or the body could not be decoded")

    def _oversized(self, exc: UpstreamError) -> MaasError:
        """The transport's ``upstream.invalid_response`` (a body over the size cap) as this
        proxy's ``litellm.invalid_response``; other errors pass unchanged."""
        if exc.code != "upstream.invalid_response":
            return exc
        return _invalid(self.name, str(exc.params.get("reason") or "the body is too large"))

    def _raise_for_status(self, resp: UpstreamResponse) -> NoReturn:
        status = resp.status
        name = self.name
        if status in (401, 403):
            raise UpstreamError("litellm.auth_failed", upstream=name, status=status)
        if status == 404:
            raise NotFoundError("litellm.not_found", upstream=name)
        if status == 429:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock)
            raise RateLimitedError("litellm.rate_limited", upstream=name, retry_after=retry_after or 1.0)
        if 400 <= status < 500:
            raise ValidationError(
                "litellm.bad_request", upstream=name, status=status, reason=self._message(resp.body)
            )
        raise UpstreamError("litellm.error", upstream=name, status=status)

    def _message(self, body: bytes) -> str:
        try:
            data = json.loads(body)
        except ValueError:
            return "no reason given"
        message: Any = None
        if isinstance(data, Mapping):
            error = data.get("error", data.get("detail"))
            message = error.get("message", error.get("error")) if isinstance(error, Mapping) else error
        if not isinstance(message, str) or not message:
            return "no reason given"
        key = self._upstream.api_key
        if key:
            message = message.replace(key, "***")
        message = re.sub(r"sk-[A-Za-z0-9_-]{4,}", "sk-***", message)
        return "".join(ch if ch.isprintable() else " " for ch in message)[:300]


def _secret(value: Any) -> str:
    if value is not None and not isinstance(value, str) and hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    # sent as a header: visible ASCII only (anything else makes httpx raise with the key in the
    # exception's args); the error never holds the key
    if (
        not isinstance(value, str)
        or not value
        or not (value.isascii() and value.isprintable())
        or " " in value
    ):
        raise ValidationError(
            "litellm.invalid_config",
            reason="the master key must be non-empty visible ASCII (no spaces or control characters)",
        )
    return value


def _nonempty(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 512 or any(ord(c) < 32 for c in value):
        raise ValidationError("litellm.invalid_argument", field=field)
    return value


def _fields(fields: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    unknown = set(fields) - allowed
    if unknown:
        raise ValidationError("litellm.invalid_argument", field=sorted(unknown)[0])
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name == "max_budget":
            if isinstance(value, bool | float) or not isinstance(value, Decimal | int | str):
                raise ValidationError("litellm.invalid_argument", field=name)
            try:
                value = Decimal(str(value))
            except InvalidOperation:
                raise ValidationError("litellm.invalid_argument", field=name) from None
            if not value.is_finite() or value < 0:
                raise ValidationError("litellm.invalid_argument", field=name)
        elif name == "models":
            value = [check_model_id(m) for m in value]
        out[name] = value
    return out


def _obj(name: str, build: Callable[[Mapping[str, Any]], _T]) -> Callable[[Any], _T]:
    def parse(data: Any) -> _T:
        if not isinstance(data, Mapping):
            raise _invalid(name, "expected an object")
        return build(data)

    return parse
