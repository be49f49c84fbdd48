"""Training jobs: validate a request into a queued row, send the wake-up message, report, cancel."""

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import freshcore
from app import jobs_queue
from app.api import quotas
from app.api.deps import CurrentOwner, IdPrefix, NameContains, ResourceId, SessionDep, SettingsDep
from app.api.errors import invalid
from app.api.routes.datasets import dataset_names, find_dataset
from app.db.models import FINAL_STATES, EpochMetric, Job, JobState, Model, Owner
from app.limits import expected_model_bytes, max_train_threads
from app.schemas import EpochMetricOut, JobCreate, JobMetricsOut, JobOut, Page
from app.settings import Settings
from freshcore.build import parse_allocation, parse_balanced, parse_budget_policy, parse_width

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

NOT_FOUND = {404: {"description": "No such job (or another owner's)."}}


def _compression(value: float | str) -> float:
    try:
        c = freshcore.parse_compression(value) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError) as exc:
        raise invalid(("body", "compression"), str(exc)) from exc
    if not (math.isfinite(c) and 0 < c <= 1):
        raise invalid(("body", "compression"), f"must be in (0, 1], got {value!r}")
    return c


def _spec_invalid(exc: ValueError) -> Exception:
    """A 422 at architecture.layers.<i> when the error names a layer (SpecError does)."""
    layer = getattr(exc, "layer", None)
    loc = ("body", "architecture") + (("layers", layer) if layer is not None else ())
    return invalid(loc, str(exc))


def _spec(
    body: JobCreate, input_shape: tuple[int, int, int], num_classes: int, settings: Settings
) -> Any:
    """The shape-checked spec for this data set; a 422 naming the field or layer otherwise.

    A preset adapts to the data set's shape and classes; an inline spec must match them.
    """
    loc = ("body", "architecture")
    preset = isinstance(body.architecture, str)
    try:
        if preset:
            spec = freshcore.resolve_spec(body.architecture, input_shape, num_classes)
        else:
            spec = freshcore.resolve_spec(body.architecture)
    except ValueError as exc:  # SpecError, including pydantic's errors turned into one
        raise _spec_invalid(exc) from exc
    if spec.name and "\x00" in spec.name:
        raise invalid((*loc, "name"), "must not contain NUL characters")
    if tuple(spec.input_shape) != tuple(input_shape):
        raise invalid(
            (*loc, "input_shape"),
            f"{tuple(spec.input_shape)} does not match the data set's {tuple(input_shape)}",
        )
    if spec.num_classes != num_classes:
        raise invalid(
            (*loc, "num_classes"),
            f"{spec.num_classes} does not match the data set's {num_classes} classes",
        )
    try:
        spec.check(max_virtual_weights=settings.max_virtual_weights)
    except ValueError as exc:
        raise _spec_invalid(exc) from exc
    return spec


def _model_options(body: JobCreate) -> dict[str, Any] | None:
    """The options as freshcore parses them, so the row says exactly what the worker builds;
    None when none were given (freshcore's defaults). A 422 naming the option otherwise."""
    options = body.model_options
    if options is None:
        return None
    loc = ("body", "model_options")
    try:
        allocation = parse_allocation(options.allocation, body.method)
    except ValueError as exc:
        raise invalid((*loc, "allocation"), str(exc)) from exc
    try:
        budget_policy = parse_budget_policy(options.budget_policy)
    except ValueError as exc:
        raise invalid((*loc, "budget_policy"), str(exc)) from exc
    parsed = {"allocation": allocation, "budget_policy": budget_policy}
    if options.width is not None:
        try:
            parsed["width"] = parse_width(options.width, body.method)
        except ValueError as exc:
            raise invalid((*loc, "width"), str(exc)) from exc
    if options.balanced is not None:
        try:
            parsed["balanced"] = parse_balanced(options.balanced, body.method)
        except ValueError as exc:
            raise invalid((*loc, "balanced"), str(exc)) from exc
    return parsed


