"""Logging setup and secret redaction through a real structlog + stdlib pipeline."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from maaskit.log import REDACTED, RedactSecrets, configure_logging, settings_secrets
from maaskit.settings import Settings

API_KEY = "mk_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJ1XzEyMyIsImV4cCI6MTk5OTk5OTk5OX0"
    ".c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"
)
BEARER_TOKEN = "opaqueToken-1234567890_abc"
SIGNING_SECRET = "signing-secret-" + "S" * 32
UPSTREAM_KEY = "sk-upstream-" + "U" * 30
ADMIN_PASSWORD = "correct horse battery staple"
RAW = [API_KEY, JWT, BEARER_TOKEN, SIGNING_SECRET, UPSTREAM_KEY, ADMIN_PASSWORD]


@pytest.fixture
def settings() -> Settings:
    return Settings(
        signing_secret=SIGNING_SECRET,
        upstream_api_key=UPSTREAM_KEY,
        admin_password=ADMIN_PASSWORD,
    )


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    structlog.reset_defaults()


def _setup(settings: Settings, *, json_mode: bool, level: str = "debug") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level, json=json_mode, secrets=settings_secrets(settings), stream=stream)
    return stream


def _assert_clean(output: str) -> None:
    for secret in RAW:
        assert secret not in output, f"{secret[:6]}… leaked into: {output}"


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("json_mode", [False, True])
def test_secrets_never_reach_the_output(settings: Settings, json_mode: bool) -> None:
    stream = _setup(settings, json_mode=json_mode)
    log = structlog.get_logger("maaskit.test")
    log.info(f"validated {API_KEY} for upstream {UPSTREAM_KEY}")
    log.info(
        "request",
        headers={
            "Authorization": f"Bearer {BEARER_TOKEN}",
            "Cookie": "session=abc123def456",
            "Accept": "json",
        },
        body=[{"nested": {"deeper": [f"token is {JWT}"]}}],
        raw=f"key={API_KEY}".encode(),
        note=f"the signing secret {SIGNING_SECRET} leaked into a message",
        password=ADMIN_PASSWORD,
        client_secret="abcdef-not-in-settings",
        api_key=API_KEY,
        prompt_tokens=12,
        token_count=3,
        key_id="key_123",
    )
    try:
        raise ValueError(f"upstream refused {UPSTREAM_KEY} with Bearer {BEARER_TOKEN}")
    except ValueError:
        log.exception("upstream failed")
    output = stream.getvalue()
    _assert_clean(output)
    assert "abcdef-not-in-settings" not in output
    assert "session=abc123def456" not in output
    assert "mk_…[redacted]" in output
    assert "Bearer [redacted]" in output
    assert "key_123" in output  # ids are not secrets
    assert "prompt_tokens" in output
    assert "12" in output
    assert "upstream refused" in output  # the traceback is kept, only the secret is masked
    if json_mode:
        events = [json.loads(line) for line in output.splitlines()]
        request = next(e for e in events if e["event"] == "request")
        assert request["prompt_tokens"] == 12
        assert request["token_count"] == 3
        assert request["headers"]["Accept"] == "json"
        assert request["password"] == REDACTED
        assert request["level"] == "info"
        assert request["logger"] == "maaskit.test"


@pytest.mark.usefixtures("restore_logging")
def test_stdlib_records_are_redacted_too(settings: Settings) -> None:
    stream = _setup(settings, json_mode=True)
    logging.getLogger("httpx").warning("GET https://api/?k=%s failed: %s", API_KEY, f"Bearer {BEARER_TOKEN}")
    logging.getLogger("some.library").info("connect with %s", ADMIN_PASSWORD)
    output = stream.getvalue()
    _assert_clean(output)
    lines = [json.loads(line) for line in output.splitlines()]
    assert [e["logger"] for e in lines] == ["httpx", "some.library"]


@pytest.mark.usefixtures("restore_logging")
def test_level_filtering_and_reconfiguration(settings: Settings) -> None:
    first = _setup(settings, json_mode=True, level="warning")
    log = structlog.get_logger("maaskit.test")
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(line)["event"] for line in first.getvalue().splitlines()] == ["loud"]
    second = _setup(settings, json_mode=True, level="debug")  # replaces the first handler
    log.debug("now visible")
    assert "now visible" in second.getvalue()
    assert "now visible" not in first.getvalue()
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("chatty")


def test_library_configures_nothing_on_import() -> None:
    import importlib

    import maaskit.log

    before = list(logging.getLogger().handlers)
    importlib.reload(maaskit.log)
    assert logging.getLogger().handlers == before


def test_processor_does_not_modify_its_input() -> None:
    event: dict[str, Any] = {
        "event": f"x {API_KEY}",
        "password": "pw-123456",
        "nested": {"token": "t-123456"},
    }
    copy = json.loads(json.dumps(event))
    out = RedactSecrets()(None, "info", event)
    assert event == copy
    assert out["password"] == REDACTED
    assert out["nested"] == {"token": REDACTED}
    assert out["event"] == "x mk_…[redacted]"


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "client_secret",
        "access_token",
        "refresh-token",
        "accessToken",
        "api_key",
        "apiKey",
        "X-API-Key",
        "Authorization",
        "proxy-authorization",
        "Set-Cookie",
        "cookie",
        "master_key",
        "private_key",
        "key_pepper",
        "credentials",
    ],
)
def test_sensitive_key_names_are_masked(key: str) -> None:
    out = RedactSecrets()(None, "info", {key: "plain-value", "nested": {key: ["a-value"]}})
    assert out[key] == REDACTED
    assert out["nested"][key] == [REDACTED]


@pytest.mark.parametrize(
    "key", ["key_id", "prompt_tokens", "max_tokens", "tokens", "model", "author", "keyboard", "team_id"]
)
def test_ordinary_key_names_are_kept(key: str) -> None:
    assert RedactSecrets()(None, "info", {key: "value"})[key] == "value"


def test_credential_keys_keep_numbers_and_booleans() -> None:
    out = RedactSecrets()(None, "info", {"token_count": 3, "password_set": True, "token": None})
    assert out == {"token_count": 3, "password_set": True, "token": None}


def test_patterns_and_exact_values() -> None:
    redact = RedactSecrets(secrets=[SecretStr(SIGNING_SECRET), "abc", None, ""])
    assert redact.scrub(f"a {API_KEY} b") == "a mk_…[redacted] b"
    assert redact.scrub("mk_short") == "mk_short"  # too short to be a key
    assert redact.scrub(f"authorization: bearer {BEARER_TOKEN}") == "authorization: bearer [redacted]"
    assert redact.scrub(f"id_token={JWT}") == "id_token=[redacted]"
    assert redact.scrub(f"s={SIGNING_SECRET}!") == "s=[redacted]!"
    assert redact.scrub("abc is too short to mask") == "abc is too short to mask"
    assert "1 secret values" in repr(redact)
    assert SIGNING_SECRET not in repr(redact)


def test_objects_whose_repr_carries_a_secret_are_masked() -> None:
    class Leaky:
        def __repr__(self) -> str:
            return f"Leaky({API_KEY})"

    class Fine:
        def __repr__(self) -> str:
            return "Fine()"

    fine = Fine()
    out = RedactSecrets()(None, "info", {"obj": Leaky(), "ok": fine, "err": RuntimeError(API_KEY)})
    assert API_KEY not in str(out)
    assert out["ok"] is fine


def test_settings_secrets_lists_only_set_secret_values(settings: Settings) -> None:
    assert set(settings_secrets(settings)) == {SIGNING_SECRET, UPSTREAM_KEY, ADMIN_PASSWORD}
    assert settings_secrets(Settings()) == ()


_BASE62 = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=20, max_size=60
)
_NOISE = st.text(alphabet=" :=,;/\"'()[]{}\n\t", max_size=5)


@given(body=_BASE62, before=_NOISE, after=_NOISE)
def test_property_api_keys_never_survive(body: str, before: str, after: str) -> None:
    key = "mk_" + body
    out = RedactSecrets()(None, "info", {"event": before + key + after, "list": [key], "d": {"x": key}})
    assert key not in json.dumps(out, ensure_ascii=False)


@given(
    secret=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_#", min_size=4, max_size=40),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
)
def test_property_exact_secrets_never_survive(secret: str, before: str, after: str) -> None:
    out = RedactSecrets(secrets=[secret])(
        None, "info", {"event": before + secret + after, "nested": [secret]}
    )
    assert secret not in out["event"]
    assert out["nested"] == [REDACTED]
