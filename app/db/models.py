"""ORM models: the database is the source of truth for jobs, metrics, checkpoints and models."""

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ID_CHARS = 32  # new_id(): lower-case hex digits


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC, aware on the way out on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        # A naive value is taken as UTC (datetime.utcnow()'s meaning).
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class JobState(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINAL_STATES = (JobState.succeeded, JobState.failed, JobState.cancelled)


class Owner(Base):
    __tablename__ = "owners"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    keys: Mapped[list["ApiKey"]] = relationship(back_populates="owner")


class ApiKey(Base):
    """Only the SHA-256 of a key is kept; `prefix` lets a person tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    owner: Mapped[Owner] = relationship(back_populates="keys")


class UserDataset(Base):
    """An uploaded `.npz`; the bytes live in `dataset_blobs` so listing stays cheap."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)  # shape, classes, sizes
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetBlob(Base):
    __tablename__ = "dataset_blobs"

    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    # A built-in data set's name, or a UserDataset id.
    dataset: Mapped[str] = mapped_column(String(200))
    architecture_name: Mapped[str | None] = mapped_column(String(200), default=None)
    architecture: Mapped[dict[str, Any]] = mapped_column()  # the resolved spec
    method: Mapped[str] = mapped_column(String(40))
    compression: Mapped[float] = mapped_column(Float)
    training: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    # freshcore's parsed allocation and budget policy; NULL (not JSON null): none given.
    model_options: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), default=None
    )
    # The model this job learns from (distillation) or starts from (init "project"). A model an
    # unfinished job names cannot be deleted (409); once the job is final, deleting it leaves NULL.
    # use_alter: models.job_id points back at jobs, and the cycle must not stop a sort of tables.
    teacher_model_id: Mapped[str | None] = mapped_column(
        ForeignKey(
            "models.id", ondelete="SET NULL", use_alter=True, name="fk_jobs_teacher_model_id"
        ),
        index=True,
        default=None,
    )
    # "scratch" (freshcore's initialisation) or "project" (freshcore.compress_dense of the teacher).
    init: Mapped[str] = mapped_column(String(16), default="scratch", server_default="scratch")
    # The owner's label, copied to the model (which may be renamed); not unique.
    name: Mapped[str | None] = mapped_column(String(200), default=None)

    state: Mapped[JobState] = mapped_column(
        Enum(JobState, native_enum=False, length=16), default=JobState.queued, index=True
    )
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    total_epochs: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    metrics: Mapped[list["EpochMetric"]] = relationship(
        back_populates="job", order_by="EpochMetric.epoch", cascade="all, delete-orphan"
    )


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(Float)
    train_accuracy: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float, default=None)
    val_accuracy: Mapped[float | None] = mapped_column(Float, default=None)
    learning_rate: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="metrics")


class Checkpoint(Base):
    """The last finished epoch of a running job, so a redelivered job resumes there."""

    __tablename__ = "checkpoints"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    # unique: a job, however often redelivered, ends with exactly one model.
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True, default=None
    )
    dataset: Mapped[str] = mapped_column(String(200))
    architecture_name: Mapped[str | None] = mapped_column(String(200), default=None)
    method: Mapped[str] = mapped_column(String(40))
    compression_requested: Mapped[float] = mapped_column(Float)
    compression_achieved: Mapped[float] = mapped_column(Float)
    stored_parameters: Mapped[int] = mapped_column(Integer)
    virtual_parameters: Mapped[int] = mapped_column(Integer)
    compact_bytes: Mapped[int] = mapped_column(Integer)
    dense_bytes: Mapped[int] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(200), default=None)  # the owner's label
    test_accuracy: Mapped[float | None] = mapped_column(Float, default=None)
    size_report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelBlob(Base):
    """The compact file (`freshcore.to_bytes`), apart so listing models reads no blobs."""

    __tablename__ = "model_blobs"

    model_id: Mapped[str] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)
