"""SQL storage: the async engine (:class:`Database`), maaskit's tables and Alembic migrations."""

from maaskit.storage.sql.base import MaasTable, metadata
from maaskit.storage.sql.database import Database

__all__ = ["Database", "MaasTable", "metadata"]
