"""Request and response bodies of the HTTP API (apart from the ORM models)."""

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from app.db.models import ID_CHARS, JobState

T = TypeVar("T")


# How a job's student starts: freshcore's initialisation, or the projection of a dense teacher.
JobInit = Literal["scratch", "project"]

# PostgreSQL text cannot hold NUL: every string that reaches a column or a query refuses it.
NO_NUL = r"^[^\x00]*$"
# A label of the owner's for a job and its model: trimmed, not unique, empty is none.
Label = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200, pattern=NO_NUL)]
LABEL_DESCRIPTION = "Your label for the job and its model (not unique; empty: none)."
# The start of a resource id (all of it at most): how short ids are matched.
ID_PREFIX = f"^[0-9a-f]{{1,{ID_CHARS}}}$"


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class DatasetOut(BaseModel):
    id: str = Field(description="A built-in data set's name, or an uploaded data set's id.")
    name: str
    builtin: bool
    title: str | None = None
    input_shape: tuple[int, int, int] | None = Field(None, description="(C, H, W)")
    num_classes: int | None = None
    class_names: list[str] | None = None
    train_size: int | None = None
    test_size: int | None = None
    source: str | None = None
    licence: str | None = None
    description: str | None = None
    available: bool = True
    size_bytes: int | None = None
    sha256: str | None = None
    created_at: datetime | None = None


class ArchitectureOut(BaseModel):
    name: str
    description: str | None = None
    input_shape: tuple[int, int, int]
    num_classes: int
    virtual_weights: int


class ModelOptions(BaseModel):
    """How freshcore spreads a job's budget; checked by freshcore's own parsers at request time.

    Both are JSON in freshcore's form (see `freshcore.build_model`): a name or an object. A job
    stores them as freshcore parsed them, so it records exactly what the worker builds.
    """

    model_config = ConfigDict(extra="forbid")

    allocation: str | dict[str, Any] | None = Field(
        None,
        description="Buckets per frequency band (freshnets only; other methods ignore it): "
        '"uniform", "exponential", "beta" or e.g. {"shape": "exponential", "decay": 0.5}; '
        '"min_rate": 0.1 also gives no buckets to the bands whose rate would fall under 0.1. '
        "None: exponential decay 0.5.",
    )
    budget_policy: str | dict[str, Any] | None = Field(
        None,
        description='Budget split across layers: None (the same factor per layer), "conv-boost" or '
        '{"kind": "conv-boost", "conv_factor": 4} (conv rate = factor x fc rate, capped at 1); '
        '"head_factor" and "stem_factor" also multiply the last and the first layer\'s rate.',
    )
    width: float | None = Field(
        None,
        exclude_if=lambda w: w is None,  # a job without one reads as before the option existed
        description="Hidden widths of the compressed network as a multiple of the "
        "architecture's, in (0, 1] (not for dense or equivalent): the same stored budget over "
        "fewer virtual weights; 0.25 was best at 1/64 on mnist-bg-img (docs/results.md). "
        "None: 1.",
    )
    balanced: StrictBool | None = Field(
        None,
        exclude_if=lambda b: b is None,
        description="Deal the hashed conv layers' weights (each frequency band's, for FreshNets) "
        "evenly to their buckets instead of hashing each one independently (freshnets, "
        "freshnets-uniform, hashednets): no bucket empty or crowded; with a narrow network "
        "(width) it helped every hashing method on mnist-allconv (docs/results/history.md, "
        "session 20). None: false.",
    )


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="A built-in name or an upload's id.",
    )
    architecture: str | dict[str, Any] = Field(
        description="A preset name (GET /v1/architectures) or an inline architecture spec."
    )
    method: str = Field("freshnets", description="One of freshcore.METHODS.")
    compression: float | str = Field(
        1 / 64, description='Stored / virtual parameters in (0, 1], a number or a string "1/64".'
    )
    training: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig fields (epochs, batch_size, optimizer, lr...); omitted: defaults.",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    model_options: ModelOptions | None = Field(
        None, description="Allocation and budget split; omitted: freshcore's defaults."
    )
    teacher_model_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="One of your models (usually a dense one) for the student to learn from: "
        "its softened outputs join the loss while training.distill_alpha > 0 (default 0.5).",
    )
    name: Label | None = Field(None, description=LABEL_DESCRIPTION)
    init: JobInit = Field(
        "scratch",
        description='"scratch": freshcore\'s initialisation; "project": start from the '
        "least-squares projection of the teacher (freshcore.compress_dense), which needs a "
        "dense teacher with the job's architecture.",
    )


class EpochMetricOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    learning_rate: float
    seconds: float
    created_at: datetime


class JobOut(BaseModel):
    id: str
    name: str | None = Field(description="The label given at submission (null: none).")
    state: JobState
    dataset: str = Field(description="A built-in data set's name, or an upload's id.")
    dataset_name: str | None = Field(
        description="The data set's name: a built-in's, or the upload's (null: upload deleted)."
    )
    architecture_name: str | None
    architecture: dict[str, Any]
    method: str
    compression: float
    training: dict[str, Any]
    seed: int
    model_options: ModelOptions | None = Field(
        description="As freshcore parsed them (null: none given, freshcore's defaults)."
    )
    teacher_model_id: str | None = Field(
        description="The teacher model (null: none, or it was deleted after the job ended)."
    )
    init: JobInit
    progress: float = Field(description="Fraction of the planned epochs done, in [0, 1].")
    epoch: int
    total_epochs: int
    latest_metrics: EpochMetricOut | None
    error: str | None
    cancel_requested: bool
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queued_seconds: float | None = Field(description="From creation to start (or to now).")
    run_seconds: float | None = Field(description="From start to finish (or to now).")
    model_id: str | None


class JobMetricsOut(BaseModel):
    job_id: str
    state: JobState
    epoch: int
    total_epochs: int
    items: list[EpochMetricOut]


class ModelOut(BaseModel):
    id: str
    name: str | None = Field(description="Its job's label, or the one given since (null: none).")
    job_id: str | None
    dataset: str = Field(description="A built-in data set's name, or an upload's id.")
    dataset_name: str | None = Field(
        description="The data set's name: a built-in's, or the upload's (null: upload deleted)."
    )
    architecture_name: str | None
    architecture: dict[str, Any] | None
    method: str
    compression_requested: float
    compression_achieved: float
    stored_parameters: int
    virtual_parameters: int
    compact_bytes: int
    dense_bytes: int
    test_accuracy: float | None
    size_report: dict[str, Any]
    created_at: datetime
    warm: bool = Field(description="Rebuilt and in the serving cache: predictions answer at once.")


class ModelUpdate(BaseModel):
    """What an owner may change of a model: its label."""

    model_config = ConfigDict(extra="forbid")

    name: Label | None = Field(description=LABEL_DESCRIPTION)


class UsageOut(BaseModel):
    """What the calling owner holds against its quotas (a limit of 0: none)."""

    owner: str = Field(description="The owner's name.")
    active_jobs: int = Field(description="Jobs queued or running.")
    max_active_jobs: int = Field(description="FRESHNETS_MAX_ACTIVE_JOBS.")
    uploads_bytes: int = Field(description="The owner's uploaded data set files.")
    models_bytes: int = Field(description="The owner's model files.")
    stored_bytes: int = Field(description="Uploads and models together.")
    max_owner_bytes: int = Field(description="FRESHNETS_MAX_OWNER_BYTES.")
    max_upload_bytes: int = Field(
        description="FRESHNETS_MAX_UPLOAD_BYTES: the largest data set file one upload may send."
    )
