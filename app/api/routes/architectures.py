"""The architecture presets a job can name, with their virtual weight counts."""

from fastapi import APIRouter

import freshcore
from app.api.deps import CurrentOwner
from app.schemas import ArchitectureOut

router = APIRouter(prefix="/v1/architectures", tags=["architectures"])


@router.get("")
def list_architectures(_owner: CurrentOwner) -> list[ArchitectureOut]:
    """Presets; a job may also give an inline spec (see `ArchitectureSpec` in the docs)."""
    return [ArchitectureOut.model_validate(p) for p in freshcore.list_presets()]
