"""The Flask adapter through Flask's own test client: the loop-thread lifecycle, errors, health,
request containers, credentials, threads sharing the loop, and an admitted request end to end
against FakeUpstream (in-process and over loopback)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest

pytest.importorskip("flask")

from anyio.from_thread import start_blocking_portal
from flask import Flask, jsonify
from flask.testing import FlaskClient

from maaskit.adapters import flask as mk
from maaskit.app import AppService
from maaskit.errors import ForbiddenError, RateLimitedError, UnavailableError
from maaskit.registry import Lifetime, Registry
from maaskit.services.upstream import HttpxTransport, UpstreamTransport
from maaskit.services.usage import UsageRow
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


def _register_scoped(registry: Registry) -> None:
    registry.register_class(Scoped, lifetime=Lifetime.REQUEST)


@pytest.fixture(autouse=True)
def _reset_scoped() -> None:
    Scoped.created = []
    Scoped.closed = []


def _make_flask(maas: mk.MaasFlask) -> Flask:
    flask_app = Flask(__name__)
    maas.init_app(flask_app)

    @flask_app.get("/whoami")
    def whoami() -> Any:
        return {"length": len(mk.credential())}

    @flask_app.get("/scoped")
    def scoped() -> Any:
        thing = mk.scoped(Scoped)
        return {"same": mk.scoped(Scoped) is thing, "closed_during": id(thing) in Scoped.closed}

    @flask_app.get("/boom/<kind>")
    def boom(kind: str) -> Any:
        if kind == "rate":
            raise RateLimitedError(
                "rate_limit.exceeded", kind="requests", limit=1, period_seconds=60, retry_after=0.2
            )
        raise ForbiddenError("admission.model_not_allowed", model="m")

    @flask_app.post("/v1/chat/completions")
    def chat() -> Any:
        app = mk.get_app()
        with mk.admission() as admitted:
            result = mk.maaskit_call(app.ai_api.chat_completion, admitted.upstream_body(CHAT))
            mk.maaskit_call(app.admission.settle, admitted, result.usage)
        return jsonify(result.response), 200, admitted.headers()

    @flask_app.post("/v1/failing")
    def failing() -> Any:
        app = mk.get_app()
        with mk.admission(CHAT) as admitted:
            mk.maaskit_call(app.ai_api.chat_completion, admitted.upstream_body(CHAT))
        raise AssertionError("the upstream call was scripted to fail")

    return flask_app


def _gateway_app(fake: FakeUpstream) -> AppService:
    transport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()), owns_client=True)
    return build_test_app(
        overrides={UpstreamTransport: transport},
        configure=_register_scoped,
        upstream_url=fake.base_url,
        upstream_api_key="sk-fake-upstream",
        model_prices=PRICES,
    )


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def app_service(fake: FakeUpstream) -> AppService:
    return _gateway_app(fake)


@pytest.fixture
def maas(app_service: AppService) -> Iterator[mk.MaasFlask]:
    ext = mk.MaasFlask(app=app_service, stop_at_exit=False)
    yield ext
    ext.shutdown()


@pytest.fixture
def client(maas: mk.MaasFlask) -> FlaskClient:
    return _make_flask(maas).test_client()


def _create_key(maas: mk.MaasFlask, **options: Any) -> str:
    return maas.call(maas.app.api_keys.create, "alice", name="test", **options).secret


def _totals(maas: mk.MaasFlask) -> UsageRow:
    app = maas.app
    maas.call(app.usage.flush)
    now = app.clock.now()
    return maas.call(app.usage.totals, now - timedelta(days=1), now + timedelta(days=1))


# -- lifecycle ---------------------------------------------------------------------------------


def test_app_starts_lazily_on_first_use_and_stops_on_shutdown(app_service: AppService) -> None:
    maas = mk.MaasFlask(app=app_service, stop_at_exit=False)
    client = _make_flask(maas).test_client()
    assert not maas.running
    assert not app_service.started
    assert client.get("/health").status_code == 200
    assert maas.running
    assert app_service.started
    maas.shutdown()
    assert not maas.running
    assert not app_service.started
    assert app_service.registry.closed
    maas.shutdown()  # idempotent
    with pytest.raises(UnavailableError):
        maas.start()  # final: a stopped extension does not come back


def test_explicit_start_and_init_app_later(app_service: AppService) -> None:
    maas = mk.MaasFlask(app=app_service, stop_at_exit=False)
    try:
        assert maas.start() is app_service
        assert maas.start() is app_service  # once
        flask_app = Flask(__name__)
        maas.init_app(flask_app)
        assert flask_app.extensions[mk.EXTENSION_KEY] is maas
        with flask_app.app_context():
            assert mk.get_app() is app_service
    finally:
        maas.shutdown()


def test_builds_the_app_from_settings() -> None:
    from maaskit.testing.app import test_settings

    maas = mk.MaasFlask(Flask(__name__), test_settings(), stop_at_exit=False)
    try:
        assert maas.app.started
        assert maas.call(maas.app.health).ok
    finally:
        maas.shutdown()


def test_views_without_the_extension_get_503() -> None:
    flask_app = Flask(__name__)
    flask_app.register_error_handler(UnavailableError, mk.maas_error_handler)
    flask_app.add_url_rule("/health", view_func=mk.health_view)
    response = flask_app.test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "app.not_started"


def test_the_app_is_stopped_at_interpreter_exit(tmp_path: Any) -> None:
    script = textwrap.dedent(
        """
        from flask import Flask
        from maaskit.adapters import flask as mk
        from maaskit.registry import Registry

        class Marker:
            async def aclose(self) -> None:
                print("closed at exit", flush=True)

        def configure(registry: Registry) -> None:
            registry.register_class(Marker)

        from maaskit.testing.app import build_test_app
        maas = mk.MaasFlask(Flask(__name__), build_test_app(configure=configure))
        maas.call(maas.app.aget, Marker)
        print("running", maas.running, flush=True)
        """
    )
    done = subprocess.run(  # no shutdown() call: atexit must stop the loop thread and the app
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == ["running True", "closed at exit"]


# -- errors ------------------------------------------------------------------------------------


def test_rate_limited_error_is_429_with_openai_body_and_retry_after(client: FlaskClient) -> None:
    response = client.get("/boom/rate")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"  # at least one second
    error = response.get_json()["error"]
    assert error["code"] == "rate_limit.exceeded"
    assert error["type"] == "rate_limited"
    assert set(error) == {"message", "type", "code", "param"}


def test_forbidden_is_403_in_the_callers_language(client: FlaskClient) -> None:
    english = client.get("/boom/forbidden")
    german = client.get("/boom/forbidden", headers={"Accept-Language": "de"})
    assert english.status_code == german.status_code == 403
    assert "Retry-After" not in english.headers
    assert english.get_json()["error"]["message"] != german.get_json()["error"]["message"]


# -- health ------------------------------------------------------------------------------------


def test_health_reports_ok(client: FlaskClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["ok"] is True


def test_health_is_503_when_a_check_fails() -> None:
    class Sick:
        async def ping(self) -> bool:
            return False

    maas = mk.MaasFlask(
        app=build_test_app(configure=lambda r: r.register_class(Sick)),
        health_path="/status",
        stop_at_exit=False,
    )
    try:
        client = _make_flask(maas).test_client()
        maas.call(maas.app.aget, Sick)  # health pings built services only
        response = client.get("/status")
        assert response.status_code == 503
        assert any(check["name"] == "Sick" and not check["ok"] for check in response.get_json()["checks"])
        assert client.get("/health").status_code == 404  # routed at health_path only
    finally:
        maas.shutdown()


# -- request containers --------------------------------------------------------------------------


def test_request_container_is_closed_after_the_response(client: FlaskClient) -> None:
    assert client.get("/scoped").get_json() == {"same": True, "closed_during": False}
    assert len(Scoped.created) == 1
    assert Scoped.closed == Scoped.created
    client.get("/scoped")
    assert len(Scoped.created) == 2
    assert Scoped.closed == Scoped.created


def test_no_container_for_requests_that_do_not_ask(client: FlaskClient) -> None:
    client.get("/health")
    assert Scoped.created == []


# -- credentials -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "auth.missing"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "auth.malformed"),
        ({"Authorization": "Bearer Bearer mk_abc"}, "auth.malformed"),
        ({"Authorization": "Bearer mk_a\u00e9b"}, "auth.malformed"),
        ({"Authorization": "Bearer mk_" + "a" * 10_000}, "auth.malformed"),
    ],
)
def test_bad_credentials_are_401(client: FlaskClient, headers: dict[str, str], code: str) -> None:
    response = client.get("/whoami", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.get_json()["error"]["code"] == code
    assert "mk_a" not in response.get_data(as_text=True)


def test_credential_from_bearer_or_api_key_header(client: FlaskClient) -> None:
    assert client.get("/whoami", headers={"Authorization": "Bearer mk_12345"}).get_json() == {"length": 8}
    assert client.get("/whoami", headers={"api-key": "mk_1234"}).get_json() == {"length": 7}


def test_a_repeated_credential_header_is_refused(client: FlaskClient) -> None:
    # WSGI joins repeated headers with ", " (one environ entry), which no credential may contain
    for name, value in (("Authorization", "Bearer mk_12345"), ("api-key", "mk_1234")):
        response = client.get("/whoami", headers=[(name, value), (name, value + "9")])
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "auth.malformed"


# -- admission end to end ----------------------------------------------------------------------


def test_admitted_request_end_to_end(client: FlaskClient, maas: mk.MaasFlask, fake: FakeUpstream) -> None:
    secret = _create_key(maas, rpm_limit=10)
    response = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["choices"][0]["message"]["content"] == fake.reply
    assert response.headers["x-ratelimit-remaining-requests"] == "9"
    assert len(fake.requests) == 1
    assert fake.requests[0].authorized
    totals = _totals(maas)
    assert (totals.requests, totals.errors) == (1, 0)
    assert totals.cost_micros > 0


@pytest.mark.parametrize("raw", [b"[1]", b'{"model": NaN}', b"{nope"])
def test_bad_body_is_400_before_admission(
    client: FlaskClient, maas: mk.MaasFlask, fake: FakeUpstream, raw: bytes
) -> None:
    secret = _create_key(maas)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    response = client.post("/v1/chat/completions", data=raw, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "http.invalid_json"
    assert fake.requests == []


def test_admission_is_released_when_the_block_raises(
    client: FlaskClient, maas: mk.MaasFlask, fake: FakeUpstream
) -> None:
    secret = _create_key(maas, budget_micros=50)  # one reservation (~35 micro-USD) fits, two do not
    auth = {"Authorization": f"Bearer {secret}"}
    fake.fail_next(400, times=3)
    for _ in range(3):
        failed = client.post("/v1/failing", json=CHAT, headers=auth)
        assert failed.get_json()["error"]["type"] in ("validation", "upstream")
    totals = _totals(maas)
    assert (totals.requests, totals.errors, totals.cost_micros) == (3, 3, 0)
    assert client.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 200


def test_worker_threads_share_the_loop_and_limits_hold(
    client: FlaskClient, maas: mk.MaasFlask, fake: FakeUpstream
) -> None:
    secret = _create_key(maas, rpm_limit=6)
    auth = {"Authorization": f"Bearer {secret}"}
    flask_app = client.application

    def call(_: int) -> int:
        with flask_app.test_client() as own:  # one client per worker thread
            return own.post("/v1/chat/completions", json=CHAT, headers=auth).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(call, range(10)))
    assert statuses == [200] * 6 + [429] * 4
    assert len(fake.requests) == 6


def test_admitted_request_end_to_end_over_loopback() -> None:
    """The default aiohttp data-plane transport against FakeUpstream on a loopback port."""
    fake = FakeUpstream()
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(fake.serve()) as base_url:
        app_service = build_test_app(
            upstream_url=base_url, upstream_api_key="sk-fake-upstream", model_prices=PRICES
        )
        maas = mk.MaasFlask(app=app_service, stop_at_exit=False)
        try:
            client = _make_flask(maas).test_client()
            secret = _create_key(maas)
            response = client.post(
                "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"}
            )
            assert response.status_code == 200, response.get_data(as_text=True)
            assert response.get_json()["usage"]["completion_tokens"] > 0
            assert _totals(maas).requests == 1
        finally:
            maas.shutdown()
    assert len(fake.requests) == 1


def test_body_over_max_request_bytes_is_refused(fake: FakeUpstream) -> None:
    maas = mk.MaasFlask(app=build_test_app(model_prices=PRICES, max_request_bytes=1024), stop_at_exit=False)
    try:
        client = _make_flask(maas).test_client()
        secret = _create_key(maas)
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
        response = client.post(
            "/v1/chat/completions", json=big, headers={"Authorization": f"Bearer {secret}"}
        )
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == "http.body_too_large"
    finally:
        maas.shutdown()
