"""Every maaskit table, one module per domain.

Importing this package imports every module in it, which registers all tables on
:data:`maaskit.storage.sql.base.metadata` (Alembic's ``env.py`` relies on this). Table names
all start with ``maaskit_`` so they never clash with an application's own.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
