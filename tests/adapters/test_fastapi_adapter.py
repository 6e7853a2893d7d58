"""The FastAPI adapter through FastAPI's own TestClient: lifecycle, errors, health, containers,
credentials, dependencies and an admitted request end to end against FakeUpstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

import httpx
import pytest
import structlog
import structlog.testing

pytest.importorskip("fastapi")

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from maaskit.adapters import fastapi as mk
from maaskit.app import AppService
from maaskit.errors import ForbiddenError, RateLimitedError, UpstreamError
from maaskit.money import to_micros
from maaskit.registry import Lifetime, Registry
from maaskit.services.admission import Admission
from maaskit.services.api_keys import ApiKeyService
from maaskit.services.upstream import HttpxTransport, UpstreamTransport
from maaskit.services.usage import UsageRow
from maaskit.testing.app import build_test_app
from maaskit.testing.fake_upstream import FakeUpstream

PRICES = {"fake-model": {"input": "1", "output": "2"}}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16}


class Item(BaseModel):
    """A body model (module level: FastAPI resolves the postponed annotation here)."""

    count: int


class Scoped:
    """A request-lifetime service recording when it is closed."""

    closed: list[int] = []  # ids of closed instances, shared across instances
    created: list[int] = []

    def __init__(self) -> None:
        Scoped.created.append(id(self))

    async def aclose(self) -> None:
        Scoped.closed.append(id(self))


def _register_scoped(registry: Registry) -> None:
    registry.register_class(Scoped, lifetime=Lifetime.REQUEST)


@pytest.fixture(autouse=True)
def _reset_scoped() -> None:
    Scoped.closed = []
    Scoped.created = []


def _gateway_app(fake: FakeUpstream, **changes: Any) -> AppService:
    transport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()), owns_client=True)
    return build_test_app(
        overrides={UpstreamTransport: transport},
        configure=_register_scoped,
        upstream_url=fake.base_url,
        upstream_api_key="sk-fake-upstream",
        model_prices=PRICES,
        **changes,
    )


def _make_api(app_service: AppService) -> FastAPI:
    api = FastAPI(lifespan=mk.lifespan(app_service))
    mk.install(api)
    api.include_router(mk.health_router())

    @api.get("/whoami")
    async def whoami(credential: mk.CredentialDep) -> dict[str, int]:
        return {"length": len(credential)}

    @api.get("/scoped")
    async def scoped(
        container: mk.ContainerDep, thing: Annotated[Scoped, Depends(mk.scoped(Scoped))]
    ) -> dict[str, Any]:
        same = await container.aget(Scoped)
        return {"same": same is thing, "closed_during": id(thing) in Scoped.closed}

    @api.get("/boom/{kind}")
    async def boom(kind: str) -> None:
        if kind == "rate":
            raise RateLimitedError(
                "rate_limit.exceeded", kind="requests", limit=1, period_seconds=60, retry_after=2.5
            )
        if kind == "forbidden":
            raise ForbiddenError("admission.model_not_allowed", model="m")
        raise UpstreamError("upstream.unavailable", upstream="fake", reason="down")

    @api.get("/keys-service")
    async def keys_service(
        keys: Annotated[ApiKeyService, Depends(mk.service(ApiKeyService))], maas: mk.AppDep
    ) -> dict[str, bool]:
        return {"same": keys is maas.api_keys}

    @api.post("/items")
    async def items(item: Item) -> dict[str, int]:
        return {"count": item.count}

    @api.post("/v1/chat/completions")
    async def chat(
        body: dict[str, Any], admission: mk.AdmissionDep, ai: mk.AiApiDep, maas: mk.AppDep
    ) -> dict[str, Any]:
        result = await ai.chat_completion(admission.upstream_body(body))
        await maas.admission.settle(admission, result.usage)
        return result.response

    @api.post("/v1/unsettled")
    async def unsettled(admission: mk.AdmissionDep) -> dict[str, str]:
        return {"request_id": admission.request_id}

    @api.post("/v1/failing")
    async def failing(admission: mk.AdmissionDep, ai: mk.AiApiDep) -> dict[str, Any]:
        result = await ai.chat_completion(admission.upstream_body(CHAT))
        return result.response

    return api


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def app_service(fake: FakeUpstream) -> AppService:
    return _gateway_app(fake)


@pytest.fixture
def client(app_service: AppService) -> Iterator[TestClient]:
    with TestClient(_make_api(app_service)) as test_client:
        yield test_client


def _create_key(client: TestClient, app_service: AppService, **options: Any) -> str:
    portal = client.portal
    assert portal is not None
    created = portal.call(lambda: app_service.api_keys.create("alice", name="test", **options))
    return created.secret


def _totals(client: TestClient, app_service: AppService) -> UsageRow:
    portal = client.portal
    assert portal is not None
    portal.call(app_service.usage.flush)
    now = app_service.clock.now()
    day = timedelta(days=1)
    return portal.call(lambda: app_service.usage.totals(now - day, now + day))


# -- lifecycle ---------------------------------------------------------------------------------


def test_lifespan_starts_and_stops_the_app(app_service: AppService) -> None:
    assert not app_service.started
    with TestClient(_make_api(app_service)) as test_client:
        assert app_service.started
        assert test_client.get("/health").status_code == 200
    assert not app_service.started
    assert app_service.registry.closed


def test_without_lifespan_state_a_request_gets_503_not_started(app_service: AppService) -> None:
    api = FastAPI()  # no maaskit lifespan
    mk.install(api)
    api.include_router(mk.health_router())
    with TestClient(api) as test_client:
        response = test_client.get("/health")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "app.not_started"


# -- errors ------------------------------------------------------------------------------------


def test_rate_limited_error_is_429_with_openai_body_and_retry_after(client: TestClient) -> None:
    response = client.get("/boom/rate")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"  # 2.5 s rounded up
    error = response.json()["error"]
    assert error["code"] == "rate_limit.exceeded"
    assert error["type"] == "rate_limited"
    assert set(error) == {"message", "type", "code", "param"}


def test_errors_map_to_their_status(client: TestClient) -> None:
    forbidden = client.get("/boom/forbidden")
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "admission.model_not_allowed"
    assert "retry-after" not in forbidden.headers
    assert client.get("/boom/upstream").status_code == 502


def test_error_message_follows_accept_language(client: TestClient) -> None:
    english = client.get("/boom/forbidden").json()["error"]["message"]
    german = client.get("/boom/forbidden", headers={"Accept-Language": "de-DE,de;q=0.9"}).json()["error"][
        "message"
    ]
    assert german != english


def test_request_validation_error_is_an_openai_style_400(client: TestClient) -> None:
    response = client.post("/items", json={"count": "not a number"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "http.invalid_request"
    assert "count" in error["message"]


def test_validation_errors_can_stay_fastapi_422(app_service: AppService) -> None:
    api = FastAPI(lifespan=mk.lifespan(app_service))
    mk.install(api, openai_validation_errors=False)

    @api.get("/n")
    async def n(value: int) -> int:
        return value

    with TestClient(api) as test_client:
        assert test_client.get("/n", params={"value": "x"}).status_code == 422


@pytest.mark.parametrize("openai_http_errors", [True, False])
def test_http_exceptions_get_an_openai_body_unless_opted_out(
    app_service: AppService, openai_http_errors: bool
) -> None:
    api = FastAPI(lifespan=mk.lifespan(app_service))
    mk.install(api, openai_http_errors=openai_http_errors)

    @api.get("/gone")
    async def gone() -> None:
        raise HTTPException(410, detail="this model was retired")

    with TestClient(api) as test_client:
        missing, retired = test_client.get("/nope"), test_client.get("/gone")
    assert (missing.status_code, retired.status_code) == (404, 410)
    if openai_http_errors:
        assert missing.json()["error"]["code"] == "http.not_found"
        assert retired.json()["error"] == {
            "message": "this model was retired",
            "type": "validation",
            "code": "http.error",
            "param": None,
        }
    else:  # FastAPI's own {"detail": ...}
        assert missing.json() == {"detail": "Not Found"}
        assert retired.json() == {"detail": "this model was retired"}


# -- health ------------------------------------------------------------------------------------


def test_health_reports_ok(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    report = response.json()
    assert report["ok"] is True
    assert isinstance(report["checks"], list)


def test_health_is_503_when_a_check_fails(fake: FakeUpstream) -> None:
    class Sick:
        async def ping(self) -> bool:
            return False

    def configure(registry: Registry) -> None:
        registry.register_class(Sick)

    app_service = build_test_app(configure=configure)
    api = FastAPI(lifespan=mk.lifespan(app_service))
    mk.install(api)
    api.include_router(mk.health_router("/status"))
    with TestClient(api) as test_client:
        portal = test_client.portal
        assert portal is not None
        portal.call(app_service.aget, Sick)  # health pings built services only
        response = test_client.get("/status")
    assert response.status_code == 503
    assert response.json()["ok"] is False
    assert any(check["name"] == "Sick" and not check["ok"] for check in response.json()["checks"])


# -- request containers --------------------------------------------------------------------------


def test_request_container_is_closed_after_the_response(client: TestClient) -> None:
    first = client.get("/scoped").json()
    assert first == {"same": True, "closed_during": False}
    assert len(Scoped.created) == 1
    assert Scoped.closed == Scoped.created
    client.get("/scoped")
    assert len(Scoped.created) == 2  # a new instance per request
    assert Scoped.closed == Scoped.created


def test_no_container_is_opened_for_requests_that_do_not_ask(client: TestClient) -> None:
    client.get("/health")
    assert Scoped.created == []


def test_service_dependency_resolves_app_services(client: TestClient) -> None:
    assert client.get("/keys-service").json() == {"same": True}
    assert mk.service(ApiKeyService) is mk.service(ApiKeyService)  # one callable: cached per request


# -- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "auth.missing"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "auth.malformed"),
        ({"Authorization": "Bearer Bearer mk_abc"}, "auth.malformed"),
        ({"Authorization": "Bearer "}, "auth.malformed"),
        ({"Authorization": "Bearer mk_" + "a" * 10_000}, "auth.malformed"),
    ],
)
def test_bad_credentials_are_401(client: TestClient, headers: dict[str, str], code: str) -> None:
    response = client.get("/whoami", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == code
    assert "mk_abc" not in response.text


def test_credential_from_bearer_or_api_key_header(client: TestClient) -> None:
    assert client.get("/whoami", headers={"Authorization": "Bearer mk_12345"}).json() == {"length": 8}
    assert client.get("/whoami", headers={"api-key": "mk_1234"}).json() == {"length": 7}


def test_openapi_declares_the_bearer_scheme(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# -- admission end to end ----------------------------------------------------------------------


def test_admitted_request_end_to_end(client: TestClient, app_service: AppService, fake: FakeUpstream) -> None:
    secret = _create_key(client, app_service, budget_micros=to_micros(Decimal(1)), rpm_limit=10)
    response = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == fake.reply
    assert response.headers["x-ratelimit-limit-requests"] == "10"
    assert response.headers["x-ratelimit-remaining-requests"] == "9"
    assert len(fake.requests) == 1
    assert fake.requests[0].authorized  # the upstream key, never the caller's
    assert secret.encode() not in fake.requests[0].body
    portal = client.portal
    assert portal is not None
    totals = _totals(client, app_service)
    assert (totals.requests, totals.errors) == (1, 0)
    assert totals.cost_micros > 0


def test_unknown_key_is_refused_before_the_upstream(client: TestClient, fake: FakeUpstream) -> None:
    response = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer mk_nope"})
    assert response.status_code == 401
    assert response.json()["error"]["code"].startswith("api_key.")
    assert fake.requests == []


def test_rate_limit_refusal_is_429_with_retry_after(
    client: TestClient, app_service: AppService, fake: FakeUpstream
) -> None:
    secret = _create_key(client, app_service, rpm_limit=1)
    auth = {"Authorization": f"Bearer {secret}"}
    assert client.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 200
    refused = client.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limited"
    assert len(fake.requests) == 1


def test_bad_body_is_a_400_before_admission(client: TestClient, app_service: AppService) -> None:
    secret = _create_key(client, app_service)
    auth = {"Authorization": f"Bearer {secret}", "content-type": "application/json"}
    for raw in (b"[1, 2]", b'{"model": NaN}', b"{not json"):
        response = client.post("/v1/unsettled", content=raw, headers=auth)
        assert response.status_code == 400, raw
        assert response.json()["error"]["code"] == "http.invalid_json"


def test_invalid_model_name_is_refused(client: TestClient, app_service: AppService) -> None:
    secret = _create_key(client, app_service)
    body = {**CHAT, "model": "http://evil.example/v1"}
    response = client.post("/v1/unsettled", json=body, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "admission.invalid_model"


def test_admission_is_released_when_the_handler_raises(
    client: TestClient, app_service: AppService, fake: FakeUpstream
) -> None:
    budget = 50  # micro-USD: one reservation of this request (~35) fits, two do not
    secret = _create_key(client, app_service, budget_micros=budget)
    auth = {"Authorization": f"Bearer {secret}"}
    fake.fail_next(400, times=5)  # a client error upstream: not retried
    for _ in range(3):
        failed = client.post("/v1/failing", json=CHAT, headers=auth)
        assert failed.status_code in (400, 502), failed.text
        assert failed.json()["error"]["type"] in ("validation", "upstream")
    fake.reset()
    totals = _totals(client, app_service)
    assert (totals.requests, totals.errors, totals.cost_micros) == (3, 3, 0)  # each release recorded
    # every reservation was given back, so the budget still admits the request
    assert client.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 200


def test_unsettled_admission_is_logged_after_the_response(
    client: TestClient, app_service: AppService
) -> None:
    secret = _create_key(client, app_service)
    with structlog.testing.capture_logs() as logs:
        response = client.post("/v1/unsettled", json=CHAT, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
    request_id = response.json()["request_id"]
    warnings = [entry for entry in logs if entry["event"] == "maaskit.admission_unsettled"]
    assert [entry["request_id"] for entry in warnings] == [request_id]
    assert secret not in repr(logs)


def test_settled_admission_logs_no_warning(client: TestClient, app_service: AppService) -> None:
    secret = _create_key(client, app_service)
    with structlog.testing.capture_logs() as logs:
        response = client.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"}
        )
    assert response.status_code == 200
    assert not [entry for entry in logs if entry["event"] == "maaskit.admission_unsettled"]


def test_admitted_request_end_to_end_over_loopback(fake: FakeUpstream) -> None:
    """The same flow with the default aiohttp data-plane transport and FakeUpstream on a port,
    both started by the application's own lifespan around maaskit's."""
    admissions: list[Admission] = []

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with fake.serve() as base_url:
            app_service = build_test_app(
                upstream_url=base_url, upstream_api_key="sk-fake-upstream", model_prices=PRICES
            )
            async with mk.lifespan(app_service)(api) as state:
                created = await app_service.api_keys.create("bob", name="loop")
                yield {**state, "secret": created.secret}

    api = FastAPI(lifespan=lifespan)
    mk.install(api)

    @api.post("/v1/chat/completions")
    async def chat(body: dict[str, Any], admission: mk.AdmissionDep, ai: mk.AiApiDep, maas: mk.AppDep) -> Any:
        admissions.append(admission)
        result = await ai.chat_completion(admission.upstream_body(body))
        await maas.admission.settle(admission, result.usage)
        return result.response

    @api.get("/secret")
    async def secret(request: Request) -> str:
        return str(request.state.secret)

    with TestClient(api) as test_client:
        key = test_client.get("/secret").json()
        response = test_client.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] > 0
    assert admissions[0].settled
    assert len(fake.requests) == 1


def test_body_over_max_request_bytes_is_refused(fake: FakeUpstream) -> None:
    app_service = _gateway_app(fake, max_request_bytes=1024)
    with TestClient(_make_api(app_service)) as test_client:
        secret = _create_key(test_client, app_service)
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
        response = test_client.post("/v1/unsettled", json=big, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "http.body_too_large"
    assert fake.requests == []
