"""What one owner may hold at once: jobs queued or running, and stored bytes (uploaded data
sets and model files). Checked under the owner's row lock (`hold`), so that two requests at
once cannot both take the last place."""

from fastapi import HTTPException, status
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.locks import lock_row
from app.db.models import FINAL_STATES, Job, Model, Owner, UserDataset
from app.settings import Settings


def hold(session: Session, owner: Owner) -> None:
    """Take the owner's row until the transaction ends: a request that adds a job or bytes
    waits here for another one of the same owner to commit what it adds."""
    lock_row(session, Owner.name, owner.id)


def stored_bytes(session: Session, owner: Owner) -> tuple[int, int]:
    """The owner's uploaded files and model files, in bytes."""
    uploads = select(func.coalesce(func.sum(UserDataset.size_bytes), 0)).where(
        UserDataset.owner_id == owner.id
    )
    models = select(func.coalesce(func.sum(Model.compact_bytes), 0)).where(
        Model.owner_id == owner.id
    )
    return int(session.scalar(uploads) or 0), int(session.scalar(models) or 0)


def active_jobs(session: Session, owner: Owner) -> int:
    """The owner's jobs queued or running."""
    where = (Job.owner_id == owner.id, Job.state.not_in(FINAL_STATES))
    return int(session.scalar(select(func.count()).select_from(Job).where(*where)) or 0)


def check_active_jobs(session: Session, owner: Owner, settings: Settings) -> None:
    """A 429 when the owner already has FRESHNETS_MAX_ACTIVE_JOBS queued or running (0: no
    limit): one owner cannot fill the queue for everyone else."""
    limit = settings.max_active_jobs
    if not limit:
        return
    active = active_jobs(session, owner)
    if active >= limit:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"jobs: {active} of this owner's jobs are queued or running, the most "
            f"FRESHNETS_MAX_ACTIVE_JOBS ({limit}) allows; wait for one to end or cancel one",
        )


def check_storage(
    session: Session, owner: Owner, settings: Settings, adding: int, field: str, code: int
) -> None:
    """An HTTP ``code`` error naming ``field`` when ``adding`` more bytes would take the
    owner's stored bytes over FRESHNETS_MAX_OWNER_BYTES (0: no limit)."""
    limit = settings.max_owner_bytes
    if not limit:
        return
    used = sum(stored_bytes(session, owner))
    if used + adding > limit:
        raise HTTPException(
            code,
            f"{field}: needs about {adding:,} bytes, but this owner stores {used:,} of the "
            f"{limit:,} FRESHNETS_MAX_OWNER_BYTES allows; delete some of your models or "
            "uploads first",
        )
