"""The tokens/sessions/secrets/keyring catalogs: every code raised has en and de messages, same placeholders."""

from __future__ import annotations

import json
import re
import string
from importlib import resources
from pathlib import Path

import pytest

from maaskit.i18n import Localizer

DOMAINS = ["tokens", "sessions", "secrets", "keyring"]
SOURCES = [
    "services/tokens.py",
    "services/sessions.py",
    "services/secrets.py",
    "services/keyring.py",
    "storage/redis/sessions.py",
    "testing/fake_keyring.py",
]
CODE_RE = re.compile(r"""(?:Error|_fail)\(\s*"((?:tokens|session|secret|keyring)\.[a-z_.]+)\"""")


def catalog(lang: str, domain: str) -> dict[str, str]:
    path = resources.files("maaskit") / "locales" / lang / f"{domain}.json"
    return dict(json.loads(path.read_text(encoding="utf-8")))


def fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_codes_and_placeholders(domain: str) -> None:
    en, de = catalog("en", domain), catalog("de", domain)
    assert set(en) == set(de)
    for code in en:
        assert fields(en[code]) == fields(de[code]), code


def test_every_raised_code_has_a_message() -> None:
    root = Path(str(resources.files("maaskit")))
    raised = set()
    for source in SOURCES:
        raised |= set(CODE_RE.findall((root / source).read_text(encoding="utf-8")))
    assert len(raised) > 30
    loc = Localizer()
    for code in sorted(raised):
        assert loc.template(code, "en") is not None, code
        assert loc.template(code, "de") is not None, code
