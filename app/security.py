"""API keys: a random secret shown once; only its SHA-256 is kept, with a short prefix."""

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, Owner

KEY_PREFIX = "fn_"
PREFIX_LENGTH = 10


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, owner_name: str) -> str:
    """Make a key for `owner_name` (creating the owner if new), commit, and return the key."""
    owner_name = owner_name.strip()
    if not 1 <= len(owner_name) <= 200 or "\x00" in owner_name:
        raise ValueError("owner name must be 1 to 200 characters, without NUL")
    owner = session.scalar(select(Owner).where(Owner.name == owner_name))
    if owner is None:
        owner = Owner(name=owner_name)
        session.add(owner)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner_id=owner.id, prefix=key[:PREFIX_LENGTH], key_hash=hash_key(key)))
    session.commit()
    return key


def owner_for_key(session: Session, key: str) -> Owner | None:
    """The owner of a live key, or None for an unknown or revoked one."""
    api_key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if api_key is None or api_key.revoked_at is not None:
        return None
    return api_key.owner


def revoke_api_key(session: Session, prefix: str, revoked_at: datetime) -> int:
    """Revoke every live key starting with `prefix`; returns how many were revoked."""
    keys = session.scalars(
        select(ApiKey).where(ApiKey.prefix == prefix[:PREFIX_LENGTH], ApiKey.revoked_at.is_(None))
    ).all()
    for api_key in keys:
        api_key.revoked_at = revoked_at
    session.commit()
    return len(keys)
