"""The same LiteLLM contract against FakeLiteLLM (in-process and loopback) and the real LiteLLM proxy.

The real proxy runs from its own virtualenv (``../shared/bench/setup.sh``; default
``~/.cache/maaskit-bench-venv``) on a random loopback port, with several priced models and no
database. Without the venv these tests skip with the reason; with ``MAASKIT_REQUIRE_SERVICES=1``
the venv is installed on demand (once per machine, under a lock file) and a failure fails the run.
Only endpoints that work without LiteLLM's database are part of the contract.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from maaskit.errors import MaasError
from maaskit.services.catalog import CatalogModel, DefaultModelCatalog
from maaskit.services.litellm import DefaultLiteLLMService, LiteLLMConfig, ModelInfo
from maaskit.services.upstream import RetryPolicy, Timeouts
from maaskit.storage.memory.catalog import MemoryCatalogStore
from maaskit.testing.fake_litellm import FakeLiteLLM

REQUIRE_SERVICES = os.environ.get("MAASKIT_REQUIRE_SERVICES") == "1"
SETUP_SCRIPT = Path(os.environ.get("MAASKIT_BENCH_SETUP", "/work/shared/bench/setup.sh"))
VENV = Path(
    os.environ.get("BENCH_VENV")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maaskit-bench-venv"
)
MASTER = "sk-contract-master"

#: name -> (input, output, max_input, max_output, supports) - the same models on every peer.
MODELS: dict[str, tuple[str | None, str | None, int | None, int | None, dict[str, bool]]] = {
    "gpt-cheap": ("0.00000015", "0.0000006", 128000, 16384, {"function_calling": True, "vision": True}),
    "claude-ish": ("0.000003", "0.000015", 200000, 8192, {"function_calling": True}),
    "org/tiny-model": ("0.0000000125", "0.00000005", 8192, 2048, {}),
    "free-model": (None, None, None, None, {}),
}


def _config_yaml() -> str:
    lines = ["model_list:"]
    for name, (inp, out, max_in, max_out, supports) in MODELS.items():
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: openai/{name}",
            "      api_base: http://127.0.0.1:9/v1",
            "      api_key: sk-unused",
        ]
        info = {
            "input_cost_per_token": inp,
            "output_cost_per_token": out,
            "max_input_tokens": max_in,
            "max_output_tokens": max_out,
        }
        info.update({f"supports_{k}": str(v).lower() for k, v in supports.items()})
        shown = {k: v for k, v in info.items() if v is not None}
        if shown:
            lines.append("    model_info:")
            lines += [f"      {k}: {v}" for k, v in shown.items()]
    lines += [
        "litellm_settings:",
        "  telemetry: false",
        "  num_retries: 0",
        "general_settings:",
        f"  master_key: {MASTER}",
    ]
    return "\n".join(lines) + "\n"


def _ensure_venv() -> Path:
    litellm = VENV / "bin" / "litellm"
    if litellm.exists():
        return litellm
    if not REQUIRE_SERVICES:
        pytest.skip(
            f"the LiteLLM proxy is not installed at {VENV} (run WITH_LITELLM=1 bash {SETUP_SCRIPT}, "
            "or set MAASKIT_REQUIRE_SERVICES=1 to install it on demand)"
        )
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "maaskit-bench-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer per machine; the others wait, then reuse it
        if not litellm.exists():
            env = {**os.environ, "BENCH_VENV": str(VENV), "WITH_LITELLM": "1"}
            try:
                subprocess.run(
                    ["bash", str(SETUP_SCRIPT)], env=env, check=True, timeout=600, capture_output=True
                )
            except (subprocess.SubprocessError, OSError) as exc:
                pytest.fail(f"MAASKIT_REQUIRE_SERVICES=1 but installing LiteLLM into {VENV} failed: {exc}")
    if not litellm.exists():
        pytest.fail(f"MAASKIT_REQUIRE_SERVICES=1 but {litellm} is missing after the install")
    return litellm


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def real_litellm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real LiteLLM proxy on a random loopback port (no database); yields its base URL."""
    litellm = _ensure_venv()
    folder = tmp_path_factory.mktemp("litellm")
    config = folder / "config.yaml"
    config.write_text(_config_yaml())
    port = _free_port()
    log = open(folder / "litellm.log", "wb")  # noqa: SIM115 - closed at teardown
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        [
            str(litellm),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=folder,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"LiteLLM exited with {proc.returncode}; see {folder / 'litellm.log'}")
            try:
                if httpx.get(f"{base_url}/health/liveliness", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"LiteLLM did not become ready in 90 s; see {folder / 'litellm.log'}")
            time.sleep(0.25)  # waiting for a subprocess to start, not timing a test
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def _fake() -> FakeLiteLLM:
    fake = FakeLiteLLM(master_key=MASTER)
    for name, (inp, out, max_in, max_out, supports) in MODELS.items():
        fake.add_model(
            name,
            input_cost_per_token=inp,
            output_cost_per_token=out,
            max_input_tokens=max_in,
            max_output_tokens=max_out,
            supports=supports,
            mode=None,
        )
    return fake


