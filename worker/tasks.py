"""The training task: claim a job in the database, train it with freshcore, register its model.

Idempotent by job id. The claim is a conditional UPDATE, so of any number of deliveries of one
job exactly one worker trains it at a time; a job already final, or held by a worker whose heart
still beats, is skipped. Each epoch writes its metrics, the checkpoint, the progress and the
heartbeat in one transaction, so a redelivered job resumes after its last finished epoch. The
model and the `succeeded` state are written in one transaction too, and `models.job_id` is unique:
one job, one model, however often it is delivered.
"""

import hashlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from celery.exceptions import Reject
from celery.worker import state as worker_state
from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

import freshcore
from app.db.engine import get_sessionmaker
from app.db.models import (
    Checkpoint,
    DatasetBlob,
    EpochMetric,
    Job,
    JobState,
    Model,
    ModelBlob,
    UserDataset,
    utcnow,
)
from app.limits import upload_limits
from app.settings import get_settings
from freshcore import data as fdata
from freshcore.train import CheckpointError, TrainingError
from worker.celery_app import TRAIN_TASK, celery_app

log = logging.getLogger(__name__)

# should_stop() reads the cancel flag at most this often (seconds): it runs between batches.
CANCEL_POLL_S = 1.0
# Within an epoch the job's progress is written at most this often (seconds).
PROGRESS_EVERY_S = 1.0


class JobFailed(Exception):
    """The job cannot succeed; the message is stored as the job's error for its owner to read."""


class LostClaim(Exception):
    """Another worker took this job over (ours looked dead) or it was finalised elsewhere."""


def worker_id() -> str:
    """Who holds a claim: host and process, so a pool child is told apart from its siblings."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _session() -> Session:
    return get_sessionmaker()()


def claim(job_id: str, me: str) -> bool:
    """queued, or running with a stale heartbeat -> running by `me`; False if not ours to run."""
    now = utcnow()
    stale = now - timedelta(seconds=get_settings().heartbeat_timeout_s)
    claimable = or_(
        Job.state == JobState.queued,
        and_(
            Job.state == JobState.running,
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
        ),
    )
    with _session() as session:
        # A cancel that arrived while the job waited: finish it without training.
        cancelled = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.cancel_requested.is_(True), claimable)
            .values(state=JobState.cancelled, finished_at=now, worker=None)
        )
        if cancelled.rowcount:
            session.execute(Checkpoint.__table__.delete().where(Checkpoint.job_id == job_id))
            session.commit()
            return False
        claimed = session.execute(
            update(Job)
            .where(Job.id == job_id, claimable)
            .values(
                state=JobState.running,
                worker=me,
                heartbeat_at=now,
                attempts=Job.attempts + 1,
                started_at=now,
                error=None,
            )
        )
        session.commit()
        return claimed.rowcount == 1


def _still_mine(job_id: str, me: str) -> Any:
    return and_(Job.id == job_id, Job.worker == me, Job.state == JobState.running)


def update_mine(session: Session, job_id: str, me: str, **values: Any) -> bool:
    """UPDATE the job row only while `me` holds its running claim; False when it does not."""
    result = session.execute(update(Job).where(_still_mine(job_id, me)).values(**values))
    return result.rowcount == 1


def touch(job_id: str, me: str, **values: Any) -> bool:
    """`update_mine` in a transaction of its own (heartbeat, progress within an epoch)."""
    with _session() as session:
        mine = update_mine(session, job_id, me, **values)
        session.commit()
    return mine


class Heartbeat(threading.Thread):
    """Beats the job's heartbeat while it trains, so a long epoch never looks like a dead worker."""

    def __init__(self, job_id: str, me: str) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id, self.me = job_id, me
        self.interval = max(0.5, min(get_settings().heartbeat_timeout_s / 4, 15.0))
        self.lost = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                if not touch(self.job_id, self.me, heartbeat_at=utcnow()):
                    self.lost.set()
                    return
            except DBAPIError:
                log.warning("heartbeat for job %s failed; retrying", self.job_id, exc_info=True)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


