#!/usr/bin/env python3
"""The project's two commands, with nothing but Python 3.11+ on the machine.

    python3 dev.py demo     # the main job: the reference gateway demo on embedded SQLite
    python3 dev.py test     # install what the tests need (into .venv) and run them all
    python3 dev.py check    # ruff, mypy --strict on src/, mkdocs build --strict
    python3 dev.py bench    # the benchmarks under tests/bench/, timed

Each command creates `.venv` when it is missing and (re)installs maaskit with the extras it
needs whenever pyproject.toml changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MAASKIT_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def ensure_venv(extra: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"maaskit needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".maaskit-installed-{extra}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing maaskit[{extra}] into {VENV}", flush=True)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[{extra}]"], check=True)
    stamp.write_text(digest)


def run(*cmd: str) -> int:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    rest = argv[1:]
    if command == "demo":
        ensure_venv("server")
        return run(str(BIN / "maaskit"), "demo", *rest)
    if command == "test":
        ensure_venv("dev")
        return run(str(PY), "-m", "pytest", *rest)
    if command == "check":
        ensure_venv("dev")
        for cmd in (
            [str(BIN / "ruff"), "check", "src", "tests", "examples", "dev.py"],
            [str(BIN / "ruff"), "format", "--check", "src", "tests", "examples", "dev.py"],
            [str(BIN / "mypy"), "--strict", "src/maaskit"],
            [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(ROOT / "site")],
        ):
            if code := run(*cmd):
                return code
        return 0
    if command == "bench":
        ensure_venv("dev")
        return run(str(PY), "-m", "pytest", "tests/bench", "--benchmark-enable", "-p", "no:randomly", *rest)
    print(__doc__)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