def _check_model_size(
    spec: Any,
    method: str,
    compression: float,
    seed: int,
    options: dict[str, Any] | None,
    settings: Settings,
) -> int:
    """The model's expected bytes. One that would be over FRESHNETS_MAX_MODEL_BYTES, or a
    compression the method cannot reach on this network, is refused now rather than after
    training."""
    options = options or {}
    try:
        expected = expected_model_bytes(
            spec,
            method,
            compression,
            seed,
            options.get("allocation"),
            options.get("budget_policy"),
            options.get("width", 1.0),
        )
    except ValueError as exc:
        raise invalid(("body", "compression"), str(exc)) from exc
    if expected > settings.max_model_bytes:
        # `dense` ignores the compression: only the architecture can make it smaller.
        field = "architecture" if method == "dense" else "compression"
        raise invalid(
            ("body", field),
            f"the model would store about {expected:,} bytes, over FRESHNETS_MAX_MODEL_BYTES "
            f"({settings.max_model_bytes:,}); ask for a stronger compression or a smaller "
            "architecture",
        )
    return expected


def _training(body: JobCreate, settings: Settings) -> dict[str, Any]:
    try:
        config = freshcore.TrainConfig.from_dict(body.training)
    except ValueError as exc:  # TrainConfigError names the field
        field = getattr(exc, "field", None)
        loc = ("body", "training") + ((field,) if field and field != "<root>" else ())
        raise invalid(loc, str(exc)) from exc
    if config.epochs > settings.max_epochs:
        raise invalid(
            ("body", "training", "epochs"),
            f"{config.epochs} is over FRESHNETS_MAX_EPOCHS ({settings.max_epochs})",
        )
    if config.batch_size > settings.max_train_batch:
        raise invalid(
            ("body", "training", "batch_size"),
            f"{config.batch_size} is over FRESHNETS_MAX_TRAIN_BATCH ({settings.max_train_batch})",
        )
    threads = max_train_threads(settings)
    if config.num_threads is not None and config.num_threads > threads:
        raise invalid(
            ("body", "training", "num_threads"),
            f"{config.num_threads} is over the {threads} allowed "
            "(FRESHNETS_MAX_TRAIN_THREADS, else the CPU count)",
        )
    return config.to_dict()


