"""`freshnets db upgrade` and `freshnets keys create` as a user runs them, from another folder."""

import os
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect

from app.main import create_app
from app.settings import Settings

from ..owners import bearer

FRESHNETS = Path(sys.executable).parent / "freshnets"


def run(args: list[str], data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHNETS_")}
    env["FRESHNETS_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [str(FRESHNETS), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_db_upgrade_and_keys_create_from_any_folder(tmp_path: Path) -> None:
    data_dir, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run(["db", "upgrade"], data_dir, elsewhere)
    assert done.returncode == 0, done.stderr
    url = f"sqlite:///{data_dir / 'freshnets.db'}"
    engine = create_engine(url)
    assert {"jobs", "models", "api_keys"} <= set(inspect(engine).get_table_names())
    engine.dispose()
    assert run(["db", "upgrade"], data_dir, elsewhere).returncode == 0  # idempotent

    created = run(["keys", "create", "dora"], data_dir, elsewhere)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("fn_") and len(key) > 30

    app = create_app(Settings(_env_file=None, data_dir=data_dir))  # type: ignore[call-arg]
    client = TestClient(app)
    assert client.get("/v1/jobs", headers=bearer(key)).status_code == 200
    assert run(["keys", "revoke", key], data_dir, elsewhere).returncode == 0
    assert client.get("/v1/jobs", headers=bearer(key)).status_code == 401
    app.state.sessionmaker.kw["bind"].dispose()

    refused = run(["keys", "create", " "], data_dir, elsewhere)
    assert refused.returncode != 0 and "NAME" in refused.stderr