def _service(base_url: str, client: httpx.AsyncClient, key: str = MASTER) -> DefaultLiteLLMService:
    return DefaultLiteLLMService(
        LiteLLMConfig(base_url=base_url, master_key=key, timeouts=Timeouts(connect=5, read=30, total=60)),
        client,
        retry=RetryPolicy(max_attempts=1),
    )


@pytest.fixture(params=["fake", "fake_loopback", "real"])
async def peer(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """``(base_url, client)`` of one LiteLLM peer."""
    if request.param == "fake":
        fake = _fake()
        async with httpx.AsyncClient(transport=fake.httpx_transport()) as client:
            yield fake.base_url, client
    elif request.param == "fake_loopback":
        fake = _fake()
        async with fake.serve() as base_url, httpx.AsyncClient() as client:
            yield base_url, client
    else:
        base_url = request.getfixturevalue("real_litellm")
        async with httpx.AsyncClient() as client:
            yield base_url, client


async def test_v1_models_lists_every_configured_model(peer: tuple[str, httpx.AsyncClient]) -> None:
    models = await _service(*peer).get_models()
    assert sorted(m.id for m in models) == sorted(MODELS)


async def test_model_info_is_typed_and_exact(peer: tuple[str, httpx.AsyncClient]) -> None:
    infos = {m.model_name: m for m in await _service(*peer).get_model_info()}
    assert sorted(infos) == sorted(MODELS)
    for name, (inp, out, max_in, max_out, supports) in MODELS.items():
        info = infos[name]
        assert info.input_cost_per_token == (Decimal(inp) if inp else None)
        assert info.output_cost_per_token == (Decimal(out) if out else None)
        assert isinstance(info.input_cost_per_token, Decimal | type(None))
        assert info.max_input_tokens == max_in
        assert info.max_output_tokens == max_out
        assert info.context_window == max_in
        assert {k for k, v in supports.items() if v} <= info.capabilities
        assert info.provider == "openai"
        assert info.upstream_model == f"openai/{name}"


async def test_sync_models_yields_a_catalog_equal_to_model_info(peer: tuple[str, httpx.AsyncClient]) -> None:
    service = _service(*peer)
    catalog = DefaultModelCatalog(MemoryCatalogStore())
    report = await catalog.sync_models(service)
    assert sorted(report.added) == sorted(MODELS)
    infos = await service.get_model_info()
    expected = {i.model_name: CatalogModel.from_info(i).synced_values() for i in infos}
    got = {m.model_id: m.synced_values() for m in await catalog.list_models()}
    assert got == expected
    again = await catalog.sync_models(service)
    assert again.rows_written == 0
    assert sorted(again.unchanged) == sorted(MODELS)


async def test_connection_check_reports_alive_and_ready(peer: tuple[str, httpx.AsyncClient]) -> None:
    check = await _service(*peer).test_connection()
    assert check.ok
    assert check.alive
    assert check.ready
    assert check.status == "healthy"
    assert check.error is None


async def test_wrong_master_key_is_refused_with_a_typed_error(peer: tuple[str, httpx.AsyncClient]) -> None:
    service = _service(*peer, key="sk-wrong-key")
    with pytest.raises(MaasError) as info:
        await service.get_model_info()
    assert "sk-wrong-key" not in str(info.value)
    assert "sk-wrong-key" not in repr(info.value)


async def test_model_info_entries_are_model_info_objects(peer: tuple[str, httpx.AsyncClient]) -> None:
    snapshot = await _service(*peer).fetch_models()
    assert snapshot.problems == ()
    assert not snapshot.is_fallback
    assert all(isinstance(m, ModelInfo) for m in snapshot.models)


def test_config_is_valid_yaml() -> None:
    import yaml

    data: Any = yaml.safe_load(_config_yaml())
    assert [m["model_name"] for m in data["model_list"]] == list(MODELS)
