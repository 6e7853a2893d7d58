"""The smallest maaskit app: build it on SQLite, migrate, check health.

Run: python examples/first_app.py
"""

import asyncio
import tempfile
from pathlib import Path

import maaskit


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = maaskit.Settings(database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'first.db'}")
        async with maaskit.create_app(settings) as app:
            print("schema at", ", ".join(await app.database.current_revisions()))
            report = await app.health()
            print("healthy:", report.ok)


if __name__ == "__main__":
    asyncio.run(main())
