"""Redis :class:`~maaskit.storage.ports.sessions.SessionStore`, shared by every replica.

Layout (under the configured prefix):

* ``sess:s:<digest>``: a hash with ``user``, ``data`` (JSON text, opaque to Redis), ``c``, ``l``,
  ``i``, ``a`` (created, last seen, idle and absolute expiry in ms since the epoch);
* ``sess:u:<user_id>``: the set of a user's session digests (for ``delete_user``);
* ``sess:st:<digest>``: a pending OAuth state (JSON), taken with ``GETDEL`` (single use).

Redis TTLs only collect garbage; the service compares the stored expiry with its own clock. An
unreachable server raises ``UnavailableError("session.store_unavailable")``: the service fails
closed. Multi-key scripts build keys from the prefix; on Redis Cluster use a hash-tagged prefix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import redis.asyncio as redis_asyncio

from maaskit.storage.ports.sessions import OAuthStateRecord, SessionRecord
from maaskit.storage.redis.client import ping, translate_redis_errors

__all__ = ["RedisSessionStore"]

_CODE = "session.store_unavailable"


def _lua(name: str) -> str:
    return (resources.files("maaskit.storage.redis") / "lua" / name).read_text(encoding="utf-8")


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _dt(ms: bytes | str | int) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _data(data: Mapping[str, Any]) -> str:
    return json.dumps(dict(data), separators=(",", ":"))


class RedisSessionStore:
    """Sessions and OAuth states in Redis.

    Args:
        client: a ``redis.asyncio.Redis`` with ``decode_responses=False``
            (see :func:`maaskit.storage.redis.client.create_redis`).
        prefix: prepended to every key (default ``"maaskit:"``).
    """

    def __init__(self, client: redis_asyncio.Redis, *, prefix: str = "maaskit:") -> None:
        self._r = client
        self._p = prefix
        self._update_script = client.register_script(_lua("sessions_update.lua"))
        self._replace_script = client.register_script(_lua("sessions_replace.lua"))
        self._delete_user_script = client.register_script(_lua("sessions_delete_user.lua"))

    def __repr__(self) -> str:
        return f"RedisSessionStore(prefix={self._p!r})"

    def _key(self, digest: str) -> str:
        return f"{self._p}sess:s:{digest}"

    def _user_key(self, user_id: str) -> str:
        return f"{self._p}sess:u:{user_id}"

    def _state_key(self, digest: str) -> str:
        return f"{self._p}sess:st:{digest}"

    @staticmethod
    def _fields(record: SessionRecord) -> dict[str, str | int]:
        return {
            "user": record.user_id,
            "data": _data(record.data),
            "c": _ms(record.created_at),
            "l": _ms(record.last_seen_at),
            "i": _ms(record.idle_expires_at),
            "a": _ms(record.absolute_expires_at),
        }

    @staticmethod
    def _ttl(record: SessionRecord) -> int:
        return max(1, _ms(record.idle_expires_at) - _ms(record.last_seen_at))

    @staticmethod
    def _index_ttl(record: SessionRecord) -> int:
        return max(1, _ms(record.absolute_expires_at) - _ms(record.last_seen_at))

    async def create(self, record: SessionRecord) -> None:
        """Write the hash and index it under its user."""
        key, user_key = self._key(record.digest), self._user_key(record.user_id)
        with translate_redis_errors(_CODE):
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=self._fields(record))  # type: ignore[arg-type]
                pipe.pexpire(key, self._ttl(record))
                pipe.sadd(user_key, record.digest)
                pipe.pexpire(user_key, self._index_ttl(record), gt=True)
                pipe.pexpire(user_key, self._index_ttl(record), nx=True)
                await pipe.execute()

    async def get(self, digest: str) -> SessionRecord | None:
        """The session or ``None``."""
        with translate_redis_errors(_CODE):
            data = await self._r.hgetall(self._key(digest))
        if not data or b"user" not in data:
            return None
        return SessionRecord(
            digest=digest,
            user_id=_s(data[b"user"]),
            data=json.loads(data[b"data"]),
            created_at=_dt(data[b"c"]),
            last_seen_at=_dt(data[b"l"]),
            idle_expires_at=_dt(data[b"i"]),
            absolute_expires_at=_dt(data[b"a"]),
        )

    async def touch(self, digest: str, last_seen_at: datetime, idle_expires_at: datetime) -> bool:
        """Slide the idle expiry (Lua: only if the session still exists)."""
        ttl = max(1, _ms(idle_expires_at) - _ms(last_seen_at))
        with translate_redis_errors(_CODE):
            result = await self._update_script(
                keys=[self._key(digest)], args=[ttl, "l", _ms(last_seen_at), "i", _ms(idle_expires_at)]
            )
        return bool(int(result))

    async def update_data(self, digest: str, data: Mapping[str, Any]) -> bool:
        """Replace the data (Lua: only if the session still exists; the TTL is kept)."""
        with translate_redis_errors(_CODE):
            result = await self._update_script(keys=[self._key(digest)], args=["", "data", _data(data)])
        return bool(int(result))

    async def replace(self, old_digest: str, record: SessionRecord) -> bool:
        """Rotate atomically (Lua)."""
        args: list[str | int] = [self._ttl(record), old_digest, record.digest, self._index_ttl(record)]
        for name, value in self._fields(record).items():
            args.extend((name, value))
        with translate_redis_errors(_CODE):
            result = await self._replace_script(
                keys=[self._key(old_digest), self._key(record.digest), self._user_key(record.user_id)],
                args=args,
            )
        return bool(int(result))

    async def delete(self, digest: str) -> bool:
        """Delete one session and its index entry."""
        key = self._key(digest)
        with translate_redis_errors(_CODE):
            user = await self._r.hget(key, "user")
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if user is not None:
                    pipe.srem(self._user_key(_s(user)), digest)
                results = await pipe.execute()
        return bool(results[0])

    async def delete_user(self, user_id: str) -> int:
        """Delete every session of *user_id* (Lua)."""
        with translate_redis_errors(_CODE):
            result = await self._delete_user_script(
                keys=[self._user_key(user_id)], args=[f"{self._p}sess:s:"]
            )
        return int(result)

    async def put_state(self, record: OAuthStateRecord) -> None:
        """``SET`` the state with a TTL."""
        value = json.dumps(
            {"p": dict(record.payload), "c": _ms(record.created_at), "e": _ms(record.expires_at)},
            separators=(",", ":"),
        )
        ttl = max(1, _ms(record.expires_at) - _ms(record.created_at))
        with translate_redis_errors(_CODE):
            await self._r.set(self._state_key(record.digest), value, px=ttl)

    async def take_state(self, digest: str, now: datetime) -> OAuthStateRecord | None:
        """``GETDEL``: the first caller gets the state, every later one ``None``."""
        with translate_redis_errors(_CODE):
            raw = await self._r.getdel(self._state_key(digest))
        if raw is None:
            return None
        value = json.loads(raw)
        record = OAuthStateRecord(
            digest=digest, payload=value["p"], created_at=_dt(value["c"]), expires_at=_dt(value["e"])
        )
        return record if record.expires_at > now else None

    async def cleanup_expired(self, now: datetime) -> int:
        """Redis expires keys itself; this also removes entries already expired at *now* (fake clocks)."""
        now_ms = _ms(now)
        removed = 0
        session_prefix = f"{self._p}sess:s:"
        with translate_redis_errors(_CODE):
            async for key in self._r.scan_iter(match=f"{session_prefix}*", count=500):
                idle, user = await self._r.hmget(key, ["i", "user"])
                if idle is not None and user is not None and int(idle) <= now_ms:
                    digest = _s(key)[len(session_prefix) :]
                    async with self._r.pipeline(transaction=True) as pipe:
                        pipe.delete(key)
                        pipe.srem(self._user_key(_s(user)), digest)
                        deleted, _ = await pipe.execute()
                    removed += int(deleted)
            async for key in self._r.scan_iter(match=f"{self._p}sess:st:*", count=500):
                raw = await self._r.get(key)
                if raw is not None and int(json.loads(raw)["e"]) <= now_ms:
                    removed += int(await self._r.delete(key))
        return removed

    async def ping(self) -> None:
        """``PING`` the server (``UnavailableError`` when it cannot be reached)."""
        with translate_redis_errors(_CODE):
            await ping(self._r)
