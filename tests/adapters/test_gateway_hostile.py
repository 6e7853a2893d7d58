"""Hostile input against the reference gateway on loopback (issue 3, "Must show").

Each case must be a typed error with the right HTTP status and an OpenAI-style body, write nothing
(no key, no usage row, no upstream call) and never echo a secret: not in the response body and
not in any log line (structlog events captured with ``structlog.testing.capture_logs`` and the
standard-library records uvicorn writes, captured with ``caplog``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import structlog.testing

if TYPE_CHECKING:  # fixtures' types (conftest is not importable at run time)
    from conftest import Gateway

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class Captured:
    """Everything logged while the block ran: structlog events and stdlib records."""

    def __init__(self, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
        self.events = events
        self._caplog = caplog

    def lines(self) -> list[str]:
        out = [repr(event) for event in self.events]
        out += [record.getMessage() + repr(record.args) for record in self._caplog.records]
        return out

    def assert_free_of(self, *secrets: str | bytes) -> None:
        for line in self.lines():
            for secret in secrets:
                text = secret.decode("latin-1") if isinstance(secret, bytes) else secret
                assert text not in line, f"a secret leaked into a log line: {line[:200]}"


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[Captured]:
    """structlog events and stdlib log records of the whole test."""
    caplog.set_level(logging.DEBUG)
    uvicorn_logger = logging.getLogger("uvicorn")  # it does not propagate to the root logger
    uvicorn_logger.addHandler(caplog.handler)
    try:
        with structlog.testing.capture_logs() as events:
            yield Captured(events, caplog)
    finally:
        uvicorn_logger.removeHandler(caplog.handler)


async def _assert_nothing_written(gateway: Gateway, keys: int) -> None:
    assert await gateway.key_count() == keys
    assert await gateway.usage() == []
    assert gateway.fake.requests == []


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    if code is not None:
        assert error["code"] == code
    return error


def _flip(secret: str) -> str:
    last = secret[-1]
    return secret[:-1] + ("A" if last != "A" else "B")


# -- credentials -----------------------------------------------------------------------------------

HOSTILE_KEYS = {
    "flipped-checksum": lambda s: _flip(s),
    "truncated-by-one": lambda s: s[:-1],
    "truncated-to-prefix": lambda s: s[:12],
    "upper-case-prefix": lambda s: "MK_" + s[3:],
    "upper-cased": lambda s: s.upper(),
    "sql-ish": lambda s: "mk_' OR 1=1 --",
    "sql-ish-no-spaces": lambda s: "mk_'OR'1'='1';--",
    "extended": lambda s: s + "x",
    "doubled-bearer": lambda s: "Bearer " + s,
    "wrong-prefix": lambda s: "sk_" + s[3:],
}


@pytest.mark.parametrize("make", list(HOSTILE_KEYS.values()), ids=list(HOSTILE_KEYS))
async def test_hostile_bearer_credentials_are_401_and_write_nothing(
    gateway: Gateway, captured: Captured, make: Any
) -> None:
    secret = (await gateway.create_key(budget="0.01"))["secret"]
    hostile = make(secret)
    headers = {"authorization": f"Bearer {hostile}"}

    chat = await gateway.admin.post("/v1/chat/completions", json=CHAT, headers=headers)
    embed = await gateway.admin.post(
        "/v1/embeddings", json={"model": "fake-model", "input": "x"}, headers=headers
    )
    models = await gateway.admin.get("/v1/models", headers=headers)

    for response in (chat, embed, models):
        error = _error(response, 401)
        assert error["code"] in ("auth.malformed", "api_key.malformed")
        assert response.headers["www-authenticate"] == "Bearer"
        assert secret[3:40] not in response.text
        assert hostile not in response.text
    await _assert_nothing_written(gateway, keys=1)
    captured.assert_free_of(secret[3:40], hostile)


HOSTILE_HEADERS: dict[str, Any] = {
    "missing-bearer": lambda s: s,
    "doubled-bearer": lambda s: f"Bearer Bearer {s}",
    "basic-scheme": lambda s: f"Basic {s}",
    "token-scheme": lambda s: f"Token {s}",
    "bearer-only": lambda s: "Bearer",
    "empty": lambda s: "",
    "non-ascii": lambda s: ("Bearer mk_ä" + s[4:]).encode(),
    "non-ascii-checksum": lambda s: (f"Bearer {s[:-1]}é").encode(),
    "tab-inside": lambda s: f"Bearer {s[:10]}\t{s[10:]}",
}


@pytest.mark.parametrize("make", list(HOSTILE_HEADERS.values()), ids=list(HOSTILE_HEADERS))
async def test_hostile_authorization_headers_are_401_and_write_nothing(
    gateway: Gateway, captured: Captured, make: Any
) -> None:
    secret = (await gateway.create_key())["secret"]
    value = make(secret)

    chat = await gateway.admin.post("/v1/chat/completions", json=CHAT, headers={"authorization": value})
    models = await gateway.admin.get("/v1/models", headers={"authorization": value})

    for response in (chat, models):
        error = _error(response, 401)
        assert error["code"] in ("auth.malformed", "auth.missing", "api_key.malformed")
        assert secret[3:40] not in response.text
    await _assert_nothing_written(gateway, keys=1)
    captured.assert_free_of(secret[3:40])


@pytest.mark.parametrize("name", ["authorization", "api-key"])
@pytest.mark.parametrize("valid_first", [True, False])
async def test_a_repeated_credential_header_is_401_on_every_route(
    gateway: Gateway, name: str, valid_first: bool
) -> None:
    # The data plane kept the last copy and Starlette the first: a valid key next to a bogus
    # one passed on one route and failed on the others, depending on their order.
    key = await gateway.create_key()
    valid = f"Bearer {key['secret']}" if name == "authorization" else key["secret"]
    bogus = "Bearer mk_bogus" if name == "authorization" else "mk_bogus"
    values = [valid, bogus] if valid_first else [bogus, valid]
    headers = [(name, value) for value in values]
    async with httpx.AsyncClient(base_url=gateway.base) as client:
        responses = [
            await client.post("/v1/chat/completions", json=CHAT, headers=headers),
            await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers),
            await client.post("/v1/embeddings", json={"model": "fake-model", "input": "x"}, headers=headers),
            await client.get("/v1/models", headers=headers),
            await client.get("/admin/keys", headers=headers),
        ]
    for response in responses:
        error = _error(response, 401, "auth.malformed")
        label = "Authorization" if name == "authorization" else "api-key"
        assert f"more than one {label} header" in error["message"]
    await _assert_nothing_written(gateway, keys=1)


async def test_missing_authorization_is_401_auth_missing(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.base) as anonymous:
        response = await anonymous.post("/v1/chat/completions", json=CHAT)
    _error(response, 401, "auth.missing")
    await _assert_nothing_written(gateway, keys=0)


async def test_one_megabyte_authorization_header_is_refused(gateway: Gateway, captured: Captured) -> None:
    secret = (await gateway.create_key())["secret"]
    huge = secret + "A" * (1024 * 1024)
    response = await gateway.admin.post(
        "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {huge}"}
    )
    _error(response, 401, "auth.malformed")
    assert len(response.content) < 1024
    assert secret[3:40] not in response.text
    await _assert_nothing_written(gateway, keys=1)
    captured.assert_free_of(secret[3:40], "A" * 64)
    # the gateway is still healthy and serves the real key
    assert (
        await gateway.admin.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
    ).status_code == 200


async def _raw_request(gateway: Gateway, head: bytes) -> bytes:
    """Send a hand-written HTTP/1.1 request (what httpx refuses to send) and read the answer."""
    host, port = gateway.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param(b"mk_abc\x00def", id="nul-byte"),
        pytest.param(b"mk_\xc3\xa4\xc3\xb6\xc3\xbc", id="utf8-bytes"),
        pytest.param(b"mk_\xff\xfe", id="invalid-utf8"),
        pytest.param(b"A" * (1024 * 1024), id="one-megabyte"),
    ],
)
async def test_raw_hostile_header_bytes_get_a_4xx_and_nothing_crashes(
    gateway: Gateway, captured: Captured, credential: bytes
) -> None:
    await gateway.create_key()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nConnection: close\r\nAuthorization: Bearer " + credential + b"\r\n\r\n{}"
    )
    answer = await _raw_request(gateway, head)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:200]
    if b"application/json" not in answer:  # refused by uvicorn itself: its warning was captured
        assert any("Invalid HTTP request" in line for line in captured.lines())
    assert credential[:64] not in answer
    await _assert_nothing_written(gateway, keys=1)
    captured.assert_free_of(credential[:64])
    assert (await gateway.admin.get("/health")).status_code == 200


async def test_api_key_header_is_checked_like_bearer(gateway: Gateway, captured: Captured) -> None:
    secret = (await gateway.create_key())["secret"]
    ok = await gateway.admin.get("/v1/models", headers={"authorization": "", "api-key": secret})
    assert ok.status_code == 401  # an empty Authorization header is not "absent"
    async with httpx.AsyncClient(base_url=gateway.base) as client:
        assert (await client.get("/v1/models", headers={"api-key": secret})).status_code == 200
        refused = await client.get("/v1/models", headers={"api-key": _flip(secret)})
    _error(refused, 401, "api_key.malformed")
    captured.assert_free_of(secret[3:40])


# -- budgets through the admin API ----------------------------------------------------------------

BAD_BUDGETS: dict[str, Any] = {
    "negative-micros": {"budget_micros": -1},
    "float-micros": {"budget_micros": 5.5},
    "huge-float-micros": {"budget_micros": 1e300},
    "bool-micros": {"budget_micros": True},
    "string-micros": {"budget_micros": "5"},
    "number-budget": {"budget": 0.01},
    "integer-budget": {"budget": 5},
    "negative-budget": {"budget": "-0.01"},
    "nan-budget": {"budget": "NaN"},
    "infinite-budget": {"budget": "Infinity"},
    "inf-budget": {"budget": "-inf"},
    "out-of-range-budget": {"budget": "1e30"},
    "text-budget": {"budget": "ten dollars"},
    "negative-rpm": {"rpm_limit": -1},
    "float-rpm": {"rpm_limit": 1.5},
    "float-tpm": {"tpm_limit": 10.0},
}


@pytest.mark.parametrize("fields", list(BAD_BUDGETS.values()), ids=list(BAD_BUDGETS))
async def test_bad_budgets_and_limits_are_400_and_create_no_key(
    gateway: Gateway, fields: dict[str, Any]
) -> None:
    response = await gateway.admin.post("/admin/keys", json={"owner_id": "alice", "name": "k", **fields})
    error = _error(response, 400)
    assert error["type"] == "validation"
    assert "secret" not in response.text
    await _assert_nothing_written(gateway, keys=0)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
async def test_json_nan_and_infinity_budgets_are_400_and_create_no_key(
    gateway: Gateway, literal: bytes
) -> None:
    body = b'{"owner_id": "alice", "name": "k", "budget_micros": ' + literal + b"}"
    response = await gateway.admin.post(
        "/admin/keys", content=body, headers={"content-type": "application/json"}
    )
    _error(response, 400, "http.invalid_json")
    await _assert_nothing_written(gateway, keys=0)


#: Valid ISO 8601 with a time zone, but their UTC time is not a datetime (year 10000 / year 0).
UNREPRESENTABLE_TIMES = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"]


@pytest.mark.parametrize("when", UNREPRESENTABLE_TIMES)
async def test_times_beyond_utc_are_400_and_write_nothing(gateway: Gateway, when: str) -> None:
    # they were a 500: the storage layer's astimezone(UTC) overflowed
    created = await gateway.admin.post(
        "/admin/keys", json={"owner_id": "alice", "name": "k", "expires_at": when}
    )
    error = _error(created, 400, "http.invalid_request")
    assert "expires_at is out of range" in error["message"]
    for path, name in (("/admin/usage", "start"), ("/admin/usage", "end"), ("/admin/audit", "since")):
        response = await gateway.admin.get(path, params={name: when})
        error = _error(response, 400, "http.invalid_request")
        assert f"{name} is out of range" in error["message"]
    await _assert_nothing_written(gateway, keys=0)


async def test_bad_budget_update_leaves_the_budget_unchanged(gateway: Gateway) -> None:
    key = await gateway.create_key(budget="0.01")
    for fields in ({"budget_micros": -5}, {"budget": 1.5}, {"budget": "NaN"}, {"budget_micros": 2.5}):
        response = await gateway.admin.put(f"/admin/keys/{key['id']}/budget", json=fields)
        _error(response, 400)
    stored = (await gateway.admin.get(f"/admin/keys/{key['id']}")).json()
    assert stored["budget_micros"] == 10_000


# -- model names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "../etc/passwd",
        "a\\b",
        "/abs",
        "http://evil.example/v1",
        "fake-model/../../x",
        "file:///etc/passwd",
        "a\x00b",
    ],
)
async def test_model_names_with_paths_or_urls_are_400(gateway: Gateway, model: str) -> None:
    key = await gateway.create_key(budget="0.01")
    headers = {"authorization": f"Bearer {key['secret']}"}
    chat = await gateway.admin.post("/v1/chat/completions", json={**CHAT, "model": model}, headers=headers)
    embed = await gateway.admin.post("/v1/embeddings", json={"model": model, "input": "x"}, headers=headers)
    for response in (chat, embed):
        _error(response, 400, "admission.invalid_model")
    await _assert_nothing_written(gateway, keys=1)


async def test_caller_supplied_upstream_fields_are_ignored(gateway: Gateway, captured: Captured) -> None:
    key = await gateway.create_key()
    hostile = {
        **CHAT,
        "api_base": "http://evil.example/v1",
        "base_url": "http://evil.example/v1",
        "api_key": "sk-caller-supplied-secret",
        "extra_headers": {"authorization": "Bearer sk-caller-supplied-secret"},
        # LiteLLM's client-side router config and fallbacks (for a LiteLLM upstream)
        "user_config": {
            "model_list": [{"model_name": "x", "litellm_params": {"api_base": "http://evil.example/v1"}}]
        },
        "fallbacks": ["gpt-4-expensive"],
        "aws_sts_endpoint": "http://evil.example",
    }
    response = await gateway.admin.post(
        "/v1/chat/completions",
        json=hostile,
        headers={"authorization": f"Bearer {key['secret']}", "x-upstream-url": "http://evil.example"},
    )
    assert response.status_code == 200, response.text

    [forwarded] = gateway.fake.requests
    upstream_host = gateway.settings.upstream_url.split("//")[1].split("/")[0]  # type: ignore[union-attr]
    assert forwarded.host == upstream_host
    assert forwarded.authorized  # the gateway's own upstream key, not the caller's
    assert "api_base" not in forwarded.json
    assert "base_url" not in forwarded.json
    assert "api_key" not in forwarded.json
    assert not {"user_config", "fallbacks", "aws_sts_endpoint"} & set(forwarded.json)
    assert b"evil.example" not in forwarded.body
    assert b"sk-caller-supplied-secret" not in forwarded.body
    assert key["secret"].encode() not in forwarded.body
    assert "x-upstream-url" not in forwarded.headers
    captured.assert_free_of("sk-caller-supplied-secret", key["secret"])


DUPLICATED_KEYS = {
    "model": b'{"model": "not-allowed", "model": "fake-model", "messages": [{"role": "user", "content": "hi"}]',
    "escaped-model": b'{"\\u006dodel": "not-allowed", "model": "fake-model", '
    b'"messages": [{"role": "user", "content": "hi"}]',
    "max-tokens": b'{"model": "fake-model", "max_tokens": 99999, "max_tokens": 5, '
    b'"messages": [{"role": "user", "content": "hi"}]',
}


@pytest.mark.parametrize("head", list(DUPLICATED_KEYS.values()), ids=list(DUPLICATED_KEYS))
async def test_the_upstream_reads_exactly_what_admission_checked(gateway: Gateway, head: bytes) -> None:
    # The client's bytes were forwarded as they were: an upstream whose JSON parser keeps the
    # first duplicate (or refuses duplicates) read another model or cap than the one checked.
    key = await gateway.create_key(allowed_models=["fake-model"])
    response = await gateway.admin.post(
        "/v1/chat/completions",
        content=head + b"}",
        headers={"authorization": f"Bearer {key['secret']}", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    [forwarded] = gateway.fake.requests
    assert forwarded.body.count(b'"model"') == 1
    assert b"\\u" not in forwarded.body
    assert b"not-allowed" not in forwarded.body
    assert forwarded.json["model"] == "fake-model"
    if b"max_tokens" in head:
        assert forwarded.body.count(b'"max_tokens"') == 1
        assert forwarded.json["max_tokens"] == 5


async def test_unknown_paths_and_wrong_methods_get_openai_error_bodies(gateway: Gateway) -> None:
    # they were Starlette's text/plain "Not Found" / "Method Not Allowed"
    for path in ("/v1/nope", "/admin/keys/x/../y/z", "/v1/chat/completions/extra"):
        _error(await gateway.admin.get(path), 404, "http.not_found")
    wrong = await gateway.admin.get("/v1/chat/completions")
    _error(wrong, 405, "http.method_not_allowed")
    assert wrong.headers["allow"] == "POST"
    await _assert_nothing_written(gateway, keys=0)


# -- bodies ----------------------------------------------------------------------------------------

BAD_BODIES = {
    "malformed": b'{"model": "fake-model", ',
    "nan": b'{"model": "fake-model", "messages": [], "temperature": NaN}',
    "infinity": b'{"model": "fake-model", "max_tokens": Infinity}',
    "array": b'[{"model": "fake-model"}]',
    "string": b'"fake-model"',
    "empty": b"",
    "not-utf8": b'{"model": "\xff\xfe"}',
    "nested-too-deep": b'{"model": "fake-model", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "lone-surrogate": b'{"model": "fake-model\\ud800"}',
    "trailing-garbage": b'{"model": "fake-model"} {}',
}


@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
async def test_bad_json_bodies_are_400(gateway: Gateway, body: bytes, path: str) -> None:
    key = await gateway.create_key()
    response = await gateway.admin.post(
        path,
        content=body,
        headers={"authorization": f"Bearer {key['secret']}", "content-type": "application/json"},
    )
    _error(response, 400, "http.invalid_json")
    await _assert_nothing_written(gateway, keys=1)


#: Nested within orjson's 1,024 levels, so it parses; serialising it again for the upstream
#: overflows json.dumps' recursion limit on CPython 3.11 (a newer CPython may manage it).
DEEP = b"[" * 1000 + b"]" * 1000
DEEP_BODIES = {
    "stream": b'{"model": "fake-model", "stream": true, "max_tokens": 4000, "x": ' + DEEP + b"}",
    "null-cap": b'{"model": "fake-model", "max_tokens": null, "x": ' + DEEP + b"}",
    "stripped-field": b'{"model": "fake-model", "api_base": "http://x", "max_tokens": 4000, "x": '
    + DEEP
    + b"}",
    "embeddings": b'{"model": "fake-model", "input": "hi", "x": ' + DEEP + b"}",
}


@pytest.mark.parametrize("body", list(DEEP_BODIES.values()), ids=list(DEEP_BODIES))
async def test_deeply_nested_bodies_are_never_a_500_and_hold_no_budget(gateway: Gateway, body: bytes) -> None:
    # they were a 500 (RecursionError), and a failed stream set-up kept its reservation
    hostile, fresh = await gateway.create_key(budget="1"), await gateway.create_key(budget="1")
    path = "/v1/embeddings" if b'"input"' in body else "/v1/chat/completions"
    served = 0
    for _ in range(3):
        response = await gateway.admin.post(
            path,
            content=body,
            headers={"authorization": f"Bearer {hostile['secret']}", "content-type": "application/json"},
        )
        if response.status_code == 200:  # a CPython whose json.dumps goes deeper: served, charged
            served += 1
            continue
        error = _error(response, 400)
        assert error["code"] in ("upstream.invalid_body", "admission.invalid_body"), error
        assert "nested too deeply" in error["message"]
    remaining = []
    for key in (hostile, fresh):  # the same small call: the same budget left unless one was held
        response = await gateway.admin.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key['secret']}"}
        )
        assert response.status_code == 200, response.text
        remaining.append(response.headers["x-maaskit-budget-remaining"])
    if served == 0:
        assert remaining[0] == remaining[1]


async def test_body_over_the_limit_is_refused(gateway: Gateway) -> None:
    key = await gateway.create_key()
    limit = gateway.settings.max_request_bytes
    text = "a" * (limit + 1)
    big = b'{"model": "fake-model", "messages": [{"role": "user", "content": "' + text.encode() + b'"}]}'
    headers = {"authorization": f"Bearer {key['secret']}", "content-type": "application/json"}

    declared = await gateway.admin.post("/v1/chat/completions", content=big, headers=headers)

    async def chunked() -> Any:  # no Content-Length: the limit must hold while reading
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]

    streamed = await gateway.admin.post("/v1/chat/completions", content=chunked(), headers=headers)
    for response in (declared, streamed):
        error = _error(response, 400, "http.body_too_large")
        assert str(limit) in error["message"]
    await _assert_nothing_written(gateway, keys=1)


async def test_bad_bodies_on_admin_create_write_nothing(gateway: Gateway) -> None:
    for body in (b"[]", b"{", b'{"owner_id": 5, "name": "k"}', b'{"name": "k"}'):
        response = await gateway.admin.post(
            "/admin/keys", content=body, headers={"content-type": "application/json"}
        )
        _error(response, 400)
    big = b'{"owner_id": "a", "name": "' + b"x" * (65 * 1024) + b'"}'
    _error(await gateway.admin.post("/admin/keys", content=big), 400, "http.body_too_large")
    for fields in ({"owner_id": "bob"}, {"owner_id": "bob", "name": None}, {"owner_id": "bob", "name": 5}):
        nameless = _error(await gateway.admin.post("/admin/keys", json=fields), 400, "http.invalid_request")
        assert "name is required" in nameless["message"]
    _error(
        await gateway.admin.post("/admin/keys", json={"owner_id": "bob", "name": ""}),
        400,
        "api_key.invalid_field",
    )
    await _assert_nothing_written(gateway, keys=0)


# -- the admin credential --------------------------------------------------------------------------

ADMIN_ROUTES = [
    ("POST", "/admin/keys", {"owner_id": "mallory", "name": "k"}),
    ("GET", "/admin/keys", None),
    ("GET", "/admin/keys/{id}", None),
    ("POST", "/admin/keys/{id}/rotate", {}),
    ("POST", "/admin/keys/{id}/revoke", None),
    ("POST", "/admin/keys/{id}/disable", None),
    ("POST", "/admin/keys/{id}/enable", None),
    ("PUT", "/admin/keys/{id}/budget", {"budget": "1000"}),
    ("GET", "/admin/usage", None),
]


@pytest.mark.parametrize(
    "who", ["none", "wrong-token", "user-key", "admin-token-prefix", "admin-token-as-basic"]
)
async def test_admin_endpoints_need_an_admin_credential(
    gateway: Gateway, captured: Captured, who: str
) -> None:
    key = await gateway.create_key(budget="0.01")
    token = gateway.admin_token
    headers = {
        "none": {},
        "wrong-token": {"authorization": "Bearer not-the-admin-token"},
        "user-key": {"authorization": f"Bearer {key['secret']}"},
        "admin-token-prefix": {"authorization": f"Bearer {token[:-1]}"},
        "admin-token-as-basic": {"authorization": f"Basic {token}"},
    }[who]
    async with httpx.AsyncClient(base_url=gateway.base, headers=headers) as intruder:
        for method, path, body in ADMIN_ROUTES:
            response = await intruder.request(method, path.format(id=key["id"]), json=body)
            if who == "user-key":
                # a valid key whose owner is no user holds only models:use: authenticated, forbidden
                error = _error(response, 403)
                assert error["code"] == "rbac.forbidden"
            else:
                error = _error(response, 401)
                assert error["type"] == "unauthenticated"
            assert token not in response.text
            assert key["secret"] not in response.text
    # nothing changed: one key, still enabled, not revoked, same budget, same secret working
    [stored] = (await gateway.admin.get("/admin/keys", params={"include_revoked": "true"})).json()["data"]
    assert (stored["enabled"], stored["revoked_at"], stored["budget_micros"]) == (True, None, 10_000)
    assert stored["rotation_counter"] == 0
    await _assert_nothing_written(gateway, keys=1)
    captured.assert_free_of(token, key["secret"])


async def test_admin_token_is_not_a_user_key(gateway: Gateway, captured: Captured) -> None:
    response = await gateway.admin.post(
        "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {gateway.admin_token}"}
    )
    _error(response, 401, "api_key.malformed")
    await _assert_nothing_written(gateway, keys=0)
    captured.assert_free_of(gateway.admin_token)


async def test_log_capture_sees_gateway_events(gateway: Gateway, captured: Captured) -> None:
    """The capture works (else every "no secret in any log line" check above would be vacuous)."""
    key = await gateway.create_key()
    assert any(event.get("event") == "api_key.created" for event in captured.events)
    captured.assert_free_of(key["secret"])


@pytest.mark.parametrize("model", ["../etc/passwd", "http://evil.example/v1", "a\\b"])
async def test_allowed_models_must_be_model_names(gateway: Gateway, model: str) -> None:
    response = await gateway.admin.post(
        "/admin/keys", json={"owner_id": "alice", "name": "k", "allowed_models": [model]}
    )
    _error(response, 400)
    await _assert_nothing_written(gateway, keys=0)
