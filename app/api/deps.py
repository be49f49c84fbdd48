"""Dependencies shared by the routers: the settings, a database session, the calling owner."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db.models import Owner
from app.schemas import ID_PREFIX, NO_NUL
from app.security import owner_for_key
from app.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key from `freshnets keys create NAME`.")


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


# A path id: unknown ones answer 404, so only what no query could hold is refused (422).
ResourceId = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_NUL)]
# A listing's filter on the start of the ids: how the CLI resolves the short ids it shows.
IdPrefix = Annotated[
    str | None, Query(pattern=ID_PREFIX, description="Only those whose id starts with this.")
]
# A listing's filter on the owner's labels: those that contain it, whatever the case.
NameContains = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="Only those whose name contains this (case-insensitive).",
    ),
]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_current_owner(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Owner:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Authorization: missing 'Bearer <key>' header",
            headers={"WWW-Authenticate": "Bearer"},
        )
    owner = owner_for_key(session, credentials.credentials)
    if owner is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Authorization: unknown or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return owner


CurrentOwner = Annotated[Owner, Depends(get_current_owner)]
