"""AliasService: YAML aliases with a strict safe loader, schema errors naming the field, atomic writes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maaskit.errors import ConflictError, NotFoundError, ValidationError
from maaskit.services.aliases import (
    MAX_ALIAS_FILE_BYTES,
    AliasService,
    ContextParams,
    DefaultAliasService,
    ModelAlias,
    RequestParams,
    alias_file_name,
    dump_alias,
    load_alias,
)

GOOD = """
alias: llama3:instruct
repo: QuantFactory/Meta-Llama-3-8B-Instruct-GGUF
filename: Meta-Llama-3-8B-Instruct.Q8_0.gguf
snapshot: 5007652f7a641fe7170e0bad4f63839419bd9213
request_params:
  temperature: 0.7
  stop: ["<|eot_id|>"]
context_params:
  n_ctx: 8192
"""


def alias(name: str = "tiny:chat", **kw: object) -> ModelAlias:
    return ModelAlias(alias=name, repo="acme/tiny", filename="tiny.Q4_K_M.gguf", **kw)  # type: ignore[arg-type]


@pytest.fixture
def service(tmp_path: Path) -> DefaultAliasService:
    return DefaultAliasService(tmp_path / "aliases")


def test_load_good_document() -> None:
    a = load_alias(GOOD)
    assert a.alias == "llama3:instruct"
    assert a.snapshot.startswith("5007")
    assert a.request_params == RequestParams(temperature=0.7, stop=("<|eot_id|>",))
    assert a.context_params == ContextParams(n_ctx=8192)
    assert load_alias(dump_alias(a)) == a


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object/apply:os.system ['touch /tmp/pwned']",
        "alias: !!python/object/apply:os.system ['echo hi']\nrepo: a/b\nfilename: f.gguf",
        "alias: !!python/name:os.system\nrepo: a/b\nfilename: f.gguf",
        "alias: x\nrepo: a/b\nfilename: f.gguf\nrequest_params: !!python/object:builtins.dict {}",
        "alias: x\nalias: y\nrepo: a/b\nfilename: f.gguf",  # duplicate key
        "alias: [unclosed",
        "a: 1\n---\nb: 2",  # two documents
    ],
)
def test_hostile_or_broken_yaml_refused(text: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(ValidationError) as info:
        load_alias(text.replace("/tmp/pwned", str(marker)))
    assert info.value.code == "aliases.invalid_yaml"
    assert not marker.exists()


def test_huge_document_refused_before_parsing() -> None:
    text = "alias: x\nrepo: a/b\nfilename: f.gguf\n# " + "x" * MAX_ALIAS_FILE_BYTES
    with pytest.raises(ValidationError) as info:
        load_alias(text)
    assert info.value.code == "aliases.too_large"


@pytest.mark.parametrize(
    ("patch", "code", "field"),
    [
        ("request_params:\n  temperature: hot", "aliases.invalid_type", "request_params.temperature"),
        ("request_params:\n  temperature: 2.5", "aliases.out_of_range", "request_params.temperature"),
        ("request_params:\n  temperature: .nan", "aliases.invalid_type", "request_params.temperature"),
        ("request_params:\n  max_tokens: true", "aliases.invalid_type", "request_params.max_tokens"),
        ("request_params:\n  max_tokens: 1.5", "aliases.invalid_type", "request_params.max_tokens"),
        ("request_params:\n  stop: [a, b, c, d, e]", "aliases.invalid_type", "request_params.stop"),
        ("request_params:\n  colour: red", "aliases.unknown_field", "'request_params.colour'"),
        ("context_params:\n  n_ctx: 0", "aliases.out_of_range", "context_params.n_ctx"),
        ("context_params: 5", "aliases.invalid_type", "context_params"),
        ("extra: 1", "aliases.unknown_field", "'extra'"),
        ("snapshot: ../../etc", "aliases.invalid_value", "snapshot"),
    ],
)
def test_schema_errors_name_the_field(patch: str, code: str, field: str) -> None:
    text = "alias: x\nrepo: a/b\nfilename: f.gguf\n" + patch
    with pytest.raises(ValidationError) as info:
        load_alias(text)
    assert (info.value.code, info.value.params["field"]) == (code, field)
    assert field.strip("'") in str(info.value)


@pytest.mark.parametrize(
    ("text", "code", "field"),
    [
        ("repo: a/b\nfilename: f.gguf", "aliases.missing_field", "alias"),
        ("alias: x\nfilename: f.gguf", "aliases.missing_field", "repo"),
        ("alias: x\nrepo: a/b\nfilename: 5", "aliases.invalid_type", "filename"),
        ("alias: x\nrepo: ../b\nfilename: f.gguf", "aliases.invalid_value", "repo"),
        ("alias: x\nrepo: a/b\nfilename: ../../f.gguf", "aliases.invalid_value", "filename"),
    ],
)
def test_required_and_path_fields(text: str, code: str, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        load_alias(text)
    assert (info.value.code, info.value.params["field"]) == (code, field)


def test_not_a_mapping() -> None:
    for text in ("- a\n- b", "just text", "42", ""):
        with pytest.raises(ValidationError) as info:
            load_alias(text)
        assert info.value.code == "aliases.not_a_mapping"


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "a\\b", "", ".hidden", "a--b", "con", "NUL.x", "x" * 129, "a b", "é"]
)
def test_bad_alias_names(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        alias_file_name(name)
    assert info.value.code == "aliases.invalid_name"


async def test_save_get_list_delete(service: DefaultAliasService) -> None:
    assert isinstance(service, AliasService)
    assert await service.list() == []
    saved = await service.save(alias("Tiny:Chat", request_params=RequestParams(temperature=0.2)))
    assert (service.aliases_dir / "tiny--chat.yaml").is_file()
    assert await service.get("tiny:chat") == saved  # case-insensitive lookup, spelling kept
    await service.save(alias("b-model"))
    assert [a.alias for a in await service.list()] == ["b-model", "Tiny:Chat"]
    with pytest.raises(ConflictError):
        await service.save(alias("TINY:chat"), overwrite=False)
    await service.delete("tiny:chat")
    with pytest.raises(NotFoundError):
        await service.get("tiny:chat")
    with pytest.raises(NotFoundError):
        await service.delete("tiny:chat")
    assert not [p for p in service.aliases_dir.iterdir() if p.name.endswith(".tmp")]


async def test_invalid_alias_object_writes_nothing(service: DefaultAliasService) -> None:
    with pytest.raises(ValidationError):
        await service.save(alias("x", request_params=RequestParams(temperature=9.0)))
    with pytest.raises(ValidationError):
        await service.save(alias("../etc/passwd"))
    assert not service.aliases_dir.exists() or list(service.aliases_dir.iterdir()) == []


async def test_failed_write_keeps_previous_file(
    service: DefaultAliasService, monkeypatch: pytest.MonkeyPatch
) -> None:
    await service.save(alias("keep"))
    before = (service.aliases_dir / "keep.yaml").read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(Exception) as info:
        await service.save(alias("keep", snapshot="v2"))
    assert getattr(info.value, "code", None) == "aliases.io"
    monkeypatch.undo()
    assert (service.aliases_dir / "keep.yaml").read_bytes() == before
    assert sorted(p.name for p in service.aliases_dir.iterdir()) == ["keep.yaml"]


async def test_report_lists_broken_and_duplicate_files(service: DefaultAliasService) -> None:
    await service.save(alias("good"))
    d = service.aliases_dir
    (d / "evil.yaml").write_text(
        "alias: !!python/object/apply:os.system ['true']\nrepo: a/b\nfilename: f.gguf"
    )
    (d / "other.yaml").write_text("alias: good\nrepo: a/b\nfilename: f.gguf")  # claims another file's alias
    (d / "typo.yaml").write_text("alias: typo\nrepo: a/b\nfilename: f.gguf\ncontext_params: {n_ctx: -4}")
    report = await service.report()
    assert [a.alias for a in report.aliases] == ["good"]
    assert {e.file: e.code for e in report.errors} == {
        "evil.yaml": "aliases.invalid_yaml",
        "other.yaml": "aliases.name_mismatch",
        "typo.yaml": "aliases.out_of_range",
    }
    assert [a.alias for a in await service.list()] == ["good"]


async def test_concurrent_saves_leave_one_valid_file(service: DefaultAliasService) -> None:
    await asyncio.gather(*(service.save(alias("race", snapshot=f"v{i}")) for i in range(20)))
    assert (await service.get("race")).snapshot.startswith("v")
    assert sorted(p.name for p in service.aliases_dir.iterdir()) == ["race.yaml"]


@given(
    name=st.from_regex(r"[a-z0-9][a-z0-9._:]{0,20}", fullmatch=True),
    temperature=st.none() | st.floats(0, 2),
    n_ctx=st.none() | st.integers(1, 16_777_216),
    stop=st.none() | st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4).map(tuple),
)
def test_round_trip(
    name: str, temperature: float | None, n_ctx: int | None, stop: tuple[str, ...] | None
) -> None:
    if name.split(".")[0].split(":")[0] in {"con", "prn", "aux", "nul"} or name[:4] in {"com1", "lpt1"}:
        return
    a = alias(
        name,
        request_params=RequestParams(temperature=temperature, stop=stop),
        context_params=ContextParams(n_ctx=n_ctx),
    )
    assert load_alias(dump_alias(a)) == a
