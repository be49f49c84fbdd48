"""Real parts for the serving tests: a migrated SQLite file per test, two owners with keys, real
FreshNets models (an untrained mnist-cnn for plumbing, a briefly trained one on sklearn's digits
for meaningful predictions) stored as their compact bytes, and the app on top."""

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from sklearn.datasets import load_digits
from sqlalchemy.orm import Session, sessionmaker

import freshcore
from app.db.engine import make_engine
from app.db.migrate import upgrade
from app.db.models import Model, ModelBlob, Owner
from app.main import create_app
from app.security import create_api_key
from app.settings import Settings

# sklearn's digits: 8x8 grey images, values 0..16. A tiny spec keeps training to a second.
DIGITS_SPEC: dict[str, Any] = {
    "name": "digits-tiny",
    "input_shape": (1, 8, 8),
    "num_classes": 10,
    "layers": [
        {"type": "conv", "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"type": "relu"},
        {"type": "pool", "kind": "max", "kernel_size": 2},
        {"type": "fc", "out_features": 10},
    ],
}
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, 8, 8) float32 in [0, 1] and int labels."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    return x, data.target.astype(np.int64)


@pytest.fixture(scope="session")
def digits_model(digits: tuple[np.ndarray, np.ndarray]) -> freshcore.FreshModel:
    """A FreshNets model (1/4) trained full-batch on the first 1500 digits (held out: the
    other 297, about 88% right). One torch thread: faster on a shared two-core machine."""
    x, y = digits
    model = freshcore.build_model(DIGITS_SPEC, method="freshnets", compression=1 / 4, seed=0)
    model.set_normalization([float(x[:1500].mean())], [float(x[:1500].std())])
    model.class_names = list(DIGIT_NAMES)
    xt, yt = torch.from_numpy(x[:1500]), torch.from_numpy(y[:1500])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(40):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def mnist_model() -> freshcore.FreshModel:
    """The mnist-cnn preset at 1/64, untrained: real size and shapes, for plumbing."""
    return freshcore.build_model("mnist-cnn", method="freshnets", compression=1 / 64, seed=1)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serving-template") / "freshnets.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def settings(tmp_path: Path, sqlite_template: Path) -> Settings:
    path = tmp_path / "freshnets.db"
    shutil.copyfile(sqlite_template, path)
    return Settings(data_dir=tmp_path, database_url=f"sqlite:///{path}")


@pytest.fixture
def session_factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.effective_database_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture
def keys(session_factory: sessionmaker[Session]) -> dict[str, str]:
    with session_factory() as session:
        return {name: create_api_key(session, name) for name in ("alice", "bob")}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


StoreModel = Callable[..., str]


@pytest.fixture
def store_model(session_factory: sessionmaker[Session], keys: dict[str, str]) -> StoreModel:
    """Save a model's compact bytes as `owner`'s model row; returns its id."""

    def store(model: freshcore.FreshModel, owner: str = "alice") -> str:
        data = freshcore.to_bytes(model)
        stored = sum(p.numel() for p in model.parameters())
        with session_factory() as session:
            owner_id = session.query(Owner.id).filter(Owner.name == owner).scalar()
            row = Model(
                owner_id=owner_id,
                dataset="digits",
                architecture_name=model.spec.name,
                method=model.method,
                compression_requested=model.compression,
                compression_achieved=model.compression,
                stored_parameters=stored,
                virtual_parameters=stored,
                compact_bytes=len(data),
                dense_bytes=0,
            )
            session.add(row)
            session.flush()
            session.add(ModelBlob(model_id=row.id, data=data))
            session.commit()
            return row.id

    return store


MakeApp = Callable[..., FastAPI]


@pytest.fixture
def make_app(settings: Settings, keys: dict[str, str]) -> MakeApp:
    """The real app on the test database, with serving settings overridden per test."""

    def make(**overrides: Any) -> FastAPI:
        return create_app(settings.model_copy(update=overrides))

    return make
