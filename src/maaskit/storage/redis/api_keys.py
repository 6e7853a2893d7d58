"""Cross-replica API key cache invalidation over Redis pub/sub.

Every replica runs one :class:`RedisKeyInvalidationBus` on the same channel. When a replica
revokes, disables, rotates or changes a key it publishes the key id; every replica's listener drops
that key from its validation cache as the message arrives (milliseconds on a healthy connection;
the documented bound is 1 s).

Pub/sub is fire-and-forget: a replica that is disconnected misses messages. So whenever the
listener (re)subscribes — at start, after redis-py silently reconnected, or after this bus
reconnected itself — it tells its listeners to clear their *whole* cache, and the service's
``cache_ttl`` bounds staleness in any case.

Example::

    from redis.asyncio import Redis

    bus = RedisKeyInvalidationBus(Redis.from_url("redis://127.0.0.1:6379/0"))
    keys = DefaultApiKeyService(store, clock, pepper=pepper, invalidation=bus)
    async with keys:             # starts the listener; stops it on exit
        ...
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from maaskit.errors import UnavailableError
from maaskit.storage.ports.api_keys import InvalidationListener

__all__ = ["DEFAULT_CHANNEL", "RedisKeyInvalidationBus"]

#: The default pub/sub channel (prefix it per deployment if several share one Redis).
DEFAULT_CHANNEL = "maaskit:api_keys:invalidate"

log = structlog.get_logger(__name__)

_RECONNECTABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_CLOSE_TIMEOUT = 2.0


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisKeyInvalidationBus:
    """A :class:`~maaskit.storage.ports.api_keys.KeyInvalidationBus` on a Redis pub/sub channel.

    Args:
        redis: a ``redis.asyncio.Redis`` client (the listener takes one connection of its pool).
        channel: the channel shared by every replica of one deployment.
        reconnect_max_wait: the longest pause between reconnect attempts (exponential backoff with
            jitter through tenacity, starting at 50 ms).
        start_timeout: how long :meth:`start` waits for the first subscription.
        close_client: close *redis* in :meth:`stop` (when the bus owns the client).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        channel: str = DEFAULT_CHANNEL,
        reconnect_max_wait: float = 2.0,
        start_timeout: float = 5.0,
        close_client: bool = False,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._reconnect_max_wait = reconnect_max_wait
        self._start_timeout = start_timeout
        self._close_client = close_client
        self._listeners: list[InvalidationListener] = []
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        # Set by stop(): the listener leaves its loops by itself even if a cancellation is lost
        # (Python 3.11 can swallow one in a close that finishes at the same moment).
        self._stopping = False
        #: How many times the listener (re)subscribed; every time, listeners were told to clear all.
        self.subscriptions = 0

    def __repr__(self) -> str:
        return f"RedisKeyInvalidationBus(channel={self._channel!r}, running={self.running})"

    @property
    def channel(self) -> str:
        """The pub/sub channel."""
        return self._channel

    @property
    def running(self) -> bool:
        """``True`` while the listener task runs."""
        return self._task is not None and not self._task.done()

    def add_listener(self, listener: InvalidationListener) -> Callable[[], None]:
        """Register *listener*; returns its unregister function."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _deliver(self, key_id: str | None) -> None:
        for listener in builtins.list(self._listeners):
            try:
                listener(key_id)
            except Exception:  # a broken listener must not starve the others
                log.exception("api_key.invalidation_listener_failed")

    async def publish(self, key_id: str) -> None:
        """Publish *key_id* to every replica (this one's listener receives it too).

        Raises:
            UnavailableError: ``cache.unavailable`` when Redis cannot be reached.
        """
        try:
            await self._redis.publish(self._channel, key_id)
        except RedisError as exc:
            raise UnavailableError("cache.unavailable") from exc

    async def start(self) -> None:
        """Start the listener and wait until it is subscribed. Idempotent.

        Raises:
            UnavailableError: ``cache.unavailable`` if no subscription succeeded within
                ``start_timeout`` (the listener is stopped again).
        """
        if self.running:
            return
        self._subscribed = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"maaskit-key-invalidation:{self._channel}")
        try:
            await asyncio.wait_for(self._subscribed.wait(), self._start_timeout)
        except TimeoutError:
            await self.stop()
            raise UnavailableError("cache.unavailable") from None

    async def stop(self) -> None:
        """Stop the listener (and close the client if the bus owns it). Idempotent."""
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            task.cancel()
            # Bounded: closing a pub/sub connection that Redis just dropped can stall in redis-py.
            done, _ = await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT)
            if not done:  # a lost cancellation: the stop flag ends the loop; cancel once more
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT)
            if not done:
                log.warning("api_key.invalidation_listener_stop_timeout", channel=self._channel)
        if self._close_client:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await self._redis.aclose()

    async def _run(self) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_RECONNECTABLE),
            wait=wait_exponential_jitter(multiplier=0.05, max=self._reconnect_max_wait),
            before_sleep=self._before_reconnect,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self._stopping:
                    return
                await self._listen()

    @staticmethod
    def _before_reconnect(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "api_key.invalidation_reconnecting",
            attempt=state.attempt_number,
            error=type(error).__name__ if error is not None else None,
        )

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=False)
        try:
            await pubsub.subscribe(self._channel)
            while not self._stopping:
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                kind = message.get("type")
                if kind == "message":
                    self._deliver(_text(message["data"]))
                elif kind == "subscribe":
                    # First subscription or a (possibly silent) reconnect: anything published in
                    # between is lost, so every replica-local cache entry is suspect.
                    self.subscriptions += 1
                    self._deliver(None)
                    self._subscribed.set()
        except _RECONNECTABLE:
            self._deliver(None)
            raise
        finally:
            await _drop(pubsub)


async def _drop(pubsub: Any) -> None:
    """Close a pub/sub connection without waiting for the peer.

    A graceful close of a connection that Redis has just dropped can wait for ever (and a
    cancelled wait would then block the event loop's shutdown), so the socket is closed without
    waiting (``nowait``) before the pub/sub object is reset.
    """
    connection = getattr(pubsub, "connection", None)
    if connection is not None:
        with contextlib.suppress(Exception):
            await connection.disconnect(nowait=True)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):  # not wait_for: it can swallow a cancellation on 3.11
            await pubsub.aclose()