@dataclass
class StopFlags:
    """Why training was asked to stop between batches."""

    cancel: bool = False
    lost: bool = False
    shutdown: bool = False

    def any(self) -> bool:
        return self.cancel or self.lost or self.shutdown


def _shutting_down() -> bool:
    """Celery's warm/cold shutdown flags hold an exit code (0 included) once set."""
    return any(
        flag is not None and flag is not False
        for flag in (worker_state.should_stop, worker_state.should_terminate)
    )


def make_should_stop(job_id: str, me: str, beat: Heartbeat, flags: StopFlags) -> Callable[[], bool]:
    """Cheap between batches: reads the job row at most once per `CANCEL_POLL_S`."""
    last = 0.0

    def should_stop() -> bool:
        nonlocal last
        if _shutting_down():
            flags.shutdown = True
        if beat.lost.is_set():
            flags.lost = True
        now = time.monotonic()
        if not flags.any() and now - last >= CANCEL_POLL_S:
            last = now
            with _session() as session:
                row = session.execute(
                    select(Job.state, Job.worker, Job.cancel_requested).where(Job.id == job_id)
                ).one_or_none()
            if row is None or row.state != JobState.running or row.worker != me:
                flags.lost = True
            elif row.cancel_requested:
                flags.cancel = True
        return flags.any()

    return should_stop


class BatchProgress:
    """`on_batch`: the job's progress fraction within an epoch, written at most once per
    `PROGRESS_EVERY_S`, so a job does not sit at 0 through its first (long) epoch."""

    def __init__(self, job_id: str, me: str, total_epochs: int, flags: StopFlags) -> None:
        self.job_id, self.me, self.flags = job_id, me, flags
        self.total_epochs = max(1, total_epochs)
        self.epoch = 1  # the epoch the next batches belong to
        self._last = -math.inf

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        # The epoch's end is written with its metrics (`write_epoch`).
        if done >= total or now - self._last < PROGRESS_EVERY_S or self.flags.any():
            return
        self._last = now
        fraction = min(1.0, (self.epoch - 1 + done / total) / self.total_epochs)
        try:
            if not touch(self.job_id, self.me, progress=fraction, heartbeat_at=utcnow()):
                self.flags.lost = True  # should_stop() ends the run at the next batch
        except DBAPIError:  # progress is a courtesy: a database hiccup must not end training
            log.warning("progress of job %s not written", self.job_id, exc_info=True)


def load_dataset(dataset: str) -> fdata.Dataset:
    """A built-in data set by name, or an upload (by id) cached on disk under its sha256."""
    settings = get_settings()
    with _session() as session:
        upload = session.get(UserDataset, dataset)
        if upload is None:
            try:
                available = fdata.get_info(dataset, cache_dir=settings.cache_dir).available
            except fdata.DatasetNotFound as exc:
                raise JobFailed(f"data set {dataset!r} not found") from exc
            if not available:  # a worker downloads nothing: fetching is an operator's choice
                raise JobFailed(
                    f"data set {dataset!r} is not on this worker: "
                    f"run `freshnets datasets fetch {dataset}` there"
                )
            try:
                return fdata.load(dataset, cache_dir=settings.cache_dir)
            except fdata.DatasetUnavailable as exc:
                raise JobFailed(f"data set {dataset!r} cannot be read here: {exc}") from exc
        path = settings.cache_dir / "uploads" / f"{upload.sha256}.npz"
        if not path.exists():
            blob = session.get(DatasetBlob, upload.id)
            if blob is None:
                raise JobFailed(f"the uploaded data set {upload.name!r} has no data (deleted?)")
            _write_verified(path, blob.data, upload.sha256)
        name = upload.name
    try:
        # The bounds the API checked the upload against.
        return fdata.load_npz(path, name=name, limits=upload_limits(settings))
    except fdata.UploadError as exc:
        raise JobFailed(f"the uploaded data set {name!r} is invalid: {exc}") from exc


