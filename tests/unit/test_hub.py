"""HubService against FakeHub over loopback: downloads, progress, gated repos, errors, offline lookups."""

from __future__ import annotations

import hashlib
import os
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)

from maaskit.errors import ForbiddenError, NotFoundError, UnavailableError, UpstreamError, ValidationError
from maaskit.services.hub import DefaultHubService, DownloadProgress, HubService, ProgressThrottle
from maaskit.storage.memory.downloads import MemoryDownloadStore
from maaskit.testing.clock import FakeClock
from maaskit.testing.fake_hub import FakeHub

REPO = "acme/tiny-gguf"
FILE = "tiny.Q4_K_M.gguf"
DATA = bytes(range(256)) * 400  # 102,400 bytes


@pytest.fixture(autouse=True)
def _no_library_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """huggingface_hub sleeps 1 s before resuming a dropped transfer; the tests do not wait for it."""
    import huggingface_hub.file_download as fd
    import huggingface_hub.utils._http as hf_http

    no_sleep = types.SimpleNamespace(sleep=lambda _s: None)
    monkeypatch.setattr(fd, "time", no_sleep)
    monkeypatch.setattr(hf_http, "time", no_sleep)
    return


@pytest.fixture
async def fake() -> AsyncIterator[FakeHub]:
    async with FakeHub() as hub:
        yield hub


@pytest.fixture
def store() -> MemoryDownloadStore:
    return MemoryDownloadStore()


@pytest.fixture
def hub(fake: FakeHub, store: MemoryDownloadStore, clock: FakeClock, tmp_path: Path) -> DefaultHubService:
    return DefaultHubService(store, clock, cache_dir=tmp_path / "cache", endpoint=fake.endpoint)


def _incomplete(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.endswith(".incomplete")]


async def test_download_success_progress_and_tracking(
    fake: FakeHub, hub: DefaultHubService, store: MemoryDownloadStore
) -> None:
    commit = fake.add_file(REPO, FILE, DATA)
    reports: list[DownloadProgress] = []
    result = await hub.download(REPO, FILE, progress=reports.append)
    assert isinstance(hub, HubService)
    assert result.path.read_bytes() == DATA
    assert result.size == len(DATA)
    assert result.commit == commit
    assert result.etag == hashlib.sha256(DATA).hexdigest()
    assert result.downloaded_bytes == len(DATA)
    assert reports
    assert reports[-1].downloaded_bytes == len(DATA)
    assert all(r.total_bytes == len(DATA) for r in reports)
    record = await hub.get_request(result.request_id)
    assert (record.status, record.total_bytes, record.downloaded_bytes, record.error_code) == (
        "completed",
        len(DATA),
        len(DATA),
        None,
    )
    assert [r.method for r in fake.requests] == ["HEAD", "GET"]
    assert _incomplete(hub.cache_dir) == []


async def test_second_download_uses_cache(fake: FakeHub, hub: DefaultHubService) -> None:
    fake.add_file(REPO, FILE, DATA)
    await hub.download(REPO, FILE)
    again = await hub.download(REPO, FILE)
    assert again.downloaded_bytes == 0
    assert again.path.read_bytes() == DATA
    assert [r.method for r in fake.requests] == ["HEAD", "GET", "HEAD"]


async def test_progress_writes_are_throttled(
    fake: FakeHub, hub: DefaultHubService, store: MemoryDownloadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256)  # 400 chunks
    fake.add_file(REPO, FILE, DATA)
    updates: list[int] = []
    original = store.update

    async def spy(record):  # type: ignore[no-untyped-def]
        if record.status == "running":
            updates.append(record.downloaded_bytes)
        return await original(record)

    monkeypatch.setattr(store, "update", spy)
    reports: list[DownloadProgress] = []
    await hub.download(REPO, FILE, progress=reports.append)
    assert len(reports) == 401  # the start report plus one per chunk, all on the loop thread
    assert [r.downloaded_bytes for r in reports] == list(range(0, len(DATA) + 1, 256))
    # the clock is frozen, so only the 1 % rule asks for writes, and the writer coalesces them
    assert 1 <= len(updates) <= 102
    assert updates == sorted(updates)


