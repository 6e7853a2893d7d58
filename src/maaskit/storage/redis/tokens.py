"""Redis :class:`~maaskit.storage.ports.tokens.TokenStore`, shared by every replica.

Layout (all keys under the configured prefix):

* ``tok:deny:<jti>``: the deny-list entry, value = expiry in ms since the epoch, with a Redis TTL;
* ``tok:fam:<family_id>``: a hash (``subject``, ``current``, ``created``, ``expires``, ``revoked``);
* ``tok:sub:<subject>``: the set of a subject's family ids (for :meth:`revoke_subject`).

Rotation, deny and revocation are Lua scripts (``storage/redis/lua/tokens_*.lua``), so each is
atomic on the server. Redis TTLs only collect garbage: every check also compares the stored expiry
with the ``now`` passed in by the service, which keeps the store correct under a fake clock. The
scripts touch one key each except :meth:`revoke_subject`; on Redis Cluster give the prefix a hash
tag (``{maaskit}:``) so all keys share a slot.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

import redis.asyncio as redis_asyncio

from maaskit.storage.ports.tokens import RefreshFamily, RotateOutcome
from maaskit.storage.redis.client import ping, translate_redis_errors

__all__ = ["RedisTokenStore"]

_CODE = "redis.unavailable"


def _lua(name: str) -> str:
    return (resources.files("maaskit.storage.redis") / "lua" / name).read_text(encoding="utf-8")


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _ttl_ms(expires_at: datetime, now: datetime) -> int:
    return max(1, _ms(expires_at) - _ms(now))


def _dt(ms: bytes | str) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisTokenStore:
    """Deny list and refresh families in Redis.

    Args:
        client: a ``redis.asyncio.Redis`` with ``decode_responses=False``
            (see :func:`maaskit.storage.redis.client.create_redis`).
        prefix: prepended to every key (default ``"maaskit:"``).
    """

    def __init__(self, client: redis_asyncio.Redis, *, prefix: str = "maaskit:") -> None:
        self._r = client
        self._p = prefix
        self._deny_script = client.register_script(_lua("tokens_deny.lua"))
        self._rotate_script = client.register_script(_lua("tokens_rotate.lua"))
        self._set_current_script = client.register_script(_lua("tokens_set_current.lua"))
        self._revoke_script = client.register_script(_lua("tokens_revoke.lua"))

    def __repr__(self) -> str:
        return f"RedisTokenStore(prefix={self._p!r})"

    def _deny_key(self, jti: str) -> str:
        return f"{self._p}tok:deny:{jti}"

    def _fam_key(self, family_id: str) -> str:
        return f"{self._p}tok:fam:{family_id}"

    def _sub_key(self, subject: str) -> str:
        return f"{self._p}tok:sub:{subject}"

    async def deny(self, jti: str, expires_at: datetime, now: datetime) -> None:
        """Deny *jti* until *expires_at* (a later expiry wins)."""
        if expires_at <= now:
            return
        with translate_redis_errors(_CODE):
            await self._deny_script(
                keys=[self._deny_key(jti)], args=[_ms(expires_at), _ttl_ms(expires_at, now)]
            )

    async def is_denied(self, jti: str, now: datetime) -> bool:
        """Whether a live entry exists for *jti*."""
        with translate_redis_errors(_CODE):
            value = await self._r.get(self._deny_key(jti))
        return value is not None and int(value) > _ms(now)

    async def create_family(self, family: RefreshFamily) -> None:
        """Store a new family and index it under its subject."""
        key = self._fam_key(family.family_id)
        ttl = _ttl_ms(family.expires_at, family.created_at)
        mapping: dict[str, str | int] = {
            "subject": family.subject,
            "current": family.current_jti,
            "created": _ms(family.created_at),
            "expires": _ms(family.expires_at),
        }
        if family.revoked_at is not None:
            mapping["revoked"] = _ms(family.revoked_at)
        sub_key = self._sub_key(family.subject)
        with translate_redis_errors(_CODE):
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
                pipe.pexpire(key, ttl)
                pipe.sadd(sub_key, family.family_id)
                pipe.pexpire(sub_key, ttl, gt=True)
                pipe.pexpire(sub_key, ttl, nx=True)
                await pipe.execute()

    async def get_family(self, family_id: str) -> RefreshFamily | None:
        """The family or ``None``."""
        with translate_redis_errors(_CODE):
            data = await self._r.hgetall(self._fam_key(family_id))
        if not data:
            return None
        revoked = data.get(b"revoked")
        return RefreshFamily(
            family_id=family_id,
            subject=_s(data[b"subject"]),
            current_jti=_s(data[b"current"]),
            created_at=_dt(data[b"created"]),
            expires_at=_dt(data[b"expires"]),
            revoked_at=_dt(revoked) if revoked is not None else None,
        )

    async def rotate_family(
        self, family_id: str, presented_jti: str, new_jti: str, new_expires_at: datetime, now: datetime
    ) -> RotateOutcome:
        """Atomic compare-and-set in a Lua script."""
        with translate_redis_errors(_CODE):
            result = await self._rotate_script(
                keys=[self._fam_key(family_id)],
                args=[presented_jti, new_jti, _ms(new_expires_at), _ms(now), _ttl_ms(new_expires_at, now)],
            )
        return RotateOutcome(result.decode() if isinstance(result, bytes) else str(result))

    async def set_current(
        self, family_id: str, new_jti: str, new_expires_at: datetime, now: datetime
    ) -> bool:
        """Make *new_jti* current (Lua)."""
        with translate_redis_errors(_CODE):
            result = await self._set_current_script(
                keys=[self._fam_key(family_id)],
                args=[new_jti, _ms(new_expires_at), _ms(now), _ttl_ms(new_expires_at, now)],
            )
        return bool(int(result))

    async def revoke_family(self, family_id: str, now: datetime) -> bool:
        """Revoke one family (Lua)."""
        with translate_redis_errors(_CODE):
            result = await self._revoke_script(keys=[self._fam_key(family_id)], args=[_ms(now)])
        return bool(int(result))

    async def revoke_subject(self, subject: str, now: datetime) -> int:
        """Revoke every family indexed under *subject*."""
        with translate_redis_errors(_CODE):
            members = await self._r.smembers(self._sub_key(subject))
            if not members:
                return 0
            keys = [self._fam_key(_s(m)) for m in sorted(members)]
            result = await self._revoke_script(keys=keys, args=[_ms(now)])
        return int(result)

    async def cleanup_expired(self, now: datetime) -> int:
        """Redis expires keys by itself; this removes entries already expired at *now* (fake clocks)."""
        removed = 0
        now_ms = _ms(now)
        with translate_redis_errors(_CODE):
            async for key in self._r.scan_iter(match=f"{self._p}tok:deny:*", count=500):
                value = await self._r.get(key)
                if value is not None and int(value) <= now_ms:
                    removed += int(await self._r.delete(key))
            async for key in self._r.scan_iter(match=f"{self._p}tok:fam:*", count=500):
                data = await self._r.hmget(key, ["expires", "subject"])
                expires, subject = data
                if expires is not None and subject is not None and int(expires) <= now_ms:
                    fid = _s(key)[len(f"{self._p}tok:fam:") :]
                    async with self._r.pipeline(transaction=True) as pipe:
                        pipe.delete(key)
                        pipe.srem(self._sub_key(_s(subject)), fid)
                        deleted, _ = await pipe.execute()
                    removed += int(deleted)
        return removed

    async def ping(self) -> None:
        """``PING`` the server."""
        await ping(self._r)
