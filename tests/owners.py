"""Owners and API keys for the tests: one way to make a key and learn its owner."""

from sqlalchemy.orm import Session

from app.security import create_api_key, owner_for_key


def new_owner_key(session: Session, name: str) -> tuple[str, str]:
    """A new key for owner ``name`` (made if new), committed: (owner id, key)."""
    key = create_api_key(session, name)
    owner = owner_for_key(session, key)
    assert owner is not None
    return owner.id, key


def bearer(key: str) -> dict[str, str]:
    """The request headers that present ``key``."""
    return {"Authorization": f"Bearer {key}"}
