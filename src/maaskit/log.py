"""Opt-in logging setup and the secret-redacting structlog processor.

maaskit configures no global logging: it logs through ``structlog.get_logger(__name__)`` and
leaves the setup to the application. :func:`configure_logging` is a one-call setup for
applications that want maaskit's defaults: structlog and the standard library both rendered by
one handler (console or JSON lines), with :class:`RedactSecrets` as the last step before
rendering, so secrets are masked in maaskit's events *and* in third-party ``logging`` records.

Example::

    from maaskit.log import configure_logging, settings_secrets
    from maaskit.settings import Settings

    settings = Settings.from_env()
    configure_logging(level=settings.log_level, json=settings.log_json, secrets=settings_secrets(settings))

:class:`RedactSecrets` masks, anywhere in an event (nested dicts, lists, tuples, strings, and
the ``repr`` of other objects):

* maaskit API keys (``mk_`` + 20 or more base62 characters) -> ``mk_…[redacted]``;
* ``Bearer <token>`` credentials -> ``Bearer [redacted]``;
* JWT-looking strings (three base64url segments starting with ``eyJ``) -> ``[redacted]``;
* values under keys named like a credential (``password``, ``secret``, ``token``,
  ``api_key``, ``authorization``, ``cookie``...) -> ``[redacted]`` (numbers and booleans are
  kept, so ``prompt_tokens=12`` and ``token_count=3`` survive);
* the exact values of the secrets passed in (for example every secret setting).
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TextIO

import structlog
from pydantic import SecretStr
from structlog.typing import EventDict, Processor, WrappedLogger

from maaskit.settings import Settings, secret_setting_names

__all__ = ["REDACTED", "RedactSecrets", "configure_logging", "settings_secrets"]

#: What a masked value is replaced with.
REDACTED = "[redacted]"

#: Secrets shorter than this are not matched by value (they would mask ordinary words).
MIN_SECRET_LENGTH = 4

_API_KEY = re.compile(r"\bmk_[A-Za-z0-9]{20,}")
_BEARER = re.compile(r"\b(Bearer)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

#: Key-name segments (split on ``_``, ``-``, ``.`` and camelCase) that mark a credential.
_SENSITIVE_SEGMENTS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "authorization",
        "auth",
        "cookie",
        "cookies",
        "apikey",
        "pepper",
        "credential",
        "credentials",
        "jwt",
        "otp",
    }
)
#: Adjacent segment pairs that mark a credential (``api_key``, ``private-key``, ``master_key``...).
_SENSITIVE_PAIRS = frozenset(
    {
        ("api", "key"),
        ("private", "key"),
        ("master", "key"),
        ("secret", "key"),
        ("set", "cookie"),
        ("x", "api"),
    }
)
_SEGMENT_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
_KEPT_TYPES = (bool, int, float, type(None))
_MAX_DEPTH = 20


def _sensitive_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    parts = [p.lower() for p in _SEGMENT_SPLIT.split(key) if p]
    if any(p in _SENSITIVE_SEGMENTS for p in parts):
        return True
    return any(pair in _SENSITIVE_PAIRS for pair in itertools.pairwise(parts))


class RedactSecrets:
    """A structlog processor that masks secrets anywhere in the event dict.

    Put it after ``format_exc_info``/``dict_tracebacks`` (so tracebacks are scrubbed too) and
    right before the renderer.

    Args:
        secrets: exact secret values to mask wherever they appear (``str`` or ``SecretStr``;
            values shorter than :data:`MIN_SECRET_LENGTH` are ignored).
        sensitive_keys: extra key names whose values are always masked (exact, case-insensitive).
    """

    def __init__(
        self, secrets: Iterable[str | SecretStr | None] = (), sensitive_keys: Iterable[str] = ()
    ) -> None:
        values = set()
        for secret in secrets:
            raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            if isinstance(raw, str) and len(raw) >= MIN_SECRET_LENGTH:
                values.add(raw)
        ordered = sorted(values, key=len, reverse=True)  # longest first: no partial leftovers
        self._exact = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._extra_keys = frozenset(k.lower() for k in sensitive_keys)

    def __repr__(self) -> str:
        count = 0 if self._exact is None else self._exact.pattern.count("|") + 1
        return f"RedactSecrets({count} secret values)"

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        """Return *event_dict* with every secret masked (a new dict; the input is not modified)."""
        return {self._scrub_key(k): self._value(k, v, 0) for k, v in event_dict.items()}

    def scrub(self, text: str) -> str:
        """*text* with API keys, bearer tokens, JWTs and the known secret values masked."""
        if self._exact is not None:
            text = self._exact.sub(REDACTED, text)
        if "mk_" in text:
            text = _API_KEY.sub("mk_…" + REDACTED, text)
        if "earer" in text or "EARER" in text:
            text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        if "eyJ" in text:
            text = _JWT.sub(REDACTED, text)
        return text

    def _is_sensitive(self, key: object) -> bool:
        return _sensitive_key(key) or (isinstance(key, str) and key.lower() in self._extra_keys)

    def _scrub_key(self, key: Any) -> Any:
        return self.scrub(key) if isinstance(key, str) else key

    def _value(self, key: object, value: Any, depth: int, inherited: bool = False) -> Any:
        return self._walk(value, depth, sensitive=inherited or self._is_sensitive(key))

    def _walk(self, value: Any, depth: int, *, sensitive: bool = False) -> Any:
        if isinstance(value, _KEPT_TYPES):
            return value
        if isinstance(value, str):
            return REDACTED if sensitive else self.scrub(value)
        if depth >= _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            return {self._scrub_key(k): self._value(k, v, depth + 1, sensitive) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            items = [self._walk(v, depth + 1, sensitive=sensitive) for v in value]
            return items if isinstance(value, list) else tuple(items)
        if sensitive:
            return REDACTED
        if isinstance(value, bytes | bytearray):
            text = bytes(value).decode("utf-8", "replace")
            scrubbed = self.scrub(text)
            return value if scrubbed == text else scrubbed
        # Anything else is rendered with repr() later: mask it if its repr carries a secret.
        try:
            text = repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__name__}>"
        scrubbed = self.scrub(text)
        return value if scrubbed == text else scrubbed


def settings_secrets(settings: Settings) -> tuple[str, ...]:
    """The values of every secret setting that is set (for :class:`RedactSecrets`)."""
    values = []
    for name in secret_setting_names():
        secret = getattr(settings, name)
        if isinstance(secret, SecretStr):
            values.append(secret.get_secret_value())
    return tuple(values)


class _MaasKitHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (recognised and replaced on a second call)."""


