"""/healthz (liveness), /readyz (readiness) and /metrics: no API key needed.

None of them reveals case data; keep them on the internal network all the same.
"""

from __future__ import annotations

import shutil
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from sqlalchemy import func, select, text

from app.db.models import STATUSES, GalleryItem
from app.db.session import session_scope
from app.services.context import ServiceContext, index_consistent, index_size

router = APIRouter(tags=["health"])

# /readyz answers within this many seconds, whatever the database does: a check still waiting
# then counts as failed (its thread finishes on its own, bounded by the database timeouts).
READY_TIMEOUT_S = 1.0


def _database_checks(ctx: ServiceContext) -> dict[str, Any]:
    checks: dict[str, Any] = {"database": False, "index": False}
    try:
        with session_scope(ctx.sessions) as session:
            session.execute(text("SELECT 1"))
        checks["database"] = True
        checks["index"] = index_consistent(ctx)
    except Exception as exc:  # unreachable database: report, do not raise
        checks["error"] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
    return checks


def disk_checks(ctx: ServiceContext) -> dict[str, Any]:
    """Free space where blobs, searches and the index are written, against MIN_FREE_DISK_MB."""
    try:
        free_mb = shutil.disk_usage(ctx.settings.DATA_DIR).free / 1048576
    except OSError as exc:
        return {"disk": False, "disk_error": str(exc)}
    return {
        "disk": free_mb >= ctx.settings.MIN_FREE_DISK_MB,
        "disk_free_mb": round(free_mb, 1),
        "disk_min_free_mb": ctx.settings.MIN_FREE_DISK_MB,
    }


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
async def readyz(request: Request) -> JSONResponse:
    """Ready when the model is loaded, the database answers, the index matches it and the disk
    has room; answered within READY_TIMEOUT_S (a database that does not answer is not ready)."""
    ctx = getattr(request.app.state, "ctx", None)
    checks: dict[str, Any] = {"model": ctx is not None, "database": False, "index": False}
    if ctx is not None:
        with anyio.move_on_after(READY_TIMEOUT_S):
            checks.update(
                await anyio.to_thread.run_sync(
                    _database_checks,
                    ctx,
                    abandon_on_cancel=True,
                    limiter=request.app.state.ready_limiter,
                )
            )
        if not checks["database"] and "error" not in checks:
            checks["error"] = f"the database did not answer within {READY_TIMEOUT_S:g} s"
        checks.update(disk_checks(ctx))
    ready = all(checks.get(k) for k in ("model", "database", "index", "disk"))
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
