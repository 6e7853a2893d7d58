"""Streaming: chunk-by-chunk forwarding, usage, early exit billed once, no retry mid-stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maaskit.errors import UpstreamError
from maaskit.services.ai_api import DefaultAiApiService, Usage
from maaskit.services.upstream import AiohttpTransport, HttpxTransport, RetryPolicy, Upstream
from maaskit.testing.clock import FakeClock
from maaskit.testing.fake_upstream import FakeUpstream

KEY = "sk-stream-secret"
MESSAGES = [{"role": "user", "content": "Tell me a story"}]
BODY = {"model": "fake-model", "messages": MESSAGES}
REPLY_WORDS = ["Once ", "upon ", "a ", "time ", "there ", "was ", "a ", "fake."]


async def _no_sleep(_seconds: float) -> None:
    return None


@pytest.fixture(params=["httpx", "aiohttp"])
async def env(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[tuple[DefaultAiApiService, FakeUpstream]]:
    fake = FakeUpstream(api_key=KEY, reply="".join(REPLY_WORDS))
    retry = RetryPolicy(max_attempts=3, sleep=_no_sleep)
    if request.param == "httpx":
        transport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()), owns_client=True)
        ai = DefaultAiApiService(
            Upstream(name="fake", base_url=fake.base_url, api_key=KEY), transport, clock, retry=retry
        )
        try:
            yield ai, fake
        finally:
            await transport.aclose()
    else:
        async with fake.serve() as base:
            aio = AiohttpTransport()
            ai = DefaultAiApiService(
                Upstream(name="fake", base_url=base, api_key=KEY), aio, clock, retry=retry
            )
            try:
                yield ai, fake
            finally:
                await aio.aclose()


def events_of(data: bytes) -> list[dict[str, object] | str]:
    out: list[dict[str, object] | str] = []
    for event in data.split(b"\n\n"):
        if event.startswith(b"data: "):
            payload = event[6:]
            out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


async def test_stream_forwards_events_and_reports_usage(
    env: tuple[DefaultAiApiService, FakeUpstream],
) -> None:
    ai, fake = env
    calls: list[Usage] = []
    async with ai.stream_chat_completion(BODY, on_complete=calls.append) as stream:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        data = b"".join([chunk async for chunk in stream])
    sent = fake.requests[-1].json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    events = events_of(data)
    assert events[-1] == "[DONE]"
    # the client did not ask for usage: the usage-only event is not forwarded
    assert all(e == "[DONE]" or e["choices"] for e in events)  # type: ignore[index]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e != "[DONE]")  # type: ignore[index]
    assert text == fake.reply
    expected = Usage(
        FakeUpstream.prompt_tokens(MESSAGES),
        len(REPLY_WORDS),
        FakeUpstream.prompt_tokens(MESSAGES) + len(REPLY_WORDS),
        "reported",
    )
    assert stream.usage == expected
    assert calls == [expected]
    assert stream.completed


async def test_stream_forwards_usage_event_when_client_asked(
    env: tuple[DefaultAiApiService, FakeUpstream],
) -> None:
    ai, _fake = env
    body = {**BODY, "stream_options": {"include_usage": True}}
    async with ai.stream_chat_completion(body) as stream:
        data = b"".join([chunk async for chunk in stream])
    usage_events = [e for e in events_of(data) if e != "[DONE]" and not e["choices"]]  # type: ignore[index]
    assert len(usage_events) == 1
    assert stream.usage is not None
    assert stream.usage.source == "reported"


async def test_stream_estimates_usage_when_upstream_sends_none(
    env: tuple[DefaultAiApiService, FakeUpstream],
) -> None:
    ai, fake = env
    fake.omit_usage = True
    async with ai.stream_chat_completion(BODY) as stream:
        _ = [chunk async for chunk in stream]
    prompt = ai.estimator.prompt_tokens(BODY)
    completion = -(-len(fake.reply) // 4)
    assert stream.usage == Usage(prompt, completion, prompt + completion, "estimated")


async def test_first_chunk_arrives_before_the_rest_is_sent(
    env: tuple[DefaultAiApiService, FakeUpstream],
) -> None:
    ai, fake = env
    gate = fake.hold_stream(after_chunks=2)  # the fake sends 2 events, then waits for the gate
    received: list[bytes] = []
    async with ai.stream_chat_completion(BODY) as stream:
        iterator = aiter(stream)
        while sum(c.count(b"\n\n") for c in received) < 2:
            received.append(await anext(iterator))
        assert not gate.is_set()  # we hold data the upstream has not finished sending
        assert b"[DONE]" not in b"".join(received)
        gate.set()
        received.extend([chunk async for chunk in iterator])
    assert b"".join(received).endswith(b"data: [DONE]\n\n")


async def test_early_exit_bills_delivered_text_once(env: tuple[DefaultAiApiService, FakeUpstream]) -> None:
    ai, fake = env
    fake.hold_stream(after_chunks=3)  # role + 2 words, then the upstream stalls
    calls: list[Usage] = []
    stream = ai.stream_chat_completion(BODY, on_complete=calls.append)
    async with stream:
        seen = b""
        async for chunk in stream:
            seen += chunk
            if seen.count(b"\n\n") >= 3:
                break  # the client disconnects
    await stream.aclose()  # closing twice changes nothing
    delivered = "".join(REPLY_WORDS[:2])
    prompt = ai.estimator.prompt_tokens(BODY)
    expected = Usage(prompt, -(-len(delivered) // 4), prompt + -(-len(delivered) // 4), "estimated")
    assert calls == [expected]
    assert stream.usage == expected
    assert not stream.completed


async def test_cancelled_consumer_is_billed_once_with_async_callback(
    env: tuple[DefaultAiApiService, FakeUpstream],
) -> None:
    ai, fake = env
    gate = fake.hold_stream(after_chunks=2)
    calls: list[Usage] = []
    first_chunk = asyncio.Event()

    async def settle(usage: Usage) -> None:
        await asyncio.sleep(0)
        calls.append(usage)

    async def consume() -> None:
        async with ai.stream_chat_completion(BODY, on_complete=settle) as stream:
            async for _chunk in stream:
                first_chunk.set()

    task = asyncio.create_task(consume())
    await first_chunk.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(calls) == 1
    assert calls[0].source == "estimated"
    assert calls[0].completion_tokens <= 2


async def test_entering_and_leaving_without_reading_bills_the_prompt(
    env: tuple[DefaultAiApiService, FakeUpstream],
) -> None:
    ai, _fake = env
    calls: list[Usage] = []
    async with ai.stream_chat_completion(BODY, on_complete=calls.append):
        pass
    assert calls == [Usage.estimated(ai.estimator.prompt_tokens(BODY), 0)]


async def test_no_retry_after_a_streamed_byte(env: tuple[DefaultAiApiService, FakeUpstream]) -> None:
    ai, fake = env
    fake.drop_next_stream(after_chunks=2)
    calls: list[Usage] = []
    received: list[bytes] = []

    async def consume() -> None:
        async with ai.stream_chat_completion(BODY, on_complete=calls.append) as stream:
            async for chunk in stream:
                received.append(chunk)

    with pytest.raises(UpstreamError) as info:
        await consume()
    assert b"".join(received).count(b"\n\n") == 2  # two events reached the caller
    assert info.value.code == "upstream.stream_interrupted"
    assert len(fake.requests) == 1  # never retried
    assert len(calls) == 1
    assert calls[0].source == "estimated"
    assert calls[0].completion_tokens == 2  # "Once " delivered: ceil(5 / 4)


async def test_stream_retries_before_the_status_line(env: tuple[DefaultAiApiService, FakeUpstream]) -> None:
    ai, fake = env
    fake.fail_next(503)
    async with ai.stream_chat_completion(BODY) as stream:
        data = b"".join([chunk async for chunk in stream])
    assert len(fake.requests) == 2
    assert data.endswith(b"[DONE]\n\n")


async def test_failed_start_has_no_usage_and_no_callback(
    env: tuple[DefaultAiApiService, FakeUpstream],
) -> None:
    ai, fake = env
    fake.fail_next(401)
    calls: list[Usage] = []
    stream = ai.stream_chat_completion(BODY, on_complete=calls.append)
    with pytest.raises(UpstreamError):
        async with stream:
            pass
    await stream.aclose()
    assert calls == []
    assert stream.usage is None


async def test_iterating_without_async_with_starts_and_closes(
    env: tuple[DefaultAiApiService, FakeUpstream],
) -> None:
    ai, _fake = env
    calls: list[Usage] = []
    stream = ai.stream_chat_completion(BODY, on_complete=calls.append)
    data = b"".join([chunk async for chunk in stream])
    assert data.endswith(b"[DONE]\n\n")
    assert len(calls) == 1
    assert calls[0].source == "reported"
    with pytest.raises(RuntimeError):
        aiter(stream)


# -- SSE parsing under arbitrary chunking ------------------------------------------------------


def _sse(include_usage_event: bool, ending: str) -> bytes:
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": None},
        {"choices": [{"index": 0, "delta": {"content": "héllo wörld, "}}], "usage": None},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": '{"a": 1}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None},
    ]
    if include_usage_event:
        events.append(
            {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}}
        )
    out = b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n" for e in events)
    out += b": keep-alive comment\n\ndata: [DONE]\n\n"
    return out.replace(b"\n", ending.encode())  # LF, CRLF or CR: all three end an SSE line


def _chunked_service(data: bytes, cuts: list[int], clock: FakeClock) -> DefaultAiApiService:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    transport = HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler)), owns_client=True)
    return DefaultAiApiService(Upstream(name="x", base_url="http://x.test/v1", api_key=KEY), transport, clock)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    usage_event=st.booleans(),
    client_wants_usage=st.booleans(),
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_any_chunking_gives_the_same_events_and_usage(
    clock: FakeClock, cuts: list[int], usage_event: bool, client_wants_usage: bool, ending: str
) -> None:
    data = _sse(usage_event, ending)
    body: dict[str, object] = {**BODY}
    if client_wants_usage:
        body["stream_options"] = {"include_usage": True}

    async def run() -> tuple[bytes, Usage | None]:
        ai = _chunked_service(data, cuts, clock)
        async with ai.stream_chat_completion(body) as stream:
            out = b"".join([c async for c in stream])
        return out, stream.usage

    out, usage = asyncio.run(run())
    normalised = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if usage_event and not client_wants_usage:
        assert b'"choices": []' not in out
        assert out == b"".join(
            e + b"\n\n" for e in normalised.split(b"\n\n") if e and b'"choices": []' not in e
        )
    else:
        assert out == normalised
    if usage_event:
        assert usage == Usage(11, 22, 33, "reported")
    else:
        chars = len("héllo wörld, ") + len('{"a": 1}')
        prompt = 4 + 4 + 3  # "Tell me a story" = 15 chars -> 4 tokens, one message
        assert usage == Usage.estimated(prompt, -(-chars // 4))


def _unused(_f: Callable[..., object]) -> None:  # keep imports honest for linters
    return None


# -- what an upstream may send that a stream must survive ----------------------------------------


def _raw_service(
    clock: FakeClock, chunks: list[bytes], content_type: str = "text/event-stream"
) -> DefaultAiApiService:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, content=body())

    transport = HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler)), owns_client=True)
    return DefaultAiApiService(Upstream(name="x", base_url="http://x.test/v1", api_key=KEY), transport, clock)


USAGE_EVENT = b'{"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}'
TEXT_EVENT = b'data: {"choices": [{"index": 0, "delta": {"content": "hello"}}]}\n\n'


async def test_usage_split_over_several_data_lines_is_read_and_not_forwarded(clock: FakeClock) -> None:
    # the SSE rule: an event's data lines are one payload, joined with LF
    before, _, tail = USAGE_EVENT.partition(b", ")
    head = before + b","  # a line break where JSON allows whitespace
    ai = _raw_service(
        clock, [TEXT_EVENT, b"data: " + head + b"\ndata: " + tail + b"\n\n", b"data: [DONE]\n\n"]
    )
    async with ai.stream_chat_completion(BODY) as stream:
        out = b"".join([chunk async for chunk in stream])
    assert stream.usage == Usage(7, 3, 10, "reported")
    assert b"usage" not in out  # the client did not ask for it
    assert out == TEXT_EVENT + b"data: [DONE]\n\n"


async def test_a_malformed_usage_event_is_not_forwarded_either(clock: FakeClock) -> None:
    bad = b'data: {"choices": [], "usage": {"prompt_tokens": -7, "completion_tokens": 3}}\n\n'
    ai = _raw_service(clock, [TEXT_EVENT, bad, b"data: [DONE]\n\n"])
    async with ai.stream_chat_completion(BODY) as stream:
        out = b"".join([chunk async for chunk in stream])
    assert out == TEXT_EVENT + b"data: [DONE]\n\n"
    assert stream.usage is not None
    assert stream.usage.source == "estimated"  # and the completion is the text delivered
    assert stream.usage.completion_tokens == 2


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "text/html", "text/plain"]
)
async def test_an_upstream_that_answers_a_stream_with_something_else_is_refused_before_any_byte(
    clock: FakeClock, content_type: str
) -> None:
    # JSON (an upstream that ignored "stream": true) or a proxy's HTML page was forwarded as
    # text/event-stream and billed on an estimate with no completion
    whole = b'{"choices": [{"message": {"content": "hi"}}], "usage": ' + USAGE_EVENT[32:-1] + b"}"
    ai = _raw_service(clock, [whole], content_type=content_type)
    calls: list[Usage] = []
    stream = ai.stream_chat_completion(BODY, on_complete=calls.append)
    with pytest.raises(UpstreamError) as info:
        await stream.start()
    assert info.value.code == "upstream.invalid_response"
    assert f"{content_type.split(';')[0]} where a stream of events was asked for" in str(info.value)
    await stream.aclose()
    assert calls == []  # never started: the caller releases the reservation


async def test_an_event_beyond_the_limit_ends_the_stream_as_failed(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import maaskit.services.ai_api as ai_api

    monkeypatch.setattr(ai_api, "MAX_EVENT_BYTES", 1000)
    endless = [b"data: " + b"x" * 100] * 20  # one event that never ends
    ai = _raw_service(clock, [TEXT_EVENT, *endless])
    calls: list[Usage] = []
    received: list[bytes] = []
    stream = ai.stream_chat_completion(BODY, on_complete=calls.append)

    async def consume() -> None:
        async with stream:
            async for chunk in stream:
                received.append(chunk)

    with pytest.raises(UpstreamError) as info:
        await consume()
    assert info.value.code == "upstream.invalid_response"
    assert received == [TEXT_EVENT]
    assert (stream.completed, stream.failed) == (False, True)
    assert len(calls) == 1  # billed once, on what was delivered


async def test_a_broken_stream_is_marked_failed(clock: FakeClock) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield TEXT_EVENT
        raise httpx.ReadError("connection reset")

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    transport = HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler)), owns_client=True)
    ai = DefaultAiApiService(Upstream(name="x", base_url="http://x.test/v1", api_key=KEY), transport, clock)
    stream = ai.stream_chat_completion(BODY)

    async def consume() -> None:
        async with stream:
            async for _chunk in stream:
                pass

    with pytest.raises(UpstreamError) as info:
        await consume()
    assert info.value.code == "upstream.stream_interrupted"
    assert (stream.completed, stream.failed) == (False, True)


async def test_a_consumer_that_leaves_right_after_done_completed_the_stream(clock: FakeClock) -> None:
    # OpenAI's clients close the connection as soon as they read "[DONE]": that is not a cancel
    async def body() -> AsyncIterator[bytes]:
        yield TEXT_EVENT
        yield b"data: [DONE]\n\n"
        await asyncio.sleep(3600)  # the upstream has not closed yet

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    transport = HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler)), owns_client=True)
    ai = DefaultAiApiService(Upstream(name="x", base_url="http://x.test/v1", api_key=KEY), transport, clock)
    stream = ai.stream_chat_completion(BODY)
    async with stream:
        async for chunk in stream:
            if b"[DONE]" in chunk:
                break
    assert (stream.completed, stream.failed) == (True, False)
    left = ai.stream_chat_completion(BODY)  # leaving before "[DONE]" is not complete
    async with left:
        async for _chunk in left:
            break
    assert (left.completed, left.failed) == (False, False)
