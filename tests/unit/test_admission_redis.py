"""Issue 3, benchmark b: with Redis backends, one admission is ONE Redis round trip and one settle
is at most one (the key validation is served from the process cache)."""

from __future__ import annotations

from typing import Any

import pytest

from maaskit.errors import UnauthenticatedError
from maaskit.services.ai_api import Usage
from maaskit.testing import build_test_app
from maaskit.wiring import RedisClient

PRICES = {"rt-model": {"input": "1", "output": "2"}}
BODY = {"model": "rt-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}


async def test_admit_and_settle_each_cost_one_redis_round_trip(redis_url: str) -> None:
    async with build_test_app(redis_url=redis_url, limits_backend="redis", model_prices=PRICES) as app:
        created = await app.api_keys.create(
            "round-trip-owner", name="rt", budget_micros=10**9, rpm_limit=10_000, tpm_limit=10**7
        )
        warm = await app.admission.admit(created.secret, "rt-model", BODY)  # fills the key cache
        await app.admission.settle(warm, Usage(4, 6, 10, "reported"))

        client = app.get(RedisClient)
        commands: list[str] = []
        original = client.execute_command  # type: ignore[attr-defined]

        async def counting(*args: Any, **options: Any) -> Any:
            commands.append(str(args[0]))
            return await original(*args, **options)

        client.execute_command = counting  # type: ignore[attr-defined]
        try:
            for _ in range(3):
                commands.clear()
                admission = await app.admission.admit(created.secret, "rt-model", BODY)
                assert commands == ["EVALSHA"]
                commands.clear()
                await app.admission.settle(admission, Usage(4, 6, 10, "reported"))
                assert commands == ["EVALSHA"]
            commands.clear()
            with pytest.raises(UnauthenticatedError):  # a malformed key costs no round trip at all
                await app.admission.admit("mk_not-a-valid-key", "rt-model", BODY)
            assert commands == []
        finally:
            client.execute_command = original  # type: ignore[attr-defined]
