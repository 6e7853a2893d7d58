"""The Starlette adapter through Starlette's TestClient: lifespan, errors, health, request
containers (also for streamed responses and failing endpoints), credentials, and an admitted
request end to end against FakeUpstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

pytest.importorskip("starlette")

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from maaskit.adapters import starlette as mk
from maaskit.app import AppService
from maaskit.errors import ForbiddenError, RateLimitedError, UnavailableError
from maaskit.registry import Lifetime, Registry
from maaskit.services.upstream import HttpxTransport, UpstreamTransport
from maaskit.testing.app import build_test_app
from maaskit.testing.fake_upstream import FakeUpstream

PRICES = {"fake-model": {"input": "1", "output": "2"}}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16}


class Scoped:
    """A request-lifetime service recording when it is closed."""

    created: list[int] = []
    closed: list[int] = []

    def __init__(self) -> None:
        Scoped.created.append(id(self))

    async def aclose(self) -> None:
        Scoped.closed.append(id(self))


@pytest.fixture(autouse=True)
def _reset_scoped() -> None:
    Scoped.created = []
    Scoped.closed = []


def _configure(registry: Registry) -> None:
    registry.register_class(Scoped, lifetime=Lifetime.REQUEST)


async def whoami(request: Request) -> Response:
    return JSONResponse({"length": len(mk.credential(request))})


async def scoped(request: Request) -> Response:
    container = await mk.container(request)
    thing = await container.aget(Scoped)
    again = await (await mk.container(request)).aget(Scoped)
    return JSONResponse({"same": thing is again, "closed_during": id(thing) in Scoped.closed})


async def scoped_then_fail(request: Request) -> Response:
    await (await mk.container(request)).aget(Scoped)
    raise ForbiddenError("admission.model_not_allowed", model="m")


async def scoped_stream(request: Request) -> Response:
    await (await mk.container(request)).aget(Scoped)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield json.dumps({"closed_yet": len(Scoped.closed)}).encode() + b"\n"

    return StreamingResponse(chunks(), media_type="application/x-ndjson")


async def boom(request: Request) -> Response:
    if request.path_params["kind"] == "rate":
        raise RateLimitedError(
            "rate_limit.exceeded", kind="requests", limit=1, period_seconds=60, retry_after=1.5
        )
    raise UnavailableError("app.not_started", retry_after=30)


async def teapot(request: Request) -> Response:
    raise HTTPException(418, detail="short and stout", headers={"x-pot": "1"})


async def chat(request: Request) -> Response:
    maas = mk.get_app(request)
    body = await request.json()
    admission = await maas.admission.admit(mk.credential(request), body["model"], body)
    try:
        result = await maas.ai_api.chat_completion(admission.upstream_body(body))
    except BaseException:
        await maas.admission.release(admission)
        raise
    await maas.admission.settle(admission, result.usage)
    return Response(result.body, headers=admission.headers(), media_type="application/json")


def _make(app_service: AppService, **install: bool) -> Starlette:
    routes = [
        Route("/health", mk.health),
        Route("/whoami", whoami),
        Route("/scoped", scoped),
        Route("/scoped-fail", scoped_then_fail),
        Route("/scoped-stream", scoped_stream),
        Route("/boom/{kind}", boom),
        Route("/teapot", teapot),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=mk.lifespan(app_service))
    mk.install(app, **install)
    return app


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def app_service(fake: FakeUpstream) -> AppService:
    transport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()), owns_client=True)
    return build_test_app(
        overrides={UpstreamTransport: transport},
        configure=_configure,
        upstream_url=fake.base_url,
        upstream_api_key="sk-fake-upstream",
        model_prices=PRICES,
    )


@pytest.fixture
def client(app_service: AppService) -> Iterator[TestClient]:
    with TestClient(_make(app_service)) as test_client:
        yield test_client


# -- lifecycle ---------------------------------------------------------------------------------


def test_lifespan_starts_and_stops_the_app(app_service: AppService) -> None:
    with TestClient(_make(app_service)) as test_client:
        assert app_service.started
        assert test_client.get("/health").status_code == 200
    assert not app_service.started
    assert app_service.registry.closed


def test_lifespan_stops_the_app_when_the_host_fails(app_service: AppService) -> None:
    seen: list[bool] = []

    def serve_and_fail() -> None:
        with TestClient(_make(app_service)):
            seen.append(app_service.started)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        serve_and_fail()
    assert seen == [True]
    assert not app_service.started


# -- errors ------------------------------------------------------------------------------------


def test_rate_limited_is_429_with_retry_after_and_openai_body(client: TestClient) -> None:
    response = client.get("/boom/rate")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "rate_limit.exceeded"


def test_unavailable_is_503_with_retry_after(client: TestClient) -> None:
    response = client.get("/boom/unavailable")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert response.json()["error"]["type"] == "unavailable"


def test_errors_are_rendered_in_the_callers_language(client: TestClient) -> None:
    english = client.get("/boom/rate").json()["error"]["message"]
    german = client.get("/boom/rate", headers={"accept-language": "de-CH, de;q=0.8"}).json()["error"][
        "message"
    ]
    assert english != german
    unknown = client.get("/boom/rate", headers={"accept-language": "xx"}).json()["error"]["message"]
    assert unknown == english


def test_router_errors_get_an_openai_body_with_their_status(client: TestClient) -> None:
    missing = client.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json() == {
        "error": {
            "message": "No such endpoint.",
            "type": "not_found",
            "code": "http.not_found",
            "param": None,
        }
    }
    wrong = client.get("/v1/chat/completions")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["code"] == "http.method_not_allowed"
    german = client.get("/no/such/route", headers={"accept-language": "de"}).json()["error"]["message"]
    assert german == "Diesen Endpunkt gibt es nicht."


def test_an_endpoints_http_exception_keeps_its_status_detail_and_headers(client: TestClient) -> None:
    response = client.get("/teapot")
    assert response.status_code == 418
    assert response.headers["x-pot"] == "1"
    assert response.json()["error"] == {
        "message": "short and stout",
        "type": "validation",
        "code": "http.error",
        "param": None,
    }


def test_http_errors_can_keep_starlettes_own_bodies(app_service: AppService) -> None:
    with TestClient(_make(app_service, openai_http_errors=False)) as plain:
        response = plain.get("/no/such/route")
    assert response.status_code == 404
    assert response.text == "Not Found"


# -- health ------------------------------------------------------------------------------------


def test_health_is_200_with_the_report(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["ok"] is True


def test_health_is_503_when_a_check_fails() -> None:
    class Sick:
        async def ping(self) -> None:
            raise ConnectionError("down")

    def configure(registry: Registry) -> None:
        registry.register_class(Sick)

    app_service = build_test_app(configure=configure)
    with TestClient(_make(app_service)) as test_client:
        portal = test_client.portal
        assert portal is not None
        portal.call(app_service.aget, Sick)
        response = test_client.get("/health")
    assert response.status_code == 503
    check = next(c for c in response.json()["checks"] if c["name"] == "Sick")
    assert check["ok"] is False
    assert check["error"] == "ConnectionError"  # the type only: never an arbitrary message


# -- request containers --------------------------------------------------------------------------


def test_request_container_is_one_per_request_and_closed_after_it(client: TestClient) -> None:
    assert client.get("/scoped").json() == {"same": True, "closed_during": False}
    client.get("/scoped")
    assert len(Scoped.created) == 2
    assert Scoped.closed == Scoped.created


def test_request_container_is_closed_when_the_endpoint_raises(client: TestClient) -> None:
    response = client.get("/scoped-fail")
    assert response.status_code == 403
    assert len(Scoped.created) == 1
    assert Scoped.closed == Scoped.created


def test_request_container_is_closed_only_after_a_streamed_body(client: TestClient) -> None:
    response = client.get("/scoped-stream")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == [{"closed_yet": 0}] * 3  # still open while streaming
    assert Scoped.closed == Scoped.created != []


def test_requests_without_a_container_open_none(client: TestClient) -> None:
    client.get("/health")
    client.get("/boom/rate")
    assert Scoped.created == []


# -- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "auth.missing"),
        ({"authorization": "Token mk_secretvalue"}, "auth.malformed"),
        ({"authorization": "Bearer Bearer mk_secretvalue"}, "auth.malformed"),
        ({"authorization": "Bearer mk_secret value"}, "auth.malformed"),
        ({"authorization": "Bearer " + "x" * 20_000}, "auth.malformed"),
    ],
)
def test_bad_credentials_are_401_without_the_credential(
    client: TestClient, headers: dict[str, str], code: str
) -> None:
    response = client.get("/whoami", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == code
    assert "secret" not in response.text


def test_credential_from_bearer_or_api_key(client: TestClient) -> None:
    assert client.get("/whoami", headers={"authorization": "Bearer mk_abc"}).json() == {"length": 6}
    assert client.get("/whoami", headers={"api-key": "mk_abcd"}).json() == {"length": 7}


# -- admission end to end ----------------------------------------------------------------------


def test_admitted_request_end_to_end(client: TestClient, app_service: AppService, fake: FakeUpstream) -> None:
    portal = client.portal
    assert portal is not None
    created = portal.call(lambda: app_service.api_keys.create("carol", name="s", rpm_limit=5))
    auth = {"authorization": f"Bearer {created.secret}"}
    response = client.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == fake.reply
    assert response.headers["x-ratelimit-remaining-requests"] == "4"
    fake.fail_next(503, times=10)
    failed = client.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert failed.status_code in (502, 503)
    assert failed.json()["error"]["type"] in ("upstream", "unavailable")
    revoked = client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer mk_unknown"})
    assert revoked.status_code == 401
    assert created.secret not in revoked.text
