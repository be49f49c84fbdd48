"""Alembic is the only way the schema is made: the migrated schema is exactly the ORM's, and each
revision downgrades without losing the rows it did not add."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, select, text
from sqlalchemy.orm import Session

from app.db.engine import make_engine
from app.db.migrate import alembic_config, upgrade
from app.db.models import Base, EpochMetric, Job, Owner

from ..postgres import postgres_database
from .conftest import BACKENDS


def _not_a_sqlite_fk(obj: object, name: object, type_: str, reflected: bool, other: object) -> bool:
    return type_ != "foreign_key_constraint"


def _sqlite_foreign_keys(conn: Connection) -> set[tuple[str, str, str, str, str]]:
    """(table, column, referred table, referred column, ON DELETE) from SQLite itself: SQLAlchemy
    reads the name and actions of table-level FOREIGN KEY clauses only, not of a column's
    REFERENCES clause, the only kind ALTER TABLE ADD COLUMN can add (migration 0003)."""
    found = set()
    for table in Base.metadata.tables:
        for row in conn.exec_driver_sql(f'PRAGMA foreign_key_list("{table}")').mappings():
            found.add((table, row["from"], row["table"], row["to"], row["on_delete"]))
    return found


def _model_foreign_keys() -> set[tuple[str, str, str, str, str]]:
    return {
        (table.name, fk.parent.name, fk.column.table.name, fk.column.name,
         (fk.ondelete or "NO ACTION").upper())
        for table in Base.metadata.tables.values()
        for fk in table.foreign_keys
    }  # fmt: skip


def test_migration_matches_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    sqlite = database_url.startswith("sqlite")
    try:
        with engine.connect() as conn:
            opts: dict[str, object] = {"compare_type": True}
            if sqlite:  # foreign keys are compared below, through SQLite's own pragma
                opts["include_object"] = _not_a_sqlite_fk
            context = MigrationContext.configure(conn, opts=opts)
            diff = compare_metadata(context, Base.metadata)
            tables = set(inspect(conn).get_table_names())
            foreign_keys = _sqlite_foreign_keys(conn) if sqlite else None
    finally:
        engine.dispose()
    assert diff == [], diff
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    if foreign_keys is not None:
        assert foreign_keys == _model_foreign_keys()


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database nothing has migrated yet (the shared fixtures' are already at head)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with postgres_database("fn_migrate") as url:
        yield url


def _alices_job(session: Session, **fields: object) -> Job:
    """A queued freshnets job of a new owner, with ``fields`` set, flushed (not committed)."""
    owner = Owner(name="alice")
    session.add(owner)
    session.flush()
    job = Job(
        owner_id=owner.id, dataset="digits", architecture={"layers": []}, method="freshnets",
        compression=0.125, **fields,
    )  # fmt: skip
    session.add(job)
    session.flush()
    return job


def test_0002_model_options_up_down_up_keeps_the_jobs(empty_url: str) -> None:
    """Down to 0001 drops only the column: the job and its metrics stay (a table copy on SQLite
    with foreign keys on would have cascaded them away)."""
    upgrade(empty_url)
    engine = make_engine(empty_url)  # the app's engine: SQLite foreign keys on
    try:
        with Session(engine) as session:
            job = _alices_job(
                session,
                model_options={"allocation": None, "budget_policy": {"kind": "conv-boost"}},
            )
            session.add(
                EpochMetric(
                    job_id=job.id, epoch=1, train_loss=1.0, train_accuracy=0.5,
                    learning_rate=0.1, seconds=1.0,
                )
            )  # fmt: skip
            session.commit()
            job_id = job.id

        command.downgrade(alembic_config(empty_url), "0001")
        with engine.connect() as conn:
            assert "model_options" not in {c["name"] for c in inspect(conn).get_columns("jobs")}
            assert conn.scalar(text("SELECT count(*) FROM jobs")) == 1
            assert conn.scalar(text("SELECT count(*) FROM epoch_metrics")) == 1

        upgrade(empty_url)
        with Session(engine) as session:
            assert session.scalar(select(Job.model_options).where(Job.id == job_id)) is None
            assert session.scalar(select(EpochMetric.job_id)) == job_id
    finally:
        engine.dispose()


def test_0004_names_down_and_up_keeps_the_rows(empty_url: str) -> None:
    """Down to 0003 drops the labels only; up again, the rows are there without them."""
    upgrade(empty_url)
    engine = make_engine(empty_url)
    try:
        with Session(engine) as session:
            job = _alices_job(session, name="first try")
            session.commit()
            job_id = job.id

        command.downgrade(alembic_config(empty_url), "0003")
        with engine.connect() as conn:
            for table in ("jobs", "models"):
                assert "name" not in {c["name"] for c in inspect(conn).get_columns(table)}
            assert conn.scalar(text("SELECT count(*) FROM jobs")) == 1

        upgrade(empty_url)
        with Session(engine) as session:
            assert session.scalar(select(Job.name).where(Job.id == job_id)) is None
    finally:
        engine.dispose()