def configure_logging(
    level: Literal["debug", "info", "warning", "error"] | str | int = "info",
    *,
    json: bool = False,
    secrets: Iterable[str | SecretStr | None] = (),
    stream: TextIO | None = None,
    sensitive_keys: Iterable[str] = (),
) -> None:
    """Set up structlog and the standard library's root logger with secret redaction.

    Call it once at start-up, from the application (never from a library). Calling it again
    replaces the previous setup. Standard-library records (SQLAlchemy, httpx, uvicorn...) go
    through the same redaction and renderer as structlog events. structlog events are redacted
    before they become ``logging`` records, so other handlers on the root logger see masked
    values too; standard-library records are only masked by the handler installed here.

    Args:
        level: minimum level (``"debug"``, ``"info"``, ``"warning"``, ``"error"`` or a number).
        json: one JSON object per line (for log collectors) instead of the console format.
        secrets: exact values to mask; pass :func:`settings_secrets` of your settings.
        stream: where to write (default ``sys.stderr``).
        sensitive_keys: extra key names whose values are always masked.
    """
    level_no = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    if not isinstance(level_no, int):
        raise ValueError(f"unknown log level {level!r}")
    redact = RedactSecrets(secrets, sensitive_keys)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if json:
        tail: list[Processor] = [structlog.processors.dict_tracebacks]
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    else:
        tail = [structlog.processors.format_exc_info]
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            # Redact before the event becomes a LogRecord, so other handlers on the root logger
            # (error trackers, pytest's caplog) never see a raw secret either.
            redact,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tail,
            redact,  # again: formatted tracebacks and standard-library records
            renderer,
        ],
    )
    handler = _MaasKitHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _MaasKitHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)
    # aiosqlite logs every call with its SQL parameters (key digests, password hashes) at DEBUG
    logging.getLogger("aiosqlite").setLevel(max(level_no, logging.INFO))
