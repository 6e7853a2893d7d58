"""Data-plane overhead: DefaultAiApiService + AiohttpTransport vs raw aiohttp, same loopback fake, same run.

Run with ``.venv/bin/pytest tests/bench/test_upstream_bench.py --benchmark-enable -s -p no:cacheprovider``.
The fake upstream runs in the same event loop, so both sides pay its cost equally; the difference
is what maaskit adds per request (body rewrite + JSON encode, retry/breaker bookkeeping, JSON parse
of the answer, usage extraction).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from maaskit.services.ai_api import DefaultAiApiService
from maaskit.services.upstream import AiohttpTransport, Upstream
from maaskit.testing.fake_upstream import FakeUpstream

KEY = "sk-bench"
BODY: dict[str, Any] = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "Say hello to the benchmark, please."}],
    "max_tokens": 64,
}
BATCH = 200


class Env:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = FakeUpstream(api_key=KEY)
        self._serve = self.fake.serve()
        self.base = self.loop.run_until_complete(self._serve.__aenter__())
        self.session = self.loop.run_until_complete(self._session())
        self.transport = AiohttpTransport()
        self.ai = DefaultAiApiService(Upstream(name="bench", base_url=self.base, api_key=KEY), self.transport)
        self.url = f"{self.base}/chat/completions"
        self.body_bytes = json.dumps(BODY).encode()
        self.headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        self.stream_body = {**BODY, "stream": True}
        self.stream_bytes = json.dumps(
            {**self.stream_body, "stream_options": {"include_usage": True}}
        ).encode()

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    async def raw(self) -> None:
        async with self.session.post(self.url, data=self.body_bytes, headers=self.headers) as resp:
            await resp.read()

    async def service(self) -> None:
        await self.ai.chat_completion(BODY)

    async def raw_stream(self) -> None:
        async with self.session.post(self.url, data=self.stream_bytes, headers=self.headers) as resp:
            async for _chunk in resp.content.iter_any():
                pass

    async def service_stream(self) -> None:
        async with self.ai.stream_chat_completion(self.stream_body) as stream:
            async for _chunk in stream:
                pass

    def batch(self, fn: Callable[[], Awaitable[None]], n: int = BATCH) -> float:
        async def run() -> float:
            start = time.perf_counter()
            for _ in range(n):
                await fn()
            return (time.perf_counter() - start) / n

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.run_until_complete(self.transport.aclose())
        self.loop.run_until_complete(self._serve.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.close()


def test_bench_raw_aiohttp(benchmark: Any, env: Env) -> None:
    benchmark.pedantic(env.batch, args=(env.raw,), rounds=10, warmup_rounds=1)


def test_bench_service_aiohttp(benchmark: Any, env: Env) -> None:
    benchmark.pedantic(env.batch, args=(env.service,), rounds=10, warmup_rounds=1)


def test_added_microseconds_per_request(env: Env) -> None:
    """Alternate raw and service rounds in one run and print the medians and the difference."""
    figures: dict[str, list[float]] = {"raw": [], "service": [], "raw_stream": [], "service_stream": []}
    env.batch(env.raw, 50)
    env.batch(env.service, 50)
    for _ in range(8):
        figures["raw"].append(env.batch(env.raw))
        figures["service"].append(env.batch(env.service))
        figures["raw_stream"].append(env.batch(env.raw_stream, 50))
        figures["service_stream"].append(env.batch(env.service_stream, 50))
    med = {k: statistics.median(v) * 1e6 for k, v in figures.items()}
    print(
        f"\nnon-stream: raw aiohttp {med['raw']:.0f} us, service {med['service']:.0f} us, "
        f"added {med['service'] - med['raw']:.0f} us/request"
        f"\nstream (8 events): raw {med['raw_stream']:.0f} us, service {med['service_stream']:.0f} us, "
        f"added {med['service_stream'] - med['raw_stream']:.0f} us/stream"
    )
    assert med["service"] > 0
    assert med["raw"] > 0