def test_progress_throttle_rules(clock: FakeClock) -> None:
    throttle = ProgressThrottle(clock, interval=0.5, step=0.01)
    total = 10_000
    assert throttle.due(0, total, force=True)
    assert not throttle.due(99, total)  # < 1 %, no time passed
    assert throttle.due(100, total)  # 1 %
    assert not throttle.due(150, total)
    clock.advance(0.49)
    assert not throttle.due(160, total)
    clock.advance(0.01)
    assert throttle.due(161, total)  # 0.5 s since the last write
    assert not throttle.due(161, None)  # unknown total: only time counts
    clock.advance(1)
    assert throttle.due(161, None)
    writes = sum(throttle.due(n, total) for n in range(161, total + 1))
    assert writes == (total - 161) // 100  # one write per 1 % with a frozen clock


async def test_gated_without_and_with_token(fake: FakeHub, hub: DefaultHubService) -> None:
    fake.add_file(REPO, FILE, DATA, gated=True, token="hf_secret_value")
    with pytest.raises(ForbiddenError) as info:
        await hub.download(REPO, FILE)
    assert info.value.code == "hub.gated"
    with pytest.raises(ForbiddenError):
        await hub.download(REPO, FILE, token="hf_wrong")
    result = await hub.download(REPO, FILE, token="hf_secret_value")
    assert result.path.read_bytes() == DATA
    assert fake.requests[-1].authorized


