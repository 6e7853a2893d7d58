"""maaskit.settings.Settings: environment prefix, validation errors, masked secrets."""

from __future__ import annotations

import pickle

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from maaskit.errors import ValidationError
from maaskit.settings import MIN_SECRET_BYTES, Settings, secret_setting_names

STRONG = "k" * MIN_SECRET_BYTES


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MAASKIT_") and not name.startswith(("MAASKIT_TEST_", "MAASKIT_REQUIRE_")):
            monkeypatch.delenv(name)


def test_defaults_are_valid() -> None:
    s = Settings()
    assert s.database_url == "sqlite+aiosqlite:///:memory:"
    assert s.effective_cache_backend == "memory"
    assert s.signing_secret is None


def test_reads_prefixed_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAASKIT_CACHE_DEFAULT_TTL", "42.5")
    monkeypatch.setenv("MAASKIT_LOG_LEVEL", "debug")
    monkeypatch.setenv("MAASKIT_REDIS_URL", "redis://127.0.0.1:6379/2")
    monkeypatch.setenv("CACHE_DEFAULT_TTL", "1")  # unprefixed: ignored
    s = Settings.from_env()
    assert s.cache_default_ttl == 42.5
    assert s.log_level == "debug"
    assert s.effective_cache_backend == "redis"


def test_code_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAASKIT_LOG_LEVEL", "debug")
    assert Settings.from_env(log_level="error").log_level == "error"


@pytest.mark.parametrize(
    ("values", "setting"),
    [
        ({"database_url": "mysql://db/x"}, "MAASKIT_DATABASE_URL"),
        ({"database_url": ""}, "MAASKIT_DATABASE_URL"),
        ({"redis_url": "http://127.0.0.1"}, "MAASKIT_REDIS_URL"),
        ({"redis_url": "redis://"}, "MAASKIT_REDIS_URL"),
        ({"upstream_url": "ftp://example.com"}, "MAASKIT_UPSTREAM_URL"),
        ({"cache_default_ttl": -1}, "MAASKIT_CACHE_DEFAULT_TTL"),
        ({"cache_default_ttl": 0}, "MAASKIT_CACHE_DEFAULT_TTL"),
        ({"key_cache_ttl": -0.5}, "MAASKIT_KEY_CACHE_TTL"),
        ({"signing_secret": "short"}, "MAASKIT_SIGNING_SECRET"),
        ({"master_key": "x" * (MIN_SECRET_BYTES - 1)}, "MAASKIT_MASTER_KEY"),
        ({"admin_token": "tooshort"}, "MAASKIT_ADMIN_TOKEN"),
        ({"log_level": "chatty"}, "MAASKIT_LOG_LEVEL"),
        ({"unknown_option": 1}, "MAASKIT_UNKNOWN_OPTION"),
    ],
)
def test_invalid_values_name_the_setting(values: dict[str, object], setting: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(**values)
    assert exc.value.code == "config.invalid"
    assert exc.value.params["setting"] == setting
    assert setting in str(exc.value)
    assert exc.value.http_status == 400


def test_invalid_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAASKIT_CACHE_DEFAULT_TTL", "-5")
    with pytest.raises(ValidationError) as exc:
        Settings.from_env()
    assert "MAASKIT_CACHE_DEFAULT_TTL" in str(exc.value)


def test_bad_secret_value_never_appears_in_the_error() -> None:
    weak = "weak-but-secret-pw"
    with pytest.raises(ValidationError) as exc:
        Settings(signing_secret=weak)
    for text in (str(exc.value), repr(exc.value), exc.value.render("de"), str(exc.value.to_dict())):
        assert weak not in text
    assert exc.value.__cause__ is None
    assert exc.value.__suppress_context__


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"cache_backend": "redis"}, "redis_url"),
        ({"session_idle_timeout": 100, "session_absolute_timeout": 50}, "session_idle_timeout"),
        ({"environment": "production"}, "signing_secret"),
    ],
)
def test_cross_field_rules(values: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(**values)
    assert fragment in str(exc.value)


def test_production_with_all_secrets_is_valid() -> None:
    s = Settings(environment="production", signing_secret=STRONG, key_pepper=STRONG, master_key=STRONG)
    assert s.environment == "production"


def test_secrets_are_masked_in_repr_str_and_json() -> None:
    secrets = {
        "signing_secret": "a" * 40,
        "key_pepper": "b" * 40,
        "master_key": "c" * 40,
        "admin_token": "d" * 20,
        "admin_password": "hunter2-password",
        "upstream_api_key": "sk-upstream-xyz-123",
        "litellm_master_key": "sk-litellm-xyz-456",
        "hub_token": "hf_token_xyz_789",
    }
    assert set(secrets) == set(secret_setting_names())
    s = Settings(**secrets)
    dumps = [repr(s), str(s), s.model_dump_json(), str(s.model_dump()), repr(pickle.loads(pickle.dumps(s)))]
    for value in secrets.values():
        for text in dumps:
            assert value not in text
    assert s.signing_secret is not None
    assert s.signing_secret.get_secret_value() == "a" * 40


def test_settings_are_immutable_and_with_changes_validates() -> None:
    s = Settings()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        s.log_level = "debug"  # type: ignore[misc]
    changed = s.with_changes(log_level="debug")
    assert (s.log_level, changed.log_level) == ("info", "debug")
    with pytest.raises(ValidationError) as exc:
        s.with_changes(cache_default_ttl=-1)
    assert "MAASKIT_CACHE_DEFAULT_TTL" in str(exc.value)


def test_secret_setting_names() -> None:
    names = secret_setting_names()
    assert "signing_secret" in names
    assert "database_url" not in names
    assert len(names) == len(set(names))


@given(ttl=st.floats(max_value=0, allow_nan=False) | st.just(float("nan")))
def test_property_non_positive_ttl_is_always_refused(ttl: float) -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(cache_default_ttl=ttl)
    assert "MAASKIT_CACHE_DEFAULT_TTL" in str(exc.value)


@given(ttl=st.floats(min_value=1e-6, max_value=1e9))
def test_property_positive_ttl_is_accepted(ttl: float) -> None:
    assert Settings(cache_default_ttl=ttl).cache_default_ttl == ttl