def _write_verified(path: Path, data: bytes, sha256: str) -> None:
    if hashlib.sha256(data).hexdigest() != sha256:
        raise JobFailed("the uploaded data set's bytes do not match their sha256")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic: another worker never reads half a file


def load_teacher(job: Job) -> freshcore.FreshModel:
    """The job's teacher from its stored file, under the bounds the API checked it against.

    The teacher may have gone since the job was queued (the API refuses to delete the teacher
    of an unfinished job, but a job can outlive a race): that fails the job, it does not retry.
    """
    settings = get_settings()
    if job.teacher_model_id is None:
        raise JobFailed("the teacher model is gone (deleted?): queue the job again with another")
    with _session() as session:
        data = session.scalar(
            select(ModelBlob.data)
            .join(Model, Model.id == ModelBlob.model_id)
            .where(Model.id == job.teacher_model_id, Model.owner_id == job.owner_id)
        )
    if data is None:
        raise JobFailed(f"the teacher model {job.teacher_model_id} is gone (deleted?)")
    if len(data) > settings.max_model_bytes:
        raise JobFailed(
            f"the teacher model {job.teacher_model_id} is {len(data):,} bytes, over "
            f"FRESHNETS_MAX_MODEL_BYTES ({settings.max_model_bytes:,})"
        )
    try:
        return freshcore.from_bytes(data, max_virtual_weights=settings.max_virtual_weights)
    except ValueError as exc:  # ModelFormatError
        raise JobFailed(f"the teacher model {job.teacher_model_id} cannot be read: {exc}") from exc


def build_student(
    job: Job, info: fdata.DatasetInfo, teacher: freshcore.FreshModel | None
) -> freshcore.FreshModel:
    """The untrained model: freshcore's initialisation, or the projection of a dense teacher."""
    options = job.model_options or {}  # none given: freshcore's defaults
    kwargs = {
        "allocation": options.get("allocation"),
        "budget_policy": options.get("budget_policy"),
        "width": options.get("width", 1.0),
        "balanced": options.get("balanced", False),
    }
    try:
        if job.init == "project":
            assert teacher is not None  # load_teacher ran for this job
            return freshcore.compress_dense(
                teacher, job.method, job.compression, job.seed, **kwargs
            )
        return freshcore.build_model(
            job.architecture,
            method=job.method,
            compression=job.compression,
            seed=job.seed,
            input_shape=tuple(info.input_shape),
            num_classes=info.num_classes,
            **kwargs,
        )
    except (ValueError, TypeError, KeyError) as exc:
        how = "project the teacher onto" if job.init == "project" else "build"
        raise JobFailed(f"cannot {how} the model for {info.name!r}: {exc}") from exc


def train_config(job: Job) -> freshcore.TrainConfig:
    """The job's training settings; the device is this worker's choice, not the submitter's."""
    settings = get_settings()
    fields = {"seed": job.seed, **job.training, "device": settings.device}
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise JobFailed("FRESHNETS_DEVICE=cuda but this worker has no CUDA device")
    try:
        return freshcore.TrainConfig.from_dict(fields)
    except (ValueError, TypeError) as exc:
        raise JobFailed(f"bad training settings: {exc}") from exc


def write_epoch(job_id: str, me: str, metrics: Any, checkpoint: bytes, total_epochs: int) -> None:
    """Metrics, checkpoint, progress and heartbeat of one finished epoch, in one transaction."""
    now = utcnow()
    values = {
        "train_loss": metrics.train_loss,
        "train_accuracy": metrics.train_accuracy,
        "val_loss": metrics.val_loss,
        "val_accuracy": metrics.val_accuracy,
        "learning_rate": metrics.learning_rate,
        "seconds": metrics.seconds,
        "created_at": now,
    }
    with _session() as session:
        moved = update_mine(
            session,
            job_id,
            me,
            epoch=metrics.epoch,
            total_epochs=total_epochs,
            progress=min(1.0, metrics.epoch / max(1, total_epochs)),
            heartbeat_at=now,
        )
        if not moved:
            session.rollback()
            raise LostClaim(job_id)
        row = session.scalar(
            select(EpochMetric).where(
                EpochMetric.job_id == job_id, EpochMetric.epoch == metrics.epoch
            )
        )
        if row is None:
            session.add(EpochMetric(job_id=job_id, epoch=metrics.epoch, **values))
        else:
            for key, value in values.items():
                setattr(row, key, value)
        ckpt = session.get(Checkpoint, job_id)
        if ckpt is None:
            session.add(Checkpoint(job_id=job_id, epoch=metrics.epoch, data=checkpoint))
        else:
            ckpt.epoch, ckpt.data, ckpt.updated_at = metrics.epoch, checkpoint, now
        session.commit()


