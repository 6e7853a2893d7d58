"""Admission: the hot path every gateway request runs through.

``admit`` turns a credential and a request into an :class:`Admission` or a precise error:

1. the API key is validated (malformed / unknown / revoked / disabled / expired);
2. the model name is checked (well-formed, allowed for the key, priced);
3. the request's maximum cost is computed: prompt estimate + ``max_tokens`` (a configured cap
   when the request has none, so the maximum exists) at the model's prices;
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

import re
import uuid
from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from maaskit.clock import Clock
from maaskit.errors import ForbiddenError, NotFoundError, ValidationError
from maaskit.services.ai_api import Usage
from maaskit.services.api_keys import ApiKey, ApiKeyService
from maaskit.services.budget import Settlement
from maaskit.services.pricing import PricingService
from maaskit.services.rate_limit import AdmissionLimits, GateDecision, LimitsGate, RateKind
from maaskit.services.tokens_estimate import CharTokenEstimator, TokenEstimator
from maaskit.services.usage import UsageRecord, UsageService

__all__ = [
    "MAX_MODEL_NAME_LENGTH",
    "Admission",
    "AdmissionService",
    "DefaultAdmissionService",
    "Remaining",
    "SettleResult",
    "validate_model_name",
]

#: Longest model name accepted.
MAX_MODEL_NAME_LENGTH = 256
# letters, digits and . _ : - @ +, with single '/' between namespace segments
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]*(/[A-Za-z0-9][A-Za-z0-9._:@+\-]*)*$")


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
    if not _MODEL_RE.match(model) or ".." in model or "://" in model:
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
        max_tokens: the completion-token cap the upstream gets (the request's or the default).
        prompt_tokens_estimate: the prompt estimate used for the reservation.
        reserved_micros: the maximum cost reserved on the budget.
        decision: the rate-limit and budget decision (``headers()`` renders it).
        started: monotonic start time (latency is measured from it).
        settled: whether settle or release already ran.
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
        """*body* with the completion cap the reservation assumed (``max_tokens`` when absent)."""
        out = dict(body)
        if "max_tokens" not in out and "max_completion_tokens" not in out:
            out["max_tokens"] = self.max_tokens
        return out


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


class DefaultAdmissionService:
    """The :class:`AdmissionService` over API keys, pricing, the limits gate and usage.

    Args:
        api_keys: validates credentials.
        pricing: model prices (static table or the model catalog).
        gate: rate limits and budget reservations in one atomic step.
        usage: records one usage row per settled request.
        clock: latency and timestamps.
        default_max_tokens: completion cap for requests without ``max_tokens``.
        estimator: prompt-token estimates for the reservation.
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
    ) -> None:
        if isinstance(default_max_tokens, bool) or not isinstance(default_max_tokens, int) or default_max_tokens < 1:
            raise ValidationError("config.invalid", setting="MAASKIT_DEFAULT_MAX_TOKENS", reason="must be >= 1")
        self._keys = api_keys
        self._pricing = pricing
        self._gate = gate
        self._usage = usage
        self._clock = clock
        self._default_max_tokens = default_max_tokens
        self._estimator = estimator or CharTokenEstimator()

    def __repr__(self) -> str:
        return f"DefaultAdmissionService(default_max_tokens={self._default_max_tokens})"

    def _max_tokens(self, body: Mapping[str, Any]) -> int:
        value = body.get("max_completion_tokens", body.get("max_tokens"))
        if value is None:
            return self._default_max_tokens
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValidationError("admission.invalid_max_tokens", reason="must be a positive integer")
        if value > self._default_max_tokens * 64:
            raise ValidationError("admission.invalid_max_tokens", reason="larger than any model allows")
        return value

    async def admit(
        self, credential: str, model: str, body: Mapping[str, Any], *, max_output_tokens: int | None = None
    ) -> Admission:
        """See :meth:`AdmissionService.admit`."""
        key = await self._keys.validate(credential)
        validate_model_name(model)
        if not key.allows_model(model):
            raise ForbiddenError("admission.model_not_allowed", model=model)
        if self._pricing.price(model) is None:
            raise NotFoundError("admission.unknown_model", model=model)
        max_tokens = self._max_tokens(body) if max_output_tokens is None else max_output_tokens
        prompt = self._estimator.prompt_tokens(body)
        reserve = self._pricing.max_cost_micros(model, prompt, max_tokens)
        budget = key.budget_micros
        limits = AdmissionLimits.simple(
            key.id,
            rpm=key.rpm_limit,
            tpm=key.tpm_limit,
            estimated_tokens=prompt + max_tokens,
            budget_account=None if budget is None else "key:" + key.id,
            budget_limit_micros=budget,
            reserve_micros=reserve,
        )
        decision = await self._gate.acquire(limits)
        if decision.refusal is not None:
            raise decision.refusal
        return Admission(
            uuid.uuid4().hex, key, model, max_tokens, prompt, reserve, decision, self._clock.monotonic()
        )

    def _record(
        self,
        admission: Admission,
        usage: Usage,
        cost: int,
        status: Literal["ok", "error", "cancelled"],
        streamed: bool,
        upstream: str | None,
    ) -> None:
        key = admission.key
        self._usage.record(
            UsageRecord(
                request_id=admission.request_id,
                key_id=key.id,
                owner_id=key.owner_id,
                team_id=key.team_id,
                model=admission.model,
                upstream=upstream,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
                cost_micros=cost,
                usage_source=usage.source,
                status=status,
                streamed=streamed,
                latency_ms=max(0, int((self._clock.monotonic() - admission.started) * 1000)),
                created_at=self._clock.now(),
            )
        )

    async def settle(
        self,
        admission: Admission,
        usage: Usage,
        *,
        status: Literal["ok", "error", "cancelled"] = "ok",
        streamed: bool = False,
        upstream: str | None = None,
    ) -> SettleResult:
        """See :meth:`AdmissionService.settle`."""
        if admission.settled:
            return SettleResult(0, 0, None, replayed=True)
        admission.settled = True
        actual = self._pricing.cost_micros(admission.model, usage.prompt_tokens, usage.completion_tokens)
        charged = min(actual, admission.reserved_micros)
        ticket = admission.decision.ticket
        settlement = None
        if ticket is not None:
            settlement = await self._gate.settle(ticket, actual_tokens=usage.total_tokens, actual_micros=charged)
        self._record(admission, usage, charged, status, streamed, upstream)
        return SettleResult(charged, actual - charged, settlement)

    async def release(self, admission: Admission, *, upstream: str | None = None) -> None:
        """See :meth:`AdmissionService.release`."""
        if admission.settled:
            return
        admission.settled = True
        ticket = admission.decision.ticket
        if ticket is not None:
            await self._gate.release(ticket)
        self._record(admission, Usage(0, 0, 0, "reported"), 0, "error", False, upstream)
