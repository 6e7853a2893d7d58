"""The reference demo behind ``maaskit demo`` (the README's main job).

It builds the app on an embedded SQLite file, migrates it, runs the health checks and prints
what it did, step by step. It needs no server and no network.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TextIO

from maaskit.app import create_app
from maaskit.settings import Settings
from maaskit.storage.sql.database import Database

__all__ = ["run_demo"]


async def run_demo(*, database_url: str | None = None, out: TextIO) -> int:
    """Run the demo, printing to *out*; returns the process exit code."""
    with tempfile.TemporaryDirectory(prefix="maaskit-demo-") as tmp:
        url = database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'maaskit.db'}"
        settings = Settings.from_env(database_url=url, environment="development")

        def say(text: str) -> None:
            print(text, file=out, flush=True)

        say(f"maaskit demo - database {Database(url).url}")
        async with create_app(settings) as app:
            revisions = await app.database.current_revisions()
            say(f"1. migrated the schema to {', '.join(revisions)} (heads: {', '.join(Database.head_revisions())})")
            say(f"2. services built: {', '.join(sorted(t.__name__ for t in app.registry.built()))}")
            report = await app.health()
            for check in report.checks:
                status = "ok" if check.ok else f"FAILED ({check.error})"
                say(f"3. health {check.name}: {status} in {check.latency_ms:.2f} ms")
        say("4. shut down cleanly")
        return 0 if report.ok else 1
