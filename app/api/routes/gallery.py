"""/api/v1/gallery: ingest (single and batch), list, read, image, delete."""

from __future__ import annotations

import functools
import time
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile, status
from fastapi.responses import JSONResponse

from app.api.deps import CtxDep, OperatorDep, ReaderDep, SessionDep, single_valued
from app.api.forms import TRUE_OR_FALSE
from app.api.schemas import (
    BatchItemResult,
    BatchResult,
    GalleryItemOut,
    GalleryPage,
    error_responses,
)
from app.api.uploads import read_upload
from app.db.types import MAX_ID
from app.services import gallery
from app.services.timeparse import parse_timestamp

router = APIRouter(prefix="/gallery", tags=["gallery"])

_ONE_IMAGE = Depends(
    single_valued(form=("image", "camera_id", "captured_at", "location", "external_id"))
)
_ONE_BATCH = Depends(single_valued(form=("metadata", "camera_from_filename")))
_ONE_LISTING = Depends(
    single_valued(query=("limit", "offset", "captured_after", "captured_before", "order"))
)


def _text_rule(name: str) -> str:
    return (
        f"at most {gallery.TEXT_LIMITS[name]} characters (trimmed), no control characters "
        "and no lone surrogates (400 otherwise)"
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=GalleryItemOut,
    responses={
        200: {"description": "The same image was already stored", "model": GalleryItemOut},
        202: {
            "description": "Stored and queued for a worker (cluster profile): status pending "
            "until it is indexed (GET the item)",
            "model": GalleryItemOut,
        },
        **error_responses(400, 413, 422, 503),
    },
)
def ingest(
    request: Request,
    ctx: CtxDep,
    session: SessionDep,
    key: OperatorDep,
    _once: Annotated[None, _ONE_IMAGE],
    image: Annotated[UploadFile, File(description="A person crop (JPEG, PNG, WEBP, ...)")],
    camera_id: Annotated[str | None, Form(description=_text_rule("camera_id"))] = None,
    captured_at: Annotated[
        str | None, Form(description="ISO 8601 with a zone, e.g. 2024-05-01T13:45:00Z")
    ] = None,
    location: Annotated[str | None, Form(description=_text_rule("location"))] = None,
    external_id: Annotated[str | None, Form(description=_text_rule("external_id"))] = None,
) -> JSONResponse:
    start = time.perf_counter()
    meta = gallery.make_metadata(camera_id, captured_at, location, external_id)
    data = read_upload(image, ctx.settings.max_upload_bytes)
    item, created = gallery.ingest_image(
        ctx, session, data, meta, created_by=key.id, filename=image.filename
    )
    request.app.state.metrics.observe_stages({"ingest": (time.perf_counter() - start) * 1000})
    body = GalleryItemOut.of(item).model_dump(mode="json")
    code = (202 if item.status == "pending" else 201) if created else 200
    return JSONResponse(body, status_code=code)


@router.post("/batch", response_model=BatchResult, responses=error_responses(400, 413, 422, 429))
def ingest_batch(
    request: Request,
    response: Response,
    ctx: CtxDep,
    session: SessionDep,
    key: OperatorDep,
    _once: Annotated[None, _ONE_BATCH],
    images: Annotated[
        list[UploadFile],
        File(min_length=1, description="Person crops (at most MAX_BATCH_FILES, default 100)"),
    ],
    metadata: Annotated[
        str | None,
        Form(
            description="JSON list aligned with the files: one object (or null) per file with "
            "camera_id, captured_at, location, external_id (strings, rules as for a single "
            f"upload); nested at most {gallery.MAX_METADATA_DEPTH} levels deep (400 beyond)"
        ),
    ] = None,
    camera_from_filename: Annotated[
        bool,
        TRUE_OR_FALSE,
        Form(description="Take camera_id from Market-1501 style names (0001_c3s1_...)"),
    ] = False,
) -> BatchResult:
    start = time.perf_counter()
    per_file = gallery.parse_batch_metadata(metadata, len(images))
    # Each file stays where the multipart parser put it (a temporary file once over 1 MB) and
    # is read when its turn comes, so one batch holds one file in memory, not all of them.
    limit = ctx.settings.max_upload_bytes
    entries = [
        gallery.BatchEntry(upload.filename, functools.partial(read_upload, upload, limit), meta)
        for upload, meta in zip(images, per_file, strict=True)
    ]
    outcomes = gallery.ingest_batch(
        ctx, session, entries, camera_from_name=camera_from_filename, created_by=key.id
    )
    request.app.state.metrics.observe_stages({"ingest": (time.perf_counter() - start) * 1000})
    if any(o.http_status == 503 for o in outcomes):  # the inference queue full, or no broker
        response.headers["Retry-After"] = "1"
    return BatchResult(
        created=sum(o.status == "created" for o in outcomes),
        existing=sum(o.status == "exists" for o in outcomes),
        failed=sum(o.status == "error" for o in outcomes),
        results=[BatchItemResult.of(i, o) for i, o in enumerate(outcomes)],
    )


@router.get("", response_model=GalleryPage, responses=error_responses(400, 422))
def list_items(
    session: SessionDep,
    _key: ReaderDep,
    _once: Annotated[None, _ONE_LISTING],
    limit: Annotated[int, Query(ge=1, le=gallery.MAX_LIST_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    camera_id: Annotated[
        list[str] | None,
        Query(description="repeatable; text without NUL or lone surrogates (400 otherwise)"),
    ] = None,
    captured_after: Annotated[str | None, Query(description="inclusive, ISO 8601")] = None,
    captured_before: Annotated[str | None, Query(description="exclusive, ISO 8601")] = None,
    order: Annotated[
        Literal["oldest", "newest"],
        Query(description="oldest (ingested) first, or newest first (the page's order)"),
    ] = "oldest",
) -> GalleryPage:
    after: datetime | None = parse_timestamp(captured_after, "captured_after")
    before: datetime | None = parse_timestamp(captured_before, "captured_before")
    items, total = gallery.list_items(
        session,
        limit=limit,
        offset=offset,
        camera_ids=camera_id or [],
        captured_after=after,
        captured_before=before,
        newest_first=order == "newest",
    )
    next_offset = offset + len(items) if offset + len(items) < total else None
    return GalleryPage(
        items=[GalleryItemOut.of(i) for i in items],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=next_offset,
    )


@router.get("/{item_id:id}", response_model=GalleryItemOut, responses=error_responses(404, 422))
def get_item(item_id: int, session: SessionDep, _key: ReaderDep) -> GalleryItemOut:
    return GalleryItemOut.of(gallery.get_item(session, item_id))


@router.get(
    "/{item_id:id}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/*": {}}, "description": "The stored bytes"},
        **error_responses(404, 422),
    },
)
def get_image(item_id: int, ctx: CtxDep, session: SessionDep, _key: ReaderDep) -> Response:
    item = gallery.get_item(session, item_id)
    return Response(
        gallery.read_image(ctx, item),
        media_type=item.content_type,
        headers={"Cache-Control": "private, max-age=86400", "ETag": f'"{item.sha256}"'},
    )


@router.delete(
    "/{item_id:id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(400, 404, 422),
)
def delete_item(
    item_id: int,
    ctx: CtxDep,
    session: SessionDep,
    key: OperatorDep,
    reason: Annotated[
        str | None,
        Query(
            max_length=gallery.MAX_REASON_LENGTH,
            description="Why (kept in the audit trail with who and when)",
        ),
    ] = None,
) -> Response:
    gallery.delete_item(ctx, session, item_id, deleted_by=key.id, actor="api", reason=reason)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
