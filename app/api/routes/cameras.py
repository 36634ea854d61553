"""/api/v1/cameras: the cameras the gallery holds crops of (the page's camera choice)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.deps import ReaderDep, SessionDep
from app.services.gallery import list_cameras

router = APIRouter(tags=["gallery"])


class CameraOut(BaseModel):
    camera_id: str
    items: int
    first_captured_at: datetime | None
    last_captured_at: datetime | None


class CameraList(BaseModel):
    items: list[CameraOut]


@router.get("/cameras", response_model=CameraList)
def cameras(session: SessionDep, _key: ReaderDep) -> CameraList:
    """Every camera with crops in the gallery, by name, with how many and their time span."""
    return CameraList(
        items=[
            CameraOut(
                camera_id=c,
                items=n,
                first_captured_at=first,
                last_captured_at=last,
            )
            for c, n, first, last in list_cameras(session)
        ]
    )
