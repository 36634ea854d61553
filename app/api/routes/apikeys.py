"""/api/v1/apikeys: key management (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import AdminDep, SessionDep
from app.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, error_responses
from app.services import apikeys

router = APIRouter(prefix="/apikeys", tags=["apikeys"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=error_responses(400, 413, 422),
)
def create(body: ApiKeyCreate, session: SessionDep, admin: AdminDep) -> ApiKeyCreated:
    """Create a key (audited: `apikey.create`, by this admin key)."""
    row, key = apikeys.create_key(
        session,
        body.name,
        body.role,
        expires_in_days=body.expires_in_days,
        created_by=admin.id,
        actor="api",
    )
    return ApiKeyCreated(**ApiKeyOut.of(row).model_dump(), key=key)


@router.get("", response_model=list[ApiKeyOut])
def list_keys(session: SessionDep, _key: AdminDep) -> list[ApiKeyOut]:
    return [ApiKeyOut.of(row) for row in apikeys.list_keys(session)]


@router.post(
    "/{key_id:id}/revoke", response_model=ApiKeyOut, responses=error_responses(404, 409, 422)
)
def revoke(key_id: int, session: SessionDep, admin: AdminDep) -> ApiKeyOut:
    """Revoke a key (audited: `apikey.revoke`, by this admin key); a revoked key again: as is."""
    return ApiKeyOut.of(apikeys.revoke_key(session, key_id, revoked_by=admin.id, actor="api"))
