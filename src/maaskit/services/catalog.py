"""The model catalog: models, prices, limits and capabilities, kept in sync with upstream.

:class:`DefaultModelCatalog` stores :class:`CatalogModel` rows through a
:class:`~maaskit.storage.ports.catalog.CatalogStore` (memory or SQL) and keeps them in step with a
:class:`~maaskit.services.litellm.ModelSource` (usually the LiteLLM proxy):

* :meth:`ModelCatalog.sync_models` is **incremental** - it compares upstream with the stored rows
  and writes only the rows that changed, all in one transaction (a no-op sync writes nothing; a
  failure leaves the catalog as it was) - and returns a :class:`SyncReport`.
* A sync whose upstream answer is **byte-identical** to the last one, with the catalog not
  written since (by anyone: the store's revision is compared), returns the last report again
  without parsing or diffing (see :class:`RevisionedCatalogStore`).
* Models gone upstream are **marked unavailable, never deleted**, so the subscriptions and keys
  naming them survive; :meth:`ModelCatalog.require_available` refuses them with
  ``UnavailableError("model.unavailable")`` until they come back.
* Local edits (:meth:`ModelCatalog.update_model_metadata`) are remembered per field, and a
  :class:`ConflictPolicy` decides what a later sync does with them.
* :class:`CatalogPricing` is the gateway's :class:`~maaskit.services.pricing.PricingService` over
  the catalog: ``price()`` is a dict lookup in an in-memory snapshot refreshed after every change.

Prices are ``Decimal`` USD per token; the SQL backend stores them exactly as integers (USD x 10^18).

Example::

    from maaskit.services.catalog import CatalogPricing, DefaultModelCatalog
    from maaskit.storage.memory.catalog import MemoryCatalogStore

    catalog = DefaultModelCatalog(MemoryCatalogStore())
    report = await catalog.sync_models(litellm)          # any ModelSource, snapshot or list of ModelInfo
    pricing = CatalogPricing(catalog)
    await catalog.require_available("gpt-4o-mini")
    cost = pricing.cost_micros("gpt-4o-mini", 1000, 200)
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final, Literal, Protocol, runtime_checkable

import attrs
import structlog

from maaskit.clock import Clock, SystemClock
from maaskit.errors import NotFoundError, UnavailableError, UpstreamError, ValidationError
from maaskit.services.litellm import (
    MAX_CATALOG_PRICE_PER_TOKEN,
    FingerprintedModelSource,
    ModelInfo,
    ModelProblem,
    ModelSnapshot,
    ModelSource,
    _capabilities,
    _check_limit,
    _optional_text,
    check_model_id,
    check_price,
)
from maaskit.services.pricing import ModelPrice
from maaskit.storage.ports.catalog import CatalogStore

__all__ = [
    "SYNCED_FIELDS",
    "CatalogModel",
    "CatalogPricing",
    "ConflictPolicy",
    "DefaultModelCatalog",
    "IntegrityIssue",
    "IntegrityReport",
    "ModelCatalog",
    "ReferenceSource",
    "RevisionedCatalogStore",
    "SyncReport",
    "SyncRun",
]

_log = structlog.get_logger(__name__)

#: The fields a sync copies from upstream (and that local edits may override).
SYNCED_FIELDS: Final[tuple[str, ...]] = (
    "provider",
    "upstream_model",
    "input_price",
    "output_price",
    "context_window",
    "max_output_tokens",
    "capabilities",
)
_EDITABLE: Final = frozenset(
    {"input_price", "output_price", "context_window", "max_output_tokens", "capabilities"}
)
_UNSET: Any = object()


class ConflictPolicy(StrEnum):
    """What a sync does when upstream differs from a field edited locally.

    * ``remote_wins``: upstream's value is written and the local override is dropped.
    * ``local_wins``: the locally edited fields keep their value; other fields follow upstream.
    * ``report_only``: a model with a conflict is left untouched; the conflict is reported.
    """

    REMOTE_WINS = "remote_wins"
    LOCAL_WINS = "local_wins"
    REPORT_ONLY = "report_only"


def _names(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


def _caps(value: Iterable[str]) -> frozenset[str]:
    return _capabilities(frozenset(value) if not isinstance(value, frozenset) else value)


@attrs.frozen
class CatalogModel:
    """One model in the catalog.

    Attributes:
        model_id: the public model name (validated like :func:`~maaskit.services.litellm.check_model_id`).
        provider: the upstream provider (``openai``...), if known.
        upstream_model: the upstream's own model name, if known.
        input_price: USD per prompt token (``None``: not priced).
        output_price: USD per completion token (``None``: not priced).
        context_window: the longest prompt in tokens, if known.
        max_output_tokens: the longest completion in tokens, if known.
        capabilities: ``function_calling``, ``vision``, ``streaming``, ...
        available: ``False`` once the model is gone upstream (rows are never deleted).
        local_overrides: fields edited locally (see :class:`ConflictPolicy`).
        source: where the row came from (``"litellm"``, ``"fallback"``, ``"static"``, ...).
        created_at: when the row was created (aware UTC).
        updated_at: when it last changed (aware UTC).
        unavailable_since: when the model became unavailable.
    """

    model_id: str = attrs.field(converter=check_model_id)
    provider: str | None = None
    upstream_model: str | None = None
    input_price: Decimal | None = None
    output_price: Decimal | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    capabilities: frozenset[str] = attrs.field(default=frozenset(), converter=_caps)
    available: bool = True
    local_overrides: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    source: str = "static"
    created_at: datetime | None = None
    updated_at: datetime | None = None
    unavailable_since: datetime | None = None

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "input_price", check_price(self.input_price, field="input_price"))
        object.__setattr__(self, "output_price", check_price(self.output_price, field="output_price"))
        object.__setattr__(self, "context_window", _check_limit(self.context_window, field="context_window"))
        object.__setattr__(
            self, "max_output_tokens", _check_limit(self.max_output_tokens, field="max_output_tokens")
        )
        object.__setattr__(self, "provider", _optional_text(self.provider, field="provider"))
        object.__setattr__(
            self, "upstream_model", _optional_text(self.upstream_model, field="upstream_model")
        )
        bad = self.local_overrides - _EDITABLE
        if bad:
            raise ValidationError("catalog.invalid_field", field="local_overrides", reason="unknown field")

    @classmethod
    def restore(cls, **values: Any) -> CatalogModel:
        """Rebuild a row a store wrote itself, skipping validation (it was validated on write).

        For storage backends only; every field must be given.
        """
        model = object.__new__(cls)
        for field in attrs.fields(cls):
            object.__setattr__(model, field.name, values[field.name])
        return model

    @classmethod
    def from_info(cls, info: ModelInfo, *, source: str = "litellm") -> CatalogModel:
        """The catalog row for an upstream :class:`~maaskit.services.litellm.ModelInfo`."""
        return cls(
            info.model_name,
            provider=info.provider,
            upstream_model=info.upstream_model,
            input_price=info.input_cost_per_token,
            output_price=info.output_cost_per_token,
            context_window=info.context_window,
            max_output_tokens=info.max_output_tokens,
            capabilities=info.capabilities,
            source=source,
        )

    def synced_values(self) -> tuple[Any, ...]:
        """The values of :data:`SYNCED_FIELDS`, for comparisons."""
        return (
            self.provider,
            self.upstream_model,
            self.input_price,
            self.output_price,
            self.context_window,
            self.max_output_tokens,
            self.capabilities,
        )

    @property
    def price(self) -> ModelPrice | None:
        """The :class:`~maaskit.services.pricing.ModelPrice`, when both prices are set."""
        if self.input_price is None or self.output_price is None:
            return None
        return ModelPrice(self.model_id, self.input_price, self.output_price)


@attrs.frozen
class SyncReport:
    """What a :meth:`ModelCatalog.sync_models` did.

    Attributes:
        added: models new in the catalog.
        updated: models whose synced fields changed.
        unchanged: models already up to date (nothing written for them).
        unavailable: models newly marked unavailable (gone upstream).
        restored: unavailable models that came back.
        conflicts: ``"model: field"`` entries where upstream differs from a local edit.
        errors: upstream entries refused (bad id, price, duplicate...), as ``"#index name: reason"``.
        duration_ms: how long the sync took (by the injected clock).
        source: the snapshot's source (``"fallback"`` when the fallback catalog was used).
        rows_written: rows inserted or updated (``0`` for a no-op sync).
    """

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()
    restored: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    duration_ms: float = 0.0
    source: str = "static"
    rows_written: int = 0

    @property
    def changed(self) -> bool:
        """Whether anything was written."""
        return self.rows_written > 0

    def summary(self) -> dict[str, Any]:
        """Counts only (for logs and the audit trail)."""
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "unavailable": len(self.unavailable),
            "restored": len(self.restored),
            "conflicts": len(self.conflicts),
            "errors": len(self.errors),
            "duration_ms": self.duration_ms,
            "source": self.source,
            "rows_written": self.rows_written,
        }


@attrs.frozen
class SyncRun:
    """One entry of the sync audit trail (see :mod:`maaskit.services.integration`).

    Attributes:
        run_id: unique id.
        kind: ``"models"``, ``"full"``...
        owner: the replica that ran it.
        started_at, finished_at: timestamps.
        ok: the run finished without an error.
        summary: counts (``SyncReport.summary()`` plus keys/teams counts).
        error_code: the ``MaasError`` code when it failed.
    """

    run_id: str
    kind: str
    owner: str
    started_at: datetime
    finished_at: datetime
    ok: bool
    summary: Mapping[str, Any] = attrs.field(factory=dict)
    error_code: str | None = None


@attrs.frozen
class IntegrityIssue:
    """A problem found by :meth:`ModelCatalog.validate_integrity`.

    ``kind``: ``duplicate`` (ids equal ignoring case), ``invalid_price`` (negative, non-finite or
    absurd), ``dangling_reference`` (a referrer names a model not in the catalog) or
    ``unavailable_reference`` (a referrer names an unavailable model: kept, but refused).
    """

    kind: str
    model_id: str
    detail: str


@attrs.frozen
class IntegrityReport:
    """The result of :meth:`ModelCatalog.validate_integrity`."""

    models: int
    issues: tuple[IntegrityIssue, ...]

    @property
    def ok(self) -> bool:
        """No issue other than references to unavailable models."""
        return all(i.kind == "unavailable_reference" for i in self.issues)


#: A callable listing ``(referrer, model_id)`` pairs (subscriptions, keys...) for integrity checks.
ReferenceSource = Callable[[], Awaitable[Iterable[tuple[str, str]]]]


@runtime_checkable
class RevisionedCatalogStore(CatalogStore, Protocol):
    """A :class:`~maaskit.storage.ports.catalog.CatalogStore` that counts every write.

    The revision increases with every write of any writer sharing the store (other replicas
    included). :class:`DefaultModelCatalog` uses it to skip a sync whose upstream answer is
    byte-identical to the last one when the catalog has not been written since.
    """

    async def revision(self) -> int | None:
        """The current revision (one cheap read); ``None`` when unknown."""
        ...

    async def apply_tracked(
        self, inserts: Sequence[CatalogModel], updates: Sequence[CatalogModel]
    ) -> tuple[int | None, int | None]:
        """``apply()``, returning the revision just before and just after this write."""
        ...


@attrs.frozen
class _NoopMemo:
    """What a sync of an identical answer over an unchanged catalog reports (nothing written)."""

    source: weakref.ref[Any]
    fingerprint: str
    policy: ConflictPolicy
    on_invalid: str
    revision: int
    unchanged: tuple[str, ...]
    conflicts: tuple[str, ...]
    errors: tuple[str, ...]
    source_name: str


@attrs.define
class _Plan:
    """The writes a sync needs and what it will report."""

    inserts: list[CatalogModel] = attrs.Factory(list)
    updates: list[CatalogModel] = attrs.Factory(list)
    added: list[str] = attrs.Factory(list)
    updated: list[str] = attrs.Factory(list)
    unchanged: list[str] = attrs.Factory(list)
    restored: list[str] = attrs.Factory(list)
    conflicts: list[str] = attrs.Factory(list)
    gone: list[str] = attrs.Factory(list)


@runtime_checkable
class ModelCatalog(Protocol):
    """The model catalog (see the module docs)."""

    async def sync_models(
        self,
        source: ModelSource | ModelSnapshot | Sequence[ModelInfo],
        *,
        policy: ConflictPolicy | None = None,
        on_invalid: Literal["abort", "skip"] = "abort",
    ) -> SyncReport:
        """Bring the catalog in line with *source*, writing only what changed, in one transaction."""
        ...

    async def update_model_metadata(
        self,
        model_id: str,
        *,
        input_price: Decimal | None = ...,
        output_price: Decimal | None = ...,
        context_window: int | None = ...,
        max_output_tokens: int | None = ...,
        capabilities: Iterable[str] = ...,
    ) -> CatalogModel:
        """Edit a model locally; edited fields are remembered as local overrides."""
        ...

    async def mark_unavailable(self, model_ids: Iterable[str]) -> tuple[str, ...]:
        """Mark models unavailable (nothing is deleted); returns those that changed."""
        ...

    async def mark_available(self, model_ids: Iterable[str]) -> tuple[str, ...]:
        """Mark models available again; returns those that changed."""
        ...

    async def require_available(self, model_id: str) -> CatalogModel:
        """The model, or ``UnavailableError("model.unavailable")`` / ``NotFoundError("model.not_found")``."""
        ...

    async def get(self, model_id: str) -> CatalogModel | None:
        """The model, or ``None``."""
        ...

    async def list_models(self, *, available_only: bool = False) -> list[CatalogModel]:
        """Every model (or only available ones), sorted by id."""
        ...

    async def validate_integrity(self, references: Sequence[ReferenceSource] = ()) -> IntegrityReport:
        """Check for duplicates, bad prices and dangling references."""
        ...

    async def refresh(self) -> None:
        """Reload the in-memory snapshot from the store."""
        ...


class DefaultModelCatalog:
    """:class:`ModelCatalog` over a :class:`~maaskit.storage.ports.catalog.CatalogStore`.

    Args:
        store: the catalog store (memory or SQL).
        clock: time source (timestamps, durations, snapshot age).
        policy: the default :class:`ConflictPolicy` (``remote_wins``).
        snapshot_ttl: seconds after which :meth:`require_available` reloads the in-memory
            snapshot from the store (so changes made by other replicas are seen).
    """

    def __init__(
        self,
        store: CatalogStore,
        *,
        clock: Clock | None = None,
        policy: ConflictPolicy = ConflictPolicy.REMOTE_WINS,
        snapshot_ttl: float = 30.0,
    ) -> None:
        if not isinstance(snapshot_ttl, int | float) or not math.isfinite(snapshot_ttl) or snapshot_ttl < 0:
            raise ValidationError("catalog.invalid_config", reason="snapshot_ttl must be >= 0")
        self._store = store
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._policy = ConflictPolicy(policy)
        self._ttl = float(snapshot_ttl)
        self._snapshot: dict[str, CatalogModel] = {}
        self._prices: dict[str, ModelPrice] = {}
        self._loaded_at: float | None = None
        self._memo: _NoopMemo | None = None

    def __repr__(self) -> str:
        return f"DefaultModelCatalog({len(self._snapshot)} models cached)"

    @property
    def store(self) -> CatalogStore:
        """The underlying store."""
        return self._store

    @property
    def snapshot(self) -> Mapping[str, CatalogModel]:
        """The in-memory view (refreshed after every change made through this object)."""
        return self._snapshot

    def cached_price(self, model_id: str) -> ModelPrice | None:
        """The price from the in-memory snapshot (no I/O; built once per model and snapshot)."""
        price = self._prices.get(model_id)
        if price is None:
            model = self._snapshot.get(model_id)
            if model is None:
                return None
            price = model.price
            if price is None:
                return None
            self._prices[model_id] = price
        return price

    async def refresh(self) -> None:
        """Reload the in-memory snapshot from the store."""
        self._set_snapshot(await self._store.list_models())

    def _set_snapshot(self, models: Iterable[CatalogModel]) -> None:
        self._snapshot = {m.model_id: m for m in models}
        self._prices = {}  # built lazily by cached_price()
        self._loaded_at = self._clock.monotonic()

    # -- sync -----------------------------------------------------------------------------

    async def sync_models(
        self,
        source: ModelSource | ModelSnapshot | Sequence[ModelInfo],
        *,
        policy: ConflictPolicy | None = None,
        on_invalid: Literal["abort", "skip"] = "abort",
    ) -> SyncReport:
        """Bring the catalog in line with *source* (see the module docs).

        Args:
            source: a :class:`~maaskit.services.litellm.ModelSource` (e.g. the LiteLLM service),
                a :class:`~maaskit.services.litellm.ModelSnapshot`, or a list of ``ModelInfo``.
            policy: the conflict policy for this sync (default: the catalog's).
            on_invalid: ``"abort"`` (default): any refused upstream entry aborts the sync with
                ``UpstreamError("catalog.invalid_source")`` and nothing is written; ``"skip"``:
                refused entries are listed in ``errors`` and their rows left as they are.

        Raises:
            UpstreamError: ``catalog.invalid_source``, or the source's own errors.
            ConflictError: ``catalog.conflict`` when another writer changed the rows meanwhile.
        """
        started = self._clock.monotonic()
        policy = ConflictPolicy(policy) if policy is not None else self._policy
        if on_invalid not in ("abort", "skip"):
            raise ValidationError("catalog.invalid_config", reason="on_invalid must be abort or skip")
        store = self._store
        revisioned: RevisionedCatalogStore | None = (
            store if isinstance(store, RevisionedCatalogStore) else None
        )
        memo = self._memo
        snapshot: ModelSnapshot | None = None
        if (
            memo is not None
            and revisioned is not None
            and memo.source() is source
            and memo.policy is policy
            and memo.on_invalid == on_invalid
            and isinstance(source, FingerprintedModelSource)
            and await revisioned.revision() == memo.revision
        ):
            snapshot = await source.fetch_models_since(memo.fingerprint)
            if snapshot is None:
                # the same answer as last time: if still no one wrote, the result is known
                if await revisioned.revision() == memo.revision:
                    return self._replay(memo, started)
                snapshot = await source.fetch_models()
            _check_snapshot(snapshot)
        self._memo = None
        if snapshot is None:
            snapshot = await _snapshot_of(source)
        if snapshot.problems and on_invalid == "abort":
            first = snapshot.problems[0]
            raise UpstreamError(
                "catalog.invalid_source", problems=len(snapshot.problems), reason=_problem_text(first)
            )
        remember = (
            revisioned is not None
            and snapshot.fingerprint is not None
            and not snapshot.is_fallback
            and isinstance(source, FingerprintedModelSource)
        )
        seen_revision = await revisioned.revision() if remember and revisioned is not None else None
        current = {m.model_id: m for m in await store.list_models()}
        now = self._clock.now()
        plan = _plan(snapshot, current, policy, now)
        before = store.rows_written
        memo_revision = seen_revision
        if plan.inserts or plan.updates:
            if revisioned is not None:
                first_rev, last_rev = await revisioned.apply_tracked(plan.inserts, plan.updates)
                memo_revision = last_rev if first_rev is not None and first_rev == seen_revision else None
            else:
                await store.apply(plan.inserts, plan.updates)
            for model in (*plan.inserts, *plan.updates):
                current[model.model_id] = model
        written = store.rows_written - before
        self._set_snapshot(current.values())
        report = SyncReport(
            added=tuple(plan.added),
            updated=tuple(plan.updated),
            unchanged=tuple(plan.unchanged),
            unavailable=tuple(sorted(plan.gone)),
            restored=tuple(plan.restored),
            conflicts=tuple(plan.conflicts),
            errors=tuple(_problem_text(p) for p in snapshot.problems),
            duration_ms=round((self._clock.monotonic() - started) * 1000, 3),
            source=snapshot.source,
            rows_written=written,
        )
        if remember and memo_revision is not None:
            self._remember(source, snapshot, policy, on_invalid, memo_revision, report, plan, current, now)
        _log.info("catalog.synced", **report.summary())
        return report

    def _remember(
        self,
        source: Any,
        snapshot: ModelSnapshot,
        policy: ConflictPolicy,
        on_invalid: str,
        revision: int,
        report: SyncReport,
        plan: _Plan,
        current: dict[str, CatalogModel],
        now: datetime,
    ) -> None:
        """Remember what syncing *snapshot* again onto *current* (the catalog at *revision*) reports."""
        if plan.inserts or plan.updates:
            # the catalog changed: work out what the same answer does to it now (usually nothing)
            plan = _plan(snapshot, current, policy, now)
            if plan.inserts or plan.updates:
                return
        assert snapshot.fingerprint is not None
        try:
            ref = weakref.ref(source)
        except TypeError:
            return
        self._memo = _NoopMemo(
            source=ref,
            fingerprint=snapshot.fingerprint,
            policy=policy,
            on_invalid=on_invalid,
            revision=revision,
            unchanged=tuple(plan.unchanged),
            conflicts=tuple(plan.conflicts),
            errors=report.errors,
            source_name=snapshot.source,
        )

    def _replay(self, memo: _NoopMemo, started: float) -> SyncReport:
        """The report of a sync that found the same answer and an unchanged catalog."""
        self._loaded_at = self._clock.monotonic()  # the in-memory snapshot is confirmed current
        report = SyncReport(
            unchanged=memo.unchanged,
            conflicts=memo.conflicts,
            errors=memo.errors,
            duration_ms=round((self._clock.monotonic() - started) * 1000, 3),
            source=memo.source_name,
            rows_written=0,
        )
        _log.info("catalog.synced", **report.summary())
        return report

    # -- local edits ----------------------------------------------------------------------

    async def update_model_metadata(
        self,
        model_id: str,
        *,
        input_price: Decimal | None = _UNSET,
        output_price: Decimal | None = _UNSET,
        context_window: int | None = _UNSET,
        max_output_tokens: int | None = _UNSET,
        capabilities: Iterable[str] = _UNSET,
    ) -> CatalogModel:
        """Edit *model_id* locally; the edited fields become local overrides.

        Raises:
            NotFoundError: ``catalog.model_not_found``.
            ValidationError: ``catalog.invalid_price`` / ``catalog.invalid_limit`` /
                ``catalog.invalid_field`` for a bad value (nothing is written).
        """
        model_id = check_model_id(model_id)
        old = await self._store.get(model_id)
        if old is None:
            raise NotFoundError("catalog.model_not_found", model=model_id)
        changes: dict[str, Any] = {}
        for name, value in (
            ("input_price", input_price),
            ("output_price", output_price),
            ("context_window", context_window),
            ("max_output_tokens", max_output_tokens),
            ("capabilities", capabilities),
        ):
            if value is not _UNSET:
                changes[name] = value
        if not changes:
            return old
        new = attrs.evolve(old, **changes)  # validates
        new = attrs.evolve(new, local_overrides=old.local_overrides | frozenset(changes.keys()))
        if new != old:
            new = attrs.evolve(new, updated_at=self._clock.now())
            self._memo = None
            await self._store.apply((), (new,))
            await self.refresh()
        return new

    async def mark_unavailable(self, model_ids: Iterable[str]) -> tuple[str, ...]:
        """Mark models unavailable (nothing is deleted, so references stay valid).

        Unknown ids are ignored. Returns the ids that changed.
        """
        return await self._set_available([check_model_id(m) for m in model_ids], False)

    async def mark_available(self, model_ids: Iterable[str]) -> tuple[str, ...]:
        """Mark models available again; returns the ids that changed."""
        return await self._set_available([check_model_id(m) for m in model_ids], True)

    async def _set_available(self, ids: list[str], available: bool) -> tuple[str, ...]:
        wanted = set(ids)
        now = self._clock.now()
        changes = [
            attrs.evolve(m, available=available, unavailable_since=None if available else now, updated_at=now)
            for m in await self._store.list_models()
            if m.model_id in wanted and m.available is not available
        ]
        if changes:
            self._memo = None
            await self._store.apply((), changes)
            await self.refresh()
        return tuple(m.model_id for m in changes)

    # -- reads ----------------------------------------------------------------------------

    async def require_available(self, model_id: str) -> CatalogModel:
        """The catalog entry of *model_id*, if it may be used now.

        Reads the in-memory snapshot (reloaded once older than ``snapshot_ttl``).

        Raises:
            NotFoundError: ``model.not_found`` when the catalog does not know it.
            UnavailableError: ``model.unavailable`` when it is gone upstream.
        """
        loaded = self._loaded_at
        if loaded is None or self._clock.monotonic() - loaded >= self._ttl:
            await self.refresh()
        model = self._snapshot.get(model_id)
        if model is None:
            raise NotFoundError("model.not_found", model=str(model_id)[:256])
        if not model.available:
            raise UnavailableError("model.unavailable", model=model_id)
        return model

    async def get(self, model_id: str) -> CatalogModel | None:
        """The model with *model_id*, or ``None``."""
        return await self._store.get(model_id)

    async def list_models(self, *, available_only: bool = False) -> list[CatalogModel]:
        """Every model (or only the available ones), sorted by id."""
        models = await self._store.list_models()
        return [m for m in models if m.available] if available_only else models

    async def validate_integrity(self, references: Sequence[ReferenceSource] = ()) -> IntegrityReport:
        """Check the catalog: duplicate ids (ignoring case), bad prices, dangling references.

        Args:
            references: callables listing ``(referrer, model_id)`` pairs, e.g. subscriptions and
                keys that name models.
        """
        models = await self._store.list_models()
        issues: list[IntegrityIssue] = []
        folded: dict[str, str] = {}
        for m in models:
            key = m.model_id.casefold()
            if key in folded:
                issues.append(IntegrityIssue("duplicate", m.model_id, f"same as {folded[key]}"))
            else:
                folded[key] = m.model_id
            for field in ("input_price", "output_price"):
                value = getattr(m, field)
                if value is not None and (
                    not value.is_finite() or value < 0 or value > MAX_CATALOG_PRICE_PER_TOKEN
                ):
                    issues.append(IntegrityIssue("invalid_price", m.model_id, field))
        by_id = {m.model_id: m for m in models}
        for source in references:
            for referrer, model_id in await source():
                model = by_id.get(model_id)
                if model is None:
                    issues.append(IntegrityIssue("dangling_reference", model_id, str(referrer)))
                elif not model.available:
                    issues.append(IntegrityIssue("unavailable_reference", model_id, str(referrer)))
        return IntegrityReport(len(models), tuple(issues))


def _plan(
    snapshot: ModelSnapshot, current: Mapping[str, CatalogModel], policy: ConflictPolicy, now: datetime
) -> _Plan:
    """Compare *snapshot* with the catalog rows *current*: the writes needed and the report."""
    plan = _Plan()
    unchanged = plan.unchanged
    seen: set[str] = set()
    source = snapshot.source
    for info in snapshot.models:
        name = info.model_name
        seen.add(name)
        old = current.get(name)
        if (
            old is not None
            and old.available
            and not old.local_overrides
            # the common case, compared as plain tuples
            and (
                old.provider,
                old.upstream_model,
                old.input_price,
                old.output_price,
                old.context_window,
                old.max_output_tokens,
                old.capabilities,
            )
            == (
                info.provider,
                info.upstream_model,
                info.input_cost_per_token,
                info.output_cost_per_token,
                info.context_window,
                info.max_output_tokens,
                info.capabilities,
            )
        ):
            unchanged.append(name)
            continue
        if old is None:
            plan.inserts.append(_row_from_info(info, source, now))
            plan.added.append(name)
            continue
        remote = CatalogModel.from_info(info, source=source)
        new, model_conflicts = _merge(old, remote, policy)
        plan.conflicts.extend(f"{name}: {f}" for f in model_conflicts)
        if policy is ConflictPolicy.REPORT_ONLY and model_conflicts:
            new = old
        if not old.available:
            new = attrs.evolve(new, available=True, unavailable_since=None)
            plan.restored.append(name)
        if new == old:
            unchanged.append(name)
            continue
        plan.updates.append(attrs.evolve(new, updated_at=now, source=source))
        if new.synced_values() != old.synced_values() or new.local_overrides != old.local_overrides:
            plan.updated.append(name)
    if not snapshot.is_fallback:
        skipped = {p.model_name for p in snapshot.problems if p.model_name}
        for name, old in current.items():
            if name not in seen and name not in skipped and old.available:
                plan.updates.append(attrs.evolve(old, available=False, unavailable_since=now, updated_at=now))
                plan.gone.append(name)
    return plan


_set = object.__setattr__


def _row_from_info(info: ModelInfo, source: str, now: datetime) -> CatalogModel:
    """A new row for *info*: ``CatalogModel.from_info`` with both timestamps *now*.

    Built without re-running the validators: every value was validated, by the same rules,
    when the :class:`~maaskit.services.litellm.ModelInfo` was made.
    """
    model: CatalogModel = object.__new__(CatalogModel)
    _set(model, "model_id", info.model_name)
    _set(model, "provider", info.provider)
    _set(model, "upstream_model", info.upstream_model)
    _set(model, "input_price", info.input_cost_per_token)
    _set(model, "output_price", info.output_cost_per_token)
    _set(model, "context_window", info.context_window)
    _set(model, "max_output_tokens", info.max_output_tokens)
    _set(model, "capabilities", info.capabilities)
    _set(model, "available", True)
    _set(model, "local_overrides", frozenset())
    _set(model, "source", source)
    _set(model, "created_at", now)
    _set(model, "updated_at", now)
    _set(model, "unavailable_since", None)
    return model


def _merge(old: CatalogModel, remote: CatalogModel, policy: ConflictPolicy) -> tuple[CatalogModel, list[str]]:
    """The row after applying *remote* to *old* under *policy*, and the conflicting fields."""
    conflicts = [
        f for f in SYNCED_FIELDS if f in old.local_overrides and getattr(old, f) != getattr(remote, f)
    ]
    values = {f: getattr(remote, f) for f in SYNCED_FIELDS}
    overrides = old.local_overrides
    if policy is ConflictPolicy.REMOTE_WINS:
        overrides = frozenset()
    else:
        for f in old.local_overrides:
            values[f] = getattr(old, f)
    return attrs.evolve(old, local_overrides=overrides, **values), conflicts


def _problem_text(problem: ModelProblem) -> str:
    name = f" {problem.model_name}" if problem.model_name else ""
    return f"#{problem.index}{name}: {problem.reason}"


def _check_snapshot(snapshot: object) -> ModelSnapshot:
    if not isinstance(snapshot, ModelSnapshot):
        raise ValidationError("catalog.invalid_config", reason="fetch_models must return a ModelSnapshot")
    return snapshot


async def _snapshot_of(source: Any) -> ModelSnapshot:
    if isinstance(source, ModelSnapshot):
        return source
    if isinstance(source, ModelSource):
        return _check_snapshot(await source.fetch_models())
    if isinstance(source, Sequence) and all(isinstance(m, ModelInfo) for m in source):
        names = [m.model_name for m in source]
        if len(set(names)) != len(names):
            problems = tuple(
                ModelProblem(i, n, "duplicate model name") for i, n in enumerate(names) if names.count(n) > 1
            )
            dup = {p.model_name for p in problems}
            return ModelSnapshot(tuple(m for m in source if m.model_name not in dup), problems)
        return ModelSnapshot(tuple(source))
    raise ValidationError(
        "catalog.invalid_config", reason="source must be a ModelSource, snapshot or ModelInfo list"
    )


class CatalogPricing:
    """A :class:`~maaskit.services.pricing.PricingService` reading the catalog's in-memory snapshot.

    ``price()`` is a dict lookup: prices are built when the snapshot is refreshed (after every
    sync or edit through the catalog, and by ``refresh()``). A model without both prices has no
    price (``None``; ``cost_micros`` raises ``pricing.unknown_model``). Unavailable models keep
    their price, so in-flight requests are still billed.

    Args:
        catalog: the :class:`DefaultModelCatalog` to read.
    """

    __slots__ = ("_catalog",)

    def __init__(self, catalog: DefaultModelCatalog) -> None:
        self._catalog = catalog

    def __repr__(self) -> str:
        return f"CatalogPricing({len(self._catalog.snapshot)} models)"

    def price(self, model: str) -> ModelPrice | None:
        """The price of *model*, or ``None``."""
        return self._catalog.cached_price(model)

    def _require(self, model: str) -> ModelPrice:
        price = self._catalog.cached_price(model)
        if price is None:
            raise NotFoundError("pricing.unknown_model", model=str(model)[:256])
        return price

    def cost_micros(self, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost of a finished call in micro-dollars, rounded up."""
        return self._require(model).cost_micros(prompt_tokens, completion_tokens)

    def max_cost_micros(self, model: str, prompt_tokens_estimate: int, max_tokens: int) -> int:
        """The reservation for a call: prompt estimate plus *max_tokens* output."""
        return self._require(model).cost_micros(prompt_tokens_estimate, max_tokens)
