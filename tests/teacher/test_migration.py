"""Migration 0003 (jobs.teacher_model_id, jobs.init): down to 0002 drops the two columns and
nothing else, up again gives every job init "scratch" and no teacher; the foreign key it adds
clears a job's teacher when the model goes, and keeps the job."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from app.db.engine import make_engine
from app.db.migrate import alembic_config, upgrade
from app.db.models import EpochMetric, Job, Model, Owner

from ..postgres import postgres_database
from .conftest import BACKENDS, TINY_SPEC, store_model


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with postgres_database("fn_teacher") as url:
        yield url


def test_0003_down_and_up_keeps_the_rows(empty_url: str) -> None:
    upgrade(empty_url)
    engine = make_engine(empty_url)  # the app's engine: SQLite foreign keys on
    try:
        with Session(engine) as session:
            owner = Owner(name="alice")
            session.add(owner)
            session.commit()
            teacher = store_model(session, owner.id)
            student = Job(
                owner_id=owner.id, dataset="digits", architecture=TINY_SPEC, method="freshnets",
                compression=0.125, teacher_model_id=teacher, init="project",
            )  # fmt: skip
            session.add(student)
            session.flush()
            session.add(
                EpochMetric(
                    job_id=student.id, epoch=1, train_loss=1.0, train_accuracy=0.5,
                    learning_rate=0.1, seconds=1.0,
                )
            )  # fmt: skip
            session.commit()
            student_id = student.id

        command.downgrade(alembic_config(empty_url), "0002")
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("jobs")}
            assert not {"teacher_model_id", "init"} & columns and "model_options" in columns
            assert "ix_jobs_teacher_model_id" not in {
                i["name"] for i in inspect(conn).get_indexes("jobs")
            }
            counts = {
                table: conn.scalar(text(f"SELECT count(*) FROM {table}"))
                for table in ("jobs", "models", "model_blobs", "epoch_metrics")
            }
            assert counts == {"jobs": 2, "models": 1, "model_blobs": 1, "epoch_metrics": 1}

        upgrade(empty_url)
        with Session(engine) as session:
            job = session.get(Job, student_id)
            assert job is not None and (job.teacher_model_id, job.init) == (None, "scratch")
            assert session.scalar(select(EpochMetric.job_id)) == student_id

            # The foreign key is back: a job names the model again, and deleting the model
            # clears the job's teacher (ON DELETE SET NULL) without touching the job.
            job.teacher_model_id = teacher
            session.commit()
            session.delete(session.get(Model, teacher))
            session.commit()
            session.expire_all()
            job = session.get(Job, student_id)
            assert job is not None and job.teacher_model_id is None
            assert session.scalar(select(EpochMetric.job_id)) == student_id
    finally:
        engine.dispose()
