"""Creating a Redis client with sensible defaults, and mapping Redis failures to maaskit errors.

Every maaskit Redis backend takes a ready ``redis.asyncio.Redis``; :func:`create_redis` builds
one with short timeouts, a periodic connection health check and a small, fast-failing retry
policy (redis-py's own default retries ten times, which turns an outage into seconds of latency
on every request).

Example::

    from maaskit.storage.redis.client import create_redis, ping

    redis = create_redis("redis://127.0.0.1:6379/0")
    await ping(redis)                 # raises UnavailableError("redis.unavailable") if down
    ...
    await redis.aclose()

Error messages and logs never contain the URL's password: use :func:`redact_url` to show a
URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis_asyncio
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from maaskit.errors import UnavailableError, ValidationError

__all__ = [
    "DEFAULT_HEALTH_CHECK_INTERVAL",
    "DEFAULT_SOCKET_CONNECT_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "create_redis",
    "ping",
    "redact_url",
    "translate_redis_errors",
]

#: Seconds a command may take before the socket times out.
DEFAULT_SOCKET_TIMEOUT = 2.0
#: Seconds to establish a TCP (or TLS) connection.
DEFAULT_SOCKET_CONNECT_TIMEOUT = 2.0
#: Seconds a pooled connection may sit idle before it is checked with ``PING`` on reuse.
DEFAULT_HEALTH_CHECK_INTERVAL = 30

#: Errors that mean "the server cannot be used right now" (connection refused, timeout, auth).
_UNAVAILABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, asyncio.TimeoutError)


def redact_url(url: str) -> str:
    """*url* with any password replaced by ``***`` (safe for logs and messages)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def create_redis(
    url: str,
    *,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    socket_connect_timeout: float = DEFAULT_SOCKET_CONNECT_TIMEOUT,
    health_check_interval: int = DEFAULT_HEALTH_CHECK_INTERVAL,
    max_connections: int | None = 100,
    pool_timeout: float = 5.0,
    retries: int = 2,
    client_name: str | None = "maaskit",
    **options: Any,
) -> redis_asyncio.Redis:
    """Build a ``redis.asyncio.Redis`` for *url* (``redis://``, ``rediss://`` or ``unix://``).

    Nothing is contacted yet: connections open lazily. Call :func:`ping` to check the server.

    Args:
        url: the server URL; it may carry a user, password and database number.
        socket_timeout: seconds a command may take.
        socket_connect_timeout: seconds to connect.
        health_check_interval: idle seconds after which a pooled connection is pinged before reuse.
        max_connections: size limit of the connection pool (``None``: unlimited). A full pool
            makes callers wait for a free connection (redis-py's ``BlockingConnectionPool``)
            instead of failing with "Too many connections" under bursts.
        pool_timeout: seconds a caller waits for a free pooled connection.
        retries: retries on a connection error or timeout, with a short jittered backoff
            (50 ms up to 500 ms); ``0`` fails on the first error.
        client_name: sent with ``CLIENT SETNAME`` so operators see who is connected.
        **options: any other ``redis.asyncio.Redis`` option; they win over the defaults above.
            ``decode_responses`` must stay ``False``: maaskit backends work with bytes.

    Raises:
        ValidationError: ``config.invalid`` when the URL or an option is not usable (the message
            never contains the password).
    """
    if retries < 0:
        raise ValidationError("config.invalid", setting="MAASKIT_REDIS_URL", reason="retries must be >= 0")
    if options.get("decode_responses"):
        raise ValidationError(
            "config.invalid",
            setting="MAASKIT_REDIS_URL",
            reason="maaskit needs a Redis client with decode_responses=False",
        )
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "health_check_interval": health_check_interval,
        "retry": Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries),
        "client_name": client_name,
        "decode_responses": False,
    }
    kwargs.update(options)
    try:
        if max_connections is None:
            return redis_asyncio.Redis.from_url(url, **kwargs)
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout, **kwargs
        )
        return redis_asyncio.Redis.from_pool(pool)
    except (ValueError, TypeError) as exc:
        # redis-py's messages name the scheme or the bad query argument, never the password;
        # still, do not echo the URL itself.
        reason = str(exc).replace(url, redact_url(url))
        raise ValidationError("config.invalid", setting="MAASKIT_REDIS_URL", reason=reason) from None


@contextmanager
def translate_redis_errors(code: str = "redis.unavailable") -> Iterator[None]:
    """Turn a Redis connection failure or timeout inside the block into ``UnavailableError(code)``.

    Other Redis errors (``ResponseError`` for a wrong command or type) propagate unchanged; they
    are bugs or bad input, not an outage. The original error is kept as ``__cause__``; redis-py's
    connection errors name the host and port but never the password.
    """
    try:
        yield
    except _UNAVAILABLE as exc:
        raise UnavailableError(code) from exc


async def ping(client: redis_asyncio.Redis) -> None:
    """Send ``PING`` and wait for the answer (bounded by the client's socket timeouts).

    Wrap the call in ``asyncio.timeout(...)`` for a tighter overall deadline.

    Raises:
        UnavailableError: ``redis.unavailable`` when the server cannot be reached, refuses the
            credentials or does not answer in time.
    """
    with translate_redis_errors():
        await client.ping()
