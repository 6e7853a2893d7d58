"""The ``maaskit`` command line: ``migrate``, ``health``, ``demo`` (and more as services land).

Settings come from ``MAASKIT_*`` environment variables; ``--database-url`` overrides
``MAASKIT_DATABASE_URL`` for one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from maaskit.errors import MaasError
from maaskit.settings import Settings

__all__ = ["main"]


def _settings(args: argparse.Namespace, **changes: Any) -> Settings:
    if getattr(args, "database_url", None):
        changes["database_url"] = args.database_url
    return Settings.from_env(**changes)


async def _migrate(args: argparse.Namespace) -> int:
    from maaskit.storage.sql.database import Database

    settings = _settings(args)
    db = Database(settings.database_url)
    try:
        if args.downgrade:
            await db.downgrade(args.downgrade)
        else:
            await db.migrate(args.revision)
        revisions = await db.current_revisions()
    finally:
        await db.aclose()
    print(f"database {db.url} at revision(s): {', '.join(revisions) or '(none)'}")
    return 0


async def _health(args: argparse.Namespace) -> int:
    from maaskit.app import create_app

    async with create_app(_settings(args)) as app:
        report = await app.health(timeout=args.timeout)
    print(json.dumps(report.to_dict(), indent=2))
    return 0 if report.ok else 1


async def _demo(args: argparse.Namespace) -> int:
    from maaskit.demo import run_demo

    return await run_demo(database_url=args.database_url, out=sys.stdout)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maaskit", description="maaskit service layer tools")
    sub = parser.add_subparsers(dest="command", required=True)

    migrate = sub.add_parser("migrate", help="upgrade (or downgrade) maaskit's database schema")
    migrate.add_argument("--database-url", help="overrides MAASKIT_DATABASE_URL")
    migrate.add_argument("--revision", default="heads", help="target revision (default: newest)")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION ('base' drops all)")
    migrate.set_defaults(run=_migrate)

    health = sub.add_parser("health", help="build the app, ping every service, print the report")
    health.add_argument("--database-url", help="overrides MAASKIT_DATABASE_URL")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds per check")
    health.set_defaults(run=_health)

    demo = sub.add_parser("demo", help="run the reference demo on embedded SQLite")
    demo.add_argument("--database-url", help="default: a SQLite file in a temporary directory")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``maaskit`` command."""
    args = _parser().parse_args(argv)
    from maaskit.log import configure_logging

    configure_logging(level="warning", stream=sys.stderr)
    try:
        return int(asyncio.run(args.run(args)))
    except MaasError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
