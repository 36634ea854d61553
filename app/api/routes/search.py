"""/api/v1/search (run a search), /api/v1/searches/{id} (the audit record, its sketches and
translations) and /api/v1/searches/{id}/marks (judgements of its results)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile

from app.api.deps import CtxDep, InvestigatorDep, SessionDep, single_valued
from app.api.forms import TRUE_OR_FALSE
from app.api.schemas import MarkIn, MarkOut, SearchOut, SearchRecordOut, error_responses
from app.api.uploads import read_upload
from app.db.models import Case
from app.db.types import MAX_ID
from app.ml.infer.query_views import QueryView
from app.ml.retrieval.rerank import DEFAULT_K1, DEFAULT_K2, DEFAULT_LAMBDA
from app.services import audit, cases, feedback, report
from app.services import search as search_service
from app.services.blobs import content_type_for
from app.services.timeparse import parse_timestamp

router = APIRouter(tags=["search"])

# Every field but the repeatable sketch, camera_id, confirmed_id and rejected_id.
_ONE_EACH = Depends(
    single_valued(
        form=(
            "top_k",
            "translate",
            "view",
            "rerank",
            "k1",
            "k2",
            "lambda_value",
            "captured_after",
            "captured_before",
            "refine",
            "case_id",
        )
    )
)
_INDEX = Query(ge=0, le=search_service.MAX_SKETCHES - 1, description="0-based sketch number")


@router.post("/search", response_model=SearchOut, responses=error_responses(400, 404, 413, 422))
def search(
    request: Request,
    ctx: CtxDep,
    session: SessionDep,
    key: InvestigatorDep,
    _once: Annotated[None, _ONE_EACH],
    sketch: Annotated[
        list[UploadFile] | None,
        File(
            description=f"Full-body sketches of one suspect, 1 to {search_service.MAX_SKETCHES} "
            "(repeat the part); their embeddings are fused. Left out with `refine`: the refined "
            "search's sketches"
        ),
    ] = None,
    top_k: Annotated[int, Form(ge=1, le=search_service.MAX_TOP_K)] = 10,
    translate: Annotated[
        bool | None,
        TRUE_OR_FALSE,
        Form(
            description="sketch -> photo before embedding (false: view `sketch`; true: the "
            "model's view when it translates, else `translated`); left out: the model's "
            "choice. With `view` also sent it must agree: false with `translated` or `fused`, "
            "or true with `sketch`, is 422"
        ),
    ] = None,
    view: Annotated[
        QueryView | None,
        Form(
            description="how the sketch becomes a query: `sketch` (as drawn), `translated` "
            "(its sketch -> photo translation) or `fused` (both embeddings fused, the most "
            "accurate on the protocol); left out: the model's choice (`query_view` in "
            "/model). Overrides `translate`, which must agree when also sent (422 otherwise)"
        ),
    ] = None,
    rerank: Annotated[
        bool | None,
        TRUE_OR_FALSE,
        Form(
            description="k-reciprocal re-ranking of the top candidates (true / false); left "
            "out: automatic, on when the searched gallery (after the filters) holds at least "
            "SKETCHREID_RERANK_AUTO_MIN_ITEMS items (see `rerank_auto_min_items` in /model); "
            "the response's `reranked` and `notes` say what ran"
        ),
    ] = None,
    k1: Annotated[
        int,
        Form(
            ge=1,
            le=100,
            description="re-ranking's k1 (neighbours); `k2` must not be larger (422 otherwise)",
        ),
    ] = DEFAULT_K1,
    k2: Annotated[
        int,
        Form(
            ge=1,
            le=100,
            description=f"re-ranking's k2, at most `k1` (its default {DEFAULT_K1} when left out): "
            "`k2` > `k1` is 422",
        ),
    ] = DEFAULT_K2,
    lambda_value: Annotated[float, Form(ge=0.0, le=1.0)] = DEFAULT_LAMBDA,
    camera_id: Annotated[
        list[str] | None,
        Form(description="repeatable; text without NUL or lone surrogates (400 otherwise)"),
    ] = None,
    captured_after: Annotated[str | None, Form(description="inclusive, ISO 8601")] = None,
    captured_before: Annotated[str | None, Form(description="exclusive, ISO 8601")] = None,
    confirmed_id: Annotated[
        list[int] | None,
        Form(description="repeatable: gallery ids confirmed as the suspect (left out of results)"),
    ] = None,
    rejected_id: Annotated[
        list[int] | None,
        Form(description="repeatable: gallery ids rejected as someone else (left out of results)"),
    ] = None,
    refine: Annotated[
        uuid.UUID | None,
        Form(
            description="an earlier search: its feedback and marks are added to this one's, and "
            "its sketches are reused when no sketch is sent"
        ),
    ] = None,
    case_id: Annotated[
        int | None,
        Form(ge=1, le=MAX_ID, description="the case the search belongs to (GET /api/v1/cases)"),
    ] = None,
) -> SearchOut:
    params = search_service.SearchParams(
        top_k=top_k,
        translate=translate,
        view=view,
        rerank=rerank,
        k1=k1,
        k2=k2,
        lambda_value=lambda_value,
        camera_ids=tuple(c for c in (camera_id or []) if c.strip()),
        captured_after=parse_timestamp(captured_after, "captured_after"),
        captured_before=parse_timestamp(captured_before, "captured_before"),
    )
    params.validate()
    uploads = sketch or []
    search_service.check_sketch_count(len(uploads))
    sketches = [
        search_service.SketchUpload(read_upload(u, ctx.settings.max_upload_bytes), u.filename)
        for u in uploads
    ]
    earlier = (
        search_service.get_search(session, refine, key, use="refine")
        if refine is not None
        else None
    )
    case = cases.check_case_for_search(session, case_id, key)
    outcome = search_service.run_search(
        ctx,
        session,
        sketches,
        params,
        api_key_id=key.id,
        confirmed=confirmed_id or (),
        rejected=rejected_id or (),
        refine=earlier,
        case_id=case.id if case is not None else None,
    )
    request.app.state.metrics.observe_stages(outcome.timings_ms)
    return SearchOut.of(outcome, case)


@router.get(
    "/searches/{search_id:uuid}",
    response_model=SearchRecordOut,
    responses=error_responses(404, 422),
)
def get_search(search_id: uuid.UUID, session: SessionDep, key: InvestigatorDep) -> SearchRecordOut:
    """The audit record of a search (an admin reading another key's search is audited)."""
    record = search_service.get_search(session, search_id, key, use="record")
    deleted = audit.deletions(session, (r["gallery_id"] for r in record.results))
    return SearchRecordOut.of(
        record,
        deleted,
        feedback.mark_history(session, record.id),
        session.get(Case, record.case_id) if record.case_id is not None else None,
        cases.notes_of(session, record.id),
    )


@router.post(
    "/searches/{search_id}/marks",
    response_model=MarkOut,
    status_code=201,
    responses=error_responses(400, 404, 422),
)
def add_mark(
    search_id: uuid.UUID, body: MarkIn, session: SessionDep, key: InvestigatorDep
) -> MarkOut:
    """Mark one of the search's results as the suspect (`confirmed`), someone else
    (`rejected`), or withdraw the mark (`none`). Marks are kept with who and when."""
    record = search_service.get_search(session, search_id, key, use="mark")
    row = feedback.add_mark(session, record, body.gallery_id, body.mark, api_key_id=key.id)
    return MarkOut.of(row)


@router.get(
    "/searches/{search_id:uuid}/report",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}, **error_responses(404, 422)},
)
def get_report(
    search_id: uuid.UUID, ctx: CtxDep, session: SessionDep, key: InvestigatorDep
) -> Response:
    """The result sheet for the case file (PDF, A4): case, who and when, sketches and
    translations, parameters and filters, the model and its weights' sha256, each result's
    rank, score, camera, time, item id and sha256, marks and notes, and when it was made."""
    record = search_service.get_search(session, search_id, key, use="report")
    pdf = report.result_sheet(ctx, session, record, key)
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="search-{record.id}.pdf"'},
    )


@router.get(
    "/searches/{search_id:uuid}/translated",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 422)},
)
def get_translated(
    search_id: uuid.UUID,
    ctx: CtxDep,
    session: SessionDep,
    key: InvestigatorDep,
    index: Annotated[int, _INDEX] = 0,
) -> Response:
    record = search_service.get_search(session, search_id, key, use="translated", index=index)
    data = search_service.read_search_file(ctx, record, "translated", index)
    return Response(data, media_type="image/png")


@router.get(
    "/searches/{search_id:uuid}/sketch",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, **error_responses(404, 422)},
)
def get_sketch(
    search_id: uuid.UUID,
    ctx: CtxDep,
    session: SessionDep,
    key: InvestigatorDep,
    index: Annotated[int, _INDEX] = 0,
) -> Response:
    record = search_service.get_search(session, search_id, key, use="sketch", index=index)
    data = search_service.read_search_file(ctx, record, "sketch", index)
    return Response(data, media_type=content_type_for(record.sketches[index]["path"]))
