"""Store Protocol behind :mod:`maaskit.services.credentials`: upstream credential definitions and usage.

The store never sees a secret: a :class:`CredentialRecord` holds only ``secret_ref``, the name under
which the secret material lives in the :class:`~maaskit.services.secrets.SecretService` (or the
pool's in-memory fallback). Usage statistics are written as *increments*
(:class:`CredentialUsageDelta`), so several replicas flushing into one database add up instead of
overwriting each other. Backends: :mod:`maaskit.storage.memory.credentials`,
:mod:`maaskit.storage.sql.credentials`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["CredentialRecord", "CredentialStore", "CredentialUsage", "CredentialUsageDelta"]


@attrs.frozen
class CredentialRecord:
    """One upstream credential's definition (no secret material).

    Attributes:
        id: the credential id (``cred_...``).
        upstream: the upstream it authenticates against (an :class:`~maaskit.services.upstream.Upstream` name).
        name: a human label.
        kind: ``"api_key"`` or ``"cookie"``.
        header: the request header carrying it (``Authorization``, ``Cookie``...).
        header_format: the header value with a ``{secret}`` placeholder (``Bearer {secret}``).
        weight: its weight for the weighted strategy (1-1000).
        models: client model names it is restricted to, or ``None`` (every model of its upstream).
        secret_ref: the secret's name in the secret service (``credential/<id>``).
        enabled: ``False`` once disabled (by hand or after repeated failures) until re-enabled.
        disabled_reason: why it was disabled (``manual``, ``failures``, ``secret_missing``).
        created_at: creation time.
        updated_at: last change of the definition.
    """

    id: str
    upstream: str
    name: str
    kind: str
    header: str
    header_format: str
    weight: int
    models: tuple[str, ...] | None
    secret_ref: str
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


@attrs.frozen
class CredentialUsage:
    """A credential's stored usage totals.

    Attributes:
        credential_id: whose totals.
        requests: requests sent with it.
        successes: requests the upstream answered with 2xx.
        failures: failed requests by HTTP status (``0``: no answer / transport error).
        tokens: tokens reported back through the pool.
        last_used_at: when it was last handed out.
        last_failure_at: when a failure was last reported.
        cooldown_until: the end of its current cooldown, if any.
    """

    credential_id: str
    requests: int = 0
    successes: int = 0
    failures: Mapping[int, int] = attrs.field(factory=dict)
    tokens: int = 0
    last_used_at: datetime | None = None
    last_failure_at: datetime | None = None
    cooldown_until: datetime | None = None


@attrs.frozen
class CredentialUsageDelta:
    """Usage to add to a credential's stored totals (written by a flush).

    Counters are added; the timestamps replace the stored ones when not ``None``
    (``cooldown_until`` is replaced whenever ``set_cooldown`` is true, also by ``None``).
    """

    credential_id: str
    requests: int = 0
    successes: int = 0
    failures: Mapping[int, int] = attrs.field(factory=dict)
    tokens: int = 0
    last_used_at: datetime | None = None
    last_failure_at: datetime | None = None
    cooldown_until: datetime | None = None
    set_cooldown: bool = False


@runtime_checkable
class CredentialStore(Protocol):
    """Credential definitions and their usage totals."""

    async def insert(self, record: CredentialRecord) -> None:
        """Store a new credential (its id is new)."""
        ...

    async def get(self, credential_id: str) -> CredentialRecord | None:
        """The credential, or ``None``."""
        ...

    async def list(self, *, upstream: str | None = None) -> builtins.list[CredentialRecord]:
        """Every credential (of *upstream*), ordered by creation time then id."""
        ...

    async def update(self, record: CredentialRecord) -> bool:
        """Replace the mutable fields (name, header, format, weight, models, enabled, reason, updated_at).

        Returns ``False`` (nothing written) when the credential does not exist.
        """
        ...

    async def delete(self, credential_id: str) -> bool:
        """Remove a credential and its usage (one transaction); ``False`` if it did not exist."""
        ...

    async def add_usage(
        self, deltas: Sequence[CredentialUsageDelta], records: Sequence[CredentialRecord] = ()
    ) -> None:
        """Add *deltas* to the usage totals and write *records* (see :meth:`update`), all in one
        transaction. Deltas of unknown credentials are ignored."""
        ...

    async def usage(self) -> dict[str, CredentialUsage]:
        """Every credential's usage totals by credential id (credentials never used are absent)."""
        ...
