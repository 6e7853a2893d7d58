"""Discovery reads real GGUF files written by gguf.GGUFWriter; broken files are reported, never crash."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from maaskit.services.aliases import DefaultAliasService, LocalModel, read_gguf


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    name: str | None = "tiny",
    context: int | None = 4096,
    file_type: gguf.LlamaFileType | None = gguf.LlamaFileType.MOSTLY_Q4_K_M,
    tensors: int = 2,
) -> Path:
    writer = gguf.GGUFWriter(path, arch=arch)
    if name is not None:
        writer.add_name(name)
    if context is not None:
        writer.add_context_length(context)
    if file_type is not None:
        writer.add_file_type(file_type)
    for i in range(tensors):
        writer.add_tensor(f"blk.{i}.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_reads_metadata_of_real_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    model = read_gguf(path)
    assert isinstance(model, LocalModel)
    assert (model.architecture, model.name, model.context_length) == ("llama", "tiny", 4096)
    assert (model.file_type, model.quantization) == (int(gguf.LlamaFileType.MOSTLY_Q4_K_M), "Q4_K_M")
    assert model.tensor_count == 2
    assert model.gguf_version == 3
    assert model.size == path.stat().st_size
    assert model.metadata_count == 4


@pytest.mark.parametrize(
    ("file_type", "expected"),
    [(gguf.LlamaFileType.MOSTLY_F16, "F16"), (gguf.LlamaFileType.ALL_F32, "F32"), (None, "F32")],
)
def test_quantisation_names(tmp_path: Path, file_type: gguf.LlamaFileType | None, expected: str) -> None:
    model = read_gguf(write_gguf(tmp_path / "m.gguf", file_type=file_type))
    assert isinstance(model, LocalModel)
    assert model.quantization == expected


def test_other_architecture_context_key(tmp_path: Path) -> None:
    model = read_gguf(write_gguf(tmp_path / "q.gguf", arch="qwen2", context=32768, name=None))
    assert isinstance(model, LocalModel)
    assert (model.architecture, model.context_length, model.name) == ("qwen2", 32768, None)


async def test_discover_reports_broken_files_and_keeps_going(tmp_path: Path) -> None:
    (tmp_path / "a" / "nested").mkdir(parents=True)
    good = write_gguf(tmp_path / "a" / "good.gguf")
    write_gguf(tmp_path / "a" / "nested" / "deep.gguf", arch="phi3")
    data = good.read_bytes()
    (tmp_path / "a" / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "a" / "header-only.gguf").write_bytes(data[:10])
    (tmp_path / "a" / "empty.gguf").write_bytes(b"")
    (tmp_path / "a" / "wrong.gguf").write_bytes(b"GGML" + data[4:])
    (tmp_path / "a" / "dir.gguf").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    locked = tmp_path / "a" / "locked.gguf"
    locked.write_bytes(data)
    locked.chmod(0)
    try:
        report = await DefaultAliasService(tmp_path / "aliases").discover(
            [tmp_path / "a", tmp_path / "missing"]
        )
    finally:
        locked.chmod(0o600)
    found = {m.path.name: m for m in report.models}
    errors = {e.path.name: e.code for e in report.errors}
    assert set(found) >= {"good.gguf", "deep.gguf"}
    assert found["deep.gguf"].architecture == "phi3"
    assert errors["truncated.gguf"] == "aliases.gguf_invalid"
    assert errors["header-only.gguf"] == "aliases.gguf_invalid"
    assert errors["empty.gguf"] == "aliases.gguf_empty"
    assert errors["wrong.gguf"] == "aliases.gguf_bad_magic"
    assert errors["dir.gguf"] == "aliases.gguf_not_a_file"
    assert errors["missing"] == "aliases.folder_missing"
    if os.geteuid() != 0:  # root reads anything
        assert errors["locked.gguf"] == "aliases.gguf_unreadable"
    for error in report.errors:
        assert error.message
        assert "{" not in error.message


async def test_discover_corrupted_metadata_never_raises(tmp_path: Path) -> None:
    data = bytearray(write_gguf(tmp_path / "src.gguf").read_bytes())
    rng = np.random.default_rng(7)
    folder = tmp_path / "fuzz"
    folder.mkdir()
    for i in range(40):
        blob = bytearray(data)
        for pos in rng.integers(4, len(blob), size=8):
            blob[int(pos)] = int(rng.integers(0, 256))
        (folder / f"f{i}.gguf").write_bytes(bytes(blob))
    report = await DefaultAliasService(tmp_path).discover([folder])
    assert len(report.models) + len(report.errors) == 40
