"""HubService: model files from a Hugging Face-compatible hub, cached locally and tracked in the database.

Downloads go through the ``huggingface_hub`` package (extra ``hub``), which writes every file to a
process-unique ``*.incomplete`` temporary file and renames it into the cache only when it is
complete, so an interrupted download never leaves a truncated final file; a connection dropped
mid-body is resumed by the library with a ``Range`` request. Every download is recorded in a
:class:`~maaskit.storage.ports.downloads.DownloadStore` (status, total and downloaded bytes,
error code), updated while it progresses, so a host can show progress and
:meth:`DefaultHubService.resume_pending` picks unfinished requests up after a restart.

Example::

    from maaskit.clock import SystemClock
    from maaskit.services.hub import DefaultHubService
    from maaskit.storage.memory.downloads import MemoryDownloadStore

    hub = DefaultHubService(MemoryDownloadStore(), SystemClock(), cache_dir="~/.cache/maaskit/hub")
    result = await hub.download(
        "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
        "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
        progress=lambda p: print(p.downloaded_bytes, "/", p.total_bytes),
    )
    print(result.path, result.size, result.commit)
    local = await hub.find_local_file(result.repo_id, result.filename)   # offline

File names, repository ids and revisions that could escape the cache (``..``, absolute paths,
drive letters, backslashes, NUL, symlinks resolving outside the cache) are refused with
``hub.invalid_path`` before any network call. Blocking hub calls run in a worker thread; progress
callbacks are delivered on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import importlib
import os
import re
import secrets
import stat
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import attrs
import structlog
from pydantic import SecretStr

from maaskit.clock import Clock
from maaskit.errors import (
    ForbiddenError,
    MaasError,
    NotFoundError,
    UnavailableError,
    UpstreamError,
    ValidationError,
)
from maaskit.storage.ports.downloads import ACTIVE_STATUSES, DownloadRecord, DownloadStore

__all__ = [
    "DEFAULT_ENDPOINT",
    "DefaultHubService",
    "DownloadProgress",
    "DownloadRecord",
    "DownloadResult",
    "HubService",
    "LocalFile",
    "ProgressCallback",
    "ProgressThrottle",
    "validate_filename",
    "validate_repo_id",
    "validate_revision",
]

log = structlog.get_logger(__name__)

#: The public Hugging Face hub.
DEFAULT_ENDPOINT = "https://huggingface.co"

_NAME_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"^(?:{_NAME_PART}/)?{_NAME_PART}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_MAX_FILENAME = 1024
_HASH_BLOCK = 1024 * 1024


@attrs.frozen
class DownloadProgress:
    """A progress report, delivered to a download's callback on the event loop's thread.

    Attributes:
        request_id: the tracked download request.
        repo_id: repository.
        filename: file in the repository.
        downloaded_bytes: bytes received so far.
        total_bytes: the file size once the hub announced it, else ``None``.
    """

    request_id: str
    repo_id: str
    filename: str
    downloaded_bytes: int
    total_bytes: int | None


#: A progress callback: called with each :class:`DownloadProgress`; its return value is ignored.
ProgressCallback = Callable[[DownloadProgress], object]


@attrs.frozen
class DownloadResult:
    """A file present in the local cache after :meth:`HubService.download`.

    Attributes:
        request_id: the tracked download request.
        repo_id: repository.
        filename: file in the repository.
        revision: the revision asked for.
        commit: the commit the revision resolved to (40 hex).
        path: the file in the cache (a snapshot path; it may be a symlink to the blob).
        size: file size in bytes.
        etag: the hub's ETag (names the cached blob).
        downloaded_bytes: bytes transferred by this call (0 when the cache already had it).
    """

    request_id: str
    repo_id: str
    filename: str
    revision: str
    commit: str
    path: Path
    size: int
    etag: str
    downloaded_bytes: int


@attrs.frozen
class LocalFile:
    """A file found in the local cache without any network access.

    Attributes:
        repo_id: repository.
        filename: file in the repository.
        revision: the revision asked for.
        commit: the cached commit it belongs to.
        path: its snapshot path in the cache.
        size: file size in bytes.
    """

    repo_id: str
    filename: str
    revision: str
    commit: str
    path: Path
    size: int


@runtime_checkable
class HubService(Protocol):
    """Download model files from a Hugging Face-compatible hub into a local cache."""

    async def download(
        self,
        repo_id: str,
        filename: str,
        revision: str = "main",
        *,
        progress: ProgressCallback | None = None,
        token: SecretStr | str | None = None,
        endpoint: str | None = None,
    ) -> DownloadResult:
        """Download one file (or find it already cached) and return where it is."""
        ...

    async def find_local_file(self, repo_id: str, filename: str, revision: str = "main") -> LocalFile | None:
        """The cached file, or ``None``; never touches the network."""
        ...

    async def local_file_exists(self, repo_id: str, filename: str, revision: str = "main") -> bool:
        """Whether the file is in the local cache; never touches the network."""
        ...

    async def get_request(self, request_id: str) -> DownloadRecord:
        """A tracked download request (``hub.request_not_found`` if unknown)."""
        ...

    async def list_requests(
        self, *, statuses: tuple[str, ...] | None = None, limit: int = 100
    ) -> builtins.list[DownloadRecord]:
        """Tracked download requests, oldest first."""
        ...

    async def retry(
        self,
        request_id: str,
        *,
        progress: ProgressCallback | None = None,
        token: SecretStr | str | None = None,
    ) -> DownloadResult:
        """Run a tracked request again (typically a failed one)."""
        ...

    async def resume_pending(self, *, token: SecretStr | str | None = None) -> builtins.list[DownloadRecord]:
        """Run every pending or running request left over (after a restart); returns their final states."""
        ...


# -- validation ------------------------------------------------------------------------------------


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse(field: str, value: str, reason: str) -> ValidationError:
    return ValidationError("hub.invalid_path", field=field, value=_shown(value), reason=reason, param=field)


def validate_repo_id(repo_id: str) -> str:
    """Return *repo_id* (``owner/name`` or ``name``) or raise ``hub.invalid_path``."""
    if not isinstance(repo_id, str):
        raise _refuse("repo_id", repr(repo_id), "not a string")
    if _CONTROL_RE.search(repo_id):
        raise _refuse("repo_id", repo_id, "NUL or control character")
    if "\\" in repo_id:
        raise _refuse("repo_id", repo_id, "backslash")
    if ".." in repo_id or "--" in repo_id:
        raise _refuse("repo_id", repo_id, "'..' or '--'")
    if not _REPO_RE.match(repo_id):
        raise _refuse("repo_id", repo_id, "expected owner/name of letters, digits, '.', '_', '-'")
    return repo_id


def validate_revision(revision: str) -> str:
    """Return *revision* (branch, tag or commit; ``refs/pr/1`` style allowed) or raise ``hub.invalid_path``."""
    if not isinstance(revision, str):
        raise _refuse("revision", repr(revision), "not a string")
    if _CONTROL_RE.search(revision):
        raise _refuse("revision", revision, "NUL or control character")
    if "\\" in revision:
        raise _refuse("revision", revision, "backslash")
    parts = revision.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _refuse("revision", revision, "empty, '.' or '..' segment")
    if not _REVISION_RE.match(revision):
        raise _refuse("revision", revision, "expected letters, digits, '.', '_', '-', '/'")
    return revision


def validate_filename(filename: str) -> str:
    """Return *filename* (a relative ``/``-separated path) or raise ``hub.invalid_path``.

    Refused: empty or over 1,024 characters, NUL and control characters, backslashes, ``:`` (drive
    letters, alternate data streams), absolute paths, and empty, ``.`` or ``..`` segments.
    """
    if not isinstance(filename, str):
        raise _refuse("filename", repr(filename), "not a string")
    if not filename or len(filename) > _MAX_FILENAME:
        raise _refuse("filename", filename, f"1 to {_MAX_FILENAME} characters")
    if _CONTROL_RE.search(filename):
        raise _refuse("filename", filename, "NUL or control character")
    if "\\" in filename:
        raise _refuse("filename", filename, "backslash")
    if PureWindowsPath(filename).drive or ":" in filename:
        raise _refuse("filename", filename, "drive letter or ':'")
    if filename.startswith("/") or PurePosixPath(filename).is_absolute():
        raise _refuse("filename", filename, "absolute path")
    if any(part in ("", ".", "..") for part in filename.split("/")):
        raise _refuse("filename", filename, "empty, '.' or '..' segment")
    return filename


def _validate_endpoint(endpoint: str) -> str:
    try:
        parts = urlsplit(endpoint)
    except ValueError:
        raise ValidationError("hub.invalid_endpoint", param="endpoint") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ValidationError("hub.invalid_endpoint", param="endpoint")
    if parts.query or parts.fragment:
        raise ValidationError("hub.invalid_endpoint", param="endpoint")
    return endpoint.rstrip("/")


def _secret(token: SecretStr | str | None) -> SecretStr | None:
    if token is None or isinstance(token, SecretStr):
        return token
    return SecretStr(token)


# -- the huggingface_hub package, imported lazily ----------------------------------------------------


def _hf() -> Any:
    try:
        import huggingface_hub
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise UnavailableError("hub.extra_missing") from exc
    return huggingface_hub


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - only without the extra
        return None


class _Cancelled(Exception):
    """Raised from the progress bar inside the worker thread to stop a cancelled download."""


class _IntegrityFailure(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _map_error(exc: BaseException, repo_id: str, filename: str, revision: str) -> MaasError:
    """Translate a ``huggingface_hub`` / ``httpx2`` / OS error into a typed MaasError (no secrets)."""
    if isinstance(exc, MaasError):
        return exc
    where = {"repo_id": repo_id, "filename": filename, "revision": revision}
    if isinstance(exc, _IntegrityFailure):
        return UpstreamError("hub.integrity", repo_id=repo_id, filename=filename, reason=exc.reason)
    if isinstance(exc, _Cancelled):
        return UnavailableError("hub.cancelled", repo_id=repo_id, filename=filename)
    hf_errors: Any = _optional_module("huggingface_hub.errors")
    if hf_errors is not None:
        if isinstance(exc, hf_errors.GatedRepoError):
            return ForbiddenError("hub.gated", repo_id=repo_id)
        if isinstance(exc, hf_errors.RepositoryNotFoundError):
            return NotFoundError("hub.not_found", what="repository", **where)
        if isinstance(exc, hf_errors.RevisionNotFoundError):
            return NotFoundError("hub.not_found", what="revision", **where)
        if isinstance(exc, hf_errors.LocalEntryNotFoundError):
            cause = exc.__cause__ or exc.__context__
            if cause is not None and cause is not exc:
                return _map_error(cause, repo_id, filename, revision)
            return UnavailableError("hub.network", reason="hub unreachable and file not cached")
        if isinstance(exc, hf_errors.RemoteEntryNotFoundError):
            return NotFoundError("hub.not_found", what="file", **where)
        if isinstance(exc, hf_errors.FileMetadataError):
            return UpstreamError("hub.bad_response", repo_id=repo_id, filename=filename)
        if isinstance(exc, hf_errors.HfHubHTTPError):
            response = getattr(exc, "response", None)
            status = int(getattr(response, "status_code", 0) or 0)
            if status in (401, 403):
                return ForbiddenError("hub.gated", repo_id=repo_id)
            if status == 404:
                return NotFoundError("hub.not_found", what="file", **where)
            if status >= 500 or status in (408, 429) or status == 0:
                return UnavailableError("hub.network", reason=f"HTTP {status}" if status else "HTTP error")
            return UpstreamError("hub.http_error", status=status, repo_id=repo_id, filename=filename)
    httpx2: Any = _optional_module("httpx2")
    if httpx2 is not None and isinstance(exc, httpx2.HTTPError):
        return UnavailableError("hub.network", reason=type(exc).__name__)
    if isinstance(exc, OSError):
        if "Consistency check failed" in str(exc):
            return UpstreamError("hub.integrity", repo_id=repo_id, filename=filename, reason="size mismatch")
        return UnavailableError("hub.io", operation=type(exc).__name__)
    return UpstreamError("hub.http_error", status=0, repo_id=repo_id, filename=filename)


# -- cache layout helpers ----------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve(strict=False).relative_to(root)
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _storage_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def _check_cache_tree(cache_root: Path, storage: Path, filename: str, snapshot_file: str | None) -> None:
    """Refuse a cache whose repository folders or cached file resolve outside the cache root."""
    for folder in (storage, storage / "blobs", storage / "snapshots", storage / "refs"):
        if os.path.lexists(folder) and not _inside(folder, cache_root):
            raise _refuse("filename", filename, "symlink outside the cache")
    if snapshot_file is not None and not _inside(Path(snapshot_file), cache_root):
        raise _refuse("filename", filename, "symlink outside the cache")


def _commit_of(snapshot_path: Path, storage: Path) -> str:
    try:
        return snapshot_path.relative_to(storage / "snapshots").parts[0]
    except (ValueError, IndexError):
        return ""


def _verify_blob(path: Path, etag: str, size: int) -> None:
    """Check the file against a sha256 (LFS) or git-sha1 ETag; raise _IntegrityFailure on mismatch."""
    if _SHA256_RE.match(etag):
        digest = hashlib.sha256()
    elif _SHA1_RE.match(etag):
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(b"blob %d\0" % size)
    else:
        return  # an opaque ETag: nothing to compare with
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    if digest.hexdigest() != etag:
        raise _IntegrityFailure("checksum mismatch")


# -- progress tracking -------------------------------------------------------------------------------


class ProgressThrottle:
    """Decides when a download's progress is worth writing to the store.

    A write is due when *interval* seconds (monotonic, from the clock) passed since the last one,
    or when *step* (a fraction of the total size) more bytes arrived; :meth:`due` with
    ``force=True`` always is (the first report, the final state).

    Args:
        clock: time source (``FakeClock`` in tests).
        interval: seconds between time-based writes.
        step: fraction of the file (``0.01`` = 1 %) that triggers a write.
    """

    __slots__ = ("_clock", "_interval", "_last_bytes", "_last_time", "_step")

    def __init__(self, clock: Clock, *, interval: float = 0.5, step: float = 0.01) -> None:
        self._clock = clock
        self._interval = interval
        self._step = step
        self._last_time = clock.monotonic()
        self._last_bytes = 0

    def due(self, downloaded: int, total: int | None, *, force: bool = False) -> bool:
        """Whether to write now; when it returns ``True`` the write is counted as done."""
        now = self._clock.monotonic()
        step_bytes = self._step * total if total else None
        if (
            force
            or now - self._last_time >= self._interval
            or (step_bytes is not None and downloaded - self._last_bytes >= step_bytes)
        ):
            self._last_time = now
            self._last_bytes = downloaded
            return True
        return False


class _Tracker:
    """Receives byte counts from the worker thread and turns them into callbacks and throttled DB writes."""

    def __init__(
        self,
        store: DownloadStore,
        clock: Clock,
        record: DownloadRecord,
        callback: ProgressCallback | None,
        loop: asyncio.AbstractEventLoop,
        *,
        interval: float,
        step: float,
    ) -> None:
        self.record = record
        self.cancelled = False
        self.transferred = 0
        self.thread_bytes = 0  # written only by the worker thread
        self._store = store
        self._clock = clock
        self._callback = callback
        self._loop = loop
        self._throttle = ProgressThrottle(clock, interval=interval, step=step)
        self._downloaded = record.downloaded_bytes
        self._total = record.total_bytes
        self._closed = False
        self._wake = asyncio.Event()
        self._writer = loop.create_task(self._write_loop())

    # called in the worker thread ------------------------------------------------------------------
    def from_thread(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            self._loop.call_soon_threadsafe(fn, *args)

    def bar_class(self) -> type[Any]:
        base_tqdm: Any = importlib.import_module("tqdm.std").tqdm
        tracker = self

        class _ProgressBar(base_tqdm):  # type: ignore[misc]
            """A silent tqdm whose updates feed the tracker (on the event loop's thread)."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.pop("name", None)
                kwargs["disable"] = True
                total = kwargs.get("total")
                initial = int(kwargs.get("initial") or 0)
                super().__init__(*args, **kwargs)
                tracker.from_thread(tracker.on_start, total, initial)

            def update(self, n: float | None = 1) -> bool | None:
                if tracker.cancelled:
                    raise _Cancelled()
                tracker.thread_bytes += int(n or 0)
                tracker.from_thread(tracker.on_bytes, int(n or 0))
                return None

        return _ProgressBar

    # called on the event loop -------------------------------------------------------------------
    def on_start(self, total: int | None, initial: int) -> None:
        if self._closed:
            return
        if total is not None:
            self._total = int(total)
        self._downloaded = initial
        self._notify(force=True)

    def on_bytes(self, n: int) -> None:
        if self._closed:
            return
        self._downloaded += n
        self.transferred += n
        self._notify(force=False)

    def _notify(self, *, force: bool) -> None:
        if self._callback is not None:
            report = DownloadProgress(
                self.record.id, self.record.repo_id, self.record.filename, self._downloaded, self._total
            )
            try:
                self._callback(report)
            except Exception:
                log.warning("hub.progress_callback_failed", request_id=self.record.id, exc_info=True)
        if self._throttle.due(self._downloaded, self._total, force=force):
            self._wake.set()

    def snapshot(self, **changes: Any) -> DownloadRecord:
        base = attrs.evolve(
            self.record,
            downloaded_bytes=max(self._downloaded, 0),
            total_bytes=self._total,
            updated_at=self._clock.now(),
        )
        return attrs.evolve(base, **changes) if changes else base

    async def _write_loop(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            try:
                await self._store.update(self.snapshot())
            except Exception:  # progress writes are best effort; the final write is not
                log.warning("hub.progress_write_failed", request_id=self.record.id, exc_info=True)

    async def close(self) -> None:
        # Never cancel a write mid-statement: a cancelled database call can invalidate its
        # connection. Let the writer finish what it is doing, then leave.
        self._closed = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer


# -- the service -------------------------------------------------------------------------------------


class DefaultHubService:
    """:class:`HubService` over ``huggingface_hub`` with a tracked download store.

    Args:
        store: where download requests are tracked (SQL to resume after a restart).
        clock: time source for timestamps and for throttling progress writes.
        cache_dir: the local cache (``huggingface_hub``'s layout: ``models--owner--name/{blobs,snapshots,refs}``).
        endpoint: default hub base URL (override per call); never read from ``HF_ENDPOINT``.
        token: default access token for gated repositories (kept as a ``SecretStr``, never logged).
            Without one, no ambient token (``HF_TOKEN``, a stored login) is used either.
        progress_interval: write progress to the store at most this often (seconds) ...
        progress_step: ... or when this fraction of the file arrived since the last write.
        verify_checksums: after a transfer, check the file against a sha256 / git-sha1 ETag.
        etag_timeout: seconds to wait for the hub's metadata answer.
        executor: thread pool for the blocking hub calls (default: the loop's default executor).
    """

    def __init__(
        self,
        store: DownloadStore,
        clock: Clock,
        *,
        cache_dir: str | os.PathLike[str],
        endpoint: str = DEFAULT_ENDPOINT,
        token: SecretStr | str | None = None,
        progress_interval: float = 0.5,
        progress_step: float = 0.01,
        verify_checksums: bool = True,
        etag_timeout: float = 10.0,
        executor: Executor | None = None,
    ) -> None:
        if progress_interval < 0 or not 0 < progress_step <= 1:
            raise ValueError("progress_interval must be >= 0 and progress_step in (0, 1]")
        self._store = store
        self._clock = clock
        self._cache_dir = Path(cache_dir).expanduser()
        self._endpoint = _validate_endpoint(endpoint)
        self._token = _secret(token)
        self._interval = progress_interval
        self._step = progress_step
        self._verify = verify_checksums
        self._etag_timeout = etag_timeout
        self._executor = executor
        self._inflight: set[str] = set()

    def __repr__(self) -> str:
        token = "set" if self._token is not None else "none"
        return f"DefaultHubService(cache_dir={str(self._cache_dir)!r}, endpoint={self._endpoint!r}, token={token})"

    @property
    def cache_dir(self) -> Path:
        """The local cache directory."""
        return self._cache_dir

    def _cache_root(self) -> Path:
        return self._cache_dir.resolve(strict=False)

    # -- offline lookups -----------------------------------------------------------------------------

    def _lookup(self, repo_id: str, filename: str, revision: str) -> LocalFile | None:
        hf = _hf()
        root = self._cache_root()
        storage = _storage_folder(root, repo_id)
        found = hf.try_to_load_from_cache(repo_id, filename, cache_dir=str(root), revision=revision)
        path = found if isinstance(found, str) else None
        _check_cache_tree(root, storage, filename, path)
        if path is None:
            return None
        try:
            info = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return LocalFile(
            repo_id, filename, revision, _commit_of(Path(path), storage), Path(path), info.st_size
        )

    def _validate(self, repo_id: str, filename: str, revision: str) -> None:
        validate_repo_id(repo_id)
        validate_filename(filename)
        validate_revision(revision)

    async def find_local_file(self, repo_id: str, filename: str, revision: str = "main") -> LocalFile | None:
        """The cached file for *revision* (a branch, tag or commit), or ``None``.

        Uses only the local cache (``try_to_load_from_cache``): no network, works with the hub down.
        A cached file whose path resolves outside the cache is refused with ``hub.invalid_path``.
        """
        self._validate(repo_id, filename, revision)
        try:
            return await asyncio.to_thread(self._lookup, repo_id, filename, revision)
        except MaasError:
            raise
        except OSError as exc:
            raise UnavailableError("hub.io", operation=type(exc).__name__) from exc

    async def local_file_exists(self, repo_id: str, filename: str, revision: str = "main") -> bool:
        """Whether :meth:`find_local_file` finds the file (no network)."""
        return await self.find_local_file(repo_id, filename, revision) is not None

    # -- tracked requests ----------------------------------------------------------------------------

    async def get_request(self, request_id: str) -> DownloadRecord:
        """A tracked download request; ``hub.request_not_found`` if unknown."""
        record = await self._store.get(request_id)
        if record is None:
            raise NotFoundError("hub.request_not_found", request_id=request_id)
        return record

    async def list_requests(
        self, *, statuses: tuple[str, ...] | None = None, limit: int = 100
    ) -> builtins.list[DownloadRecord]:
        """Tracked download requests, oldest first, optionally filtered by status."""
        return await self._store.list(statuses=statuses, limit=limit)

    # -- downloads -----------------------------------------------------------------------------------

    async def download(
        self,
        repo_id: str,
        filename: str,
        revision: str = "main",
        *,
        progress: ProgressCallback | None = None,
        token: SecretStr | str | None = None,
        endpoint: str | None = None,
    ) -> DownloadResult:
        """Download *filename* of *repo_id* at *revision* into the cache, tracked as a new request.

        Args:
            repo_id: ``owner/name``.
            filename: relative path inside the repository.
            revision: branch, tag or commit.
            progress: called on the event loop's thread with each :class:`DownloadProgress`.
            token: access token for a gated repository (overrides the service's default).
            endpoint: hub base URL for this call (overrides the service's default).

        Raises:
            ValidationError: ``hub.invalid_path`` / ``hub.invalid_endpoint``, before any network call.
            NotFoundError: ``hub.not_found`` (repository, revision or file).
            ForbiddenError: ``hub.gated`` (no token, or a token without access).
            UnavailableError: ``hub.network`` (unreachable, 5xx, dropped), ``hub.io`` (local disk).
            UpstreamError: ``hub.integrity`` (size or checksum mismatch; nothing kept), ``hub.bad_response``.
        """
        self._validate(repo_id, filename, revision)
        base = _validate_endpoint(endpoint) if endpoint is not None else self._endpoint
        await self.find_local_file(repo_id, filename, revision)  # refuses a cache tree escaping the root
        now = self._clock.now()
        record = DownloadRecord(
            id="dl_" + secrets.token_hex(12),
            repo_id=repo_id,
            filename=filename,
            revision=revision,
            status="pending",
            created_at=now,
            updated_at=now,
            endpoint=base,
        )
        await self._store.insert(record)
        return await self._run(record, progress, _secret(token) or self._token)

    async def retry(
        self,
        request_id: str,
        *,
        progress: ProgressCallback | None = None,
        token: SecretStr | str | None = None,
    ) -> DownloadResult:
        """Run the tracked request *request_id* again (after a failure, or a pending one)."""
        record = await self.get_request(request_id)
        self._validate(record.repo_id, record.filename, record.revision)
        return await self._run(record, progress, _secret(token) or self._token)

    async def resume_pending(self, *, token: SecretStr | str | None = None) -> builtins.list[DownloadRecord]:
        """Run every ``pending`` / ``running`` request not in flight in this process, one after another.

        Call it once at startup: a request left ``running`` by a crash starts over (the library keeps
        no partial file across processes). Failures are recorded on the request, not raised.
        Returns the final state of each request it ran.
        """
        secret = _secret(token) or self._token
        finished: list[DownloadRecord] = []
        for record in await self._store.list(statuses=ACTIVE_STATUSES, limit=10_000):
            if record.id in self._inflight:
                continue
            try:
                self._validate(record.repo_id, record.filename, record.revision)
                await self._run(record, None, secret)
            except MaasError as exc:
                log.info("hub.resume_failed", request_id=record.id, code=exc.code)
                if exc.code == "hub.invalid_path":
                    await self._store.update(
                        attrs.evolve(
                            record, status="failed", error_code=exc.code, updated_at=self._clock.now()
                        )
                    )
            final = await self._store.get(record.id)
            if final is not None:
                finished.append(final)
        return finished

    async def _run(
        self, record: DownloadRecord, progress: ProgressCallback | None, token: SecretStr | None
    ) -> DownloadResult:
        endpoint = record.endpoint or self._endpoint
        loop = asyncio.get_running_loop()
        record = attrs.evolve(record, status="running", downloaded_bytes=0, error_code=None)
        tracker = _Tracker(
            self._store, self._clock, record, progress, loop, interval=self._interval, step=self._step
        )
        self._inflight.add(record.id)
        bound = log.bind(request_id=record.id, repo_id=record.repo_id, filename=record.filename)
        try:
            await self._store.update(tracker.snapshot(status="running"))
            bound.info("hub.download_started", endpoint=endpoint)
            bar = tracker.bar_class()
            secret = token.get_secret_value() if token is not None else None
            try:
                path_str, commit, etag, size = await loop.run_in_executor(
                    self._executor,
                    lambda: self._blocking_download(record, endpoint, secret, bar, tracker),
                )
            except asyncio.CancelledError:
                tracker.cancelled = True
                await tracker.close()
                await self._store.update(tracker.snapshot(status="pending"))
                bound.info("hub.download_cancelled")
                raise
            except BaseException as exc:
                await tracker.close()
                error = _map_error(exc, record.repo_id, record.filename, record.revision)
                await self._store.update(tracker.snapshot(status="failed", error_code=error.code))
                bound.info("hub.download_failed", code=error.code)
                if error is exc:
                    raise
                raise error from None
            await tracker.close()
            await self._store.update(
                tracker.snapshot(status="completed", total_bytes=size, downloaded_bytes=size, error_code=None)
            )
            bound.info("hub.download_completed", size=size, commit=commit)
            return DownloadResult(
                request_id=record.id,
                repo_id=record.repo_id,
                filename=record.filename,
                revision=record.revision,
                commit=commit,
                path=Path(path_str),
                size=size,
                etag=etag,
                downloaded_bytes=tracker.transferred,
            )
        finally:
            self._inflight.discard(record.id)

    def _blocking_download(
        self, record: DownloadRecord, endpoint: str, token: str | None, bar: type[Any], tracker: _Tracker
    ) -> tuple[str, str, str, int]:
        """In the worker thread: download, check the result stays in the cache, verify its checksum."""
        hf = _hf()
        root = self._cache_root()
        root.mkdir(parents=True, exist_ok=True)
        storage = _storage_folder(root, record.repo_id)
        path = hf.hf_hub_download(
            record.repo_id,
            record.filename,
            revision=record.revision,
            cache_dir=str(root),
            endpoint=endpoint,
            token=token if token is not None else False,
            tqdm_class=bar,
            etag_timeout=self._etag_timeout,
            library_name="maaskit",
        )
        snapshot = Path(path)
        _check_cache_tree(root, storage, record.filename, path)
        blob = snapshot.resolve(strict=True)
        etag = blob.name
        size = blob.stat().st_size
        if self._verify and tracker.thread_bytes > 0:
            try:
                _verify_blob(blob, etag, size)
            except _IntegrityFailure:
                snapshot.unlink(missing_ok=True)
                blob.unlink(missing_ok=True)
                raise
        return str(snapshot), _commit_of(snapshot, storage), etag, size
