"""The FastAPI app factory.

The lifespan opens the service context once (database check, model bundle, index) in a worker
thread; routes are plain ``def`` functions, so FastAPI runs them, and with them every blocking
decode/translate/embed/search, in its thread pool while the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, FastAPI
from threadpoolctl import threadpool_limits

from app.api import errors, openapi
from app.api.metrics import Metrics
from app.api.middleware import (
    BodySizeLimit,
    ConcurrencyLimit,
    NoStore,
    RequestMetrics,
    UnexpectedErrors,
)
from app.api.routes import (
    apikeys,
    audit,
    cameras,
    cases,
    gallery,
    health,
    history,
    model,
    search,
    watchlists,
    whoami,
)
from app.api.schemas import API_PREFIX, COMMON_ERRORS, error_responses
from app.api.throttle import AuthThrottle
from app.core.config import Settings, get_settings
from app.core.memory import map_large_allocations
from app.ml.bundle.manifest import Bundle
from app.services.context import (
    ServiceContext,
    close_context,
    index_size,
    notifier_of,
    open_context,
    sync_index,
)
from app.services.orphans import sweep_orphans
from app.services.search import MAX_SKETCHES
from app.services.webhook import WebhookCollector
from app.web import install as install_web
from app.web.headers import SecurityHeaders

log = logging.getLogger(__name__)

# Multipart framing and form fields on top of the file bytes.
_FORM_OVERHEAD = 1024 * 1024


def api_router() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, responses=error_responses(*COMMON_ERRORS))
    router.include_router(gallery.router)
    router.include_router(search.router)
    router.include_router(history.router)
    router.include_router(cases.router)
    router.include_router(cameras.router)
    router.include_router(watchlists.router)
    router.include_router(model.router)
    router.include_router(apikeys.router)
    router.include_router(audit.router)
    router.include_router(whoami.router)
    return router


async def _index_sync_loop(app: FastAPI, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await anyio.to_thread.run_sync(sync_index, app.state.ctx)
        except Exception:  # keep serving; readyz reports the inconsistency
            log.exception("index synchronisation failed")


def _sweep(ctx: ServiceContext) -> None:
    sweep_orphans(ctx.settings, ctx.sessions)


async def _orphan_sweep_loop(app: FastAPI, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await anyio.to_thread.run_sync(_sweep, app.state.ctx)
        except Exception:  # keep serving; the next round tries again
            log.exception("orphan sweep failed")


def create_app(settings: Settings | None = None, *, bundle: Bundle | None = None) -> FastAPI:
    """A new app. ``bundle`` lets tests share one loaded model; by default it is loaded from
    ``settings.MODEL_DIR`` in the lifespan.
    """
    settings = settings or get_settings()
    # numpy's BLAS (a pthreads OpenBLAS: one process-wide setting, so set here, not per request)
    threadpool_limits(settings.BLAS_THREADS, user_api="blas")
    # Decoded images freed in one worker thread go back to the system, not to its heap.
    map_large_allocations()
    metrics = Metrics()
    # Read at each scrape from the context the lifespan opens (none before it, nor after).
    metrics.registry.register(
        WebhookCollector(lambda: notifier_of(getattr(app.state, "ctx", None)))
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The routes' threads; the database pool has a connection for each (open_context).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.WORKER_THREADS
        # /readyz checks the database in one thread at a time: probes of a stalled database
        # do not pile up threads (app.api.routes.health).
        app.state.ready_limiter = anyio.CapacityLimiter(1)
        ctx = await anyio.to_thread.run_sync(open_context, settings, bundle)
        app.state.ctx = ctx
        log.info(
            "serving model %s (%s, %s), index %s with %d items",
            ctx.bundle.name,
            ctx.embedding_key,
            ctx.bundle.inference,
            ctx.index_status,
            index_size(ctx),
        )
        try:
            await anyio.to_thread.run_sync(_sweep, ctx)
        except Exception:  # a failed sweep must not stop the service
            log.exception("orphan sweep at start-up failed")
        tasks = []
        if settings.INDEX_SYNC_SECONDS > 0:
            tasks.append(asyncio.create_task(_index_sync_loop(app, settings.INDEX_SYNC_SECONDS)))
        if settings.ORPHAN_SWEEP_SECONDS > 0:
            tasks.append(
                asyncio.create_task(_orphan_sweep_loop(app, settings.ORPHAN_SWEEP_SECONDS))
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            app.state.ctx = None
            await anyio.to_thread.run_sync(close_context, ctx)

    app = FastAPI(
        title="sketch-reid",
        summary="Find the person in a full-body sketch among CCTV person crops.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served from local assets by app.web (no CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.auth_throttle = AuthThrottle(
        limit=settings.AUTH_FAILURE_LIMIT,
        window=settings.AUTH_FAILURE_WINDOW_SECONDS,
        lockout=settings.AUTH_LOCKOUT_SECONDS,
        max_addresses=settings.AUTH_THROTTLE_MAX_ADDRESSES,
        metrics=metrics,
    )
    app.state.ctx = None
    errors.install(app)
    app.include_router(health.router)
    app.include_router(api_router())
    openapi.install(app)
    install_web(app)

    single = settings.max_upload_bytes + _FORM_OVERHEAD
    batch_path = f"{API_PREFIX}/gallery/batch"
    batch = min(
        settings.max_upload_bytes * settings.MAX_BATCH_FILES + _FORM_OVERHEAD,
        settings.max_batch_bytes,
    )

    search_path = f"{API_PREFIX}/search"
    search_limit = settings.max_upload_bytes * MAX_SKETCHES + _FORM_OVERHEAD

    def body_limit(path: str) -> int:
        path = path.rstrip("/")
        return batch if path == batch_path else search_limit if path == search_path else single

    # The last added is the outermost: metrics see the 500 that UnexpectedErrors sends.
    app.add_middleware(BodySizeLimit, limit_for=body_limit)
    app.add_middleware(
        ConcurrencyLimit,
        path=batch_path,
        limit=settings.MAX_CONCURRENT_BATCHES,
        what="batch upload",
    )
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(NoStore)
    return app
