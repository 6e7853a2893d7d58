"""AiApiService: the OpenAI-compatible upstream client a gateway forwards through.

:class:`DefaultAiApiService` sends chat completions (whole or streamed), embeddings and model
listings to one configured :class:`~maaskit.services.upstream.Upstream` through an
:class:`~maaskit.services.upstream.UpstreamTransport`, with :class:`RetryPolicy` retries and a
:class:`CircuitBreaker`. It returns the upstream's bytes untouched (so a gateway can forward
them) together with the parsed response and the request's :class:`Usage`, reported by the
upstream or estimated (:mod:`maaskit.services.tokens_estimate`) when it reports none.

Streaming forwards server-sent events as they arrive; the service asks the upstream for
``stream_options.include_usage`` and drops the extra usage-only event again when the client did
not ask for it. The usage of a stream is final once the stream ends *or* the consumer stops early
(client disconnect): it is then estimated from what was delivered, and ``on_complete`` is called
exactly once::

    async with ai.stream_chat_completion(body, on_complete=settle) as stream:
        async for chunk in stream:
            await send(chunk)
    print(stream.usage)

Host pinning: requests always go to the configured base URL; ``api_base``, ``base_url``,
``api_key``, ``headers``... in a client's body are removed before forwarding.

Credential pool: given a :class:`~maaskit.services.credentials.CredentialPool`
(``credentials=``), every request leases a credential of this upstream for the body's model,
sends it in the credential's header (instead of ``Upstream.api_key``) with the pool's upstream
model name, reports the outcome (status, ``Retry-After``, reported tokens) and releases it (a
stream holds its lease until it ends). A 401/403/429 cools that credential down and the same
attempt moves on to another credential (up to ``credential_failover`` more); when none is left
the upstream's answer is mapped as usual, and a pool with every credential cooling down raises
``UnavailableError("credentials.exhausted", retry_after=...)``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, Protocol, runtime_checkable

import attrs
import orjson
import structlog

from maaskit.clock import Clock, SystemClock
from maaskit.errors import (
    MaasError,
    NotFoundError,
    RateLimitedError,
    UpstreamError,
    ValidationError,
)
from maaskit.services.pricing import MAX_TOKENS
from maaskit.services.tokens_estimate import CharTokenEstimator, TokenEstimator
from maaskit.services.upstream import (
    CircuitBreaker,
    RetryPolicy,
    TransportConnectError,
    TransportError,
    TransportTimeoutError,
    Upstream,
    UpstreamResponse,
    UpstreamTransport,
    parse_retry_after,
)

if TYPE_CHECKING:
    from maaskit.services.credentials import CredentialPool, Lease

__all__ = [
    "MAX_EVENT_BYTES",
    "STRIPPED_BODY_KEYS",
    "AiApiService",
    "ApiKeyCheck",
    "ChatResult",
    "ChatStream",
    "DefaultAiApiService",
    "EmbeddingsResult",
    "ModelCheck",
    "ModelList",
    "OnComplete",
    "UpstreamModel",
    "Usage",
]

_log = structlog.get_logger(__name__)

#: Keys removed from every client body before forwarding: none of them may pick the host,
#: the credentials or the headers of the upstream request.
STRIPPED_BODY_KEYS: frozenset[str] = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "headers",
        "extra_headers",
        "extra_query",
        "custom_llm_provider",
        "deployment_id",
        "organization",
        # LiteLLM's client-side routing and credentials: a whole router config with its own
        # api_base/api_key, other models to fall back to (priced as the one asked for), and
        # provider credentials and endpoints. Its proxy refuses most of them unless configured
        # with allow_client_side_credentials; they are removed here whatever the upstream allows.
        "user_config",
        "model_list",
        "fallbacks",
        "context_window_fallback_dict",
        "content_policy_fallbacks",
        "azure_ad_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_region_name",
        "aws_role_name",
        "aws_profile_name",
        "aws_web_identity_token",
        "aws_sts_endpoint",
        "aws_bedrock_runtime_endpoint",
        "vertex_credentials",
        "vertex_ai_credentials",
        "vertex_project",
        "vertex_location",
        "s3_endpoint_url",
        "sagemaker_base_url",
        "deployment_url",
    }
)

_PENDING: set[asyncio.Task[Any]] = set()

#: The longest server-sent event a stream may carry (bytes); a longer one ends the stream with
#: ``upstream.invalid_response`` instead of growing the buffer without bound.
MAX_EVENT_BYTES: Final = 16 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# value objects


@attrs.frozen
class Usage:
    """Tokens of one request, and whether the upstream reported them or maaskit estimated them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    source: Literal["reported", "estimated"]

    @classmethod
    def estimated(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        """An estimated usage (``total = prompt + completion``)."""
        return cls(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens, "estimated")

    @classmethod
    def from_reported(cls, value: Any) -> Usage | None:
        """Parse an OpenAI ``usage`` object; ``None`` when absent or malformed (then estimate).

        Each count must be an integer from 0 to :data:`~maaskit.services.pricing.MAX_TOKENS`
        (what pricing accepts). A missing ``completion_tokens`` is ``total_tokens -
        prompt_tokens`` (0 for embeddings, whose usage has no completion), and ``None`` when
        that is not known: a completion is never billed as zero tokens by default. A missing
        ``total_tokens`` is the sum.
        """
        if value.__class__ is dict:  # a parsed body: plain ints within range need no more checks
            prompt = value.get("prompt_tokens")
            completion = value.get("completion_tokens")
            total = value.get("total_tokens")
            if (
                prompt.__class__ is int
                and completion.__class__ is int
                and total.__class__ is int
                and 0 <= prompt <= MAX_TOKENS
                and 0 <= completion <= MAX_TOKENS
                and 0 <= total <= MAX_TOKENS
            ):
                return cls(prompt, completion, total, "reported")
        elif not isinstance(value, Mapping):
            return None
        prompt = value.get("prompt_tokens")
        completion = value.get("completion_tokens")
        total = value.get("total_tokens")
        if not _count(prompt) or not (total is None or _count(total)):
            return None
        if completion is None:
            if total is None or total < prompt:
                return None
            completion = total - prompt
        elif not _count(completion):
            return None
        if total is None:
            total = prompt + completion
            if total > MAX_TOKENS:
                return None
        return cls(prompt, completion, total, "reported")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS


@attrs.frozen
class ChatResult:
    """A non-streamed chat completion.

    Attributes:
        response: the parsed upstream JSON object.
        body: the upstream's body bytes, untouched (forward these).
        usage: reported or estimated usage.
        model: the client-facing model name of the request.
        status: the upstream's HTTP status.
    """

    response: dict[str, Any] = attrs.field(repr=False)
    body: bytes = attrs.field(repr=False)
    usage: Usage
    model: str
    status: int = 200


@attrs.frozen
class EmbeddingsResult:
    """An embeddings answer: parsed ``response``, raw ``body`` bytes and ``usage``."""

    response: dict[str, Any] = attrs.field(repr=False)
    body: bytes = attrs.field(repr=False)
    usage: Usage
    model: str
    status: int = 200


@attrs.frozen
class UpstreamModel:
    """One entry of the upstream's ``/models`` list."""

    id: str
    owned_by: str | None = None
    created: int | None = None


@attrs.frozen
class ModelList:
    """The upstream's models: ``models`` and the raw ``body`` bytes."""

    models: tuple[UpstreamModel, ...]
    body: bytes = attrs.field(repr=False)

    @property
    def ids(self) -> tuple[str, ...]:
        """The model ids."""
        return tuple(m.id for m in self.models)


@attrs.frozen
class ApiKeyCheck:
    """Result of :meth:`AiApiService.test_api_key`.

    Attributes:
        ok: the upstream accepted the configured key.
        status: the upstream's HTTP status (``None`` when no answer came).
        error_code: the maaskit error code on failure.
        latency: seconds the check took.
        model_count: models the key can see (on success).
    """

    ok: bool
    status: int | None
    error_code: str | None
    latency: float
    model_count: int | None = None


@attrs.frozen
class ModelCheck:
    """Result of :meth:`AiApiService.test_model`: whether a one-token completion worked."""

    model: str
    ok: bool
    error_code: str | None
    latency: float
    usage: Usage | None = None


OnComplete = Callable[[Usage], Awaitable[None] | None]
"""Called exactly once with a stream's final usage; may be sync or async."""


# --------------------------------------------------------------------------------------------
# the protocol


@runtime_checkable
class AiApiService(Protocol):
    """An OpenAI-compatible upstream API."""

    async def chat_completion(self, body: Mapping[str, Any], *, raw: bytes | None = None) -> ChatResult:
        """Send a non-streamed ``/chat/completions`` request.

        *raw*, when given, is the JSON text of *body* (for instance the client's request bytes,
        see :meth:`maaskit.services.admission.Admission.upstream_json`): an implementation may
        forward it as it is when *body* needs no rewriting, instead of serialising *body* again.
        """
        ...

    def stream_chat_completion(
        self, body: Mapping[str, Any], *, on_complete: OnComplete | None = None
    ) -> ChatStream:
        """A streamed ``/chat/completions`` request: use as ``async with ... as stream``."""
        ...

    async def embeddings(self, body: Mapping[str, Any]) -> EmbeddingsResult:
        """Send an ``/embeddings`` request."""
        ...

    async def list_models(self) -> ModelList:
        """The upstream's ``/models`` list."""
        ...

    async def test_api_key(self) -> ApiKeyCheck:
        """Check the configured upstream key with a cheap authenticated call; never raises."""
        ...

    async def test_model(self, model: str) -> ModelCheck:
        """Check *model* with a one-token completion; never raises."""
        ...

    async def ping(self) -> bool:
        """Health check: ``True`` when the upstream lists its models."""
        ...


# --------------------------------------------------------------------------------------------
# the default implementation


class DefaultAiApiService:
    """:class:`AiApiService` over one :class:`Upstream` and an :class:`UpstreamTransport`.

    Args:
        upstream: where requests go, with which key.
        transport: the HTTP transport (:class:`~maaskit.services.upstream.AiohttpTransport` for
            the data plane, :class:`~maaskit.services.upstream.HttpxTransport` for fakes).
        clock: time source (``Retry-After`` dates, the breaker, latencies).
        breaker: the upstream's circuit breaker; default: one with default thresholds.
        retry: the retry policy; default :class:`RetryPolicy()` (3 attempts, cap 10 s).
        estimator: token estimator for unreported usage; default :class:`CharTokenEstimator`.
        default_retry_after: ``retry_after`` reported on an upstream 429 without ``Retry-After``.
        credentials: a credential pool to draw this upstream's credentials from (see the module
            docs); ``None`` sends ``upstream.api_key``.
        credential_failover: within one attempt, how many other credentials to try after a
            401/403/429.
    """

    def __init__(
        self,
        upstream: Upstream,
        transport: UpstreamTransport,
        clock: Clock | None = None,
        *,
        breaker: CircuitBreaker | None = None,
        retry: RetryPolicy | None = None,
        estimator: TokenEstimator | None = None,
        default_retry_after: float = 1.0,
        credentials: CredentialPool | None = None,
        credential_failover: int = 2,
    ) -> None:
        if not isinstance(credential_failover, int) or not 0 <= credential_failover <= 20:
            raise ValidationError("upstream.invalid_config", reason="credential_failover must be 0-20")
        self._upstream = upstream
        self._pool = credentials
        self._failover = credential_failover
        self._lease_headers: dict[tuple[str, str], tuple[dict[str, str], dict[str, str]]] = {}
        self._transport = transport
        self._clock = clock if clock is not None else SystemClock()
        self._breaker = breaker if breaker is not None else CircuitBreaker(upstream.name, self._clock)
        self._retry = retry if retry is not None else RetryPolicy()
        self._estimator = estimator if estimator is not None else CharTokenEstimator()
        self._default_retry_after = default_retry_after
        self._json_headers = upstream.auth_headers(json=True)
        self._get_headers = upstream.auth_headers()
        self._chat_url = upstream.url("chat/completions")
        self._embeddings_url = upstream.url("embeddings")
        self._models_url = upstream.url("models")
        self._timeouts = upstream.timeouts

    @property
    def upstream(self) -> Upstream:
        """The configured upstream."""
        return self._upstream

    @property
    def credentials(self) -> CredentialPool | None:
        """The credential pool, if one is used."""
        return self._pool

    @property
    def breaker(self) -> CircuitBreaker:
        """The upstream's circuit breaker."""
        return self._breaker

    @property
    def estimator(self) -> TokenEstimator:
        """The token estimator used when the upstream reports no usage."""
        return self._estimator

    # -- public API ---------------------------------------------------------------------------

    async def chat_completion(self, body: Mapping[str, Any], *, raw: bytes | None = None) -> ChatResult:
        """Send a non-streamed chat completion; returns the upstream's bytes, parsed JSON and usage.

        *raw* (the JSON text of *body*) is forwarded unchanged when *body* needs no rewriting:
        no key that is removed before forwarding (:data:`STRIPPED_BODY_KEYS`), no
        ``stream_options``, ``stream`` absent or ``false``, no upstream model mapping and no
        credential pool. Otherwise *body* is serialised as usual.

        Raises:
            ValidationError: the body is not a JSON object with a ``model`` string
                (``upstream.invalid_body``), or the upstream refused it (``upstream.bad_request``).
            NotFoundError: ``upstream.model_not_found``.
            RateLimitedError: ``upstream.rate_limited`` (after retries, or Retry-After beyond the cap).
            UpstreamError: ``upstream.auth_failed``, ``upstream.error``, ``upstream.timeout``,
                ``upstream.unreachable``, ``upstream.invalid_response``.
            UnavailableError: ``upstream.circuit_open``.
        """
        if self._pool is not None:
            out, model = self._prepare_out(body, stream=False)
            resp, lease = await self._send_pooled("POST", self._chat_url, out, model=model)
            reported: Usage | None = None
            try:
                data = self._parse_answer(resp.body, "choices")
                usage = reported = Usage.from_reported(data.get("usage"))
            finally:
                lease.release(tokens=reported.total_tokens if reported is not None else None)
        else:
            if raw is None or not self._forwards_as_is(body):
                payload, model = self._prepare(body, stream=False)
            else:
                payload, model = raw, body["model"]
            resp = await self._send("POST", self._chat_url, self._json_headers, payload, model=model)
            data = self._parse_answer(resp.body, "choices")
            usage = Usage.from_reported(data.get("usage"))
        if usage is None:
            usage = Usage.estimated(
                self._estimator.prompt_tokens(body),
                self._estimator.count_chars(_completion_chars(data)),
            )
        # positional: keyword arguments cost a third more in attrs' __init__ (this runs per request)
        return ChatResult(data, resp.body, usage, model, resp.status)

    def stream_chat_completion(
        self, body: Mapping[str, Any], *, on_complete: OnComplete | None = None
    ) -> ChatStream:
        """A streamed chat completion (see :class:`ChatStream`).

        The request is sent (with retries) when the stream is entered; errors before the first
        byte raise from ``__aenter__``/:meth:`ChatStream.start` exactly like
        :meth:`chat_completion`'s. *on_complete* is called exactly once with the final usage,
        once the stream was started and then ended, broke off or was abandoned.
        """
        out, model, wants_usage = self._prepare_stream_out(body)
        payload: bytes | dict[str, Any] = out if self._pool is not None else self._dump(out)
        return ChatStream(self, payload, body, model, wants_usage, on_complete)

    async def embeddings(self, body: Mapping[str, Any]) -> EmbeddingsResult:
        """Send an embeddings request; usage is reported or estimated from ``input``."""
        if self._pool is not None:
            out, model = self._prepare_out(body, stream=None)
            resp, lease = await self._send_pooled("POST", self._embeddings_url, out, model=model)
            reported: Usage | None = None
            try:
                data = self._parse_answer(resp.body, "data")
                usage = reported = Usage.from_reported(data.get("usage"))
            finally:
                lease.release(tokens=reported.total_tokens if reported is not None else None)
        else:
            payload, model = self._prepare(body, stream=None)
            resp = await self._send("POST", self._embeddings_url, self._json_headers, payload, model=model)
            data = self._parse_answer(resp.body, "data")
            usage = Usage.from_reported(data.get("usage"))
        if usage is None:
            usage = Usage.estimated(self._estimator.prompt_tokens(body), 0)
        return EmbeddingsResult(response=data, body=resp.body, usage=usage, model=model, status=resp.status)

    async def list_models(self) -> ModelList:
        """The upstream's model list (upstream ids, not client-facing aliases)."""
        if self._pool is not None:
            resp, lease = await self._send_pooled("GET", self._models_url, None, model=None)
            lease.release()
        else:
            resp = await self._send("GET", self._models_url, self._get_headers, None, model=None)
        return self._model_list(resp.body)

    async def test_api_key(self) -> ApiKeyCheck:
        """``GET /models`` once (no retries, no breaker) and report whether the key works.

        With a credential pool, one credential of this upstream is leased and checked (its
        outcome is reported to the pool).
        """
        started = self._clock.monotonic()
        lease: Lease | None = None
        status: int | None = 0
        try:
            headers = self._get_headers
            secret = None
            if self._pool is not None:
                lease = self._pool.acquire(None, upstream=self._upstream.name)
                headers = self._headers_for(lease)[1]
                secret = lease.secret
            resp = await self._transport.request(
                "GET", self._models_url, headers=headers, timeout=self._timeouts
            )
            status = resp.status
            if not 200 <= resp.status < 300:
                self._raise_for_status(resp, None, secret)
            models = self._model_list(resp.body)
        except MaasError as exc:
            status = exc.params.get("status")
            return ApiKeyCheck(
                False, status if isinstance(status, int) else None, exc.code, self._since(started)
            )
        except TransportError as exc:
            code = self._transport_error(exc).code
            return ApiKeyCheck(False, None, code, self._since(started))
        finally:
            if lease is not None:
                retry_after = None
                if status in (401, 403, 429):
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock)
                lease.release(status, retry_after=retry_after)
        return ApiKeyCheck(True, resp.status, None, self._since(started), len(models.models))

    async def test_model(self, model: str) -> ModelCheck:
        """A one-token completion on *model*; reports success, error code and latency."""
        started = self._clock.monotonic()
        body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        try:
            result = await self.chat_completion(body)
        except MaasError as exc:
            return ModelCheck(model, False, exc.code, self._since(started))
        return ModelCheck(model, True, None, self._since(started), result.usage)

    async def ping(self) -> bool:
        """Health check through :meth:`list_models` (raises the mapped error on failure)."""
        await self.list_models()
        return True

    def __repr__(self) -> str:
        return f"DefaultAiApiService(upstream={self._upstream.name!r}, base_url={self._upstream.base_url!r})"

    # -- internals ----------------------------------------------------------------------------

    def _since(self, started: float) -> float:
        return max(0.0, self._clock.monotonic() - started)

    def _rewrite(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        if not isinstance(body, Mapping):
            raise ValidationError("upstream.invalid_body", reason="expected a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ValidationError("upstream.invalid_body", reason="'model' must be a non-empty string")
        out = {k: v for k, v in body.items() if k not in STRIPPED_BODY_KEYS}
        out["model"] = self._upstream.model_map.get(model, model)
        return out, model

    def _forwards_as_is(self, body: Mapping[str, Any]) -> bool:
        """Whether a non-streamed *body* reaches the upstream unchanged (see ``chat_completion``)."""
        model = body.get("model")
        return (
            model.__class__ is str
            and model != ""
            and body.get("stream", False) is False
            and "stream_options" not in body
            and STRIPPED_BODY_KEYS.isdisjoint(body)
            and model not in self._upstream.model_map
        )

    @staticmethod
    def _dump(out: dict[str, Any]) -> bytes:
        try:
            return json.dumps(out, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        except RecursionError:  # orjson parses 1,024 levels; json.dumps stops near the stack limit
            raise ValidationError("upstream.invalid_body", reason="the body is nested too deeply") from None
        except (TypeError, ValueError):
            raise ValidationError("upstream.invalid_body", reason="the body is not valid JSON data") from None

    def _prepare_out(self, body: Mapping[str, Any], *, stream: bool | None) -> tuple[dict[str, Any], str]:
        out, model = self._rewrite(body)
        if stream is False:
            out.pop("stream_options", None)
            if "stream" in out:
                out["stream"] = False
        return out, model

    def _prepare(self, body: Mapping[str, Any], *, stream: bool | None) -> tuple[bytes, str]:
        out, model = self._prepare_out(body, stream=stream)
        return self._dump(out), model

    def _prepare_stream_out(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], str, bool]:
        out, model = self._rewrite(body)
        options = out.get("stream_options")
        options = dict(options) if isinstance(options, Mapping) else {}
        wants_usage = options.get("include_usage") is True
        options["include_usage"] = True
        out["stream"] = True
        out["stream_options"] = options
        return out, model, wants_usage

    def _prepare_stream(self, body: Mapping[str, Any]) -> tuple[bytes, str, bool]:
        out, model, wants_usage = self._prepare_stream_out(body)
        return self._dump(out), model, wants_usage

    def _headers_for(self, lease: Lease) -> tuple[dict[str, str], dict[str, str]]:
        """``(json_headers, get_headers)`` for *lease*'s credential (cached per header value)."""
        key = (lease.header_name, lease.header_value)
        found = self._lease_headers.get(key)
        if found is None:
            base = dict(self._upstream.headers)
            base[key[0]] = key[1]
            found = ({**base, "Content-Type": "application/json"}, base)
            if len(self._lease_headers) >= 1024:
                self._lease_headers.clear()
            self._lease_headers[key] = found
        return found

    async def _send_pooled(
        self,
        method: str,
        url: str,
        out: dict[str, Any] | None,
        *,
        model: str | None,
        stream: bool = False,
    ) -> tuple[UpstreamResponse, Lease]:
        """Like :meth:`_send`, each attempt with a credential leased from the pool.

        Returns the 2xx response with its lease (already reported successful; the caller
        releases it). Non-2xx answers release their lease with the outcome and are mapped.
        """
        pool = self._pool
        assert pool is not None
        breaker = self._breaker
        probe = breaker.before_call()
        transport = self._transport
        timeouts = self._timeouts
        clock = self._clock
        name = self._upstream.name
        upstream_map = self._upstream.model_map
        failover = self._failover
        payloads: dict[str, bytes] = {}
        held: list[Lease] = []
        last_secret: list[str] = [""]

        def payload_for(lease: Lease) -> bytes | None:
            if out is None:
                return None
            target = lease.upstream_model if lease.mapped else upstream_map.get(model or "", model)
            key = target or ""
            found = payloads.get(key)
            if found is None:
                out["model"] = target
                found = payloads[key] = self._dump(out)
            return found

        async def attempt() -> UpstreamResponse:
            tried: set[str] = set()  # credentials this attempt already used (failover)
            lease = pool.acquire(model, upstream=name)
            hops = 0
            while True:
                tried.add(lease.credential_id)
                last_secret[0] = lease.secret
                json_headers, get_headers = self._headers_for(lease)
                try:
                    resp = await transport.request(
                        method,
                        url,
                        headers=json_headers if out is not None else get_headers,
                        json_body=payload_for(lease),
                        timeout=timeouts,
                        stream=stream,
                    )
                except TransportError:
                    lease.release(0)
                    raise
                except BaseException:
                    lease.release()
                    raise
                status = resp.status
                if 200 <= status < 300:
                    lease.report_success()
                    held.append(lease)
                    return resp
                if status not in (401, 403, 429):
                    lease.release(status)
                    return resp
                lease.report_failure(status, parse_retry_after(resp.headers.get("Retry-After"), clock))
                following: Lease | None = None
                if hops < failover:
                    try:
                        following = pool.acquire(model, upstream=name, exclude=tried)
                    except MaasError:
                        following = None
                lease.release()
                if following is None:
                    return resp
                _log.info("upstream.credential_failover", upstream=name, status=status)
                await resp.aclose()
                lease = following
                hops += 1

        try:
            resp = await self._retry.call(attempt, clock, name=name)
        except TransportError as exc:
            breaker.record_failure(probe)
            raise self._transport_error(exc) from None
        except BaseException:
            breaker.release(probe)
            for lease in held:
                lease.release()
            raise
        status = resp.status
        if 200 <= status < 300:
            breaker.record_success(probe)
            for extra in held[:-1]:  # only the last 2xx attempt's lease is handed over
                extra.release()
            return resp, held[-1]
        for lease in held:
            lease.release()
        if status >= 500 or status == 408:
            breaker.record_failure(probe)
        else:
            breaker.record_success(probe)
        self._raise_for_status(resp, model, last_secret[0])

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        payload: bytes | None,
        *,
        model: str | None,
        stream: bool = False,
    ) -> UpstreamResponse:
        breaker = self._breaker
        probe = breaker.before_call()
        try:
            # the first attempt made here (RetryPolicy.call, unrolled: this runs on every request)
            try:
                resp = await self._transport.request(
                    method, url, headers=headers, json_body=payload, timeout=self._timeouts, stream=stream
                )
            except TransportConnectError as exc:
                resp = await self._retry_after(exc, method, url, headers, payload, stream)
            else:
                if resp.status in self._retry.retry_statuses:  # should_retry's answer for a response
                    resp = await self._retry_after(resp, method, url, headers, payload, stream)
        except TransportError as exc:
            breaker.record_failure(probe)
            raise self._transport_error(exc) from None
        except BaseException:
            breaker.release(probe)
            raise
        status = resp.status
        if 200 <= status < 300:
            breaker.record_success(probe)
            return resp
        if status >= 500 or status == 408:
            breaker.record_failure(probe)
        else:
            breaker.record_success(probe)
        self._raise_for_status(resp, model)

    def _retry_after(
        self,
        first: UpstreamResponse | TransportConnectError,
        method: str,
        url: str,
        headers: Mapping[str, str],
        payload: bytes | None,
        stream: bool,
    ) -> Awaitable[UpstreamResponse]:
        """The retry policy, taking over from :meth:`_send`'s first attempt (whose outcome is
        *first*). A method of its own: the attempt closure is built only when a retry is due."""
        transport, timeouts = self._transport, self._timeouts

        def attempt() -> Awaitable[UpstreamResponse]:
            return transport.request(
                method, url, headers=headers, json_body=payload, timeout=timeouts, stream=stream
            )

        return self._retry.resume(first, attempt, self._clock, name=self._upstream.name)

    def _transport_error(self, exc: TransportError) -> MaasError:
        name = self._upstream.name
        if isinstance(exc, TransportConnectError):
            return UpstreamError("upstream.unreachable", upstream=name)
        if isinstance(exc, TransportTimeoutError):
            return UpstreamError("upstream.timeout", upstream=name)
        return UpstreamError("upstream.invalid_response", upstream=name, reason="the connection broke off")

    def _raise_for_status(
        self, resp: UpstreamResponse, model: str | None, secret: str | None = None
    ) -> NoReturn:
        status = resp.status
        name = self._upstream.name
        _log.debug("upstream.error_status", upstream=name, status=status)
        if status in (401, 403):
            raise UpstreamError("upstream.auth_failed", upstream=name, status=status)
        if status == 404 and model is not None:
            raise NotFoundError("upstream.model_not_found", upstream=name, model=model)
        if status == 429:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock)
            raise RateLimitedError(
                "upstream.rate_limited",
                upstream=name,
                retry_after=round(retry_after if retry_after is not None else self._default_retry_after, 3),
            )
        if status in (400, 413, 422):
            raise ValidationError(
                "upstream.bad_request",
                upstream=name,
                status=status,
                reason=self._upstream_message(resp.body, secret),
            )
        raise UpstreamError("upstream.error", upstream=name, status=status)

    def _upstream_message(self, body: bytes, secret: str | None = None) -> str:
        message = ""
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, Mapping):
            error = data.get("error")
            if isinstance(error, Mapping) and isinstance(error.get("message"), str):
                message = error["message"]
            elif isinstance(error, str):
                message = error
        if not message:
            return "no reason given"
        key = self._upstream.api_key
        if key:
            message = message.replace(key, "***")
        if secret:
            message = message.replace(secret, "***")
        message = "".join(ch if ch.isprintable() else " " for ch in message)
        return message[:300]

    def _parse_object(self, body: bytes) -> dict[str, Any]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                "upstream.invalid_response", upstream=self._upstream.name, reason="the body is not JSON"
            ) from None
        if not isinstance(data, dict):
            raise UpstreamError(
                "upstream.invalid_response", upstream=self._upstream.name, reason="expected a JSON object"
            )
        return data

    def _parse_answer(self, body: bytes, expected: str) -> dict[str, Any]:
        """A successful answer's JSON object; one that carries an ``error`` object and not its
        *expected* field (``choices``, ``data``) is the upstream's failure, even with HTTP 200."""
        data = self._parse_object(body)
        if expected not in data and data.get("error") is not None:
            raise UpstreamError(
                "upstream.invalid_response",
                upstream=self._upstream.name,
                reason="an error object in a successful answer",
            )
        return data

    def _model_list(self, body: bytes) -> ModelList:
        data = self._parse_object(body)
        entries = data.get("data")
        if not isinstance(entries, list):
            raise UpstreamError(
                "upstream.invalid_response", upstream=self._upstream.name, reason="no model list"
            )
        models: list[UpstreamModel] = []
        for entry in entries:
            if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
                owned_by = entry.get("owned_by")
                created = entry.get("created")
                models.append(
                    UpstreamModel(
                        entry["id"],
                        owned_by if isinstance(owned_by, str) else None,
                        created if _count(created) else None,
                    )
                )
        return ModelList(tuple(models), body)


