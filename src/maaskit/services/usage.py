"""Usage metering: buffered, batched, idempotent records of every request, and reports.

:meth:`UsageService.record` sits on every request's path, so it does no I/O: it appends the
record to an in-process buffer and returns. A background flusher writes the buffer to a
:class:`~maaskit.storage.ports.usage.UsageStore` in batches, every ``flush_interval`` seconds
or as soon as ``batch_size`` records are waiting. Records are idempotent by ``request_id``: a
batch whose write failed or was cancelled goes back to the front of the buffer and is written
again later, and the store keeps the first copy of each request id, so nothing is lost and
nothing is counted twice. Closing the service drains the buffer.

Example::

    from datetime import UTC, datetime, timedelta

    from maaskit.clock import SystemClock
    from maaskit.services.usage import DefaultUsageService, UsageRecord
    from maaskit.storage.memory.usage import MemoryUsageStore

    async with DefaultUsageService(MemoryUsageStore(), SystemClock()) as usage:
        usage.record(
            UsageRecord(
                request_id="req_1", key_id="k_1", owner_id="u_1", model="gpt-4o-mini",
                prompt_tokens=12, completion_tokens=30, total_tokens=42, cost_micros=27,
                created_at=datetime.now(UTC),
            )
        )
        await usage.flush()
        now = datetime.now(UTC)
        rows = await usage.report(now - timedelta(days=1), now + timedelta(seconds=1))

Overflow policy: the buffer holds at most ``max_buffer`` records waiting for the store. When it
is full (the store has been failing for a while), the default policy ``"refuse"`` makes
:meth:`~DefaultUsageService.record` raise ``usage.buffer_full`` so the caller still holds the
record and knows it was not accepted (money is never dropped silently); ``"drop_oldest"``
discards the oldest waiting record instead, counts it in :class:`UsageStats` and logs a warning.
:attr:`DefaultUsageService.saturated` and :meth:`~DefaultUsageService.ping` let an admission
path refuse new work before that happens.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from types import TracebackType
from typing import Final, Literal, Protocol, Self, get_args, runtime_checkable

import attrs
import structlog

from maaskit._tasks import positive_seconds
from maaskit.clock import Clock, to_utc
from maaskit.errors import UnavailableError, ValidationError
from maaskit.money import MAX_MICROS, from_micros
from maaskit.storage.ports.usage import UsageStore

__all__ = [
    "DefaultUsageService",
    "Dimension",
    "OverflowPolicy",
    "UsageQuery",
    "UsageRecord",
    "UsageRow",
    "UsageService",
    "UsageSource",
    "UsageStats",
    "UsageStatus",
    "sort_usage_rows",
]

log = structlog.get_logger(__name__)

#: Whether the token counts came from the upstream or were estimated by the gateway.
UsageSource = Literal["reported", "estimated"]
#: How the request ended.
UsageStatus = Literal["ok", "error", "cancelled"]
#: A dimension a report can group by (``"day"`` is the UTC calendar day of ``created_at``).
Dimension = Literal["key", "owner", "team", "model", "upstream", "day"]
#: What :meth:`DefaultUsageService.record` does when the buffer is full.
OverflowPolicy = Literal["refuse", "drop_oldest"]

_SOURCES: Final = frozenset(get_args(UsageSource))
_STATUSES: Final = frozenset(get_args(UsageStatus))
_DIMENSIONS: Final = get_args(Dimension)
_POLICIES: Final = frozenset(get_args(OverflowPolicy))
#: Longest accepted ``request_id``, ``key_id``, ``owner_id``, ``team_id`` and ``upstream``.
MAX_ID_LENGTH: Final = 128
#: Longest accepted model name.
MAX_MODEL_LENGTH: Final = 256
_MAX_INT: Final = 2**63 - 1
_MAX_LATENCY_MS: Final = 2**31 - 1


def _invalid(field: str, reason: str) -> ValidationError:
    return ValidationError("usage.invalid", field=field, reason=reason)


def _check_text(field: str, value: object, max_length: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise _invalid(field, "must be a string")
    if not value or len(value) > max_length:
        raise _invalid(field, f"must be 1 to {max_length} characters")
    if not value.isprintable():
        raise _invalid(field, "must not contain control characters")


def _check_count(field: str, value: object, maximum: int = _MAX_INT) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(field, "must be an integer")
    if value < 0 or value > maximum:
        raise _invalid(field, f"must be between 0 and {maximum}")


def _check_aware(field: str, value: object) -> None:
    if not isinstance(value, datetime):
        raise _invalid(field, "must be a datetime")
    try:
        to_utc(value)  # aware, and a UTC datetime exists (not beyond year 9999 or before year 1)
    except ValueError as exc:
        raise _invalid(field, str(exc)) from None


@attrs.frozen
class UsageRecord:
    """The usage of one request, as recorded after it ended.

    Every field is validated on construction; a bad value raises
    :class:`~maaskit.errors.ValidationError` ``usage.invalid`` naming the field.
    ``created_at`` is normalised to UTC.

    Attributes:
        request_id: the idempotency key: a request id is stored at most once.
        key_id: the API key that made the request.
        owner_id: the key's owner (user or service account).
        model: the model requested.
        prompt_tokens: input tokens (>= 0).
        completion_tokens: output tokens (>= 0).
        total_tokens: total tokens as reported or estimated (>= 0).
        cost_micros: the exact cost in integer micro-units (>= 0; never a float).
        created_at: when the request ended (aware).
        team_id: the team the key spends for, if any.
        upstream: name of the upstream that served it, if any.
        usage_source: ``"reported"`` by the upstream or ``"estimated"`` by the gateway.
        status: ``"ok"``, ``"error"`` or ``"cancelled"`` (client went away).
        streamed: whether the response was streamed.
        latency_ms: end-to-end latency in whole milliseconds (>= 0).
    """

    request_id: str
    key_id: str
    owner_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_micros: int
    created_at: datetime
    team_id: str | None = None
    upstream: str | None = None
    usage_source: UsageSource = "reported"
    status: UsageStatus = "ok"
    streamed: bool = False
    latency_ms: int = 0

    def __attrs_post_init__(self) -> None:
        _check_text("request_id", self.request_id, MAX_ID_LENGTH)
        _check_text("key_id", self.key_id, MAX_ID_LENGTH)
        _check_text("owner_id", self.owner_id, MAX_ID_LENGTH)
        _check_text("team_id", self.team_id, MAX_ID_LENGTH, optional=True)
        _check_text("model", self.model, MAX_MODEL_LENGTH)
        _check_text("upstream", self.upstream, MAX_ID_LENGTH, optional=True)
        _check_count("prompt_tokens", self.prompt_tokens)
        _check_count("completion_tokens", self.completion_tokens)
        _check_count("total_tokens", self.total_tokens)
        _check_count("cost_micros", self.cost_micros, MAX_MICROS)
        _check_count("latency_ms", self.latency_ms, _MAX_LATENCY_MS)
        if not isinstance(self.usage_source, str) or self.usage_source not in _SOURCES:
            raise _invalid("usage_source", "must be 'reported' or 'estimated'")
        if not isinstance(self.status, str) or self.status not in _STATUSES:
            raise _invalid("status", "must be 'ok', 'error' or 'cancelled'")
        if not isinstance(self.streamed, bool):
            raise _invalid("streamed", "must be a bool")
        _check_aware("created_at", self.created_at)
        if self.created_at.tzinfo is not UTC:
            object.__setattr__(self, "created_at", self.created_at.astimezone(UTC))

    @property
    def cost(self) -> Decimal:
        """The cost in currency units (exact ``Decimal``)."""
        return from_micros(self.cost_micros)

    @classmethod
    def _unchecked(
        cls,
        request_id: str,
        key_id: str,
        owner_id: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        total_tokens: int,
        cost_micros: int,
        created_at: datetime,
        team_id: str | None,
        upstream: str | None,
        usage_source: UsageSource,
        status: UsageStatus,
        streamed: bool,
        latency_ms: int,
    ) -> UsageRecord:
        # Skips validation: only for callers that checked every value themselves (the admission
        # hot path, which falls back to the validating constructor when in doubt). The slots are
        # filled through their descriptors: about four times cheaper than the validating path.
        record = _new(cls)
        _SET_REQUEST_ID(record, request_id)
        _SET_KEY_ID(record, key_id)
        _SET_OWNER_ID(record, owner_id)
        _SET_MODEL(record, model)
        _SET_PROMPT(record, prompt_tokens)
        _SET_COMPLETION(record, completion_tokens)
        _SET_TOTAL(record, total_tokens)
        _SET_COST(record, cost_micros)
        _SET_CREATED(record, created_at)
        _SET_TEAM(record, team_id)
        _SET_UPSTREAM(record, upstream)
        _SET_SOURCE(record, usage_source)
        _SET_STATUS(record, status)
        _SET_STREAMED(record, streamed)
        _SET_LATENCY(record, latency_ms)
        return record


_new = object.__new__
# the slot descriptors' setters, by field name
_SLOT_SET: Final = {a.name: UsageRecord.__dict__[a.name].__set__ for a in attrs.fields(UsageRecord)}
assert len(_SLOT_SET) == 15  # _unchecked sets every field
_SET_REQUEST_ID = _SLOT_SET["request_id"]
_SET_KEY_ID = _SLOT_SET["key_id"]
_SET_OWNER_ID = _SLOT_SET["owner_id"]
_SET_MODEL = _SLOT_SET["model"]
_SET_PROMPT = _SLOT_SET["prompt_tokens"]
_SET_COMPLETION = _SLOT_SET["completion_tokens"]
_SET_TOTAL = _SLOT_SET["total_tokens"]
_SET_COST = _SLOT_SET["cost_micros"]
_SET_CREATED = _SLOT_SET["created_at"]
_SET_TEAM = _SLOT_SET["team_id"]
_SET_UPSTREAM = _SLOT_SET["upstream"]
_SET_SOURCE = _SLOT_SET["usage_source"]
_SET_STATUS = _SLOT_SET["status"]
_SET_STREAMED = _SLOT_SET["streamed"]
_SET_LATENCY = _SLOT_SET["latency_ms"]


def _group_by(value: Iterable[str] | str) -> tuple[Dimension, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        dims = tuple(value)
    except TypeError:
        raise _invalid("group_by", "must be a sequence of dimensions") from None
    for dim in dims:
        if dim not in _DIMENSIONS:
            raise _invalid("group_by", f"unknown dimension; use {', '.join(_DIMENSIONS)}")
    if len(set(dims)) != len(dims):
        raise _invalid("group_by", "a dimension is repeated")
    return dims  # type: ignore[return-value]


@attrs.frozen
class UsageQuery:
    """What a report aggregates: a time range, optional filters and the grouping.

    Validated on construction (``usage.invalid``). ``start`` is inclusive, ``end`` exclusive.

    Attributes:
        start: first instant included (aware).
        end: first instant excluded (aware, after ``start``).
        key_id: only this key, if given.
        owner_id: only this owner, if given.
        team_id: only this team, if given.
        model: only this model, if given.
        group_by: the dimensions to group by, in order; empty for one total row.
    """

    start: datetime
    end: datetime
    key_id: str | None = None
    owner_id: str | None = None
    team_id: str | None = None
    model: str | None = None
    group_by: tuple[Dimension, ...] = attrs.field(default=("key", "model", "day"), converter=_group_by)

    def __attrs_post_init__(self) -> None:
        _check_aware("start", self.start)
        _check_aware("end", self.end)
        if not self.start < self.end:
            raise _invalid("end", "must be after start")
        _check_text("key_id", self.key_id, MAX_ID_LENGTH, optional=True)
        _check_text("owner_id", self.owner_id, MAX_ID_LENGTH, optional=True)
        _check_text("team_id", self.team_id, MAX_ID_LENGTH, optional=True)
        _check_text("model", self.model, MAX_MODEL_LENGTH, optional=True)


@attrs.frozen
class UsageRow:
    """One line of a usage report: the group's dimensions and its totals.

    A dimension that is not grouped by is ``None`` (``team_id`` and ``upstream`` may also be
    ``None`` as a group value: requests without a team or upstream).

    Attributes:
        key_id: the key, when grouped by ``"key"``.
        owner_id: the owner, when grouped by ``"owner"``.
        team_id: the team, when grouped by ``"team"``.
        model: the model, when grouped by ``"model"``.
        upstream: the upstream, when grouped by ``"upstream"``.
        day: the UTC calendar day, when grouped by ``"day"``.
        requests: number of requests.
        errors: requests whose status is not ``"ok"``.
        prompt_tokens: sum of input tokens.
        completion_tokens: sum of output tokens.
        total_tokens: sum of total tokens.
        cost_micros: sum of costs in micro-units.
    """

    key_id: str | None = None
    owner_id: str | None = None
    team_id: str | None = None
    model: str | None = None
    upstream: str | None = None
    day: date | None = None
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_micros: int = 0

    @property
    def cost(self) -> Decimal:
        """The summed cost in currency units (exact ``Decimal``)."""
        return from_micros(self.cost_micros)

    def dimension(self, dim: Dimension) -> str | date | None:
        """The value of *dim* in this row."""
        return getattr(self, _ROW_FIELDS[dim])  # type: ignore[no-any-return]


_ROW_FIELDS: Final[dict[str, str]] = {
    "key": "key_id",
    "owner": "owner_id",
    "team": "team_id",
    "model": "model",
    "upstream": "upstream",
    "day": "day",
}


def sort_usage_rows(rows: Iterable[UsageRow], group_by: Sequence[Dimension]) -> list[UsageRow]:
    """Sort report rows by the *group_by* dimensions in order, ``None`` after every value.

    Stores use it so every backend returns rows in the same order.
    """

    def key(row: UsageRow) -> tuple[tuple[bool, str | date], ...]:
        parts: list[tuple[bool, str | date]] = []
        for dim in group_by:
            value = row.dimension(dim)
            parts.append((True, "") if value is None else (False, value))
        return tuple(parts)

    return sorted(rows, key=key)


@attrs.frozen
class UsageStats:
    """Counters of a usage service since it was created.

    Attributes:
        buffered: records waiting in the buffer now.
        recorded: records accepted by ``record``.
        written: records handed to the store by successful flushes (duplicates included).
        batches: successful batch writes.
        failed_flushes: batch writes that failed or were cancelled (their records were requeued).
        refused: records refused because the buffer was full (policy ``"refuse"``).
        dropped: oldest records discarded because the buffer was full (policy ``"drop_oldest"``).
        last_flush_at: when the last successful batch write finished.
        last_error: the exception type of the last failed write, if any.
    """

    buffered: int
    recorded: int
    written: int
    batches: int
    failed_flushes: int
    refused: int
    dropped: int
    last_flush_at: datetime | None
    last_error: str | None


@runtime_checkable
class UsageService(Protocol):
    """Records usage cheaply on the request path and reports on it."""

    def record(self, record: UsageRecord) -> None:
        """Accept *record* for writing (no I/O). Must be called on the service's event loop."""
        ...

    async def flush(self) -> int:
        """Write every record buffered at the time of the call; return how many were written."""
        ...

    async def report(
        self,
        start: datetime,
        end: datetime,
        *,
        key_id: str | None = None,
        owner_id: str | None = None,
        team_id: str | None = None,
        model: str | None = None,
        group_by: Sequence[Dimension] = ("key", "model", "day"),
    ) -> list[UsageRow]:
        """Stored usage in ``[start, end)``, filtered and grouped (aggregated by the store)."""
        ...

    async def totals(
        self,
        start: datetime,
        end: datetime,
        *,
        key_id: str | None = None,
        owner_id: str | None = None,
        team_id: str | None = None,
        model: str | None = None,
    ) -> UsageRow:
        """One row with the stored totals in ``[start, end)`` for the filters."""
        ...

    def stats(self) -> UsageStats:
        """The service's counters."""
        ...

    async def start(self) -> None:
        """Start the background flusher."""
        ...

    async def aclose(self) -> None:
        """Stop the flusher and write every buffered record."""
        ...


