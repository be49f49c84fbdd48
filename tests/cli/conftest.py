"""A helper that runs `freshnets` in a subprocess, as a user would; the real stack the client
commands talk to is the ``stack`` fixture of tests/conftest.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, columns: int | None = 200
) -> subprocess.CompletedProcess[str]:
    """`freshnets ARGS...` in a fresh process, its output piped; ``columns`` sets COLUMNS (a
    window's width; None: unset, as in `freshnets ... > file`)."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith("FRESHNETS_") and k != "COLUMNS"
    }
    full_env.update(TERM="dumb", PYTHONPATH=str(REPO), **(env or {}))
    if columns is not None:
        full_env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *args],
        env=full_env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,  # no terminal: a command that would ask must not wait
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def cli():
    """`run_cli` as a fixture (test modules cannot import conftest in importlib mode)."""
    return run_cli