def finish(job_id: str, me: str, state: JobState, error: str | None = None) -> bool:
    """Final state (not succeeded: see `register_model`), only if we still hold the claim."""
    with _session() as session:
        done = update_mine(
            session, job_id, me, state=state, error=error, finished_at=utcnow(), heartbeat_at=None
        )
        if done:
            session.execute(Checkpoint.__table__.delete().where(Checkpoint.job_id == job_id))
        session.commit()
        return done


def release(job_id: str, me: str) -> None:
    """Hand the job back (this worker is shutting down): queued again, checkpoint kept."""
    touch(job_id, me, state=JobState.queued, worker=None, heartbeat_at=None)


def register_model(job: Job, me: str, model: freshcore.FreshModel, result: Any) -> str:
    """Model + blob + `succeeded`, one transaction; a second model for one job cannot exist."""
    settings = get_settings()
    blob = freshcore.to_bytes(model)
    if len(blob) > settings.max_model_bytes:
        raise JobFailed(
            f"the trained model is {len(blob)} bytes, over FRESHNETS_MAX_MODEL_BYTES="
            f"{settings.max_model_bytes}; ask for a stronger compression"
        )
    report = freshcore.size_report(model)
    now = utcnow()
    with _session() as session:
        done = update_mine(
            session,
            job.id,
            me,
            state=JobState.succeeded,
            progress=1.0,
            finished_at=now,
            heartbeat_at=None,
            error=None,
        )
        if not done:
            session.rollback()
            raise LostClaim(job.id)
        row = Model(
            owner_id=job.owner_id,
            job_id=job.id,
            name=job.name,
            dataset=job.dataset,
            architecture_name=job.architecture_name,
            method=job.method,
            compression_requested=job.compression,
            compression_achieved=report.ratio,
            stored_parameters=report.stored_parameters,
            virtual_parameters=report.virtual_weights,
            compact_bytes=len(blob),  # the real file: tensors and its JSON header
            dense_bytes=report.dense_bytes,
            test_accuracy=result.test_accuracy,
            size_report=report.to_dict(),
            created_at=now,
        )
        session.add(row)
        session.flush()
        session.add(ModelBlob(model_id=row.id, data=blob))
        session.execute(Checkpoint.__table__.delete().where(Checkpoint.job_id == job.id))
        try:
            session.commit()
        except IntegrityError as exc:  # models.job_id is unique: someone registered it first
            session.rollback()
            raise LostClaim(job.id) from exc
        return row.id