class DefaultUsageService:
    """Buffered, batched, idempotent usage recording over a :class:`UsageStore`.

    Use it as an async context manager (or call :meth:`start` and :meth:`aclose`): the
    background flusher runs in between, and leaving the block writes every buffered record.

    Args:
        store: where batches go (memory or SQL backend).
        clock: the time source (``last_flush_at`` in :meth:`stats`).
        flush_interval: the longest a record waits in the buffer before a flush starts, in
            seconds (> 0).
        batch_size: records per store write; a flush also starts as soon as this many wait.
        max_buffer: the most records waiting before the overflow policy applies
            (>= ``batch_size``). Requeued batches are never dropped, even above this limit.
        overflow: ``"refuse"`` (default: :meth:`record` raises ``usage.buffer_full``) or
            ``"drop_oldest"`` (discard the oldest waiting record, counted and logged).
        retry_delay: seconds the flusher waits after a failed write before trying again
            (defaults to ``flush_interval``).

    Raises:
        ValidationError: ``config.invalid`` for an out-of-range setting.
    """

    def __init__(
        self,
        store: UsageStore,
        clock: Clock,
        *,
        flush_interval: float = 1.0,
        batch_size: int = 5000,
        max_buffer: int = 100_000,
        overflow: OverflowPolicy = "refuse",
        retry_delay: float | None = None,
    ) -> None:
        if not positive_seconds(flush_interval):
            raise ValidationError("config.invalid", setting="usage.flush_interval", reason=_CFG_INTERVAL)
        if retry_delay is not None and not positive_seconds(retry_delay):
            raise ValidationError("config.invalid", setting="usage.retry_delay", reason=_CFG_RETRY)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValidationError("config.invalid", setting="usage.batch_size", reason=_CFG_BATCH)
        if not isinstance(max_buffer, int) or isinstance(max_buffer, bool) or max_buffer < batch_size:
            raise ValidationError("config.invalid", setting="usage.max_buffer", reason=_CFG_MAX)
        if overflow not in _POLICIES:
            raise ValidationError("config.invalid", setting="usage.overflow", reason=_CFG_POLICY)
        self._store = store
        self._clock = clock
        self._flush_interval = float(flush_interval)
        self._retry_delay = float(retry_delay if retry_delay is not None else flush_interval)
        self._batch_size = batch_size
        self._max_buffer = max_buffer
        self._drop_oldest = overflow == "drop_oldest"
        self._buffer: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._overflowing = False
        self._recorded = 0
        self._written = 0
        self._batches = 0
        self._failed = 0
        self._refused = 0
        self._dropped = 0
        self._last_flush_at: datetime | None = None
        self._last_error: str | None = None

    def __repr__(self) -> str:
        return (
            f"DefaultUsageService(buffered={len(self._buffer)}, batch_size={self._batch_size}, "
            f"flush_interval={self._flush_interval})"
        )

    # -- the hot path -------------------------------------------------------------------------

    def record(self, record: UsageRecord) -> None:
        """Accept *record* for writing; no I/O, a few hundred nanoseconds.

        Call it on the event loop the service runs on (it may wake the flusher). Records with a
        ``request_id`` already stored are ignored by the store when flushed.

        Raises:
            ValidationError: ``usage.invalid`` if *record* is not a :class:`UsageRecord`.
            UnavailableError: ``usage.closed`` after :meth:`aclose`; ``usage.buffer_full`` when
                ``max_buffer`` records are waiting and the policy is ``"refuse"``.
        """
        if not isinstance(record, UsageRecord):
            raise _invalid("record", "expected a UsageRecord")
        if self._closed:
            raise UnavailableError("usage.closed")
        buffer = self._buffer
        if len(buffer) >= self._max_buffer:
            self._on_overflow()
        buffer.append(record)
        self._recorded += 1
        if len(buffer) >= self._batch_size:
            self._wake.set()

    def _on_overflow(self) -> None:
        if not self._overflowing:
            self._overflowing = True
            log.warning(
                "usage.buffer_full",
                limit=self._max_buffer,
                policy="drop_oldest" if self._drop_oldest else "refuse",
                last_error=self._last_error,
            )
        if self._drop_oldest:
            self._buffer.popleft()
            self._dropped += 1
            return
        self._refused += 1
        raise UnavailableError("usage.buffer_full", limit=self._max_buffer)

    @property
    def saturated(self) -> bool:
        """``True`` while the buffer is full (new records are refused or displace old ones)."""
        return len(self._buffer) >= self._max_buffer

    def pending(self) -> tuple[UsageRecord, ...]:
        """A snapshot of the records waiting to be written, oldest first.

        After a failed :meth:`aclose` they are what an application may save elsewhere.
        """
        return tuple(self._buffer)

    def stats(self) -> UsageStats:
        """The service's counters."""
        return UsageStats(
            buffered=len(self._buffer),
            recorded=self._recorded,
            written=self._written,
            batches=self._batches,
            failed_flushes=self._failed,
            refused=self._refused,
            dropped=self._dropped,
            last_flush_at=self._last_flush_at,
            last_error=self._last_error,
        )

    async def ping(self) -> None:
        """Health check: raises ``usage.buffer_full`` while the buffer is full."""
        if self.saturated:
            raise UnavailableError("usage.buffer_full", limit=self._max_buffer)

    # -- flushing -----------------------------------------------------------------------------

    async def flush(self) -> int:
        """Write every record buffered when the call starts, in batches; return how many.

        Concurrent flushes run one after the other. If a batch write fails or is cancelled,
        that batch goes back to the front of the buffer (in order) and the error propagates;
        batches written before it stay written.
        """
        return await self._flush(drain=False)

    async def _flush(self, *, drain: bool) -> int:
        async with self._flush_lock:
            buffer = self._buffer
            remaining = len(buffer)
            written = 0
            while buffer and (drain or remaining > 0):
                size = min(self._batch_size, len(buffer)) if drain else min(self._batch_size, remaining)
                batch = [buffer.popleft() for _ in range(size)]
                try:
                    await self._store.add_many(batch)
                except BaseException as exc:
                    buffer.extendleft(reversed(batch))
                    self._failed += 1
                    self._last_error = type(exc).__name__
                    raise
                remaining -= size
                written += size
                self._written += size
                self._batches += 1
                self._last_flush_at = self._clock.now()
            if self._overflowing and len(buffer) < self._max_buffer:
                self._overflowing = False
                log.info("usage.buffer_recovered", refused=self._refused, dropped=self._dropped)
            return written

    async def _run(self) -> None:
        while not self._closed:
            if len(self._buffer) < self._batch_size:
                await _wait(self._wake, self._flush_interval)
            self._wake.clear()
            if self._closed:
                return
            if not self._buffer:
                continue
            try:
                await self.flush()
            except Exception as exc:
                log.warning(
                    "usage.flush_failed",
                    error=type(exc).__name__,
                    pending=len(self._buffer),
                    retry_in=self._retry_delay,
                )
                await _wait(self._stop, self._retry_delay)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background flusher (idempotent).

        Raises:
            UnavailableError: ``usage.closed`` after :meth:`aclose`.
        """
        if self._closed:
            raise UnavailableError("usage.closed")
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="maaskit-usage-flusher")

    async def aclose(self) -> None:
        """Stop accepting records, let an in-flight write finish, then write everything buffered.

        Safe to call twice. Cancelling ``aclose`` cancels the in-flight write, whose batch is
        requeued (see :meth:`pending`).

        Raises:
            UnavailableError: ``usage.unflushed`` if the store failed while draining; the
                records it did not take stay in :meth:`pending` (and are logged as a count).
        """
        self._closed = True
        self._wake.set()
        self._stop.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                await asyncio.wait([task])
            except asyncio.CancelledError:
                task.cancel()
                raise
        try:
            await self._flush(drain=True)
        except Exception as exc:
            log.error("usage.unflushed", pending=len(self._buffer), error=type(exc).__name__)
            raise UnavailableError("usage.unflushed", pending=len(self._buffer)) from exc

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- reports ------------------------------------------------------------------------------

    async def report(
        self,
        start: datetime,
        end: datetime,
        *,
        key_id: str | None = None,
        owner_id: str | None = None,
        team_id: str | None = None,
        model: str | None = None,
        group_by: Sequence[Dimension] = ("key", "model", "day"),
    ) -> list[UsageRow]:
        """Stored usage in ``[start, end)``, filtered and grouped; aggregated by the store (SQL).

        Records still in the buffer are not included; call :meth:`flush` first for them.

        Args:
            start: first instant included (aware).
            end: first instant excluded (aware, after ``start``).
            key_id: only this key (exact match).
            owner_id: only this owner.
            team_id: only this team.
            model: only this model.
            group_by: dimensions among ``key``, ``owner``, ``team``, ``model``, ``upstream``
                and ``day`` (the UTC calendar day); empty for a single total row.

        Raises:
            ValidationError: ``usage.invalid`` for naive or reversed times, an unknown or
                repeated dimension, or a malformed filter.
        """
        query = UsageQuery(
            start=start,
            end=end,
            key_id=key_id,
            owner_id=owner_id,
            team_id=team_id,
            model=model,
            group_by=group_by,
        )
        return await self._store.aggregate(query)

    async def totals(
        self,
        start: datetime,
        end: datetime,
        *,
        key_id: str | None = None,
        owner_id: str | None = None,
        team_id: str | None = None,
        model: str | None = None,
    ) -> UsageRow:
        """One row with the stored totals in ``[start, end)`` (zeros when nothing matches).

        Raises:
            ValidationError: ``usage.invalid`` as for :meth:`report`.
        """
        rows = await self.report(
            start, end, key_id=key_id, owner_id=owner_id, team_id=team_id, model=model, group_by=()
        )
        return rows[0] if rows else UsageRow()


_CFG_INTERVAL = "usage flush_interval must be a positive number of seconds"
_CFG_RETRY = "usage retry_delay must be a positive number of seconds"
_CFG_BATCH = "usage batch_size must be a positive integer"
_CFG_MAX = "usage max_buffer must be an integer >= batch_size"
_CFG_POLICY = "usage overflow must be 'refuse' or 'drop_oldest'"


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
