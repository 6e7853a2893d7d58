"""Localised error messages.

Messages live in JSON catalogs shipped inside the package, one folder per locale and one
file per domain: ``maaskit/locales/en/limits.json``, ``maaskit/locales/de/limits.json``.
Each maps an error code to a message with ``{named}`` placeholders filled from the error's
``params``. English is the fallback for a locale or code that has no entry.

Example::

    from maaskit.i18n import Localizer

    loc = Localizer()
    params = {
        "account": "key:key_1",
        "requested_micros": 250_000,
        "available_micros": 100_000,
        "limit_micros": 5_000_000,
    }
    loc.render("budget.exceeded", params, locale="de")
    # 'Budget für key:key_1 überschritten: 250000 Mikro-Dollar angefordert,
    #  100000 von 5000000 in diesem Zeitraum übrig.'
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["DEFAULT_LOCALE", "Localizer", "default_localizer"]

DEFAULT_LOCALE = "en"


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _load_catalogs() -> dict[str, dict[str, str]]:
    root = resources.files("maaskit") / "locales"
    catalogs: dict[str, dict[str, str]] = {}
    for lang_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if not lang_dir.is_dir() or lang_dir.name.startswith(("_", ".")):
            continue
        merged: dict[str, str] = {}
        for file in sorted(lang_dir.iterdir(), key=lambda p: p.name):
            if not file.name.endswith(".json"):
                continue
            entries = json.loads(file.read_text(encoding="utf-8"))
            for code, message in entries.items():
                if code in merged:
                    raise RuntimeError(f"error code {code!r} defined twice in locale {lang_dir.name!r}")
                merged[code] = message
        catalogs[lang_dir.name] = merged
    return catalogs


class Localizer:
    """Renders error codes as messages in the shipped locales.

    Args:
        catalogs: ``{locale: {code: message}}``; defaults to the catalogs shipped in the package.
    """

    def __init__(self, catalogs: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._catalogs = {k: dict(v) for k, v in (catalogs or _load_catalogs()).items()}

    @property
    def locales(self) -> tuple[str, ...]:
        """The locales this localizer can render, sorted."""
        return tuple(sorted(self._catalogs))

    def codes(self, locale: str = DEFAULT_LOCALE) -> frozenset[str]:
        """Every code that has a message in *locale*."""
        return frozenset(self._catalogs.get(locale, {}))

    def template(self, code: str, locale: str = DEFAULT_LOCALE) -> str | None:
        """The raw message template of *code* in *locale*, or ``None``."""
        return self._catalogs.get(locale, {}).get(code)

    def negotiate(self, accept_language: str | None) -> str:
        """Pick the best shipped locale for an HTTP ``Accept-Language`` header."""
        if not accept_language:
            return DEFAULT_LOCALE
        ranked: list[tuple[float, str]] = []
        for part in accept_language.split(","):
            lang, _, q = part.strip().partition(";q=")
            try:
                weight = float(q) if q else 1.0
            except ValueError:
                continue
            ranked.append((weight, lang.strip().lower().split("-")[0]))
        for _, lang in sorted(ranked, key=lambda item: -item[0]):
            if lang in self._catalogs:
                return lang
        return DEFAULT_LOCALE

    def render(self, code: str, params: Mapping[str, Any], locale: str = DEFAULT_LOCALE) -> str:
        """Render *code* with *params*; unknown placeholders stay visible as ``{name}``."""
        template = self.template(code, locale) or self.template(code, DEFAULT_LOCALE)
        if template is None:
            return code
        return string.Formatter().vformat(template, (), _Missing(params))


@cache
def default_localizer() -> Localizer:
    """The process-wide localizer over the shipped catalogs (built once)."""
    return Localizer()
