"""The reference demo behind ``maaskit demo`` (the README's main job).

It runs the reference gateway on an embedded SQLite file in front of the bundled
:class:`~maaskit.testing.fake_upstream.FakeUpstream` (or a real upstream when
``MAASKIT_UPSTREAM_URL`` and ``MAASKIT_UPSTREAM_API_KEY`` are set), all on loopback, then:

1. creates an API key with a small budget through the admin API;
2. makes calls through the official ``openai`` client, one of them streamed;
3. keeps calling until the budget refuses, and shows the refusal;
4. prints the usage report.

It needs no server and no network beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

from maaskit.settings import Settings
from maaskit.testing.gateway import running_gateway

__all__ = ["DEMO_MODEL", "DEMO_PRICES", "run_demo"]

#: The model the demo calls, and its price in USD per million tokens.
DEMO_MODEL = "fake-model"
DEMO_PRICES = {DEMO_MODEL: {"input": "10", "output": "30"}}
_MAX_CALLS = 25


@contextlib.asynccontextmanager
async def _upstream() -> AsyncIterator[tuple[str, str, str]]:
    """``(base_url, api key, description)`` of the upstream the demo talks to."""
    url = os.environ.get("MAASKIT_UPSTREAM_URL")
    key = os.environ.get("MAASKIT_UPSTREAM_API_KEY")
    if url and key:
        yield url, key, f"the real upstream at {url}"
        return
    from maaskit.testing.fake_upstream import FakeUpstream

    fake = FakeUpstream()
    async with fake.serve() as base_url:
        yield base_url, "sk-fake-upstream", f"FakeUpstream on {base_url}"


async def run_demo(*, database_url: str | None = None, out: TextIO) -> int:
    """Run the demo, printing to *out*; returns the process exit code."""
    import httpx
    import openai

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    with tempfile.TemporaryDirectory(prefix="maaskit-demo-") as tmp:
        url = database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'maaskit.db'}"
        admin_token = secrets.token_urlsafe(24)
        async with _upstream() as (upstream_url, upstream_key, described):
            settings = Settings.from_env(
                database_url=url,
                environment="development",
                upstream_url=upstream_url,
                upstream_api_key=upstream_key,
                admin_token=admin_token,
                key_pepper=secrets.token_urlsafe(48),
                signing_secret=secrets.token_urlsafe(48),
                master_key=secrets.token_urlsafe(48),
                model_prices=DEMO_PRICES,
                limits_backend="sql",
            )
            say("maaskit demo: the reference gateway on embedded SQLite")
            say(f"  database: {url}")
            say(f"  upstream: {described}")
            async with running_gateway(settings) as base:
                say(f"  gateway:  {base} (OpenAI-compatible)")
                say()
                async with httpx.AsyncClient(base_url=base) as admin:
                    reply = await admin.post(
                        "/admin/keys",
                        json={"owner_id": "alice", "name": "demo key", "budget": "0.002", "rpm_limit": 600},
                        headers={"authorization": f"Bearer {admin_token}"},
                    )
                    reply.raise_for_status()
                    key: dict[str, Any] = reply.json()
                say(
                    f"1. created API key {key['id']} ({key['hint']}) for alice with a budget of ${key['budget']}"
                )
                price = DEMO_PRICES[DEMO_MODEL]
                say(
                    f"   {DEMO_MODEL} costs ${price['input']} / ${price['output']} per million input/output tokens"
                )

                client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key["secret"], max_retries=0)
                models = await client.models.list()
                say(f"2. models visible to the key: {', '.join(m.id for m in models.data)}")

                messages: Any = [{"role": "user", "content": "Say hello to maaskit."}]
                raw = await client.chat.completions.with_raw_response.create(
                    model=DEMO_MODEL, messages=messages, max_tokens=16
                )
                completion = raw.parse()
                usage = completion.usage
                say(f"3. chat completion: {completion.choices[0].message.content!r}")
                if usage is not None:
                    say(
                        f"   usage {usage.prompt_tokens} + {usage.completion_tokens} tokens; "
                        f"budget left ${raw.headers.get('x-maaskit-budget-remaining')}"
                    )

                stream = await client.chat.completions.create(
                    model=DEMO_MODEL,
                    messages=messages,
                    max_tokens=16,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                pieces = []
                chunks = 0
                async for chunk in stream:
                    chunks += 1
                    if chunk.choices and chunk.choices[0].delta.content:
                        pieces.append(chunk.choices[0].delta.content)
                say(f"4. streamed completion in {chunks} chunks: {''.join(pieces)!r}")

                say("5. calling until the budget is spent:")
                refused = False
                for call in range(1, _MAX_CALLS + 1):
                    try:
                        raw = await client.chat.completions.with_raw_response.create(
                            model=DEMO_MODEL, messages=messages, max_tokens=16
                        )
                    except openai.RateLimitError as exc:
                        body: Any = exc.body if isinstance(exc.body, dict) else {}
                        say(
                            f"   call {call}: refused with HTTP {exc.status_code} "
                            f"[{body.get('code')}]: {body.get('message')}"
                        )
                        refused = True
                        break
                    say(f"   call {call}: ok, budget left ${raw.headers.get('x-maaskit-budget-remaining')}")

                async with httpx.AsyncClient(base_url=base) as admin:
                    report = await admin.get(
                        "/admin/usage", headers={"authorization": f"Bearer {admin_token}"}
                    )
                    report.raise_for_status()
                rows = report.json()["data"]
                say("6. usage report (by key, model and day):")
                say(f"   {'key':38} {'model':12} {'day':10} {'requests':>8} {'tokens':>7} {'cost USD':>10}")
                for row in rows:
                    tokens = row["prompt_tokens"] + row["completion_tokens"]
                    say(
                        f"   {row['key_id']:38} {row['model']:12} {row['day']:10} {row['requests']:>8} "
                        f"{tokens:>7} {row['cost']:>10}"
                    )
            say()
            say("done: the gateway shut down cleanly and flushed its usage buffer")
            return 0 if refused and rows else 1
