"""Hub paths that would escape the cache are refused before any network call."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from maaskit.errors import ValidationError
from maaskit.services.hub import DefaultHubService, validate_filename, validate_repo_id, validate_revision
from maaskit.storage.memory.downloads import MemoryDownloadStore
from maaskit.testing.clock import FakeClock
from maaskit.testing.fake_hub import FakeHub

REPO = "acme/tiny"
BAD_FILENAMES = [
    "../secret",
    "a/../../b",
    "..",
    "/etc/passwd",
    "C:\\Windows\\x.gguf",
    "C:x.gguf",
    "dir\\file.gguf",
    "a\x00b.gguf",
    "a//b.gguf",
    "./x.gguf",
    "x.gguf:stream",
    "",
    "a" * 1025,
    "line\nbreak",
]
BAD_REPOS = ["../x", "acme/../x", "/acme/x", "acme\\x", "acme/x/y", "acme--x/y", "a\x00/b", "", "acme/"]
BAD_REVISIONS = ["../../x", "refs/../../x", "a\\b", "/main", "main/", "a\x00", "", "a//b"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeHub]:
    async with FakeHub() as hub:
        hub.add_file(REPO, "ok.gguf", b"GGUF" + b"\0" * 60)
        yield hub


@pytest.fixture
def hub(fake: FakeHub, clock: FakeClock, tmp_path: Path) -> DefaultHubService:
    return DefaultHubService(
        MemoryDownloadStore(), clock, cache_dir=tmp_path / "cache", endpoint=fake.endpoint
    )


@pytest.mark.parametrize("filename", BAD_FILENAMES)
async def test_bad_filenames_refused_without_any_request(
    fake: FakeHub, hub: DefaultHubService, filename: str
) -> None:
    with pytest.raises(ValidationError) as info:
        await hub.download(REPO, filename)
    assert info.value.code == "hub.invalid_path"
    assert info.value.params["field"] == "filename"
    with pytest.raises(ValidationError):
        await hub.find_local_file(REPO, filename)
    assert fake.requests == []
    assert await hub.list_requests() == []  # nothing tracked either


@pytest.mark.parametrize("repo", BAD_REPOS)
async def test_bad_repo_ids_refused(fake: FakeHub, hub: DefaultHubService, repo: str) -> None:
    with pytest.raises(ValidationError) as info:
        await hub.download(repo, "ok.gguf")
    assert info.value.params["field"] == "repo_id"
    assert fake.requests == []


@pytest.mark.parametrize("revision", BAD_REVISIONS)
async def test_bad_revisions_refused(fake: FakeHub, hub: DefaultHubService, revision: str) -> None:
    with pytest.raises(ValidationError) as info:
        await hub.download(REPO, "ok.gguf", revision)
    assert info.value.params["field"] == "revision"
    assert fake.requests == []


async def test_symlink_outside_cache_refused(fake: FakeHub, hub: DefaultHubService, tmp_path: Path) -> None:
    result = await hub.download(REPO, "ok.gguf")
    outside = tmp_path / "outside.txt"
    outside.write_text("not a model")
    result.path.unlink()
    result.path.symlink_to(outside)  # a planted link in the snapshot folder
    before = len(fake.requests)
    with pytest.raises(ValidationError) as info:
        await hub.find_local_file(REPO, "ok.gguf")
    assert info.value.params["reason"] == "symlink outside the cache"
    with pytest.raises(ValidationError):
        await hub.download(REPO, "ok.gguf")
    assert len(fake.requests) == before


async def test_blobs_folder_linked_outside_cache_refused(
    fake: FakeHub, hub: DefaultHubService, tmp_path: Path
) -> None:
    storage = hub.cache_dir / "models--acme--tiny"
    storage.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (storage / "blobs").symlink_to(elsewhere)
    with pytest.raises(ValidationError):
        await hub.download(REPO, "ok.gguf")
    assert fake.requests == []
    assert list(elsewhere.iterdir()) == []


def test_good_names_accepted() -> None:
    assert validate_filename("sub/dir/model.Q4_K_M.gguf") == "sub/dir/model.Q4_K_M.gguf"
    assert validate_repo_id("TheBloke/Llama-2-7B-GGUF") == "TheBloke/Llama-2-7B-GGUF"
    assert validate_repo_id("gpt2") == "gpt2"
    assert validate_revision("refs/pr/1") == "refs/pr/1"
    assert validate_revision("a" * 40) == "a" * 40


@given(
    st.lists(st.sampled_from(["..", ".", "a", "b.gguf", "", "\\", ":", "\x00", "~"]), min_size=1, max_size=6)
)
def test_accepted_filenames_never_escape(parts: list[str]) -> None:
    name = "/".join(parts)
    try:
        validate_filename(name)
    except ValidationError:
        return
    root = Path("/cache/snap")
    resolved = Path(os.path.normpath(root / name))
    assert resolved.is_relative_to(root)
    assert resolved != root
