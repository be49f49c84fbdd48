"""Data sets: the built-in registry (visible to all) and each owner's `.npz` uploads."""

import hashlib
from collections.abc import Iterable
from pathlib import PurePath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status
from sqlalchemy import select
from sqlalchemy.orm import Session

import freshcore.data as fdata
from app.api import quotas
from app.api.deps import CurrentOwner, ResourceId, SessionDep, SettingsDep
from app.db.models import FINAL_STATES, DatasetBlob, Job, Owner, UserDataset
from app.limits import upload_limits
from app.schemas import NO_NUL, DatasetOut
from app.settings import Settings

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

# Multipart framing around the file: the body limit for uploads is the file limit plus this.
UPLOAD_OVERHEAD_BYTES = 1024 * 1024
# What an upload's row keeps of its DatasetInfo (in `datasets.info`), and what the API shows.
INFO_FIELDS = ("title", "input_shape", "num_classes", "class_names", "train_size", "test_size")
INFO_FIELDS += ("source", "licence", "description")


def _info_dict(info: fdata.DatasetInfo) -> dict[str, Any]:
    raw = info.to_dict()
    return {k: raw[k] for k in INFO_FIELDS}


def builtin_out(info: fdata.DatasetInfo) -> DatasetOut:
    return DatasetOut(
        id=info.name, name=info.name, builtin=True, available=info.available, **_info_dict(info)
    )


def upload_out(row: UserDataset) -> DatasetOut:
    info = {k: v for k, v in row.info.items() if k in INFO_FIELDS}
    return DatasetOut(
        id=row.id,
        name=row.name,
        builtin=False,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        created_at=row.created_at,
        **info,
    )


def find_dataset(
    session: Session, owner: Owner, dataset_id: str, settings: Settings
) -> DatasetOut | None:
    """A built-in data set by name, or one of this owner's uploads by id; None otherwise."""
    try:
        return builtin_out(fdata.get_info(dataset_id, cache_dir=settings.cache_dir))
    except (KeyError, ValueError):  # DatasetNotFound is a KeyError
        pass
    row = session.get(UserDataset, dataset_id)
    if row is None or row.owner_id != owner.id:
        return None
    return upload_out(row)


def dataset_names(session: Session, ids: Iterable[str]) -> dict[str, str]:
    """The name of each data set a job or model names: a built-in's is its id, an upload's is
    its own (one query for all). An upload deleted since is left out."""
    ids = set(ids)
    uploads = select(UserDataset.id, UserDataset.name).where(UserDataset.id.in_(ids))
    names = {i: i for i in ids if i in fdata.REGISTRY}
    names.update(session.execute(uploads).all())
    return names


def _not_found(dataset_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"dataset: no data set {dataset_id!r}")


@router.get("")
def list_datasets(
    session: SessionDep, owner: CurrentOwner, settings: SettingsDep
) -> list[DatasetOut]:
    """The built-in data sets, then this owner's uploads (newest first)."""
    builtin = [builtin_out(info) for info in fdata.list_datasets(cache_dir=settings.cache_dir)]
    rows = session.scalars(
        select(UserDataset)
        .where(UserDataset.owner_id == owner.id)
        .order_by(UserDataset.created_at.desc())
    ).all()
    return builtin + [upload_out(row) for row in rows]


@router.get("/{dataset_id}", responses={404: {"description": "No such data set."}})
def get_dataset(
    dataset_id: ResourceId, session: SessionDep, owner: CurrentOwner, settings: SettingsDep
) -> DatasetOut:
    found = find_dataset(session, owner, dataset_id, settings)
    if found is None:
        raise _not_found(dataset_id)
    return found


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        413: {
            "description": "The file is larger than FRESHNETS_MAX_UPLOAD_BYTES, or would take "
            "the owner over FRESHNETS_MAX_OWNER_BYTES."
        },
        422: {"description": "The file is not a valid data set (the message names the array)."},
    },
)
def upload_dataset(
    session: SessionDep,
    owner: CurrentOwner,
    settings: SettingsDep,
    response: Response,
    file: Annotated[
        UploadFile,
        File(description="An .npz: x, y; optional x_test, y_test, classes (docs/datasets.md)."),
    ],
    name: Annotated[str | None, Form(max_length=200, pattern=NO_NUL)] = None,
) -> DatasetOut:
    """Upload an `.npz` data set; it is validated in full before it is kept."""
    data = file.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"file: larger than FRESHNETS_MAX_UPLOAD_BYTES ({settings.max_upload_bytes} bytes)",
        )
    if not data:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "file: the upload is empty")
    from_file = PurePath((file.filename or "").replace("\x00", "")).stem
    name = (name or "").strip() or from_file or "upload"
    try:
        dataset = fdata.load_npz(data, name=name, limits=upload_limits(settings))
    except ValueError as exc:  # UploadError names the array and the problem
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"file: {exc}") from exc
    quotas.hold(session, owner)
    quotas.check_storage(
        session, owner, settings, len(data), "file", status.HTTP_413_CONTENT_TOO_LARGE
    )
    row = UserDataset(
        owner_id=owner.id,
        name=name[:200],
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        info=_info_dict(dataset.info),
    )
    session.add(row)
    session.flush()
    session.add(DatasetBlob(dataset_id=row.id, data=data))
    session.commit()
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return upload_out(row)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        404: {"description": "No such upload."},
        409: {"description": "A built-in data set, or one a queued or running job uses."},
    },
)
def delete_dataset(
    dataset_id: ResourceId, session: SessionDep, owner: CurrentOwner, settings: SettingsDep
) -> None:
    row = session.get(UserDataset, dataset_id)
    if row is None or row.owner_id != owner.id:
        if find_dataset(session, owner, dataset_id, settings) is not None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"dataset: {dataset_id!r} is built in and cannot be deleted",
            )
        raise _not_found(dataset_id)
    busy = session.scalar(
        select(Job.id).where(Job.dataset == row.id, Job.state.not_in(FINAL_STATES)).limit(1)
    )
    if busy is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"dataset: job {busy} still uses it; cancel it first"
        )
    session.delete(row)
    session.commit()
