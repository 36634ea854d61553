"""/healthz (liveness), /readyz (readiness) and /metrics: no API key needed.

None of them reveals case data; keep them on the internal network all the same.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from sqlalchemy import func, select, text

from app.db.models import STATUSES, GalleryItem
from app.db.session import session_scope
from app.services.context import index_consistent, index_size

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


class ReadyOut(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, Any]


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "Not ready: see checks"}},
)
def readyz(request: Request) -> JSONResponse:
    ctx = getattr(request.app.state, "ctx", None)
    checks: dict[str, Any] = {"model": ctx is not None, "database": False, "index": False}
    if ctx is not None:
        try:
            with session_scope(ctx.sessions) as session:
                session.execute(text("SELECT 1"))
            checks["database"] = True
            checks["index"] = index_consistent(ctx)
        except Exception as exc:  # unreachable database: report, do not raise
            checks["error"] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
    ready = all(checks[k] for k in ("model", "database", "index"))
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request) -> Response:
    ctx = getattr(request.app.state, "ctx", None)
    registry = request.app.state.metrics
    if ctx is not None:
        registry.gallery_size.set(index_size(ctx))
        with session_scope(ctx.sessions) as session:
            counts = dict(
                session.execute(
                    select(GalleryItem.status, func.count()).group_by(GalleryItem.status)
                ).all()
            )
        for status in STATUSES:
            registry.items_by_status.labels(status).set(counts.get(status, 0))
        if ctx.queue is not None:
            depth = ctx.queue.depth()
            registry.queue_depth.set(-1 if depth is None else depth)
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
