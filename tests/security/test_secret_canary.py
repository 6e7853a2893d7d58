"""Secret canary (issue 4, item 9): logs and errors never carry secrets.

Every flow of the identity and access services and of the reference gateway runs with known,
distinctive fake secrets (settings secrets, upstream and pooled upstream keys, passwords, API keys
and their rotations, JWTs, session ids, CSRF tokens, stored secrets, a keyring password) through
the real HTTP gateway (``httpx.ASGITransport``) **and** directly through the services. Everything
an attacker or an operator could read is captured:

* structlog events (``structlog.testing.capture_logs``: raw, before any redaction) and standard
  library records (``caplog`` at DEBUG); in a separate test, the real rendering pipeline of
  :func:`maaskit.log.configure_logging` (JSON lines into a ``StringIO``);
* every HTTP response (status, every header, body) and every :class:`MaasError` the gateway
  raised (``str``, ``repr``, ``to_dict`` in en and de, the exception chain and traceback);
* every exception the services raise, the ``repr``/``str`` of the value objects they return;
* the audit log (``app.audit.query``) and a dump of every table of the SQLite file database.

No canary may appear anywhere, except a secret in the one response that hands it out (the key
create/rotate answer, the login cookie and CSRF token, the token endpoint's JWTs). Digests (API
key HMACs in hex/raw/base64, session id SHA-256s, password hashes, secret envelopes) may appear
only in their own digest column. Positive controls prove the capture sees what it should (the
digests *are* found in their columns, a planted leak *is* reported).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import sqlite3
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import argon2
import attrs
import httpx
import keyring.errors
import pytest
import structlog
from keyring.backend import KeyringBackend
from structlog.testing import capture_logs

from maaskit.app import AppService
from maaskit.errors import MaasError
from maaskit.gateway import create_gateway
from maaskit.log import configure_logging, settings_secrets
from maaskit.registry import Registry
from maaskit.services.api_keys import generate_key
from maaskit.services.credentials import CredentialPool
from maaskit.services.keyring import DefaultKeyringService, KeyringService
from maaskit.services.secrets import MasterKey
from maaskit.services.sessions import session_digest
from maaskit.services.upstream import HttpxTransport, UpstreamTransport
from maaskit.storage.sql.base import metadata
from maaskit.testing.app import build_test_app
from maaskit.testing.clock import FakeClock
from maaskit.testing.fake_keyring import FakeKeyring, InMemoryKeyringBackend
from maaskit.testing.fake_upstream import FakeUpstream
from maaskit.wiring import _derive

# -- the canaries ------------------------------------------------------------------------------

UPSTREAM_KEY = "sk-canary-upstream-7f3a9c1e5b2d4f60a8"
POOLED_KEY = "sk-canary-pooled-4e1b8d2a9c7f3051b6"
POOLED_KEY_2 = "sk-canary-pooled-two-9a7c3e5f1b8d2064"
SIGNING_SECRET = "canary-signing-secret-1c9e4a7b2f5d8e03a6b1"
KEY_PEPPER = "canary-key-pepper-8d3f1a6c9e2b5f704d17a2"
MASTER_KEY = "canary-master-key-5a2e9f1c7b4d8e306c92f1"
MASTER_KEY_2 = "canary-master-two-3e8b1d6f9a2c5e7049b3d8"
ADMIN_TOKEN = "canary-admin-token-3b7e1f9a5c2d"
WRONG_ADMIN_TOKEN = "canary-wrong-admin-token-6d2c8f"
LITELLM_MASTER = "sk-canary-litellm-master-2f6a9d3c"
HUB_TOKEN = "hf_canary_hub_token_8e4b1c7d"
ADMIN_PW = "Canary-Admin-Pass-6f2a9e"
ALICE_PW = "Canary-Alice-Pass-1b7d4c"
ALICE_PW_2 = "Canary-Alice-New-Pass-9e3a"
BOB_PW = "Canary-Bob-Pass-5c8e2f"
BOB_PW_2 = "Canary-Bob-Reset-Pass-2d6b"
USER_PW = "Canary-User-Pass-7a3f1e"
SVC_PW = "Canary-Svc-Pass-4f9b2c"
SVC_PW_2 = "Canary-Svc-New-Pass-8c1e"
WRONG_PW = "Canary-Wrong-Pass-1d8c4b"
LONG_PW = "Canary-Too-Long-Password-" + "q" * 140
STORED_SECRET = "canary-stored-secret-value-2b9f6e1a"
STORED_SECRET_2 = "canary-stored-bytes-value-7e2d4a9c"
KEYRING_PW = "canary-keyring-password-7c3e5a9d"
MALFORMED_KEY = "mk_canary-malformed-0x5f3e"
FAKE_SESSION = "canary-forged-session-id-4b8e2a6d1f9c"
FAKE_CSRF = "canary-forged-csrf-token-3c7a"
BAD_JWT = "eyJcanaryMalformed.eyJjYW5hcnki.c2lnbmF0dXJl"

PRICES = {"fake-model": {"input": "10", "output": "30"}}
COOKIE = "__Host-maaskit_session"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Hello canary"}]}
CHEAP = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)

#: Columns where a digest of a canary may legitimately sit (checked against the table definitions).
API_KEY_DIGEST_COLUMNS = frozenset({("maaskit_api_keys", "digest"), ("maaskit_api_keys", "previous_digest")})
SESSION_DIGEST_COLUMNS = frozenset({("maaskit_sessions", "digest"), ("maaskit_oauth_states", "digest")})
#: Columns holding hashes / ciphertexts that must not travel anywhere else.
OPAQUE_COLUMNS = frozenset(
    {
        ("maaskit_api_keys", "digest"),
        ("maaskit_api_keys", "previous_digest"),
        ("maaskit_api_keys", "rotation_idempotency_digest"),
        ("maaskit_sessions", "digest"),
        ("maaskit_oauth_states", "digest"),
        ("maaskit_users", "password_hash"),
        ("maaskit_secrets", "envelope"),
    }
)


def _pepper_digest(secret: str) -> bytes:
    """The API key digest exactly as :class:`DefaultApiKeyService` computes it."""
    return hmac.digest(KEY_PEPPER.encode(), secret.encode("ascii"), "sha256")


def _forms(raw: bytes) -> set[str]:
    """Text forms a raw digest could take in a log or a column."""
    return {
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.decode("latin-1"),
    }


# -- capture and checks ----------------------------------------------------------------------


@attrs.define
class Sink:
    """One place a secret could leak to."""

    label: str
    text: str
    allowed: frozenset[str] = frozenset()
    column: tuple[str, str] | None = None


@attrs.define
class Digest:
    name: str
    forms: set[str]
    columns: frozenset[tuple[str, str]]


class Canary:
    """The registered secrets and digests, and every sink captured."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.digests: list[Digest] = []
        self.sinks: list[Sink] = []
        self.errors = 0
        for name, value in {
            "upstream_key": UPSTREAM_KEY,
            "pooled_key": POOLED_KEY,
            "pooled_key_2": POOLED_KEY_2,
            "signing_secret": SIGNING_SECRET,
            "key_pepper": KEY_PEPPER,
            "master_key": MASTER_KEY,
            "master_key_2": MASTER_KEY_2,
            "admin_token": ADMIN_TOKEN,
            "wrong_admin_token": WRONG_ADMIN_TOKEN,
            "litellm_master": LITELLM_MASTER,
            "hub_token": HUB_TOKEN,
            "admin_pw": ADMIN_PW,
            "alice_pw": ALICE_PW,
            "alice_pw_2": ALICE_PW_2,
            "bob_pw": BOB_PW,
            "bob_pw_2": BOB_PW_2,
            "user_pw": USER_PW,
            "svc_pw": SVC_PW,
            "svc_pw_2": SVC_PW_2,
            "wrong_pw": WRONG_PW,
            "long_pw": LONG_PW,
            "stored_secret": STORED_SECRET,
            "stored_secret_2": STORED_SECRET_2,
            "keyring_pw": KEYRING_PW,
            "malformed_key": MALFORMED_KEY,
            "fake_session": FAKE_SESSION,
            "fake_csrf": FAKE_CSRF,
            "bad_jwt": BAD_JWT,
        }.items():
            self.secret(name, value)
        signing = SIGNING_SECRET.encode()
        for purpose in (b"jwt-hs256", b"csrf"):
            self.digests.append(
                Digest(f"derived {purpose.decode()} key", _forms(_derive(signing, purpose)), frozenset())
            )

    # registration

    def secret(self, name: str, value: str) -> str:
        """Register a secret value (and the signature segment of a JWT)."""
        assert len(value) >= 16, name
        self.secrets[f"{name}#{len(self.secrets)}"] = value
        signature = value.rsplit(".", 1)[-1]
        if value.count(".") == 2 and value.startswith("eyJ") and len(signature) >= 16:
            self.secrets[f"{name} signature#{len(self.secrets)}"] = signature
        return value

    def api_key(self, name: str, value: str) -> str:
        """Register an API key secret and its digest (allowed only in the key table's digest columns)."""
        self.secret(name, value)
        self.digests.append(Digest(f"{name} digest", _forms(_pepper_digest(value)), API_KEY_DIGEST_COLUMNS))
        return value

    def session(self, name: str, raw_id: str) -> str:
        """Register a session id (or OAuth state) and its SHA-256 digest."""
        self.secret(name, raw_id)
        raw = hashlib.sha256(raw_id.encode("ascii")).digest()
        assert raw.hex() == session_digest(raw_id)
        self.digests.append(Digest(f"{name} digest", _forms(raw), SESSION_DIGEST_COLUMNS))
        return raw_id

    # capture

    def sink(self, label: str, text: str, allowed: Iterable[str] = ()) -> None:
        self.sinks.append(Sink(label, text, frozenset(allowed)))

    def obj(self, label: str, value: object) -> None:
        """``repr`` and ``str`` of a returned value object."""
        self.sink(f"repr {label}", repr(value))
        self.sink(f"str {label}", str(value))

    def response(self, label: str, reply: httpx.Response, allowed: Iterable[str] = ()) -> httpx.Response:
        headers = "\n".join(f"{k}: {v}" for k, v in reply.headers.multi_items())
        self.sink(f"http {label}", f"{reply.status_code}\n{headers}\n\n{reply.text}", allowed)
        return reply

    def error(self, label: str, exc: BaseException) -> None:
        """Everything an exception shows: str, repr, to_dict (en, de), chain and traceback."""
        self.errors += 1
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            self.sink(f"exc {label} str", str(current))
            self.sink(f"exc {label} repr", repr(current))
            self.sink(f"exc {label} args", repr(current.args))
            if isinstance(current, MaasError):
                for locale in ("en", "de"):
                    self.sink(
                        f"exc {label} to_dict {locale}", json.dumps(current.to_dict(locale), default=str)
                    )
                    self.sink(f"exc {label} render {locale}", current.render(locale))
                self.sink(f"exc {label} params", repr(current.params))
            # what tracebacks, logging and error trackers follow (``raise ... from None`` hides the context)
            current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        self.sink(f"exc {label} traceback", "".join(traceback.format_exception(exc)))

    async def expect(self, label: str, awaitable: Awaitable[Any]) -> MaasError:
        """Await *awaitable*; it must raise a MaasError, which is captured."""
        try:
            result = await awaitable
        except MaasError as exc:
            self.error(label, exc)
            return exc
        raise AssertionError(f"{label}: expected a MaasError, got {result!r}")

    def expect_sync(self, label: str, fn: Callable[[], Any]) -> MaasError:
        try:
            result = fn()
        except MaasError as exc:
            self.error(label, exc)
            return exc
        raise AssertionError(f"{label}: expected a MaasError, got {result!r}")

    def logs(self, label: str, events: list[dict[str, Any]]) -> None:
        """Raw structlog events (before any processor could redact them)."""
        for event in events:
            self.sink(f"log {label} {event.get('event')}", repr(event))
            exc_info = event.get("exc_info")
            if isinstance(exc_info, BaseException):
                self.error(f"log {label} exc_info", exc_info)
            elif isinstance(exc_info, tuple) and exc_info[1] is not None:
                self.error(f"log {label} exc_info", exc_info[1])

    def records(self, label: str, records: Iterable[logging.LogRecord]) -> None:
        """Standard-library log records: the formatted message, args, extras and exception."""
        for record in records:
            if record.name == "aiosqlite" and record.levelno < logging.INFO:
                # aiosqlite logs every call with its SQL parameters at DEBUG: a third-party record
                # maaskit does not emit; configure_logging keeps it out of the rendered logs (the
                # rendered test proves it, without this exemption)
                continue
            try:
                message = record.getMessage()
            except Exception:  # a record whose args do not format: keep the raw parts
                message = f"{record.msg!r} % {record.args!r}"
            self.sink(f"stdlib {label} {record.name}", f"{message}\n{record.__dict__!r}")
            if record.exc_info and record.exc_info[1] is not None:
                self.error(f"stdlib {label} exc", record.exc_info[1])

    async def audit(self, app: AppService) -> int:
        events = await app.audit.query(limit=1000)
        for event in events:
            self.sink(f"audit {event.action} repr", repr(event))
            self.sink(f"audit {event.action} details", json.dumps(dict(event.details), default=str))
        return len(events)

    def database(self, path: Path) -> dict[str, int]:
        """Every row of every table (metadata tables and anything else in the file), cell by cell."""
        counts: dict[str, int] = {}
        con = sqlite3.connect(path)
        try:
            in_file = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = set(metadata.tables) - in_file
            assert not missing, f"tables not migrated: {sorted(missing)}"
            for table in sorted(in_file | set(metadata.tables)):
                cursor = con.execute(f'SELECT * FROM "{table}"')
                columns = [d[0] for d in cursor.description]
                rows = cursor.fetchall()
                counts[table] = len(rows)
                for index, row in enumerate(rows):
                    for column, value in zip(columns, row, strict=True):
                        if value is None:
                            continue
                        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                        self.sinks.append(Sink(f"db {table}.{column}[{index}]", text, column=(table, column)))
                    self.sink(f"db {table} row {index}", repr(row))
        finally:
            con.close()
        return counts

    def opaque_values(self, path: Path) -> None:
        """Register the stored hashes/ciphertexts as digests allowed only in their own column."""
        con = sqlite3.connect(path)
        try:
            for table, column in sorted(OPAQUE_COLUMNS):
                for (value,) in con.execute(f'SELECT "{column}" FROM "{table}"'):
                    if value is None:
                        continue
                    if isinstance(value, bytes):
                        forms = _forms(value)
                    else:
                        forms = {value}
                        if len(value) == 64:
                            forms |= _forms(bytes.fromhex(value))
                    self.digests.append(
                        Digest(f"stored {table}.{column}", forms, frozenset({(table, column)}))
                    )
        finally:
            con.close()

    # checks

    def leaks(self) -> list[str]:
        found: list[str] = []
        for sink in self.sinks:
            for name, value in self.secrets.items():
                if value in sink.text and not any(value in allowed for allowed in sink.allowed):
                    found.append(f"{name} in {sink.label}: {_around(sink.text, value)}")
            for digest in self.digests:
                # a digest column holding the row's own value is the one allowed place; any row
                # representation (the "row" sinks) must be matched by the cell sinks instead
                if sink.column is not None and sink.column in digest.columns:
                    continue
                if sink.label.startswith("db ") and " row " in sink.label:
                    continue
                for form in digest.forms:
                    if form in sink.text:
                        found.append(f"{digest.name} in {sink.label}")
                        break
        return found

    def assert_clean(self) -> None:
        leaks = self.leaks()
        assert not leaks, "secrets leaked:\n" + "\n".join(leaks[:50])

    def seen_in_column(self, name_prefix: str) -> bool:
        """Positive control: a digest registered as *name_prefix* sits in one of its columns."""
        for digest in self.digests:
            if not digest.name.startswith(name_prefix):
                continue
            for sink in self.sinks:
                if sink.column in digest.columns and any(f in sink.text for f in digest.forms):
                    return True
        return False