def _layer_difference(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    """Where two resolved specs' layers part, in words (`_teacher` has compared the rest)."""
    for i, (a, b) in enumerate(zip(mine["layers"], theirs["layers"], strict=False)):
        if a != b:
            return f"layer {i} is {a} here, {b} in the teacher"
    return f"{len(mine['layers'])} layers here, {len(theirs['layers'])} in the teacher"


def _teacher(
    session: Session,
    owner: Owner,
    body: JobCreate,
    spec: Any,
    training: dict[str, Any],
    settings: Settings,
) -> Model | None:
    """The job's teacher, checked against the data set, the student and the limits; a 422
    naming the field otherwise. Another owner's model reads as unknown: its id leaks nothing."""
    loc = ("body", "teacher_model_id")
    if body.teacher_model_id is None:
        if body.init == "project":
            raise invalid(
                ("body", "init"), "'project' needs a teacher_model_id (a trained dense model)"
            )
        return None
    teacher = session.get(Model, body.teacher_model_id)
    if teacher is None or teacher.owner_id != owner.id:
        raise invalid(loc, f"unknown model {body.teacher_model_id!r}")
    if teacher.compact_bytes > settings.max_model_bytes:
        raise invalid(
            loc,
            f"the teacher's file is {teacher.compact_bytes:,} bytes, over "
            f"FRESHNETS_MAX_MODEL_BYTES ({settings.max_model_bytes:,})",
        )
    if teacher.virtual_parameters > settings.max_virtual_weights:
        raise invalid(
            loc,
            f"the teacher has {teacher.virtual_parameters:,} virtual weights, over "
            f"FRESHNETS_MAX_VIRTUAL_WEIGHTS ({settings.max_virtual_weights:,})",
        )
    theirs = session.scalar(select(Job.architecture).where(Job.id == teacher.job_id))
    if theirs is None:
        raise invalid(loc, f"model {teacher.id!r} has no recorded architecture (its job is gone)")
    theirs = freshcore.resolve_spec(theirs).model_dump(mode="json")
    if tuple(theirs["input_shape"]) != tuple(spec.input_shape):
        raise invalid(
            loc,
            f"the teacher takes inputs of shape {tuple(theirs['input_shape'])}, the data set's "
            f"are {tuple(spec.input_shape)}",
        )
    if theirs["num_classes"] != spec.num_classes:
        raise invalid(
            loc,
            f"the teacher predicts {theirs['num_classes']} classes, the data set has "
            f"{spec.num_classes}",
        )
    if body.init == "project":
        if teacher.method != "dense":
            raise invalid(
                loc,
                f"init 'project' needs a dense teacher; model {teacher.id!r} is {teacher.method!r}",
            )
        if body.method == "equivalent":
            raise invalid(
                ("body", "method"),
                "'equivalent' has other layer widths than the teacher: it cannot start from "
                "the projection (use init 'scratch')",
            )
        mine = spec.model_dump(mode="json")
        if {**mine, "name": None} != {**theirs, "name": None}:
            raise invalid(
                ("body", "architecture"),
                "init 'project' needs the teacher's architecture: "
                + _layer_difference(mine, theirs),
            )
    elif training["distill_alpha"] == 0:
        raise invalid(
            loc,
            "the teacher would not be used: training.distill_alpha is 0 and init is 'scratch' "
            "(set distill_alpha > 0 to distil, or init 'project')",
        )
    return teacher


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return ((end or datetime.now(UTC)) - start).total_seconds()


def job_outs(session: Session, jobs: Sequence[Job]) -> list[JobOut]:
    """Jobs with their latest epoch, model and data set name, in four queries whatever the
    page size."""
    ids = [job.id for job in jobs]
    last = (
        select(EpochMetric.job_id, func.max(EpochMetric.epoch).label("epoch"))
        .where(EpochMetric.job_id.in_(ids))
        .group_by(EpochMetric.job_id)
        .subquery()
    )
    latest = {
        m.job_id: m
        for m in session.scalars(
            select(EpochMetric).join(
                last, (EpochMetric.job_id == last.c.job_id) & (EpochMetric.epoch == last.c.epoch)
            )
        )
    }
    models = dict(
        session.execute(select(Model.job_id, Model.id).where(Model.job_id.in_(ids))).all()
    )
    names = dataset_names(session, (job.dataset for job in jobs))
    return [
        JobOut(
            id=job.id,
            name=job.name,
            state=job.state,
            dataset=job.dataset,
            dataset_name=names.get(job.dataset),
            architecture_name=job.architecture_name,
            architecture=job.architecture,
            method=job.method,
            compression=job.compression,
            training=job.training,
            seed=job.seed,
            model_options=job.model_options,
            teacher_model_id=job.teacher_model_id,
            init=job.init,
            progress=job.progress,
            epoch=job.epoch,
            total_epochs=job.total_epochs,
            latest_metrics=(
                EpochMetricOut.model_validate(latest[job.id]) if job.id in latest else None
            ),
            error=job.error,
            cancel_requested=job.cancel_requested,
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            queued_seconds=_seconds(job.created_at, job.started_at or job.finished_at),
            run_seconds=_seconds(job.started_at, job.finished_at),
            model_id=models.get(job.id),
        )
        for job in jobs
    ]


def job_out(session: Session, job: Job) -> JobOut:
    return job_outs(session, [job])[0]


def owned_job(session: Session, owner: Owner, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.owner_id != owner.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job: no job {job_id!r}")
    return job


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        409: {"description": "The model would take the owner over FRESHNETS_MAX_OWNER_BYTES."},
        422: {"description": "An invalid field; the message names it."},
        429: {"description": "The owner has FRESHNETS_MAX_ACTIVE_JOBS queued or running."},
    },
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    response: Response,
) -> JobOut:
    """Queue a training job. The row is kept even if the broker is down (it is re-sent later)."""
    dataset = find_dataset(session, owner, body.dataset, settings)
    if dataset is None:
        raise invalid(("body", "dataset"), f"unknown data set {body.dataset!r}")
    if not dataset.available:
        raise invalid(
            ("body", "dataset"),
            f"{body.dataset!r} is not on this machine: "
            f"run `freshnets datasets fetch {body.dataset}`",
        )
    if body.method not in freshcore.METHODS:
        known = ", ".join(freshcore.METHODS)
        raise invalid(("body", "method"), f"unknown method {body.method!r}; one of: {known}")
    compression = _compression(body.compression)
    options = _model_options(body)
    assert dataset.input_shape is not None and dataset.num_classes is not None
    spec = _spec(body, dataset.input_shape, dataset.num_classes, settings)
    expected = _check_model_size(spec, body.method, compression, body.seed, options, settings)
    training = _training(body, settings)
    teacher = _teacher(session, owner, body, spec, training, settings)
    quotas.hold(session, owner)
    quotas.check_active_jobs(session, owner, settings)
    quotas.check_storage(session, owner, settings, expected, "model", status.HTTP_409_CONFLICT)
    job = Job(
        owner_id=owner.id,
        name=body.name or None,
        dataset=dataset.id,
        architecture_name=body.architecture if isinstance(body.architecture, str) else spec.name,
        architecture=spec.model_dump(mode="json"),
        method=body.method,
        compression=compression,
        training=training,
        seed=body.seed,
        model_options=options,
        teacher_model_id=teacher.id if teacher is not None else None,
        init=body.init,
        state=JobState.queued,
        total_epochs=training["epochs"],
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError as exc:
        # The teacher was deleted since it was read (models.delete_model: the foreign key check
        # of this INSERT and the delete's lock on the model row let only one of them win).
        session.rollback()
        if teacher is None:
            raise
        raise invalid(
            ("body", "teacher_model_id"), f"unknown model {body.teacher_model_id!r}"
        ) from exc
    jobs_queue.enqueue(settings, job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_out(session, job)


@router.get("")
def list_jobs(
    session: SessionDep,
    owner: CurrentOwner,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    id_prefix: IdPrefix = None,
    name: NameContains = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Page[JobOut]:
    """This owner's jobs, newest first."""
    where = [Job.owner_id == owner.id]
    if state is not None:
        where.append(Job.state == state)
    if id_prefix is not None:
        where.append(Job.id.startswith(id_prefix))
    if name is not None:
        where.append(Job.name.icontains(name, autoescape=True))
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    jobs = session.scalars(
        select(Job)
        .where(*where)
        .order_by(Job.created_at.desc(), Job.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return Page[JobOut](items=job_outs(session, jobs), total=total, limit=limit, offset=offset)


@router.get("/{job_id}", responses=NOT_FOUND)
def get_job(job_id: ResourceId, session: SessionDep, owner: CurrentOwner) -> JobOut:
    return job_out(session, owned_job(session, owner, job_id))


@router.get("/{job_id}/metrics", responses=NOT_FOUND)
def job_metrics(
    job_id: ResourceId,
    session: SessionDep,
    owner: CurrentOwner,
    after: Annotated[
        int | None, Query(ge=-1, le=2**31 - 1, description="Only epochs after this one (polling).")
    ] = None,
) -> JobMetricsOut:
    """The per-epoch series; pass the last epoch you have as `after` to get only what is new."""
    job = owned_job(session, owner, job_id)
    query = select(EpochMetric).where(EpochMetric.job_id == job.id)
    if after is not None:
        query = query.where(EpochMetric.epoch > after)
    rows = session.scalars(query.order_by(EpochMetric.epoch)).all()
    return JobMetricsOut(
        job_id=job.id,
        state=job.state,
        epoch=job.epoch,
        total_epochs=job.total_epochs,
        items=[EpochMetricOut.model_validate(r) for r in rows],
    )


@router.post(
    "/{job_id}/cancel",
    responses={**NOT_FOUND, 409: {"description": "The job has already finished."}},
)
def cancel_job(
    job_id: ResourceId, session: SessionDep, owner: CurrentOwner, settings: SettingsDep
) -> JobOut:
    """A queued job is cancelled now; a running one stops at its next batch."""
    job = owned_job(session, owner, job_id)
    now = datetime.now(UTC)
    # Conditional updates: a worker may claim the job between our read and our write.
    cancelled = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == JobState.queued)
        .values(state=JobState.cancelled, cancel_requested=True, finished_at=now)
    ).rowcount
    if not cancelled:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == JobState.running)
            .values(cancel_requested=True)
        )
    session.commit()
    session.refresh(job)
    if cancelled:
        jobs_queue.revoke(settings, job.id)
    elif job.state != JobState.running:
        raise HTTPException(status.HTTP_409_CONFLICT, f"state: job is already {job.state.value}")
    return job_out(session, job)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"description": "The job is queued or running."}},
)
def delete_job(job_id: ResourceId, session: SessionDep, owner: CurrentOwner) -> None:
    """Delete a finished job and its per-epoch metrics. Its model stays: the model's file and
    row hold everything it needs, and it keeps its own id and label."""
    job = owned_job(session, owner, job_id)
    # Conditional: a worker may claim a queued job between our read and our write.
    deleted = session.execute(
        delete(Job).where(Job.id == job.id, Job.state.in_(FINAL_STATES))
    ).rowcount
    session.commit()
    if not deleted:
        session.refresh(job)
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"state: job is {job.state.value}; cancel it first (POST /v1/jobs/{job.id}/cancel, "
            "`freshnets cancel`) and delete it once it has stopped",
        )
