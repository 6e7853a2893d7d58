"""``maaskit serve`` as a real subprocess, configured only through ``MAASKIT_*`` variables.

The test process serves the FakeUpstream on loopback; the gateway process runs on a SQLite file.
The usage flush interval is set far beyond the test's length, so the usage rows can only reach
the file through the graceful shutdown (SIGTERM -> uvicorn stops -> the app drains its buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from maaskit.testing.fake_upstream import FakeUpstream
from maaskit.testing.gateway import free_port

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-fake-upstream"
PRICES = {"fake-model": {"input": "10", "output": "30"}}
MESSAGES: Any = [{"role": "user", "content": "Hello from a subprocess test"}]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def _env(tmp_path: Path, upstream_url: str, admin_token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAASKIT_")}
    env.update(
        MAASKIT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        MAASKIT_UPSTREAM_URL=upstream_url,
        MAASKIT_UPSTREAM_API_KEY=UPSTREAM_KEY,
        MAASKIT_MODEL_PRICES=json.dumps(PRICES),
        MAASKIT_ADMIN_TOKEN=admin_token,
        MAASKIT_KEY_PEPPER=secrets.token_urlsafe(48),
        MAASKIT_USAGE_FLUSH_INTERVAL="60",
        MAASKIT_USAGE_FLUSH_BATCH="100000",
    )
    return env


@contextlib.asynccontextmanager
async def _serve(env: dict[str, str], port: int, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m maaskit.cli serve --port <port>``; SIGTERM (then SIGKILL) on exit."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "maaskit.cli",
            "serve",
            "--port",
            str(port),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _wait_until_serving(process: asyncio.subprocess.Process, base: str, log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    async with httpx.AsyncClient(base_url=base, timeout=2) as client:
        while loop.time() < deadline:
            if process.returncode is not None:
                pytest.fail(f"maaskit serve exited with {process.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    pytest.fail(f"maaskit serve did not answer within {START_TIMEOUT} s: {log.read_text()[-2000:]}")


async def _terminate(process: asyncio.subprocess.Process) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(process.wait(), timeout=STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail("maaskit serve did not stop within the timeout after SIGTERM")


def _usage_rows(database: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return conn.execute(
            "SELECT key_id, model, prompt_tokens, completion_tokens, cost_micros, status, streamed, usage_source "
            "FROM maaskit_usage ORDER BY created_at"
        ).fetchall()


def _maaskit_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "maaskit.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_maaskit_serve_subprocess_end_to_end(tmp_path: Path) -> None:
    fake = FakeUpstream(api_key=UPSTREAM_KEY)
    admin_token = secrets.token_urlsafe(24)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    async with fake.serve() as upstream_url:
        env = _env(tmp_path, upstream_url, admin_token)
        async with _serve(env, port, log) as process:
            await _wait_until_serving(process, base, log)
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                created = await http.post(
                    "/admin/keys",
                    json={"owner_id": "alice", "name": "process test", "budget": "0.05", "rpm_limit": 100},
                    headers={"authorization": f"Bearer {admin_token}"},
                )
                assert created.status_code == 201, created.text
                key = created.json()
                refused = await http.get("/admin/keys", headers={"authorization": f"Bearer {key['secret']}"})
                assert refused.status_code == 403  # a key of a non-user owner holds only models:use

            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key["secret"], max_retries=0)
            try:
                models = await client.models.list()
                assert [m.id for m in models.data] == ["fake-model"]
                raw = await client.chat.completions.with_raw_response.create(
                    model="fake-model", messages=MESSAGES, max_tokens=16
                )
                completion = raw.parse()
                assert completion.choices[0].message.content == fake.reply
                assert raw.headers["x-ratelimit-remaining-requests"] == "99"
                # the data plane states the length: no chunked framing for the client to undo
                assert raw.headers["content-length"] == str(len(raw.content))
                assert "transfer-encoding" not in raw.headers
                assert "server" not in raw.headers  # no banner naming the software
                assert "date" in raw.headers
                stream = await client.chat.completions.create(
                    model="fake-model",
                    messages=MESSAGES,
                    max_tokens=16,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
                assert "".join(pieces) == fake.reply
                with pytest.raises(openai.AuthenticationError):
                    await openai.AsyncOpenAI(
                        base_url=f"{base}/v1", api_key=key["secret"][:-1], max_retries=0
                    ).models.list()
                async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                    refused_chat = await http.post(
                        "/v1/chat/completions",
                        json={"model": "fake-model", "messages": MESSAGES},
                        headers={"authorization": f"Bearer {key['secret'][:-1]}"},
                    )
                assert refused_chat.status_code == 401
                assert refused_chat.headers["content-length"] == str(len(refused_chat.content))
            finally:
                await client.close()

            # nothing was flushed yet (interval 60 s): the rows are in the gateway's buffer
            assert _usage_rows(tmp_path / "gateway.db") == []
            code = await _terminate(process)

    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM: -15 (or 0)
    assert code in (0, -signal.SIGTERM), log.read_text()[-2000:]
    prompt = fake.prompt_tokens(MESSAGES)
    out = fake.completion_tokens
    cost = prompt * 10 + out * 30  # whole micro-dollars at 10 / 30 USD per million tokens
    rows = _usage_rows(tmp_path / "gateway.db")
    assert sorted(rows, key=lambda r: r[6]) == [
        (key["id"], "fake-model", prompt, out, cost, "ok", 0, "reported"),
        (key["id"], "fake-model", prompt, out, cost, "ok", 1, "reported"),
    ]
    # the CLI reads the same file: the key is there, not revoked, and its secret never is
    listed = json.loads(_maaskit_cli(env, "keys", "list"))
    assert [(k["id"], k["owner_id"], k["revoked_at"]) for k in listed] == [(key["id"], "alice", None)]
    assert key["secret"] not in json.dumps(listed)
    assert key["secret"] not in log.read_text()
    assert admin_token not in log.read_text()
