import gc
import io
import json
from pathlib import Path

import pytest

from maaskit.cli import main


def test_migrate_and_downgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    assert main(["migrate", "--database-url", url]) == 0
    assert "revision(s): 0" in capsys.readouterr().out
    assert main(["migrate", "--database-url", url, "--downgrade", "base"]) == 0
    assert "(none)" in capsys.readouterr().out


def test_health_prints_a_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--database-url", f"sqlite+aiosqlite:///{tmp_path}/h.db"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True


def test_bad_settings_are_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAASKIT_DATABASE_URL", "mysql://nope")
    assert main(["health"]) == 2
    assert "MAASKIT_DATABASE_URL" in capsys.readouterr().err


async def test_demo_runs_on_embedded_sqlite() -> None:
    from maaskit.demo import run_demo

    out = io.StringIO()
    assert await run_demo(out=out) == 0
    text = out.getvalue()
    assert "budget.exceeded" in text
    assert "usage report" in text


async def test_serve_freezes_what_start_up_built(tmp_path: Path) -> None:
    """``maaskit serve`` tunes the collector once the app has started, not before."""
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager
    from typing import Any

    from maaskit.cli import _tune_gc_after_startup
    from maaskit.gateway import create_gateway
    from maaskit.testing import test_settings

    app = create_gateway(test_settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/gc.db"))
    built: list[list[int]] = []

    @asynccontextmanager
    async def start_up(_app: Any) -> AsyncIterator[dict[str, Any]]:
        built.append([1, 2, 3])  # a container made during start-up (tracked by the collector)
        yield {}

    app.control.router.lifespan_context = start_up
    _tune_gc_after_startup(app)
    threshold = gc.get_threshold()
    try:
        assert not built
        async with app.control.router.lifespan_context(app.control):
            frozen_out = id(built[0]) not in {id(o) for o in gc.get_objects()}
            assert frozen_out  # in the permanent generation: no collection walks it
            assert gc.get_threshold()[0] == 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_keys_create_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/keys.db"
    assert main(["migrate", "--database-url", url]) == 0
    capsys.readouterr()
    keys = ["keys", "--database-url", url]
    create = [*keys, "create", "--owner", "alice", "--name", "laptop", "--budget", "5.00"]
    assert main(create) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["secret"].startswith("mk_")
    assert (created["owner_id"], created["name"], created["budget_micros"]) == ("alice", "laptop", 5_000_000)
    assert main(["keys", "--database-url", url, "list"]) == 0
    assert [k["id"] for k in json.loads(capsys.readouterr().out)] == [created["id"]]
    assert main(["keys", "--database-url", url, "revoke", created["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["revoked_at"] is not None
    assert main(["keys", "--database-url", url, "list"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_keys_create_needs_a_name_and_refuses_bad_budgets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/keys.db"
    assert main(["migrate", "--database-url", url]) == 0
    with pytest.raises(SystemExit) as usage:  # it used to default to "" and fail as "Invalid name"
        main(["keys", "--database-url", url, "create", "--owner", "alice"])
    assert usage.value.code == 2
    assert "--name" in capsys.readouterr().err
    bad = [
        "keys",
        "--database-url",
        url,
        "create",
        "--owner",
        "alice",
        "--name",
        "k",
        "--budget",
        "1e999999999",
    ]
    assert main(bad) == 2
    assert "error [money.invalid]" in capsys.readouterr().err
    assert main(["keys", "--database-url", url, "list"]) == 0
    assert json.loads(capsys.readouterr().out) == []
