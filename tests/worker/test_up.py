"""`freshnets up`: the whole stack from one command, and Ctrl-C leaves no process behind."""

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..owners import bearer

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    """Every descendant of `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            match = re.search(r"^PPid:\s+(\d+)$", status, re.M)
            if match:
                parents[int(entry.name)] = int(match.group(1))
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_up(tmp_path: Path, **extra: str) -> tuple[subprocess.Popen[bytes], Path, int]:
    """`freshnets up` in a fresh data folder; returns once it says it is up."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHNETS_")}
    env.update(
        FRESHNETS_DATA_DIR=str(tmp_path / "data"),
        FRESHNETS_PORT=str(port),
        FRESHNETS_DEVICE="cpu",
        FRESHNETS_TORCH_THREADS="1",
        **extra,
    )
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "up"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while "FreshNets is up" not in log.read_text():
        if up.poll() is not None or time.monotonic() > deadline:
            _kill(up, set())
            raise AssertionError(log.read_text())
        time.sleep(0.2)
    return up, log, port


def _kill(up: subprocess.Popen[bytes], children: set[int]) -> None:
    if up.poll() is None:
        os.kill(up.pid, signal.SIGKILL)
        up.wait()
    for pid in children:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_up_serves_trains_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    up, log, port = _start_up(tmp_path)
    children: set[int] = set()
    try:
        output = log.read_text()
        base = f"http://127.0.0.1:{port}"
        assert base in output

        # The first key: printed once, and kept in a file only this user can read.
        key_file = data_dir / "api-key"
        key = key_file.read_text().strip()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key in output
        assert (data_dir / "freshnets.db").exists()

        children = _children(up.pid)
        commands = {
            pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") for pid in children
        }
        assert any(b"redis-server" in c for c in commands.values()), commands
        assert any(b"celery" in c and b"worker" in c for c in commands.values()), commands
        assert any(b"uvicorn" in c for c in commands.values()), commands

        headers = bearer(key)
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        resp = httpx.post(
            f"{base}/v1/jobs",
            headers=headers,
            json={
                "dataset": "digits",
                "architecture": "mnist-cnn",
                "method": "freshnets",
                "compression": "1/64",
                "training": {"epochs": 1, "batch_size": 64, "max_train_samples": 256},
            },
            timeout=10,
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        deadline = time.monotonic() + 60
        while True:
            job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        assert job["state"] == "succeeded", (job["error"], log.read_text())
        assert job["model_id"]

        up.send_signal(signal.SIGINT)  # Ctrl-C
        assert up.wait(timeout=90) == 0, log.read_text()
        assert "stopped" in log.read_text()
        left = [pid for pid in children if _alive(pid)]
        assert left == [], f"orphans: {left}"
    finally:
        _kill(up, children)


@pytest.mark.slow
def test_up_on_an_external_redis_stops_on_sigterm(tmp_path: Path, redis_url: str) -> None:
    """FRESHNETS_REDIS_URL: no Redis of its own; SIGTERM stops it like Ctrl-C."""
    up, log, port = _start_up(tmp_path, FRESHNETS_REDIS_URL=redis_url)
    children: set[int] = set()
    try:
        assert f"redis: {redis_url}" in log.read_text()
        children = _children(up.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]
        assert not any(b"redis-server" in c for c in commands), commands
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=90) == 0, log.read_text()
        assert [pid for pid in children if _alive(pid)] == []
    finally:
        _kill(up, children)
