"""Response bodies of the HTTP API."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.db.models import ApiKey, AuditEvent, GalleryItem, Search
from app.services.gallery import IngestOutcome
from app.services.search import SearchOutcome

API_PREFIX = "/api/v1"


class FieldError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str
    message: str
    type: str | None = None


class ErrorOut(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(extra="forbid")

    detail: str = Field(description="What was wrong, for a person to read")
    errors: list[FieldError] | None = Field(
        default=None, description="422 only: one entry per offending field"
    )


_ERROR_DESCRIPTIONS = {
    400: "Bad input: a file that is not a usable image, a value that cannot be read, or "
    "values that contradict each other",
    401: "No API key, an unknown key or a revoked key",
    403: "The key's role may not do this",
    404: "No such id (or one this key may not see)",
    409: "Refused in the current state",
    413: "A file or the request body is over its size limit",
    422: "A missing, repeated, mistyped or out-of-range field (`errors` lists them)",
    429: "Too many batch uploads running at once; retry after `Retry-After` seconds",
    500: "A fault of the server (logged); nothing was changed by this request's failure",
    503: "The service is starting or cannot serve right now",
}
# Every route under /api/v1 can answer these (key checks, server faults, not started yet).
COMMON_ERRORS = (401, 403, 500, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries declaring the error body for each of ``statuses``."""
    return {
        status: {"model": ErrorOut, "description": _ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }


def image_url(item_id: int) -> str:
    return f"{API_PREFIX}/gallery/{item_id}/image"


class GalleryItemOut(BaseModel):
    id: int
    sha256: str
    width: int
    height: int
    content_type: str
    camera_id: str | None
    captured_at: datetime | None
    location: str | None
    external_id: str | None
    created_at: datetime
    image_url: str

    @classmethod
    def of(cls, item: GalleryItem) -> GalleryItemOut:
        return cls(
            id=item.id,
            sha256=item.sha256,
            width=item.width,
            height=item.height,
            content_type=item.content_type,
            camera_id=item.camera_id,
            captured_at=item.captured_at,
            location=item.location,
            external_id=item.external_id,
            created_at=item.created_at,
            image_url=image_url(item.id),
        )


class GalleryPage(BaseModel):
    items: list[GalleryItemOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class BatchItemResult(BaseModel):
    index: int
    filename: str | None
    status: Literal["created", "exists", "error"]
    http_status: int
    item: GalleryItemOut | None = None
    error: str | None = None

    @classmethod
    def of(cls, index: int, outcome: IngestOutcome) -> BatchItemResult:
        return cls(
            index=index,
            filename=outcome.filename,
            status=outcome.status,
            http_status=outcome.http_status,
            item=GalleryItemOut.of(outcome.item) if outcome.item is not None else None,
            error=outcome.error,
        )


class BatchResult(BaseModel):
    created: int
    existing: int
    failed: int
    results: list[BatchItemResult]


class ModelRef(BaseModel):
    name: str
    version: str


class SearchResultOut(BaseModel):
    rank: int
    gallery_id: int
    score: float
    distance: float | None
    camera_id: str | None
    captured_at: datetime | None
    location: str | None
    external_id: str | None
    image_url: str


class SearchOut(BaseModel):
    search_id: uuid.UUID
    model: ModelRef
    translated: bool
    reranked: bool
    results: list[SearchResultOut]
    translated_image_url: str | None
    sketch_url: str
    timings_ms: dict[str, float]
    notes: list[str]

    @classmethod
    def of(cls, outcome: SearchOutcome) -> SearchOut:
        record = outcome.record
        results = []
        for hit in outcome.hits:
            assert hit.item is not None
            results.append(
                SearchResultOut(
                    rank=hit.rank,
                    gallery_id=hit.gallery_id,
                    score=hit.score,
                    distance=hit.distance,
                    camera_id=hit.item.camera_id,
                    captured_at=hit.item.captured_at,
                    location=hit.item.location,
                    external_id=hit.item.external_id,
                    image_url=image_url(hit.gallery_id),
                )
            )
        return cls(
            search_id=record.id,
            model=ModelRef(name=record.model_name, version=record.model_version),
            translated=bool(record.parameters.get("translated")),
            reranked=bool(record.parameters.get("reranked")),
            results=results,
            translated_image_url=_translated_url(record),
            sketch_url=f"{API_PREFIX}/searches/{record.id}/sketch",
            timings_ms=outcome.timings_ms,
            notes=outcome.notes,
        )


def _translated_url(record: Search) -> str | None:
    if not record.translated_image_path:
        return None
    return f"{API_PREFIX}/searches/{record.id}/translated"


class DeletionOut(BaseModel):
    deleted_at: datetime
    deleted_by: int | None = Field(description="API key id; null when deleted on the server")
    reason: str | None


class RecordedResultOut(BaseModel):
    """One result as the search returned it; ``deleted`` says if the item was deleted since."""

    rank: int
    gallery_id: int
    score: float
    distance: float | None
    deleted: DeletionOut | None


class SearchRecordOut(BaseModel):
    id: uuid.UUID
    created_at: datetime
    api_key_id: int | None
    sketch_sha256: str
    model: ModelRef
    parameters: dict[str, Any]
    results: list[RecordedResultOut]
    translated_image_url: str | None
    sketch_url: str

    @classmethod
    def of(cls, record: Search, deletions: Mapping[int, AuditEvent]) -> SearchRecordOut:
        results = []
        for stored in record.results:
            event = deletions.get(int(stored["gallery_id"]))
            deleted = (
                DeletionOut(
                    deleted_at=event.created_at,
                    deleted_by=event.api_key_id,
                    reason=event.details.get("reason"),
                )
                if event is not None
                else None
            )
            results.append(RecordedResultOut(**stored, deleted=deleted))
        return cls(
            id=record.id,
            created_at=record.created_at,
            api_key_id=record.api_key_id,
            sketch_sha256=record.sketch_sha256,
            model=ModelRef(name=record.model_name, version=record.model_version),
            parameters=record.parameters,
            results=results,
            translated_image_url=_translated_url(record),
            sketch_url=f"{API_PREFIX}/searches/{record.id}/sketch",
        )


class ApiKeyOut(BaseModel):
    id: int
    name: str
    role: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyOut:
        return cls(
            id=row.id,
            name=row.name,
            role=row.role,
            key_prefix=row.key_prefix,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
        )


class ApiKeyCreated(ApiKeyOut):
    key: str


class ApiKeyCreate(BaseModel):
    name: str
    role: Literal["admin", "operator", "investigator"]


class AuditEventOut(BaseModel):
    id: int
    created_at: datetime
    api_key_id: int | None
    actor: str
    action: str
    gallery_id: int | None
    details: dict[str, Any]

    @classmethod
    def of(cls, row: AuditEvent) -> AuditEventOut:
        return cls(
            id=row.id,
            created_at=row.created_at,
            api_key_id=row.api_key_id,
            actor=row.actor,
            action=row.action,
            gallery_id=row.gallery_id,
            details=row.details,
        )


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class WhoAmIOut(BaseModel):
    """The key that made the request: the web page decides from ``role`` what it offers."""

    id: int
    name: str
    role: Literal["admin", "operator", "investigator"]
    key_prefix: str

    @classmethod
    def of(cls, row: ApiKey) -> WhoAmIOut:
        return cls(id=row.id, name=row.name, role=row.role, key_prefix=row.key_prefix)  # type: ignore[arg-type]


class SearchSummaryOut(BaseModel):
    """One past search in a list; ``url`` is its full record."""

    id: uuid.UUID
    created_at: datetime
    api_key_id: int | None
    model: ModelRef
    parameters: dict[str, Any]
    result_count: int
    url: str

    @classmethod
    def of(cls, record: Search) -> SearchSummaryOut:
        return cls(
            id=record.id,
            created_at=record.created_at,
            api_key_id=record.api_key_id,
            model=ModelRef(name=record.model_name, version=record.model_version),
            parameters=record.parameters,
            result_count=len(record.results),
            url=f"{API_PREFIX}/searches/{record.id}",
        )


class SearchHistoryPage(BaseModel):
    items: list[SearchSummaryOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None
