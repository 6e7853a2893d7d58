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
