"""The gateway's hot path without HTTP: create a key, admit a request, call the upstream, settle.

Everything runs in-process: the upstream is maaskit's FakeUpstream behind httpx's MockTransport.

Run: python examples/admission_flow.py
"""

import asyncio

import httpx

from maaskit.errors import MaasError
from maaskit.money import format_money, to_micros
from maaskit.services.ai_api import DefaultAiApiService
from maaskit.services.upstream import HttpxTransport, Upstream
from maaskit.testing import FakeUpstream, build_test_app


async def main() -> None:
    fake = FakeUpstream()
    transport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()), owns_client=True)
    ai = DefaultAiApiService(
        Upstream(name="fake", base_url="http://fake.test/v1", api_key="sk-fake-upstream"), transport
    )
    prices = {"fake-model": {"input": "10", "output": "30"}}
    async with build_test_app(model_prices=prices) as app:
        created = await app.api_keys.create("alice", name="example", budget_micros=to_micros("0.001"))
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        for attempt in range(1, 10):
            try:
                admission = await app.admission.admit(created.secret, "fake-model", body)
            except MaasError as error:
                print(f"request {attempt}: refused [{error.code}] {error}")
                break
            result = await ai.chat_completion(admission.upstream_body(body))
            settled = await app.admission.settle(admission, result.usage)
            print(
                f"request {attempt}: {result.usage.total_tokens} tokens cost {format_money(settled.cost_micros)}"
            )
    await transport.aclose()


if __name__ == "__main__":
    asyncio.run(main())