_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _is_oom(exc: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; torch's CPU allocator a RuntimeError that says so."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXTS)


def _check_finite(metrics: Any) -> None:
    for name in ("train_loss", "val_loss"):
        value = getattr(metrics, name, None)
        if value is not None and not math.isfinite(value):
            raise JobFailed(
                f"training diverged: {name} is {value} at epoch {metrics.epoch}; "
                "try a lower learning rate"
            )


def train_claimed(job_id: str, me: str, beat: Heartbeat) -> str:
    """Train a job this worker has claimed; returns the outcome (for the log)."""
    with _session() as session:
        job = session.get(Job, job_id)
        assert job is not None  # we hold its claim
        ckpt = session.get(Checkpoint, job_id)
        resume = ckpt.data if ckpt is not None else None
        resume_epoch = ckpt.epoch if ckpt is not None else 0
        session.expunge_all()

    settings = get_settings()
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)

    dataset = load_dataset(job.dataset)
    info = dataset.info
    config = train_config(job)
    # A resumed job restores its checkpoint over the projection; the teacher still distils.
    wants_teacher = job.init == "project" or (
        job.teacher_model_id is not None and config.distill_alpha > 0
    )
    teacher = load_teacher(job) if wants_teacher else None
    model = build_student(job, info, teacher)
    model.class_names = list(info.class_names) if info.class_names else None
    model.meta.update({"dataset": job.dataset, "job_id": job.id, "training": job.training})
    if teacher is not None:
        model.meta.update({"teacher_model_id": job.teacher_model_id, "init": job.init})
    distil_from = teacher if config.distill_alpha > 0 else None

    flags = StopFlags()
    progress = BatchProgress(job_id, me, config.epochs, flags)

    def on_epoch(metrics: Any, checkpoint: Callable[[], bytes]) -> bool:
        _check_finite(metrics)
        write_epoch(job_id, me, metrics, checkpoint(), config.epochs)
        progress.epoch = metrics.epoch + 1
        return False

    should_stop = make_should_stop(job_id, me, beat, flags)

    def run(resume: bytes | None) -> freshcore.TrainResult:
        progress.epoch = (resume_epoch if resume is not None else 0) + 1
        try:
            return freshcore.train(
                model,
                dataset,
                config,
                on_epoch,
                should_stop=should_stop,
                on_batch=progress,
                teacher=distil_from,
                resume=resume,
            )
        except TrainingError as exc:
            raise JobFailed(f"training diverged: {exc}") from exc

    try:
        result = run(resume)
    except CheckpointError:
        if resume is None:
            raise
        # A checkpoint this code cannot continue (another version wrote it): start over.
        log.warning("job %s: checkpoint unusable, training from scratch", job_id, exc_info=True)
        result = run(None)

    if flags.lost:
        raise LostClaim(job_id)
    if flags.cancel:
        finish(job_id, me, JobState.cancelled)
        return "cancelled"
    if flags.shutdown:
        release(job_id, me)
        log.info("job %s: handed back (worker shutting down); its checkpoint is kept", job_id)
        raise Reject("worker shutting down: job handed back", requeue=True)
    if result.test_loss is not None and not math.isfinite(result.test_loss):
        raise JobFailed("training diverged: the test loss is not a number")
    model.meta["test_accuracy"] = result.test_accuracy
    model_id = register_model(job, me, model, result)
    return f"succeeded: model {model_id}"


def run_job(job_id: str) -> str:
    """Claim, train, record. A failure that is the job's fault ends it `failed` with a reason."""
    me = worker_id()
    if not claim(job_id, me):
        log.info("job %s: not claimable (final, cancelled or held by a live worker)", job_id)
        return "skipped"
    log.info("job %s: claimed by %s", job_id, me)
    # Beating from the claim on: loading a data set or importing a library can take seconds.
    beat = Heartbeat(job_id, me)
    beat.start()
    try:
        outcome = train_claimed(job_id, me, beat)
    except LostClaim:
        log.warning("job %s: another worker took it over; this run's work is dropped", job_id)
        return "lost"
    except JobFailed as exc:
        finish(job_id, me, JobState.failed, str(exc))
        return f"failed: {exc}"
    except (Reject, DBAPIError):
        # Database away: leave the claim; its heartbeat goes stale and the reconciler retries.
        raise
    except Exception as exc:
        if _is_oom(exc):
            message = (
                f"out of memory while training ({type(exc).__name__}); "
                "try a smaller batch size, a smaller model or a stronger compression"
            )
        else:
            log.exception("job %s: unexpected error", job_id)
            message = f"training error: {type(exc).__name__}: {exc}"
        finish(job_id, me, JobState.failed, message)
        return f"failed: {message}"
    finally:
        beat.stop()
    log.info("job %s: %s", job_id, outcome)
    return outcome


@celery_app.task(name=TRAIN_TASK)
def train_job(job_id: str) -> str:
    """The message carries only the job id: the row says what to train."""
    return run_job(job_id)
