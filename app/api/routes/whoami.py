"""/api/v1/whoami: the role and name of the key that asks (any role)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ApiKeyDep
from app.api.schemas import WhoAmIOut

router = APIRouter(tags=["apikeys"])


@router.get("/whoami", response_model=WhoAmIOut)
def whoami(key: ApiKeyDep) -> WhoAmIOut:
    return WhoAmIOut.of(key)