async def test_token_never_in_repr_errors_or_logs(
    fake: FakeHub,
    store: MemoryDownloadStore,
    clock: FakeClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.add_file(REPO, FILE, DATA, gated=True, token="hf_right")
    hub = DefaultHubService(
        store, clock, cache_dir=tmp_path, endpoint=fake.endpoint, token="hf_TOPSECRET_123"
    )
    assert "TOPSECRET" not in repr(hub)
    with pytest.raises(ForbiddenError) as info:
        await hub.download(REPO, FILE)
    text = repr(info.value) + str(info.value) + info.value.render("de") + repr(await store.list())
    assert "TOPSECRET" not in text
    assert "TOPSECRET" not in caplog.text


@pytest.mark.parametrize(
    ("repo", "revision", "filename", "what"),
    [
        ("acme/missing", "main", FILE, "repository"),
        (REPO, "v9", FILE, "revision"),
        (REPO, "main", "other.gguf", "file"),
    ],
)
async def test_not_found(
    fake: FakeHub,
    hub: DefaultHubService,
    store: MemoryDownloadStore,
    repo: str,
    revision: str,
    filename: str,
    what: str,
) -> None:
    fake.add_file(REPO, FILE, DATA)
    with pytest.raises(NotFoundError) as info:
        await hub.download(repo, filename, revision)
    assert info.value.code == "hub.not_found"
    assert info.value.params["what"] == what
    [record] = await store.list()
    assert (record.status, record.error_code) == ("failed", "hub.not_found")


async def test_dropped_connection_is_resumed_with_range(
    fake: FakeHub, hub: DefaultHubService, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as constants

    # the library resumes from the last whole chunk it received (10 MiB by default)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1000)
    fake.add_file(REPO, FILE, DATA)
    fake.drop_next(after_bytes=10_000)
    result = await hub.download(REPO, FILE)
    assert result.path.read_bytes() == DATA
    gets = [r for r in fake.requests if r.method == "GET"]
    assert [g.range for g in gets] == [None, "bytes=10000-"]


async def test_interrupted_download_leaves_no_file_then_retry_completes(
    fake: FakeHub, hub: DefaultHubService, store: MemoryDownloadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1000)
    fake.add_file(REPO, FILE, DATA)
    fake.drop_next(after_bytes=30_000)
    fake.fail_next(500)  # the library's resume attempt fails too
    with pytest.raises(UnavailableError) as info:
        await hub.download(REPO, FILE)
    assert info.value.code == "hub.network"
    assert _incomplete(hub.cache_dir) == []
    assert not await hub.local_file_exists(REPO, FILE)
    assert not any(p.is_file() for p in (hub.cache_dir).rglob("blobs/*"))
    [failed] = await store.list()
    assert (failed.status, failed.error_code) == ("failed", "hub.network")
    assert failed.downloaded_bytes == 30_000  # progress was tracked up to the drop
    assert [r.range for r in fake.requests if r.method == "GET"] == [None, "bytes=30000-"]

    result = await hub.retry(failed.id)
    assert result.request_id == failed.id
    assert result.path.read_bytes() == DATA
    assert (await hub.get_request(failed.id)).status == "completed"


async def test_size_mismatch_is_integrity_error(fake: FakeHub, hub: DefaultHubService) -> None:
    fake.add_file(REPO, FILE, DATA, advertised_size=len(DATA) + 10)
    with pytest.raises(UpstreamError) as info:
        await hub.download(REPO, FILE)
    assert info.value.code == "hub.integrity"
    assert not await hub.local_file_exists(REPO, FILE)


async def test_checksum_mismatch_is_integrity_error_and_nothing_kept(
    fake: FakeHub, hub: DefaultHubService
) -> None:
    tampered = bytes([DATA[0] ^ 0xFF]) + DATA[1:]
    fake.add_file(REPO, FILE, DATA, serve=tampered)
    with pytest.raises(UpstreamError) as info:
        await hub.download(REPO, FILE)
    assert (info.value.code, info.value.params["reason"]) == ("hub.integrity", "checksum mismatch")
    assert not await hub.local_file_exists(REPO, FILE)
    assert not any(p.is_file() for p in hub.cache_dir.rglob("blobs/*"))


async def test_server_errors_and_unreachable_hub_are_network_errors(
    fake: FakeHub, hub: DefaultHubService, store: MemoryDownloadStore, clock: FakeClock, tmp_path: Path
) -> None:
    fake.add_file(REPO, FILE, DATA)
    fake.fail_next(503)  # on the GET (the library retries a failing HEAD itself)
    with pytest.raises(UnavailableError) as info:
        await hub.download(REPO, FILE)
    assert info.value.code == "hub.network"
    endpoint = fake.endpoint
    await fake.stop()
    with pytest.raises(UnavailableError) as info:
        await hub.download(REPO, FILE, endpoint=endpoint)
    assert info.value.code == "hub.network"


async def test_offline_find_local_file_after_download_with_server_stopped(
    fake: FakeHub, hub: DefaultHubService
) -> None:
    commit = fake.add_file(REPO, FILE, DATA)
    assert await hub.find_local_file(REPO, FILE) is None
    await hub.download(REPO, FILE)
    await fake.stop()
    before = len(fake.requests)
    local = await hub.find_local_file(REPO, FILE)
    assert local is not None
    assert local.commit == commit
    assert local.size == len(DATA)
    assert local.path.read_bytes() == DATA
    assert await hub.local_file_exists(REPO, FILE, commit)
    assert not await hub.local_file_exists(REPO, "nope.gguf")
    assert not await hub.local_file_exists(REPO, FILE, "other-branch")
    # a download of a cached file with the hub down falls back to the cache
    again = await hub.download(REPO, FILE)
    assert again.path.read_bytes() == DATA
    assert len(fake.requests) == before


async def test_progress_callback_errors_do_not_break_download(fake: FakeHub, hub: DefaultHubService) -> None:
    fake.add_file(REPO, FILE, DATA)

    def boom(_p: DownloadProgress) -> None:
        raise RuntimeError("host bug")

    result = await hub.download(REPO, FILE, progress=boom)
    assert result.size == len(DATA)


async def test_resume_pending_after_restart(
    fake: FakeHub, store: MemoryDownloadStore, clock: FakeClock, tmp_path: Path
) -> None:
    from maaskit.storage.ports.downloads import DownloadRecord

    fake.add_file(REPO, FILE, DATA)
    now = clock.now()
    for i, status in enumerate(["pending", "running", "failed", "completed"]):
        await store.insert(
            DownloadRecord(f"dl_{i}", REPO, FILE, "main", status, now, now, endpoint=fake.endpoint)
        )
    hub = DefaultHubService(store, clock, cache_dir=tmp_path, endpoint="http://127.0.0.1:9")
    finished = await hub.resume_pending()
    assert [(r.id, r.status) for r in finished] == [("dl_0", "completed"), ("dl_1", "completed")]
    assert (await hub.get_request("dl_2")).status == "failed"
    assert await hub.local_file_exists(REPO, FILE)


async def test_unknown_request(hub: DefaultHubService) -> None:
    with pytest.raises(NotFoundError) as info:
        await hub.get_request("dl_nope")
    assert info.value.code == "hub.request_not_found"


def test_bad_endpoint_and_settings_refused(
    store: MemoryDownloadStore, clock: FakeClock, tmp_path: Path
) -> None:
    for endpoint in ("ftp://hub", "http://user:pw@127.0.0.1", "not a url", "http://127.0.0.1/?x=1"):
        with pytest.raises(ValidationError) as info:
            DefaultHubService(store, clock, cache_dir=tmp_path, endpoint=endpoint)
        assert info.value.code == "hub.invalid_endpoint"
    with pytest.raises(ValueError):
        DefaultHubService(store, clock, cache_dir=tmp_path, progress_step=0)
