"""Fixtures for the end-to-end tests of the reference gateway (``tests/adapters/test_gateway_*.py``).

``gateway`` serves :func:`maaskit.gateway.create_gateway` with uvicorn on a loopback port in
front of a :class:`FakeUpstream` that is itself served on loopback, so every byte goes through
real sockets, exactly as with ``maaskit serve``. ``gateway_factory`` builds more of them (other
settings, several replicas sharing one database).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from maaskit.app import AppService, create_app
from maaskit.testing.app import test_settings
from maaskit.testing.fake_upstream import FakeUpstream
from maaskit.testing.gateway import running_gateway

UPSTREAM_KEY = "sk-fake-upstream"
#: USD per million tokens; ``cheap-model`` has fractional micro-dollar prices (rounding shows).
PRICES = {
    "fake-model": {"input": "10", "output": "30"},
    "cheap-model": {"input": "0.15", "output": "0.6"},
}
MODELS = ("fake-model", "cheap-model")
#: Generous bound for things that happen "soon" on loopback (polled, never slept on).
EVENTUALLY = 5.0


def expected_cost_micros(model: str, prompt_tokens: int, completion_tokens: int) -> int:
    """What the gateway must charge: ceil(tokens x price per token) in micro-dollars, in one step."""
    price = PRICES[model]
    exact = prompt_tokens * Decimal(price["input"]) + completion_tokens * Decimal(price["output"])
    return math.ceil(exact)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = EVENTUALLY) -> bool:
    """Poll *check* until it is true or *timeout* seconds passed (a bound, never an assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await check():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)


class Gateway:
    """A running gateway: its base URL, its AppService, an admin client and the fake upstream."""

    def __init__(self, base: str, app: AppService, fake: FakeUpstream, admin: httpx.AsyncClient) -> None:
        self.base = base
        self.app = app
        self.settings = app.settings
        self.fake = fake
        self.admin = admin
        self._clients: list[Any] = []

    prices = PRICES

    @staticmethod
    def cost(model: str, prompt_tokens: int, completion_tokens: int) -> int:
        """See :func:`expected_cost_micros`."""
        return expected_cost_micros(model, prompt_tokens, completion_tokens)

    @staticmethod
    async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = EVENTUALLY) -> bool:
        """See :func:`eventually`."""
        return await eventually(check, timeout=timeout)

    @property
    def admin_token(self) -> str:
        token = self.settings.admin_token
        assert token is not None
        return token.get_secret_value()

    async def create_key(self, **fields: Any) -> dict[str, Any]:
        """``POST /admin/keys``; the JSON answer includes ``secret``."""
        body = {"owner_id": "alice", "name": "test key", **fields}
        reply = await self.admin.post("/admin/keys", json=body)
        assert reply.status_code == 201, reply.text
        created: dict[str, Any] = reply.json()
        return created

    def openai(self, api_key: str) -> Any:
        """The official client against this gateway (no retries)."""
        import openai

        client = openai.AsyncOpenAI(base_url=f"{self.base}/v1", api_key=api_key, max_retries=0)
        self._clients.append(client)
        return client

    async def aclose(self) -> None:
        """Close the openai clients handed out (before the event loop goes away)."""
        for client in self._clients:
            await client.close()
        self._clients.clear()

    async def usage(self, **params: str) -> list[dict[str, Any]]:
        """``GET /admin/usage`` (it flushes the usage buffer first)."""
        reply = await self.admin.get("/admin/usage", params=params)
        assert reply.status_code == 200, reply.text
        rows: list[dict[str, Any]] = reply.json()["data"]
        return rows

    async def key_count(self) -> int:
        """Keys stored (revoked ones included), read through the service, not the HTTP API."""
        return len(await self.app.api_keys.list(include_revoked=True))

    async def usage_row_count(self) -> int:
        """Requests recorded in the usage table (after a flush)."""
        return sum(row["requests"] for row in await self.usage())


GatewayFactory = Callable[..., AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def gw_fake() -> FakeUpstream:
    """The upstream every gateway of the test forwards to."""
    return FakeUpstream(api_key=UPSTREAM_KEY, models=MODELS)


@pytest.fixture
async def gw_upstream_url(gw_fake: FakeUpstream) -> AsyncIterator[str]:
    """The fake upstream served on a loopback port (``http://127.0.0.1:<port>/v1``)."""
    async with gw_fake.serve() as url:
        yield url


@pytest.fixture
def gateway_factory(gw_fake: FakeUpstream, gw_upstream_url: str, tmp_path: Path) -> GatewayFactory:
    """``async with gateway_factory(**setting_changes) as gw``: a gateway in front of ``gw_fake``.

    The database is a SQLite file in ``tmp_path`` (as with ``maaskit serve``), not ``:memory:``:
    an in-memory database shares one connection between concurrent transactions (see the
    report on the disconnect test), which a real deployment never does.
    """

    @asynccontextmanager
    async def factory(
        *,
        app_service: AppService | None = None,
        overrides: Mapping[type[Any], object] | None = None,
        **changes: Any,
    ) -> AsyncIterator[Gateway]:
        values: dict[str, Any] = {
            "upstream_url": gw_upstream_url,
            "upstream_api_key": UPSTREAM_KEY,
            "model_prices": PRICES,
            "limits_backend": "sql",
            "default_max_tokens": 64,
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        }
        values.update(changes)
        service = app_service or create_app(test_settings(**values), overrides=overrides)
        async with running_gateway(app_service=service) as base:
            token = service.settings.admin_token
            assert token is not None
            headers = {"authorization": f"Bearer {token.get_secret_value()}"}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as admin:
                gw = Gateway(base, service, gw_fake, admin)
                try:
                    yield gw
                finally:
                    await gw.aclose()

    return factory


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    """The reference gateway on loopback (SQLite, SQL-backed limits) in front of ``gw_fake``."""
    async with gateway_factory() as gw:
        yield gw
