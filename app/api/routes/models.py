"""Trained models: their numbers, the compact file, deletion (prediction lives in predict.py)."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.deps import CurrentOwner, IdPrefix, NameContains, ResourceId, SessionDep
from app.api.routes.datasets import dataset_names
from app.db.locks import lock_row
from app.db.models import FINAL_STATES, Job, Model, ModelBlob, Owner
from app.schemas import NO_NUL, ModelOut, ModelUpdate, Page
from app.serving import drop_model, is_warm

router = APIRouter(prefix="/v1/models", tags=["models"])

NOT_FOUND = {404: {"description": "No such model (or another owner's)."}}


def model_out(
    request: Request, model: Model, architecture: dict | None, names: dict[str, str]
) -> ModelOut:
    """`names`: data set names by id (`dataset_names`)."""
    return ModelOut(
        id=model.id,
        name=model.name,
        job_id=model.job_id,
        dataset=model.dataset,
        dataset_name=names.get(model.dataset),
        architecture_name=model.architecture_name,
        architecture=architecture,
        method=model.method,
        compression_requested=model.compression_requested,
        compression_achieved=model.compression_achieved,
        stored_parameters=model.stored_parameters,
        virtual_parameters=model.virtual_parameters,
        compact_bytes=model.compact_bytes,
        dense_bytes=model.dense_bytes,
        test_accuracy=model.test_accuracy,
        size_report=model.size_report,
        created_at=model.created_at,
        warm=is_warm(request.app, model.id),
    )


def owned_model(session: Session, owner: Owner, model_id: str) -> Model:
    model = session.get(Model, model_id)
    if model is None or model.owner_id != owner.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model: no model {model_id!r}")
    return model


def _with_architecture():  # type: ignore[no-untyped-def]
    # The spec lives on the job that trained the model.
    return select(Model, Job.architecture).outerjoin(Job, Job.id == Model.job_id)


@router.get("")
def list_models(
    request: Request,
    session: SessionDep,
    owner: CurrentOwner,
    dataset: Annotated[
        str | None, Query(max_length=200, pattern=NO_NUL, description="Only this data set's.")
    ] = None,
    id_prefix: IdPrefix = None,
    name: NameContains = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Page[ModelOut]:
    """This owner's models, newest first."""
    where = [Model.owner_id == owner.id]
    if dataset is not None:
        where.append(Model.dataset == dataset)
    if id_prefix is not None:
        where.append(Model.id.startswith(id_prefix))
    if name is not None:
        where.append(Model.name.icontains(name, autoescape=True))
    total = session.scalar(select(func.count()).select_from(Model).where(*where))
    rows = session.execute(
        _with_architecture()
        .where(*where)
        .order_by(Model.created_at.desc(), Model.id)
        .limit(limit)
        .offset(offset)
    ).all()
    names = dataset_names(session, (m.dataset for m, _ in rows))
    return Page[ModelOut](
        items=[model_out(request, m, a, names) for m, a in rows],
        total=total or 0,
        limit=limit,
        offset=offset,
    )


@router.get("/{model_id}", responses=NOT_FOUND)
def get_model(
    request: Request, model_id: ResourceId, session: SessionDep, owner: CurrentOwner
) -> ModelOut:
    row = session.execute(
        _with_architecture().where(Model.id == model_id, Model.owner_id == owner.id)
    ).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model: no model {model_id!r}")
    model, architecture = row
    return model_out(request, model, architecture, dataset_names(session, [model.dataset]))


@router.patch("/{model_id}", responses=NOT_FOUND)
def update_model(
    request: Request,
    model_id: ResourceId,
    body: ModelUpdate,
    session: SessionDep,
    owner: CurrentOwner,
) -> ModelOut:
    """Rename a model (its label; null or empty: none). Nothing else of it can change."""
    model = owned_model(session, owner, model_id)
    model.name = body.name or None
    session.commit()
    return get_model(request, model.id, session, owner)


@router.get(
    "/{model_id}/file",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {"content": {"application/octet-stream": {}}, "description": "The compact file."},
    },
)
def get_model_file(model_id: ResourceId, session: SessionDep, owner: CurrentOwner) -> Response:
    """The compact file: safetensors with JSON metadata, readable with `freshcore.load`."""
    model = owned_model(session, owner, model_id)
    data = session.scalar(select(ModelBlob.data).where(ModelBlob.model_id == model.id))
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model: {model_id!r} has no file")
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="freshnets-{model.id}.safetensors"'},
    )


@router.delete(
    "/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **NOT_FOUND,
        409: {"description": "A queued or running job uses the model as its teacher."},
    },
)
def delete_model(
    request: Request, model_id: ResourceId, session: SessionDep, owner: CurrentOwner
) -> None:
    """Delete a model and its file. A model that an unfinished job learns from is kept (409)
    until that job ends; finished jobs keep their record with the teacher set to null."""
    model = owned_model(session, owner, model_id)
    # A job naming the model as teacher is either committed before the check below (and seen)
    # or refused by its foreign key after the delete.
    lock_row(session, Model.dataset, model.id)
    waiting = session.scalars(
        select(Job.id)
        .where(Job.teacher_model_id == model.id, Job.state.not_in(FINAL_STATES))
        .order_by(Job.created_at, Job.id)
    ).all()
    if waiting:
        session.rollback()
        shown = ", ".join(waiting[:10]) + (
            f" and {len(waiting) - 10} more" if len(waiting) > 10 else ""
        )
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"model: {model.id!r} is the teacher of unfinished job(s) {shown}; "
            "wait for them to end or cancel them, then delete it",
        )
    session.delete(model)
    session.commit()
    drop_model(request.app, model_id)  # it can never answer a prediction again
