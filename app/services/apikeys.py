"""API keys: ``skr_`` + 32 random bytes (URL-safe); only the sha256 of the key is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import ROLES, ApiKey
from app.db.types import is_valid_id, utcnow
from app.errors import UserInputError
from app.services import audit
from app.services.errors import AuthenticationError, ConflictError, NotFoundError
from app.services.text import check_text

KEY_PREFIX = "skr_"
# last_used_at is refreshed at most this often, so reads do not each write to the database.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


MAX_EXPIRY_DAYS = 3650


def create_key(
    session: Session,
    name: str,
    role: str,
    *,
    expires_in_days: int | None = None,
    created_by: int | None = None,
    actor: audit.Actor = "cli",
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the key itself (shown once, never stored).

    ``expires_in_days``: the key stops working that many days from now (None: never; it
    works until revoked). ``created_by``: the admin key that asked (None: the server's
    command line, ``actor`` "cli"). The creation is audited (``apikey.create``) in the same
    transaction."""
    name = check_text((name or "").strip(), "name")
    if not name or len(name) > 200:
        raise UserInputError("a key needs a name of 1 to 200 characters")
    if role not in ROLES:
        raise UserInputError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    expires_at = None
    if expires_in_days is not None:
        if not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
            raise UserInputError(
                f"expires_in_days must be 1 to {MAX_EXPIRY_DAYS}, got {expires_in_days}"
            )
        expires_at = utcnow() + timedelta(days=expires_in_days)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name,
        role=role,
        key_hash=hash_key(key),
        key_prefix=key[:10],
        expires_at=expires_at,
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        audit.APIKEY_CREATE,
        api_key_id=created_by,
        actor=actor,
        details={
            "key_id": row.id,
            "name": name,
            "role": role,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    session.commit()
    return row, key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(
    session: Session,
    key_id: int,
    *,
    allow_last_admin: bool = False,
    revoked_by: int | None = None,
    actor: audit.Actor = "cli",
) -> ApiKey:
    """Revoke a key (revoking a revoked key changes nothing and records nothing).

    The last active admin key is kept unless ``allow_last_admin``: without one, keys can only
    be managed from the command line of the server. ``ConflictError`` says so.
    ``revoked_by``: the admin key that asked (None: the server's command line, ``actor``
    "cli"). The revocation is audited (``apikey.revoke``) in the same transaction.
    """
    row = session.get(ApiKey, key_id) if is_valid_id(key_id) else None
    if row is None:
        raise NotFoundError(f"API key {key_id} does not exist")
    if row.revoked_at is not None:
        return row
    if row.role == "admin" and not allow_last_admin:
        # Lock the active admin rows (PostgreSQL) so two admins revoking each other at once
        # cannot both pass the check; SQLite serialises writers anyway.
        now = utcnow()
        admins = session.scalars(
            select(ApiKey.id)
            .where(
                ApiKey.role == "admin",
                ApiKey.revoked_at.is_(None),
                ApiKey.expires_at.is_(None) | (ApiKey.expires_at > now),
            )
            .with_for_update()
        ).all()
        if set(admins) <= {row.id}:
            session.rollback()
            raise ConflictError(
                f"API key {key_id} is the last active admin key: create another admin key "
                "first (POST /api/v1/apikeys with role admin), then revoke this one"
            )
    row.revoked_at = utcnow()
    row.revoked_by = revoked_by
    audit.record(
        session,
        audit.APIKEY_REVOKE,
        api_key_id=revoked_by,
        actor=actor,
        details={"key_id": row.id, "name": row.name, "role": row.role},
    )
    session.commit()
    return row


def count_keys(session: Session) -> int:
    return int(session.scalar(select(func.count(ApiKey.id))) or 0)


def authenticate(session: Session, key: str | None) -> ApiKey:
    """The active key row for ``key``; ``AuthenticationError`` when missing, unknown, revoked
    or expired."""
    if not key:
        raise AuthenticationError("missing API key: send it in the X-API-Key header")
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key.strip()))).first()
    if row is None:
        raise AuthenticationError("unknown API key")
    if row.revoked_at is not None:
        raise AuthenticationError("this API key has been revoked")
    now = utcnow()
    if is_expired(row, now):
        raise AuthenticationError(
            f"this API key expired at {row.expires_at:%Y-%m-%d %H:%M} UTC: "
            "ask an admin for a new one"
        )
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.commit()
    return row


def is_expired(row: ApiKey, now: datetime | None = None) -> bool:
    return row.expires_at is not None and (now or utcnow()) >= row.expires_at


def key_status(row: ApiKey) -> str:
    """active, revoked or expired."""
    if row.revoked_at is not None:
        return "revoked"
    return "expired" if is_expired(row) else "active"


def ensure_initial_admin(session: Session) -> str | None:
    """On an empty key table, create an admin key and return it (once); else None."""
    if count_keys(session):
        return None
    _, key = create_key(session, "initial-admin", "admin")
    return key
