"""errors.py + i18n.py: catalogs complete and consistent, codes used in the source all exist."""

from __future__ import annotations

import ast
import json
import pickle
import re
import string
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import maaskit
from maaskit import errors
from maaskit.errors import (
    ConflictError,
    ErrorType,
    ForbiddenError,
    InternalError,
    MaasError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
    UpstreamError,
    ValidationError,
    http_status,
)
from maaskit.i18n import DEFAULT_LOCALE, Localizer, default_localizer

SRC = Path(maaskit.__file__).parent
LOCALES = resources.files("maaskit") / "locales"
CODE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
#: Placeholder-name segments that suggest a secret value (``key_id`` and ``tokens`` are fine).
SECRET_SEGMENTS = {
    "password",
    "passwd",
    "secret",
    "token",
    "digest",
    "pepper",
    "hash",
    "cookie",
    "credential",
}

ALL_ERRORS = [
    ValidationError,
    UnauthenticatedError,
    ForbiddenError,
    NotFoundError,
    ConflictError,
    RateLimitedError,
    QuotaExceededError,
    UpstreamError,
    UnavailableError,
    InternalError,
]


def _catalog_files() -> dict[str, dict[str, dict[str, str]]]:
    """``{locale: {file name: entries}}`` straight from the package files."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for lang in LOCALES.iterdir():
        if lang.is_dir() and not lang.name.startswith(("_", ".")):
            out[lang.name] = {
                f.name: json.loads(f.read_text(encoding="utf-8"))
                for f in lang.iterdir()
                if f.name.endswith(".json")
            }
    return out


def _placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def _merged(locale: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for entries in _catalog_files()[locale].values():
        merged.update(entries)
    return merged


# -- catalogs --------------------------------------------------------------------------------------


def test_english_and_at_least_one_more_locale_ship() -> None:
    locales = default_localizer().locales
    assert DEFAULT_LOCALE in locales
    assert len(locales) >= 2


def test_catalog_files_are_flat_string_maps_with_valid_codes() -> None:
    for locale, files in _catalog_files().items():
        for name, entries in files.items():
            assert isinstance(entries, dict), f"{locale}/{name}"
            for code, message in entries.items():
                assert CODE_RE.match(code), f"{locale}/{name}: bad code {code!r}"
                assert isinstance(message, str), f"{locale}/{name}: {code}"
                assert message.strip(), f"{locale}/{name}: {code} has an empty message"


def test_every_locale_has_the_same_files_and_codes() -> None:
    files = _catalog_files()
    english = files[DEFAULT_LOCALE]
    for locale, catalog in files.items():
        assert set(catalog) == set(english), f"{locale} ships other catalog files than en"
        for name in english:
            missing = set(english[name]) - set(catalog[name])
            extra = set(catalog[name]) - set(english[name])
            assert not missing, f"{locale}/{name} lacks {sorted(missing)}"
            assert not extra, f"{locale}/{name} has codes en lacks: {sorted(extra)}"


def test_no_code_is_defined_twice_in_a_locale() -> None:
    for locale, files in _catalog_files().items():
        seen: dict[str, str] = {}
        for name, entries in sorted(files.items()):
            for code in entries:
                assert code not in seen, f"{code!r} in both {seen.get(code)} and {name} ({locale})"
                seen[code] = name
    Localizer()  # loads without the duplicate-code error


def test_placeholders_are_identical_in_every_locale() -> None:
    english = _merged(DEFAULT_LOCALE)
    for locale in _catalog_files():
        for code, message in _merged(locale).items():
            assert _placeholders(message) == _placeholders(english[code]), f"{locale}: {code}"


def test_placeholders_are_plain_names() -> None:
    for locale in _catalog_files():
        for code, message in _merged(locale).items():
            for _, field, _spec, conversion in string.Formatter().parse(message):
                if field is None:
                    continue
                assert field.isidentifier(), f"{locale}: {code} uses {{{field}}}"
                assert not conversion, f"{locale}: {code}"


def _secret_like(name: str) -> bool:
    parts = name.lower().split("_")
    return name.lower() in {"key", "value_of_key"} or parts[-1] == "key" or bool(SECRET_SEGMENTS & set(parts))


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("key_id", False),
        ("tokens", False),
        ("max_tokens", False),
        ("setting", False),
        ("password", True),
        ("api_key", True),
        ("key", True),
        ("refresh_token", True),
        ("digest", True),
        ("client_secret", True),
    ],
)
def test_secret_placeholder_detector(name: str, secret: bool) -> None:
    assert _secret_like(name) is secret


def test_no_placeholder_name_suggests_a_secret() -> None:
    offenders = sorted(
        f"{code}: {{{field}}}"
        for code, message in _merged(DEFAULT_LOCALE).items()
        for field in _placeholders(message)
        if _secret_like(field)
    )
    assert offenders == []


# -- codes used in the source ------------------------------------------------------------------


def _maas_error_names(trees: dict[Path, ast.Module]) -> set[str]:
    names = {"MaasError"} | {cls.__name__ for cls in ALL_ERRORS}
    changed = True
    while changed:
        changed = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in names:
                    bases = {
                        b.id if isinstance(b, ast.Name) else getattr(b, "attr", None) for b in node.bases
                    }
                    if bases & names:
                        names.add(node.name)
                        changed = True
    return names


def _codes_in_source() -> dict[str, list[str]]:
    trees = {p: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in SRC.rglob("*.py")}
    error_names = _maas_error_names(trees)
    used: dict[str, list[str]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else None
            )
            first = node.args[0]
            if name in error_names and isinstance(first, ast.Constant) and isinstance(first.value, str):
                used.setdefault(first.value, []).append(f"{path.relative_to(SRC)}:{node.lineno}")
    return used


def test_the_source_scan_finds_codes() -> None:
    used = _codes_in_source()
    assert "cache.invalid_ttl" in used
    assert "settings.unknown" in used
    assert "config.invalid" in used


def test_every_code_raised_in_the_source_has_a_message_in_every_locale() -> None:
    used = _codes_in_source()
    for locale in _catalog_files():
        catalog = _merged(locale)
        missing = {code: where for code, where in used.items() if code not in catalog}
        assert missing == {}, f"codes without a {locale} message: {missing}"


def test_every_code_raised_in_the_source_is_well_formed() -> None:
    bad = {code: where for code, where in _codes_in_source().items() if not CODE_RE.match(code)}
    assert bad == {}


# -- MaasError behaviour -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_repr_str_and_pickle_round_trip(cls: type[MaasError]) -> None:
    err = cls("cache.invalid_ttl", ttl="-1")
    assert repr(err) == f"{cls.__name__}('cache.invalid_ttl', ttl='-1')"
    assert str(err) == "Invalid cache TTL -1: it must be a positive, finite number of seconds."
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is cls
    assert (clone.code, clone.params, str(clone)) == (err.code, err.params, str(err))
    assert isinstance(err, MaasError)
    assert isinstance(err, Exception)


def test_repr_without_params() -> None:
    assert repr(UnavailableError("cache.unavailable")) == "UnavailableError('cache.unavailable')"


@pytest.mark.parametrize(
    ("error_type", "status"),
    [
        (ErrorType.VALIDATION, 400),
        (ErrorType.UNAUTHENTICATED, 401),
        (ErrorType.FORBIDDEN, 403),
        (ErrorType.NOT_FOUND, 404),
        (ErrorType.CONFLICT, 409),
        (ErrorType.RATE_LIMITED, 429),
        (ErrorType.QUOTA_EXCEEDED, 429),
        (ErrorType.UPSTREAM, 502),
        (ErrorType.UNAVAILABLE, 503),
        (ErrorType.INTERNAL, 500),
    ],
)
def test_http_status_mapping(error_type: ErrorType, status: int) -> None:
    assert http_status(error_type) == status


def test_every_error_type_has_a_status_and_a_class() -> None:
    assert {cls.type for cls in ALL_ERRORS} == set(ErrorType)
    for cls in ALL_ERRORS:
        assert cls("cache.unavailable").http_status == http_status(cls.type)
    assert MaasError.type is ErrorType.INTERNAL


@pytest.mark.parametrize("code", ["", "nodot", "Upper.case", "a..b", "a.b-c", "1a.b", "a.b."])
def test_malformed_codes_are_refused(code: str) -> None:
    with pytest.raises(ValueError, match="invalid maaskit error code"):
        ValidationError(code)


def test_to_dict_is_openai_shaped_and_localised() -> None:
    err = ValidationError("settings.invalid_value", setting="log_level", reason="bad", param="log_level")
    assert err.to_dict() == {
        "message": "Invalid value for dynamic setting log_level: bad.",
        "type": "validation",
        "code": "settings.invalid_value",
        "param": "log_level",
    }
    assert err.to_dict("de")["message"] == "Ungültiger Wert für die dynamische Einstellung log_level: bad."
    assert err.render("xx") == err.message  # unknown locale falls back to English


def test_retry_after() -> None:
    assert RateLimitedError("cache.unavailable", retry_after="2.5").retry_after == 2.5
    assert RateLimitedError("cache.unavailable").retry_after is None
    assert QuotaExceededError("cache.unavailable", retry_after=60).retry_after == 60.0


def test_errors_module_exports_every_error() -> None:
    for cls in ALL_ERRORS:
        assert cls.__name__ in errors.__all__


# -- Localizer ---------------------------------------------------------------------------------


def test_localizer_rendering_rules() -> None:
    loc = Localizer(
        {"en": {"a.b": "Hello {name} ({n})", "a.only_en": "English"}, "de": {"a.b": "Hallo {name}"}}
    )
    assert loc.render("a.b", {"name": "Ada", "n": 2}) == "Hello Ada (2)"
    assert loc.render("a.b", {"name": "Ada"}, locale="de") == "Hallo Ada"
    assert loc.render("a.only_en", {}, locale="de") == "English"  # code missing in de
    assert loc.render("a.b", {}) == "Hello {name} ({n})"  # missing params stay visible
    assert loc.render("x.unknown", {}) == "x.unknown"
    assert loc.locales == ("de", "en")
    assert loc.codes("de") == {"a.b"}
    assert loc.template("a.b", "fr") is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "en"),
        ("", "en"),
        ("de-DE,de;q=0.9,en;q=0.8", "de"),
        ("fr-FR, de;q=0.5", "de"),
        ("fr, es", "en"),
        ("en;q=0.2, de;q=0.9", "de"),
        ("de;q=bogus, en", "en"),
    ],
)
def test_negotiate_accept_language(header: str | None, expected: str) -> None:
    assert default_localizer().negotiate(header) == expected


@given(params=st.dictionaries(st.sampled_from(["ttl", "reason", "setting", "x", "env_name"]), st.text()))
def test_property_rendering_never_fails(params: dict[str, Any]) -> None:
    loc = default_localizer()
    for locale in loc.locales:
        for code in sorted(loc.codes(locale)):
            assert isinstance(loc.render(code, params, locale=locale), str)