def _delta_chars(delta: Any) -> int:
    if not isinstance(delta, Mapping):
        return 0
    chars = 0
    for key in ("content", "reasoning_content", "refusal"):
        value = delta.get(key)
        if isinstance(value, str):
            chars += len(value)
    tool_calls = delta.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            if isinstance(call, Mapping):
                function = call.get("function")
                if isinstance(function, Mapping):
                    args = function.get("arguments")
                    if isinstance(args, str):
                        chars += len(args)
    return chars


def _completion_chars(data: Mapping[str, Any]) -> int:
    choices = data.get("choices")
    chars = 0
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, Mapping):
                chars += _delta_chars(choice.get("message"))
                text = choice.get("text")
                if isinstance(text, str):
                    chars += len(text)
    return chars


# --------------------------------------------------------------------------------------------
# streaming


class ChatStream:
    """One streamed chat completion: an async context manager and a one-shot async iterator.

    Entering it (or :meth:`start`) sends the request, retrying until the upstream's status line
    arrives; after that nothing is retried. Iterating yields the upstream's server-sent-event
    bytes as they arrive, cut at event boundaries (an incomplete event waits for its end).
    Leaving the block (or :meth:`aclose`) releases the connection and finalises :attr:`usage`:

    * the upstream's reported usage if its usage event was delivered;
    * otherwise an estimate: the prompt from the request body, the completion from the text of
      the events delivered to the consumer.

    ``on_complete(usage)`` runs exactly once, also on cancellation (an async callback is shielded
    from the cancellation; its errors are logged, not raised). If :meth:`start` fails, the
    stream never started: there is no usage and no callback.

    Attributes:
        status: the upstream's HTTP status once started.
        headers: the upstream's response headers once started.
        usage: the final :class:`Usage`, once the stream is finished or closed.
        completed: whether the upstream ended the stream normally (its ``[DONE]`` event reached the
            consumer, or the upstream closed the stream after its last event).
        failed: whether the stream broke off or the upstream sent something invalid.
    """

    def __init__(
        self,
        service: DefaultAiApiService,
        payload: bytes | dict[str, Any],
        body: Mapping[str, Any],
        model: str,
        wants_usage: bool,
        on_complete: OnComplete | None,
    ) -> None:
        self._service = service
        self._payload = payload
        self._body = body
        self.model = model
        self._wants_usage = wants_usage
        self._on_complete = on_complete
        self._resp: UpstreamResponse | None = None
        self._lease: Lease | None = None
        self._gen: AsyncIterator[bytes] | None = None
        self._started = False
        self._closed = False
        self._finalized = False
        self._parts: list[bytes] = []  # the incomplete event's bytes so far (LF line ends)
        self._size = 0  # their length
        self._cr = False  # the last chunk ended with a CR (maybe half a CRLF)
        self._chars = 0
        self._reported: Usage | None = None
        self.status: int | None = None
        self.headers: Mapping[str, str] = {}
        self.usage: Usage | None = None
        self.completed = False
        self.failed = False
        self._done = False  # the upstream's "data: [DONE]" was read

    async def start(self) -> ChatStream:
        """Send the request (idempotent); raises the mapped error if the upstream refuses it."""
        if self._started:
            return self
        if self._closed:
            raise RuntimeError("the stream is closed")
        self._started = True
        service = self._service
        payload = self._payload
        if isinstance(payload, dict):
            resp, self._lease = await service._send_pooled(
                "POST", service._chat_url, payload, model=self.model, stream=True
            )
        else:
            resp = await service._send(
                "POST", service._chat_url, service._json_headers, payload, model=self.model, stream=True
            )
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers
        content_type = resp.headers.get("content-type") or resp.headers.get("Content-Type") or ""
        if content_type and not content_type.lower().startswith("text/event-stream"):
            # JSON from an upstream that ignored "stream": true, a proxy's HTML login page...:
            # nothing was delivered yet, so it is refused like any invalid response (its
            # events could not be accounted). A missing content type is taken as events.
            self._closed = True
            self._resp = None
            lease, self._lease = self._lease, None
            if lease is not None:
                lease.release(tokens=None)
            await resp.aclose()
            raise UpstreamError(
                "upstream.invalid_response",
                upstream=service.upstream.name,
                reason=f"{content_type.split(';')[0].strip()[:64]} where a stream of events was asked for",
            )
        return self

    async def __aenter__(self) -> ChatStream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._gen is not None:
            raise RuntimeError("a ChatStream can be iterated only once")
        self._gen = self._iterate()
        return self._gen

    async def _iterate(self) -> AsyncIterator[bytes]:
        if not self._started:
            await self.start()
        resp = self._resp
        if resp is None or self._closed:
            return
        try:
            async for chunk in resp.iter_chunks():
                out = self._feed(chunk)
                if out:
                    # handing "[DONE]" over completes the stream, even if the consumer leaves
                    # before the upstream closes (OpenAI's clients close right after it)
                    self.completed = self._done
                    yield out
            if self._cr:
                self._add(b"\n")
            tail = b"".join(self._parts)
            self._parts.clear()
            if tail:
                self._scan(tail)
                yield tail
            self.completed = True
        except TransportError:
            self.failed = True
            raise UpstreamError("upstream.stream_interrupted", upstream=self._service.upstream.name) from None
        except MaasError:
            self.failed = True
            raise
        finally:
            await self._shutdown()

    async def aclose(self) -> None:
        """Stop reading, release the connection and finalise the usage (idempotent)."""
        gen = self._gen
        if gen is not None and not getattr(gen, "ag_running", False):
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        pending = self._finalize() if self._started and self._resp is not None else None
        resp, self._resp = self._resp, None
        lease, self._lease = self._lease, None
        if lease is not None:
            reported = self._reported
            lease.release(tokens=reported.total_tokens if reported is not None else None)
        try:
            if resp is not None:
                await resp.aclose()
        finally:
            if pending is not None:
                await _shielded(pending)

    def _finalize(self) -> Awaitable[None] | None:
        if self._finalized:
            return None
        self._finalized = True
        usage = self._reported
        if usage is None:
            est = self._service.estimator
            usage = Usage.estimated(est.prompt_tokens(self._body), est.count_chars(self._chars))
        self.usage = usage
        callback = self._on_complete
        if callback is None:
            return None
        try:
            result = callback(usage)
        except Exception:
            _log.exception("upstream.on_complete_failed", upstream=self._service.upstream.name)
            return None
        return result if inspect.isawaitable(result) else None

    # -- server-sent events -------------------------------------------------------------------

    def _feed(self, chunk: bytes) -> bytes:
        """Take one chunk; return the complete events it ends (an event ends at a blank line).

        Line ends are CRLF, CR or LF (the SSE rule); all become LF. Linear in the stream's
        size: only the new chunk is searched, and an event's parts are joined once, when it
        ends. An event may be at most :data:`MAX_EVENT_BYTES` long.
        """
        if self._cr:  # the previous chunk's CR, held back: it may be half a CRLF
            chunk = b"\r" + chunk
            self._cr = False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk = chunk[:-1]
                self._cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = chunk.rfind(b"\n\n")
        if end >= 0:
            end += 2
        elif self._parts and chunk[:1] == b"\n" and self._parts[-1][-1:] == b"\n":
            end = 1  # the blank line straddles the two chunks
        else:
            self._add(chunk)
            return b""
        parts = self._parts
        if parts:
            parts.append(chunk[:end])
            complete = b"".join(parts)
            parts.clear()
        else:
            complete = chunk if end == len(chunk) else chunk[:end]
        self._size = 0
        if end < len(chunk):
            self._add(chunk[end:])
        return self._scan(complete)

    def _add(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._size > MAX_EVENT_BYTES:
            raise UpstreamError(
                "upstream.invalid_response",
                upstream=self._service.upstream.name,
                reason=f"an event longer than {MAX_EVENT_BYTES} bytes",
            )
        self._parts.append(data)

    def _scan(self, complete: bytes) -> bytes:
        """Account the events in *complete*; return them, minus a usage event nobody asked for."""
        events = complete.split(b"\n\n")
        dropped = False
        kept: list[bytes] = []
        for event in events:
            if not event:
                continue
            if self._event(event):
                kept.append(event)
            else:
                dropped = True
        if not dropped:
            return complete
        return b"".join(e + b"\n\n" for e in kept)

    def _event(self, event: bytes) -> bool:
        """Account one event; ``False`` when it must not be forwarded.

        Its ``data:`` lines are one payload, joined with LF (the SSE rule); an upstream that puts
        one JSON object on each ``data:`` line of an event is read line by line.
        """
        lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            return True
        payloads = [b"\n".join(line[1:] if line[:1] == b" " else line for line in lines)]
        if len(lines) > 1:
            payloads.extend(lines)
        forward = True
        for index, payload in enumerate(payloads):
            data = payload.strip()
            if data == b"[DONE]":
                self._done = True
                continue
            if not data:
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                if index == 0:
                    break
                continue
            choices = obj.get("choices")
            if isinstance(choices, list):
                for choice in choices:
                    if isinstance(choice, Mapping):
                        self._chars += _delta_chars(choice.get("delta"))
            usage = obj.get("usage")
            if usage is not None:
                reported = Usage.from_reported(usage)
                if reported is not None:
                    self._reported = reported
                if not self._wants_usage and not choices:  # a usage event nobody asked for
                    forward = False
            if index == 0:
                break  # the joined payload was JSON: its lines are not read again
        return forward

    def __repr__(self) -> str:
        return f"ChatStream(model={self.model!r}, status={self.status}, closed={self._closed})"


async def _shielded(pending: Awaitable[None]) -> None:
    task = asyncio.ensure_future(pending)
    _PENDING.add(task)
    task.add_done_callback(_finish_callback)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.done() and task.cancelled():
            return
        raise
    except Exception:
        return


def _finish_callback(task: asyncio.Task[Any]) -> None:
    _PENDING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        _log.error("upstream.on_complete_failed", error=type(task.exception()).__name__)