def _around(text: str, value: str) -> str:
    at = text.find(value)
    return text[max(0, at - 60) : at + len(value) + 20].replace("\n", " ")


# -- the environment -------------------------------------------------------------------------


def _configure(registry: Registry) -> None:
    registry.register_value(argon2.PasswordHasher, CHEAP)


class EchoingBackend(KeyringBackend):
    """A keyring backend whose errors echo the password (a badly written third-party backend)."""

    priority = 0  # type: ignore[assignment]

    def get_password(self, service: str, username: str) -> str | None:
        raise keyring.errors.KeyringError(f"cannot read {service}/{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise keyring.errors.PasswordSetError(f"refused to store {password!r} for {username}")

    def delete_password(self, service: str, username: str) -> None:
        raise keyring.errors.PasswordDeleteError(f"cannot delete {service}/{username}")


@attrs.define
class Env:
    """A started app on a SQLite file, its gateway (errors recorded) and the fake upstream."""

    app: AppService
    gateway: Any
    fake: FakeUpstream
    db_path: Path
    canary: Canary
    ids: dict[str, str] = attrs.field(factory=dict)

    def client(self, *, bearer: str | None = None, **kw: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.gateway, client=("198.51.100.7", 5000))
        headers = {} if bearer is None else {"authorization": f"Bearer {bearer}"}
        return httpx.AsyncClient(transport=transport, base_url="https://testserver", headers=headers, **kw)


def canary_settings(db_path: Path, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{db_path}",
        "signing_secret": SIGNING_SECRET,
        "key_pepper": KEY_PEPPER,
        "master_key": MASTER_KEY,
        "admin_token": ADMIN_TOKEN,
        "admin_password": ADMIN_PW,
        "litellm_master_key": LITELLM_MASTER,
        "hub_token": HUB_TOKEN,
        "upstream_url": FakeUpstream.base_url,
        "upstream_api_key": UPSTREAM_KEY,
        "upstream_max_retries": 0,
        "model_prices": PRICES,
        "limits_backend": "sql",
        "default_max_tokens": 64,
    }
    values.update(changes)
    return values


@asynccontextmanager
async def canary_env(
    tmp_path: Path, *, upstream_key: str = UPSTREAM_KEY, **changes: Any
) -> AsyncIterator[Env]:
    canary = Canary()
    fake = FakeUpstream(api_key=upstream_key, models=("fake-model",))
    db_path = tmp_path / "canary.db"
    client = httpx.AsyncClient(transport=fake.httpx_transport())
    overrides: dict[type[Any], object] = {
        UpstreamTransport: HttpxTransport(client),
        KeyringService: DefaultKeyringService(InMemoryKeyringBackend()),
    }
    app = build_test_app(
        overrides, clock=FakeClock(), configure=_configure, **canary_settings(db_path, **changes)
    )
    try:
        async with app:
            password = app.settings.admin_password
            assert password is not None
            admin, generated = await app.users.ensure_default_admin(password.get_secret_value())
            assert generated is None
            gateway = create_gateway(app_service=app)
            original = gateway.exception_handlers[MaasError]

            async def recording(request: Any, exc: Exception) -> Any:
                canary.error(f"gateway {request.method} {request.url.path}", exc)
                return await original(request, exc)

            gateway.exception_handlers[MaasError] = recording
            env = Env(app, gateway, fake, db_path, canary)
            env.ids["admin"] = admin.id
            yield env
    finally:
        await client.aclose()


@contextmanager
def captured(canary: Canary, caplog: pytest.LogCaptureFixture, label: str) -> Iterator[None]:
    """Capture raw structlog events and stdlib records of the block into *canary*."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG), capture_logs() as events:
        yield
    canary.logs(label, events)
    canary.records(label, caplog.records)
    assert events, "no structlog event was captured: the capture is broken"


# -- the flows -------------------------------------------------------------------------------


def _echo(secret: str) -> bytes:
    """An upstream error body echoing the key, as some providers do."""
    message = f"Incorrect API key provided: {secret}. Authorization: Bearer {secret}"
    return json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "code": secret}}
    ).encode()


async def gateway_flows(env: Env) -> None:
    """Every HTTP flow of the gateway and the admin API, responses and errors captured."""
    canary, fake, ids = env.canary, env.fake, env.ids
    rec = canary.response

    async with env.client(bearer=ADMIN_TOKEN) as admin, env.client() as anon:
        rec("health", await anon.get("/health"))
        rec("root", await anon.get("/"))
        # users (admin token), password policy refusals
        for name, password, roles in [
            ("alice", ALICE_PW, ["member"]),
            ("bob", BOB_PW, ["member"]),
            ("carol", USER_PW, []),
            ("dave", USER_PW, []),
            ("frank", USER_PW, []),
        ]:
            body = {"username": name, "password": password, "roles": roles, "email": f"{name}@example.com"}
            reply = rec(f"create user {name}", await admin.post("/admin/users", json=body))
            assert reply.status_code == 201, reply.text
            ids[name] = reply.json()["id"]
        for bad in (LONG_PW, "password"):
            reply = rec(
                "weak password", await admin.post("/admin/users", json={"username": "weak", "password": bad})
            )
            assert reply.status_code == 400, reply.text
        rec("wrong admin token", await env.client(bearer=WRONG_ADMIN_TOKEN).get("/admin/users"))

        # keys: create (secret handed out once), list, get
        async def create_key(label: str, **fields: Any) -> tuple[str, str]:
            body = {"owner_id": ids["alice"], "name": label, **fields}
            reply = await admin.post("/admin/keys", json=body)
            assert reply.status_code == 201, reply.text
            secret = canary.api_key(label, reply.json()["secret"])
            rec(f"create key {label}", reply, allowed={secret})
            return reply.json()["id"], secret

        key_id, key = await create_key("main")
        _, budget_key = await create_key("budget", budget_micros=1)
        _, rpm_key = await create_key("rpm", rpm_limit=1)
        _, fail_key = await create_key("failures")
        rec("list keys", await admin.get("/admin/keys", params={"include_revoked": "true"}))
        rec("get key", await admin.get(f"/admin/keys/{key_id}"))
        rec("key budget", await admin.put(f"/admin/keys/{key_id}/budget", json={"budget": "100"}))

        # the data plane
        async with env.client(bearer=key) as user:
            assert rec("chat", await user.post("/v1/chat/completions", json=CHAT)).status_code == 200
            streamed = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
            reply = rec("chat stream", await user.post("/v1/chat/completions", json=streamed))
            assert reply.status_code == 200
            assert "[DONE]" in reply.text
            embed = {"model": "fake-model", "input": ["canary text"]}
            assert rec("embeddings", await user.post("/v1/embeddings", json=embed)).status_code == 200
            assert rec("models", await user.get("/v1/models")).status_code == 200
            # the api-key header works too
            reply = await anon.post("/v1/chat/completions", json=CHAT, headers={"api-key": key})
            assert rec("chat api-key header", reply).status_code == 200
        # refusals: budget, rate limit, unknown key, malformed key, no key
        async with env.client(bearer=budget_key) as c:
            codes = [rec("budget", await c.post("/v1/chat/completions", json=CHAT)).text for _ in range(2)]
            assert any('"code":"budget' in t.replace(" ", "") for t in codes), codes
        async with env.client(bearer=rpm_key) as c:
            statuses = {
                rec("rpm", await c.post("/v1/chat/completions", json=CHAT)).status_code for _ in range(2)
            }
            assert 429 in statuses, statuses
        unknown = canary.api_key("unknown", generate_key())
        for label, credential in [
            ("unknown key", unknown),
            ("malformed key", MALFORMED_KEY),
            ("jwt as key", BAD_JWT),
        ]:
            async with env.client(bearer=credential) as c:
                assert rec(label, await c.post("/v1/chat/completions", json=CHAT)).status_code == 401
                assert rec(label + " models", await c.get("/v1/models")).status_code == 401
        assert rec("no key", await anon.post("/v1/chat/completions", json=CHAT)).status_code == 401
        reply = await anon.post("/v1/chat/completions", content=b"{not json " + MALFORMED_KEY.encode(),
                                headers={"authorization": f"Bearer {key}"})  # fmt: skip
        assert rec("bad json", reply).status_code == 400

        # upstream failures, the upstream echoing its key in every error
        async with env.client(bearer=fail_key) as c:
            for status, stream in [
                (401, False),
                (500, False),
                (400, False),
                (429, False),
                (403, True),
                (500, True),
                (400, True),
            ]:
                fake.fail_next(status, body=_echo(UPSTREAM_KEY), retry_after=1 if status == 429 else None)
                body = {**CHAT, "stream": True} if stream else CHAT
                reply = rec(
                    f"upstream {status} stream={stream}", await c.post("/v1/chat/completions", json=body)
                )
                assert reply.status_code >= 400, reply.text
            fake.fail_next(500, body=b"upstream crashed; Bearer " + UPSTREAM_KEY.encode())
            embed = {"model": "fake-model", "input": "x"}
            assert (
                rec("upstream 500 embeddings", await c.post("/v1/embeddings", json=embed)).status_code >= 500
            )

        # rotation with grace, then revocation
        reply = await admin.post(f"/admin/keys/{key_id}/rotate", json={"grace_seconds": 60},
                                 headers={"idempotency-key": "canary-rotation-1"})  # fmt: skip
        assert reply.status_code == 200, reply.text
        rotated = canary.api_key("rotated", reply.json()["secret"])
        rec("rotate key", reply, allowed={rotated})
        replay = await admin.post(f"/admin/keys/{key_id}/rotate", json={"grace_seconds": 60},
                                  headers={"idempotency-key": "canary-rotation-1"})  # fmt: skip
        assert replay.json()["secret"] == rotated
        rec("rotate key replay", replay, allowed={rotated})
        for label, credential in [("old key in grace", key), ("rotated key", rotated)]:
            async with env.client(bearer=credential) as c:
                assert rec(label, await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        rec("disable key", await admin.post(f"/admin/keys/{key_id}/disable"))
        async with env.client(bearer=rotated) as c:
            assert rec("disabled key", await c.post("/v1/chat/completions", json=CHAT)).status_code in (
                401,
                403,
            )
        rec("enable key", await admin.post(f"/admin/keys/{key_id}/enable"))
        assert rec("revoke key", await admin.post(f"/admin/keys/{key_id}/revoke")).status_code == 200
        for label, credential in [("revoked old key", key), ("revoked rotated key", rotated)]:
            async with env.client(bearer=credential) as c:
                assert rec(label, await c.post("/v1/chat/completions", json=CHAT)).status_code == 401
        assert rec("usage", await admin.get("/admin/usage")).status_code == 200

        # admin login to a session cookie, CSRF
        async with env.client() as s:
            reply = await s.post("/admin/login", json={"username": "admin", "password": ADMIN_PW})
            assert reply.status_code == 200, reply.text
            sid = canary.session("admin session", s.cookies[COOKIE])
            csrf = canary.secret("admin csrf", reply.json()["csrf_token"])
            rec("login", reply, allowed={sid, csrf})
            h = {"x-csrf-token": csrf}
            rec("users via session", await s.get("/admin/users"))
            rec("roles", await s.get("/admin/roles"))
            rec("get user", await s.get(f"/admin/users/{ids['bob']}"))
            body = {"username": "erin", "password": USER_PW}
            assert rec("no csrf", await s.post("/admin/users", json=body)).status_code == 403
            bad = {"x-csrf-token": FAKE_CSRF}
            assert rec("forged csrf", await s.post("/admin/users", json=body, headers=bad)).status_code == 403
            assert rec("create erin", await s.post("/admin/users", json=body, headers=h)).status_code == 201
            rec(
                "patch bob",
                await s.patch(f"/admin/users/{ids['bob']}", json={"display_name": "Bob C."}, headers=h),
            )
            rec(
                "patch password field",
                await s.patch(f"/admin/users/{ids['bob']}", json={"password": BOB_PW_2}, headers=h),
            )
            reply = await s.post(f"/admin/users/{ids['bob']}/roles", json={"role": "read_only"}, headers=h)
            assert rec("assign role", reply).status_code == 201, reply.text
            rec("revoke role", await s.delete(f"/admin/users/{ids['bob']}/roles/read_only", headers=h))
            reply = await s.post(
                f"/admin/users/{ids['bob']}/password", json={"password": BOB_PW_2}, headers=h
            )
            assert rec("admin sets password", reply).status_code == 204, reply.text
            reply = await s.post(f"/admin/users/{ids['bob']}/password", json={"password": LONG_PW}, headers=h)
            assert rec("admin sets a too long password", reply).status_code == 400
            rec("disable bob", await s.post(f"/admin/users/{ids['bob']}/disable", headers=h))
            reply = await anon.post("/admin/login", json={"username": "bob", "password": BOB_PW_2})
            assert rec("disabled login", reply).status_code == 401
            rec("enable bob", await s.post(f"/admin/users/{ids['bob']}/enable", headers=h))

            # failed logins (throttled after a few) and an unknown user
            for attempt in range(7):
                reply = await anon.post("/admin/login", json={"username": "dave", "password": WRONG_PW})
                assert rec(f"failed login {attempt}", reply).status_code in (401, 429)
            for username, password in [("nobody-here", WRONG_PW), ("alice", LONG_PW), ("alice", BOB_PW)]:
                reply = await anon.post("/admin/login", json={"username": username, "password": password})
                assert rec("failed login", reply).status_code in (400, 401)
            reply = await anon.post("/admin/token", json={"username": "alice", "password": WRONG_PW})
            assert rec("failed token", reply).status_code == 401

            # JWTs: issue, use, tamper, refresh, reuse, password change, logout
            reply = await anon.post("/admin/token", json={"username": "alice", "password": ALICE_PW})
            assert reply.status_code == 200, reply.text
            pair = reply.json()
            access = canary.secret("access", pair["access_token"])
            refresh = canary.secret("refresh", pair["refresh_token"])
            rec("token", reply, allowed={access, refresh})
            async with env.client(bearer=access) as j:
                rec("jwt users", await j.get("/admin/users"))
                rec("jwt keys", await j.get("/admin/keys"))
                reply = await j.post("/admin/keys", json={"owner_id": ids["alice"], "name": "own"})
                if reply.status_code == 201:
                    own = canary.api_key("own", reply.json()["secret"])
                    rec("jwt create own key", reply, allowed={own})
                else:
                    rec("jwt create own key", reply)
            tampered = access[:-4] + ("AAAA" if not access.endswith("AAAA") else "BBBB")
            canary.secret("tampered access", tampered)
            async with env.client(bearer=tampered) as t:
                assert rec("tampered jwt", await t.get("/admin/users")).status_code == 401
            async with env.client(bearer=refresh) as t:
                assert rec("refresh as access", await t.get("/admin/users")).status_code == 401
            reply = await anon.post("/admin/token/refresh", json={"refresh_token": refresh})
            assert reply.status_code == 200, reply.text
            access2 = canary.secret("access 2", reply.json()["access_token"])
            refresh2 = canary.secret("refresh 2", reply.json()["refresh_token"])
            rec("refresh", reply, allowed={access2, refresh2})
            reply = await anon.post("/admin/token/refresh", json={"refresh_token": refresh})
            assert rec("refresh reuse", reply).status_code == 401
            reply = await anon.post("/admin/token/refresh", json={"refresh_token": refresh2})
            assert rec("refresh after reuse", reply).status_code == 401
            reply = await anon.post("/admin/token/refresh", json={"refresh_token": BAD_JWT})
            assert rec("refresh malformed", reply).status_code == 401
            reply = await anon.post("/admin/token", json={"username": "alice", "password": ALICE_PW})
            access3 = canary.secret("access 3", reply.json()["access_token"])
            refresh3 = canary.secret("refresh 3", reply.json()["refresh_token"])
            rec("token 3", reply, allowed={access3, refresh3})
            clock = env.app.clock
            assert isinstance(clock, FakeClock)
            clock.advance(2)  # iat has a 1 s resolution: the change must come a second later
            async with env.client(bearer=access3) as j:
                body = {"old_password": WRONG_PW, "password": ALICE_PW_2}
                assert (
                    rec(
                        "change password wrong old",
                        await j.post(f"/admin/users/{ids['alice']}/password", json=body),
                    ).status_code
                    == 401
                )
                body = {"old_password": ALICE_PW, "password": ALICE_PW_2}
                reply = await j.post(f"/admin/users/{ids['alice']}/password", json=body)
                assert rec("change password", reply).status_code == 204, reply.text
                assert rec("jwt after password change", await j.get("/admin/keys")).status_code == 401
            reply = await anon.post("/admin/token", json={"username": "alice", "password": ALICE_PW_2})
            access4 = canary.secret("access 4", reply.json()["access_token"])
            refresh4 = canary.secret("refresh 4", reply.json()["refresh_token"])
            rec("token 4", reply, allowed={access4, refresh4})
            async with env.client(bearer=access4) as j:
                reply = await j.post("/admin/logout", json={"refresh_token": refresh4})
                assert rec("jwt logout", reply).status_code == 200, reply.text
                assert rec("jwt after logout", await j.get("/admin/keys")).status_code == 401

            # access requests: carol and frank (no role) ask; admin approves / rejects
            request_ids: dict[str, str] = {}
            for name in ("carol", "frank"):
                async with env.client() as u:
                    reply = await u.post("/admin/login", json={"username": name, "password": USER_PW})
                    assert reply.status_code == 200, reply.text
                    usid = canary.session(f"{name} session", u.cookies[COOKIE])
                    ucsrf = canary.secret(f"{name} csrf", reply.json()["csrf_token"])
                    rec(f"login {name}", reply, allowed={usid, ucsrf})
                    reply = await u.post("/admin/access-requests", json={"reason": "canary access please"},
                                         headers={"x-csrf-token": ucsrf})  # fmt: skip
                    assert rec(f"request access {name}", reply).status_code == 201, reply.text
                    request_ids[name] = reply.json()["id"]
                    reply = await u.post(f"/admin/access-requests/{request_ids[name]}/approve",
                                         json={"role": "admin"}, headers={"x-csrf-token": ucsrf})  # fmt: skip
                    assert rec("approve own request", reply).status_code == 403
                    assert (
                        rec(
                            f"logout {name}", await u.post("/admin/logout", headers={"x-csrf-token": ucsrf})
                        ).status_code
                        == 200
                    )
            rec("list requests", await s.get("/admin/access-requests"))
            reply = await s.post(
                f"/admin/access-requests/{request_ids['carol']}/approve", json={"role": "member"}, headers=h
            )
            assert rec("approve", reply).status_code == 200, reply.text
            reply = await s.post(
                f"/admin/access-requests/{request_ids['frank']}/reject", json={"reason": "no"}, headers=h
            )
            assert rec("reject", reply).status_code == 200, reply.text

            # forged and stale sessions
            async with env.client(cookies={COOKIE: FAKE_SESSION}) as forged:
                assert rec("forged session", await forged.get("/admin/users")).status_code == 401
            rec("delete frank", await s.delete(f"/admin/users/{ids['frank']}", headers=h))
            rec("delete protected admin", await s.delete(f"/admin/users/{ids['admin']}", headers=h))
            reply = await s.get("/admin/audit", params={"limit": "1000"})
            assert rec("audit", reply).status_code == 200
            assert rec("admin logout", await s.post("/admin/logout", headers=h)).status_code == 200
        async with env.client(cookies={COOKIE: sid}) as stale:
            assert rec("stale session", await stale.get("/admin/users")).status_code == 401
        # one session stays alive (its digest must be in the sessions table, and only there)
        async with env.client() as live:
            reply = await live.post("/admin/login", json={"username": "bob", "password": BOB_PW_2})
            assert reply.status_code == 200, reply.text
            canary.session("live session", live.cookies[COOKIE])
            live_csrf = canary.secret("live csrf", reply.json()["csrf_token"])
            rec("login live", reply, allowed={live.cookies[COOKIE], live_csrf})


async def service_flows(env: Env) -> None:
    """The same flows straight through the services, errors and returned objects captured."""
    app, canary = env.app, env.canary
    obj, expect = canary.obj, canary.expect

    # API keys
    created = await app.api_keys.create("svc-owner", name="svc key", budget_micros=10_000_000)
    canary.api_key("svc key", created.secret)
    obj("CreatedKey", created)
    obj("ApiKey", await app.api_keys.validate(created.secret))
    rotation = await app.api_keys.rotate(created.key.id, grace_seconds=30)
    canary.api_key("svc rotated", rotation.secret)
    obj("KeyRotation", rotation)
    obj("ApiKey old in grace", await app.api_keys.validate(created.secret))
    obj("revoked", await app.api_keys.revoke(created.key.id))
    await expect("validate revoked", app.api_keys.validate(rotation.secret))
    await expect("validate malformed", app.api_keys.validate(MALFORMED_KEY))
    await expect("validate unknown", app.api_keys.validate(canary.api_key("svc unknown", generate_key())))
    await expect("admit malformed", app.admission.admit(MALFORMED_KEY, "fake-model", CHAT))
    await expect("admit revoked", app.admission.admit(rotation.secret, "fake-model", CHAT))
    other = await app.api_keys.create("svc-owner", name="models", allowed_models=("other-model",))
    canary.api_key("svc models", other.secret)
    await expect("admit model not allowed", app.admission.admit(other.secret, "fake-model", CHAT))
    obj("api key service", app.api_keys)

    # users and the authenticator
    user = await app.users.add("svc-user", SVC_PW, roles=["member"])
    obj("User", user)
    obj("authenticated", await app.users.authenticate("svc-user", SVC_PW))
    await expect("authenticate wrong", app.users.authenticate("svc-user", WRONG_PW))
    await expect("authenticate unknown", app.users.authenticate("svc-nobody", WRONG_PW))
    await expect("add too long", app.users.add("svc-long", LONG_PW))
    await expect("add same as username", app.users.add("svcsameasusername", "svcsameasusername"))
    await expect("change password wrong old", app.users.change_password(user.id, WRONG_PW, SVC_PW_2))
    login = await app.auth.login("svc-user", SVC_PW, client_ip="203.0.113.9")
    canary.session("svc login session", login.session_id)
    canary.secret("svc login csrf", login.csrf_token)
    obj("LoginResult", login)
    obj("Principal session", await app.auth.authenticate_session(login.session_id))
    obj("Principal admin", await app.auth.authenticate_bearer(ADMIN_TOKEN))
    await expect("bearer wrong admin token", app.auth.authenticate_bearer(WRONG_ADMIN_TOKEN))
    await expect("bearer malformed", app.auth.authenticate_bearer(MALFORMED_KEY))
    await expect("bearer bad jwt", app.auth.authenticate_bearer(BAD_JWT))
    await expect("session forged", app.auth.authenticate_session(FAKE_SESSION))
    await expect("login wrong", app.auth.login("svc-user", WRONG_PW))
    pair = await app.auth.issue_tokens("svc-user", SVC_PW)
    canary.secret("svc auth access", pair.access.token)
    canary.secret("svc auth refresh", pair.refresh.token)
    obj("TokenPair", pair)
    obj("Principal jwt", await app.auth.authenticate_bearer(pair.access.token))
    pair2 = await app.auth.refresh(pair.refresh.token)
    canary.secret("svc auth access 2", pair2.access.token)
    canary.secret("svc auth refresh 2", pair2.refresh.token)
    await expect("auth refresh reuse", app.auth.refresh(pair.refresh.token))
    await app.auth.logout(login.principal, session_id=login.session_id)
    await expect("session after logout", app.auth.authenticate_session(login.session_id))
    await app.users.change_password(user.id, SVC_PW, SVC_PW_2)
    await expect("old password after change", app.users.authenticate("svc-user", SVC_PW))
    await app.users.set_password(user.id, SVC_PW, actor_id=env.ids["admin"])

    # tokens directly
    tokens = app.tokens
    issued = await tokens.issue_pair(user.id, roles=["member"])
    canary.secret("svc access", issued.access.token)
    canary.secret("svc refresh", issued.refresh.token)
    obj("IssuedToken access", issued.access)
    obj("IssuedToken refresh", issued.refresh)
    obj("Claims", await tokens.validate_access(issued.access.token))
    token = issued.access.token
    head, body, sig = token.split(".")
    for label, bad in [
        ("tampered signature", f"{head}.{body}.{sig[:-2]}{'AA' if not sig.endswith('AA') else 'BB'}"),
        ("stripped signature", f"{head}.{body}."),
        ("alg none", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + body + "."),
        ("refresh as access", issued.refresh.token),
        ("malformed", BAD_JWT),
        ("huge", "eyJ" + "A" * 1_000_000),
    ]:
        if len(bad) < 10_000:
            canary.secret(f"svc {label}", bad)
        await expect(f"validate {label}", tokens.validate_access(bad))
    renewed = await tokens.refresh(issued.refresh.token)
    canary.secret("svc access renewed", renewed.access.token)
    canary.secret("svc refresh renewed", renewed.refresh.token)
    await expect("refresh reuse", tokens.refresh(issued.refresh.token))
    await expect("refresh family revoked", tokens.refresh(renewed.refresh.token))
    await tokens.revoke_token(renewed.access.token)
    await expect("revoked access", tokens.validate_access(renewed.access.token))
    obj("token service", tokens)

    # sessions, CSRF, OAuth state
    sessions = app.sessions
    session, raw = await sessions.create(user.id, data={"theme": "dark"})
    canary.session("svc session", raw)
    csrf = canary.secret("svc csrf", sessions.csrf_token(raw))
    obj("Session", session)
    obj("Session validated", await sessions.validate(raw))
    sessions.verify_csrf(raw, csrf)
    canary.expect_sync("verify forged csrf", lambda: sessions.verify_csrf(raw, FAKE_CSRF))
    canary.expect_sync("verify csrf of forged session", lambda: sessions.verify_csrf(FAKE_SESSION, csrf))
    rotated_session, raw2 = await sessions.rotate(raw)
    canary.session("svc rotated session", raw2)
    obj("Session rotated", rotated_session)
    await expect("validate old session", sessions.validate(raw))
    await expect("validate forged session", sessions.validate(FAKE_SESSION))
    await expect("validate empty session", sessions.validate(""))
    await expect("validate non-ascii session", sessions.validate("canary-sessión-non-ascii"))
    assert await sessions.destroy(raw2)
    await expect("validate destroyed session", sessions.validate(raw2))
    state = await sessions.create_oauth_state({"redirect": "/after"})
    canary.session("oauth state", state.state)
    canary.secret("oauth nonce", state.nonce)
    obj("OAuthState", state)
    obj("OAuthStateData", await sessions.consume_oauth_state(state.state))
    await expect("oauth state reuse", sessions.consume_oauth_state(state.state))
    await sessions.cleanup_expired()
    obj("session service", sessions)

    # secrets at rest: store, retrieve, rotate the master key, tamper
    secrets_service = app.secrets
    await secrets_service.store("canary/text", STORED_SECRET)
    await secrets_service.store("canary/bytes", STORED_SECRET_2.encode())
    assert (await secrets_service.retrieve("canary/text")).decode() == STORED_SECRET
    await expect("retrieve missing", secrets_service.retrieve("canary/missing"))
    await expect("bad name", secrets_service.store("bad\n" + STORED_SECRET, STORED_SECRET))
    new_master = MasterKey(MASTER_KEY_2.encode(), key_id="k2")
    obj("MasterKey", new_master)
    obj("RotationReport", await secrets_service.rotate_master_key(new_master))
    assert (await secrets_service.retrieve("canary/bytes")).decode() == STORED_SECRET_2
    con = sqlite3.connect(env.db_path)
    try:
        (envelope,) = con.execute(
            "SELECT envelope FROM maaskit_secrets WHERE name = 'canary/text'"
        ).fetchone()
        flipped = bytearray(envelope)
        flipped[-1] ^= 0x01
        con.execute("UPDATE maaskit_secrets SET envelope = ? WHERE name = 'canary/text'", (bytes(flipped),))
        con.commit()
    finally:
        con.close()
    error = await expect("retrieve tampered", secrets_service.retrieve("canary/text"))
    assert error.code == "secret.integrity"
    obj("secret service", secrets_service)

    # keyring: the configured in-memory backend, a failing backend that echoes, the fake
    await app.keyring.set("maaskit-canary", "svc", KEYRING_PW)
    assert await app.keyring.get("maaskit-canary", "svc") == KEYRING_PW
    assert await app.keyring.delete("maaskit-canary", "svc")
    obj("keyring service", app.keyring)
    echoing = DefaultKeyringService(EchoingBackend())
    await expect("keyring backend error", echoing.set("maaskit-canary", "svc", KEYRING_PW))
    await expect("keyring read error", echoing.get("maaskit-canary", "svc"))
    fake_keyring = FakeKeyring({("maaskit-canary", "x"): KEYRING_PW})
    obj("FakeKeyring", fake_keyring)
    await expect("keyring bad field", app.keyring.set("maaskit-canary", "", KEYRING_PW))

    # access requests and RBAC
    requester = await app.users.add("svc-requester", USER_PW)
    request = await app.access_requests.request_access(requester.id, "canary reason")
    obj("AccessRequest", request)
    await expect("approve own", app.access_requests.approve(request.id, requester.id, "member"))
    obj("approved", await app.access_requests.approve(request.id, env.ids["admin"], "member"))
    await expect("grant as non-admin", app.rbac.assign_role(requester.id, user.id, "admin"))
    obj("roles", await app.rbac.list_roles())
    await expect("delete protected admin", app.users.delete(env.ids["admin"], actor_id=env.ids["admin"]))
    await app.users.delete(requester.id, actor_id=env.ids["admin"])

    # settings and the app itself
    for label, value in [
        ("Settings", app.settings),
        ("Settings dump", app.settings.model_dump()),
        ("Settings json", app.settings.model_dump_json()),
        ("AppService", app),
        ("FakeUpstream", env.fake),
        ("settings_secrets count", len(settings_secrets(app.settings))),
    ]:
        obj(label, value)


async def collect(env: Env) -> dict[str, int]:
    """The audit log and the database dump, plus the stored hashes and ciphertexts."""
    await env.app.usage.flush()
    audit_rows = await env.canary.audit(env.app)
    assert audit_rows > 0
    env.canary.opaque_values(env.db_path)
    return env.canary.database(env.db_path)


# -- the tests -------------------------------------------------------------------------------


async def test_gateway_and_admin_api_flows_leak_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with canary_env(tmp_path) as env:
        with captured(env.canary, caplog, "gateway"):
            await gateway_flows(env)
        counts = await collect(env)
    canary = env.canary
    canary.assert_clean()
    # positive controls: the flows wrote what they should, and the scan saw it
    assert counts["maaskit_api_keys"] >= 5
    assert counts["maaskit_users"] >= 6
    assert counts["maaskit_audit_log"] > 20
    assert canary.seen_in_column("main digest")
    assert canary.seen_in_column("rotated digest")
    assert canary.seen_in_column("live session digest")
    assert canary.errors >= 40
    assert env.fake.requests
    assert all(r.authorized for r in env.fake.requests)
    assert any(s.allowed for s in canary.sinks)


async def test_service_flows_leak_no_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with canary_env(tmp_path) as env:
        with captured(env.canary, caplog, "services"):
            await service_flows(env)
        await collect(env)
    env.canary.assert_clean()
    assert env.canary.seen_in_column("svc key digest")
    assert env.canary.seen_in_column("svc rotated digest")
    assert env.canary.errors >= 40


async def test_credential_pool_flows_leak_no_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with canary_env(tmp_path, upstream_key=POOLED_KEY, credential_pool=True) as env:
        canary, rec = env.canary, env.canary.response
        with captured(canary, caplog, "pool"):
            pool = await env.app.aget(CredentialPool)
            credential = await pool.add("default", POOLED_KEY, name="canary pooled", weight=2)
            canary.obj("Credential", credential)
            canary.obj("pool", pool)
            await canary.expect("add bad secret", pool.add("default", "bad\n" + POOLED_KEY_2))
            await canary.expect(
                "add bad format", pool.add("default", POOLED_KEY_2, header_format="no placeholder")
            )
            lease = pool.acquire("fake-model")
            canary.obj("Lease", lease)
            lease.release(200)
            async with env.client(bearer=ADMIN_TOKEN) as admin:
                reply = await admin.post("/admin/keys", json={"owner_id": "svc", "name": "pool"})
                key = canary.api_key("pool key", reply.json()["secret"])
                rec("create key", reply, allowed={key})
            async with env.client(bearer=key) as c:
                assert rec("pooled chat", await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
                streamed = {**CHAT, "stream": True}
                assert (
                    rec("pooled stream", await c.post("/v1/chat/completions", json=streamed)).status_code
                    == 200
                )
                for status in (400, 401, 500, 429):
                    env.fake.fail_next(
                        status, body=_echo(POOLED_KEY), retry_after=1 if status == 429 else None
                    )
                    reply = rec(f"pooled upstream {status}", await c.post("/v1/chat/completions", json=CHAT))
                    assert reply.status_code >= 400
                    await pool.enable(credential.id)
                canary.obj("rotated credential", await pool.rotate_secret(credential.id, POOLED_KEY_2))
                reply = rec("pooled wrong key", await c.post("/v1/chat/completions", json=CHAT))
                assert reply.status_code >= 400
            await pool.flush()
            canary.obj("stats", pool.stats())
            canary.obj("credentials", pool.list())
        await collect(env)
    canary.assert_clean()
    assert any(r.authorized for r in env.fake.requests), "the pooled key never reached the upstream"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    was_configured = structlog.is_configured()
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    aiosqlite_level = logging.getLogger("aiosqlite").level
    try:
        yield
    finally:
        if was_configured:
            structlog.configure(**config)
        else:
            structlog.reset_defaults()
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
        logging.getLogger("aiosqlite").setLevel(aiosqlite_level)


@pytest.mark.usefixtures("restore_logging")
async def test_rendered_json_logs_leak_no_secret(tmp_path: Path) -> None:
    """The real pipeline (configure_logging, JSON, DEBUG) over every flow: no canary in the output."""
    stream = io.StringIO()
    async with canary_env(tmp_path, database_echo=True) as env:
        configure_logging("debug", json=True, stream=stream, secrets=settings_secrets(env.app.settings))
        await gateway_flows(env)
        await service_flows(env)
        structlog.get_logger("canary").info("canary.marker", note="pipeline works")
    output = stream.getvalue()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "canary.marker" for line in lines), "the pipeline rendered nothing"
    assert len(lines) > 20
    (tmp_path / "rendered.log").write_text(output)
    for index, line in enumerate(output.splitlines()):
        env.canary.sink(f"rendered line {index}", line)
    env.canary.assert_clean()


async def test_the_canary_reports_planted_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The checker is not blind: a secret in a log, a response or a row, a digest in a wrong column."""
    async with canary_env(tmp_path) as env:
        canary = env.canary
        created = await env.app.api_keys.create("planted", name="planted")
        canary.api_key("planted key", created.secret)
        with captured(canary, caplog, "planted"):
            structlog.get_logger("canary").warning("oops", detail=f"upstream said {UPSTREAM_KEY}")
            logging.getLogger("canary.stdlib").debug("password was %s", ADMIN_PW)
        canary.sink("planted response", f'{{"message": "bad key {MALFORMED_KEY}"}}')
        con = sqlite3.connect(env.db_path)
        try:
            digest = _pepper_digest(created.secret).hex()
            con.execute("UPDATE maaskit_api_keys SET name = ? WHERE id = ?", (digest, created.key.id))
            con.commit()
        finally:
            con.close()
        await collect(env)
    leaks = "\n".join(canary.leaks())
    assert "in log canary" in leaks or "in log planted oops" in leaks
    assert "in stdlib planted canary.stdlib" in leaks
    assert "in planted response" in leaks
    assert "planted key digest in db maaskit_api_keys.name" in leaks
    assert "planted key digest in db maaskit_api_keys.digest" not in leaks
    assert "stored maaskit_api_keys.digest in db maaskit_api_keys.name" in leaks
