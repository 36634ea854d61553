"""Response bodies of the HTTP API."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.db.models import ApiKey, AuditEvent, Case, GalleryItem, Note, Search, SearchMark
from app.services.apikeys import MAX_EXPIRY_DAYS, key_status
from app.services.cases import MAX_NOTE, MAX_REFERENCE, MAX_TITLE
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
    429: "Too many failed API keys from this address (keys are not checked until "
    "`Retry-After` seconds have passed), or, for batch uploads, too many running at once; "
    "retry after `Retry-After` seconds",
    500: "A fault of the server (logged); nothing was changed by this request's failure",
    503: "The service is starting, shutting down or too busy (the model's queue is full: "
    "retry after `Retry-After` seconds); nothing was changed",
}
# Every route under /api/v1 can answer these (key checks, key guessing, server faults, not
# started yet).
COMMON_ERRORS = (401, 403, 429, 500, 503)


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
    filename: str | None = Field(
        description="The name the crop was uploaded under (base name; null: none was sent, or "
        "stored before names were kept)"
    )
    created_at: datetime
    image_url: str
    # pending: queued for a worker (cluster profile), not searchable yet; indexed: searchable;
    # failed: a worker could not embed it (status_reason says why).
    status: Literal["pending", "indexed", "failed"]
    status_reason: str | None

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
            filename=item.filename,
            created_at=item.created_at,
            image_url=image_url(item.id),
            status=item.status,  # type: ignore[arg-type]
            status_reason=item.status_reason,
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


class FeedbackOut(BaseModel):
    """The feedback a search was made with (its own ids and those of the search it refines)."""

    confirmed_ids: list[int]
    rejected_ids: list[int]


def _search_file_url(record: Search, which: str, index: int) -> str:
    """``/searches/{id}/sketch`` or ``/translated``; ``?index=`` from the second sketch on."""
    url = f"{API_PREFIX}/searches/{record.id}/{which}"
    return url if index == 0 else f"{url}?index={index}"


def _sketch_url(record: Search, index: int) -> str:
    return _search_file_url(record, "sketch", index)


def _translated_url(record: Search, index: int) -> str | None:
    if not record.sketches[index].get("translated_path"):
        return None
    return _search_file_url(record, "translated", index)


# A text field that must hold more than white space (JSON Schema's pattern is unanchored).
NOT_BLANK = r"\S"


class CaseRef(BaseModel):
    id: int
    reference: str
    title: str | None

    @classmethod
    def of(cls, case: Case | None) -> CaseRef | None:
        if case is None:
            return None
        return cls(id=case.id, reference=case.reference, title=case.title)


class CaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference: str = Field(
        max_length=MAX_REFERENCE,
        pattern=NOT_BLANK,
        description="the case's reference, unique among your cases",
    )
    title: str | None = Field(default=None, max_length=MAX_TITLE)


class CaseUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(max_length=MAX_TITLE, description="null or empty: no title")


class CaseOut(CaseRef):
    api_key_id: int | None = Field(description="The key that opened it")
    created_at: datetime
    search_count: int
    searches_url: str

    @classmethod
    def full(cls, case: Case, search_count: int) -> CaseOut:
        return cls(
            id=case.id,
            reference=case.reference,
            title=case.title,
            api_key_id=case.api_key_id,
            created_at=case.created_at,
            search_count=search_count,
            searches_url=f"{API_PREFIX}/searches?case_id={case.id}",
        )


class CaseList(BaseModel):
    items: list[CaseOut]


class SearchCaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    case_id: int | None = Field(description="the case the search belongs to; null: none")


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=MAX_NOTE, pattern=NOT_BLANK)
    gallery_id: int | None = Field(
        default=None, description="one of the search's results; left out: a note on the search"
    )


class NoteOut(BaseModel):
    id: int
    gallery_id: int | None = Field(description="The result it is about; null: the search")
    text: str
    api_key_id: int | None = Field(description="Who wrote it")
    created_at: datetime

    @classmethod
    def of(cls, row: Note) -> NoteOut:
        return cls(
            id=row.id,
            gallery_id=row.gallery_id,
            text=row.text,
            api_key_id=row.api_key_id,
            created_at=row.created_at,
        )


class SearchOut(BaseModel):
    search_id: uuid.UUID
    model: ModelRef
    translated: bool
    view: str = Field(description="How the sketches were embedded: sketch, translated or fused")
    reranked: bool
    rerank_auto: bool = Field(
        description="re-ranking was left to the service (on or off by the gallery's size)"
    )
    results: list[SearchResultOut] = Field(
        description="Best first; confirmed and rejected items are left out"
    )
    feedback: FeedbackOut
    refine: uuid.UUID | None = Field(description="The earlier search this one refines")
    translated_image_url: str | None = Field(description="The first sketch's translation")
    sketch_url: str = Field(description="The first sketch")
    sketch_urls: list[str] = Field(description="Every sketch, in upload order")
    translated_image_urls: list[str] = Field(
        description="Every sketch's translation (empty when not translated)"
    )
    timings_ms: dict[str, float]
    notes: list[str]
    case: CaseRef | None = Field(description="The case the search belongs to")
    gallery_size: int = Field(description="Crops the gallery holds (before the filters)")
    filtered_size: int | None = Field(
        description="Crops left by the cameras and time window (null: no filters)"
    )

    @classmethod
    def of(cls, outcome: SearchOutcome, case: Case | None = None) -> SearchOut:
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
        sketches = SketchOut.all_of(record)
        return cls(
            search_id=record.id,
            model=ModelRef(name=record.model_name, version=record.model_version),
            translated=bool(record.parameters.get("translated")),
            view=record.parameters.get("view")
            or ("translated" if record.parameters.get("translated") else "sketch"),
            reranked=bool(record.parameters.get("reranked")),
            rerank_auto=bool(record.parameters.get("rerank_auto")),
            results=results,
            feedback=FeedbackOut(
                confirmed_ids=list(outcome.feedback.confirmed),
                rejected_ids=list(outcome.feedback.rejected),
            ),
            refine=record.parameters.get("refine"),
            translated_image_url=sketches[0].translated_url,
            sketch_url=sketches[0].url,
            sketch_urls=[s.url for s in sketches],
            translated_image_urls=[s.translated_url for s in sketches if s.translated_url],
            timings_ms=outcome.timings_ms,
            notes=outcome.notes,
            case=CaseRef.of(case),
            gallery_size=outcome.gallery_size,
            filtered_size=outcome.filtered_size,
        )


class SketchOut(BaseModel):
    index: int = Field(description="0-based, in upload order")
    sha256: str
    filename: str | None = Field(description="The uploaded file's name (null: none sent)")
    url: str
    translated_url: str | None

    @classmethod
    def all_of(cls, record: Search) -> list[SketchOut]:
        return [
            cls(
                index=i,
                sha256=entry["sha256"],
                filename=entry.get("filename"),
                url=_sketch_url(record, i),
                translated_url=_translated_url(record, i),
            )
            for i, entry in enumerate(record.sketches)
        ]


class DeletionOut(BaseModel):
    deleted_at: datetime
    deleted_by: int | None = Field(description="API key id; null when deleted on the server")
    reason: str | None


class RecordedResultOut(BaseModel):
    """One result as the search returned it; ``deleted`` says if the item was deleted since,
    ``mark`` how it is judged now (null: not marked)."""

    rank: int
    gallery_id: int
    score: float
    distance: float | None
    deleted: DeletionOut | None
    mark: Literal["confirmed", "rejected"] | None


class MarkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gallery_id: int = Field(description="One of the search's results")
    mark: Literal["confirmed", "rejected", "none"] = Field(
        description="confirmed: the suspect; rejected: someone else; none: withdraw the mark"
    )


class MarkOut(BaseModel):
    gallery_id: int
    mark: Literal["confirmed", "rejected", "none"]
    api_key_id: int | None = Field(description="Who marked it")
    created_at: datetime

    @classmethod
    def of(cls, row: SearchMark) -> MarkOut:
        return cls(
            gallery_id=row.gallery_id,
            mark=row.mark,  # type: ignore[arg-type]
            api_key_id=row.api_key_id,
            created_at=row.created_at,
        )


class SearchRecordOut(BaseModel):
    id: uuid.UUID
    created_at: datetime
    api_key_id: int | None
    sketch_sha256: str = Field(description="The first sketch's")
    model: ModelRef
    parameters: dict[str, Any]
    results: list[RecordedResultOut]
    translated_image_url: str | None = Field(description="The first sketch's translation")
    sketch_url: str = Field(description="The first sketch")
    sketches: list[SketchOut] = Field(description="Every sketch, in upload order")
    marks: list[MarkOut] = Field(description="Every mark made on the results, oldest first")
    case: CaseRef | None = Field(description="The case the search belongs to")
    case_notes: list[NoteOut] = Field(
        description="Every note on the search and its results, oldest first"
    )
    report_url: str = Field(description="The result sheet (PDF)")

    @classmethod
    def of(
        cls,
        record: Search,
        deletions: Mapping[int, AuditEvent],
        marks: Sequence[SearchMark],
        case: Case | None = None,
        notes: Sequence[Note] = (),
    ) -> SearchRecordOut:
        current: dict[int, str] = {}
        for row in marks:
            current[int(row.gallery_id)] = row.mark
        results = []
        for stored in record.results:
            gallery_id = int(stored["gallery_id"])
            event = deletions.get(gallery_id)
            deleted = (
                DeletionOut(
                    deleted_at=event.created_at,
                    deleted_by=event.api_key_id,
                    reason=event.details.get("reason"),
                )
                if event is not None
                else None
            )
            mark = current.get(gallery_id)
            results.append(
                RecordedResultOut(
                    **stored,
                    deleted=deleted,
                    mark=mark if mark in ("confirmed", "rejected") else None,  # type: ignore[arg-type]
                )
            )
        sketches = SketchOut.all_of(record)
        return cls(
            id=record.id,
            created_at=record.created_at,
            api_key_id=record.api_key_id,
            sketch_sha256=sketches[0].sha256,
            model=ModelRef(name=record.model_name, version=record.model_version),
            parameters=record.parameters,
            results=results,
            translated_image_url=sketches[0].translated_url,
            sketch_url=sketches[0].url,
            sketches=sketches,
            marks=[MarkOut.of(row) for row in marks],
            case=CaseRef.of(case),
            case_notes=[NoteOut.of(n) for n in notes],
            report_url=f"{API_PREFIX}/searches/{record.id}/report",
        )


class ApiKeyOut(BaseModel):
    id: int
    name: str
    role: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    expires_at: datetime | None = Field(
        description="when the key stops working (null: it works until revoked)"
    )
    status: Literal["active", "revoked", "expired"]
    created_by: int | None = Field(
        description="the admin key that created it (null: the server's command line)"
    )
    revoked_by: int | None = Field(
        description="the admin key that revoked it (null: not revoked, or on the command line)"
    )

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
            expires_at=row.expires_at,
            status=key_status(row),
            created_by=row.created_by,
            revoked_by=row.revoked_by,
        )


class ApiKeyCreated(ApiKeyOut):
    key: str


class ApiKeyCreate(BaseModel):
    name: str
    role: Literal["admin", "operator", "investigator"]
    expires_in_days: int | None = Field(
        default=None,
        ge=1,
        le=MAX_EXPIRY_DAYS,
        description="the key stops working this many days from now (omitted: never)",
    )


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
    case: CaseRef | None
    view: str = Field(description="How the sketches were embedded: sketch, translated or fused")
    camera_ids: list[str] = Field(description="The camera filter (empty: all cameras)")
    captured_after: str | None
    captured_before: str | None
    sketch_urls: list[str] = Field(description="Every sketch (the first is the thumbnail)")
    sketch_names: list[str | None] = Field(description="The sketches' uploaded file names")
    note_count: int

    @classmethod
    def of(cls, record: Search, case: Case | None = None, note_count: int = 0) -> SearchSummaryOut:
        params = record.parameters
        return cls(
            id=record.id,
            created_at=record.created_at,
            api_key_id=record.api_key_id,
            model=ModelRef(name=record.model_name, version=record.model_version),
            parameters=params,
            result_count=len(record.results),
            url=f"{API_PREFIX}/searches/{record.id}",
            case=CaseRef.of(case),
            view=params.get("view") or ("translated" if params.get("translated") else "sketch"),
            camera_ids=list(params.get("camera_id") or []),
            captured_after=params.get("captured_after"),
            captured_before=params.get("captured_before"),
            sketch_urls=[_sketch_url(record, i) for i in range(len(record.sketches))],
            sketch_names=[s.get("filename") for s in record.sketches],
            note_count=note_count,
        )


class SearchHistoryPage(BaseModel):
    items: list[SearchSummaryOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None
