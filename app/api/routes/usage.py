"""The calling owner's use of its quotas: what the dashboard and `freshnets usage` show."""

from fastapi import APIRouter

from app.api import quotas
from app.api.deps import CurrentOwner, SessionDep, SettingsDep
from app.schemas import UsageOut

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get("")
def get_usage(session: SessionDep, owner: CurrentOwner, settings: SettingsDep) -> UsageOut:
    """Jobs queued or running and bytes stored, beside the limits a request is checked against."""
    uploads, models = quotas.stored_bytes(session, owner)
    return UsageOut(
        owner=owner.name,
        active_jobs=quotas.active_jobs(session, owner),
        max_active_jobs=settings.max_active_jobs,
        uploads_bytes=uploads,
        models_bytes=models,
        stored_bytes=uploads + models,
        max_owner_bytes=settings.max_owner_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
