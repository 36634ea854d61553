"""The result sheet of a search: a PDF for the case file (reportlab), A4, legible in black and
white.

It holds the case, who ran the search and when, the sketch(es) and translation(s), the
parameters and filters, the model (name, version, embedding key and the sha256 of each weights
file), the top-k crops with rank, score, camera, time, item id and sha256, their
confirm / reject marks and the notes (who, when), and when the sheet itself was made. Marks are
written out in words, never shown by colour alone. Times are in UTC.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image as PILImage
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import (
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from reportlab.platypus.flowables import Flowable
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, AuditEvent, Case, GalleryItem, Note, Search, SearchMark
from app.db.types import utcnow
from app.services import audit, cases, feedback
from app.services.context import ServiceContext
from app.services.search import model_weights, read_search_file

MARGIN = 15 * mm
THUMB_W, THUMB_H = 22 * mm, 40 * mm
QUERY_H = 45 * mm

SCORE_LEGEND = (
    "Score: cosine similarity of the query and the crop embeddings, from -1 to 1; higher is "
    "closer. Re-rank: the k-reciprocal re-ranking distance, lower is closer; when re-ranking "
    "ran, the results are ordered by it. Neither number is a probability that the crop shows "
    "the suspect: they only order the gallery for a person to examine."
)


@dataclass
class SheetData:
    """Everything the sheet shows, read from the database and storage."""

    record: Search
    case: Case | None
    keys: dict[int, ApiKey]
    items: dict[int, GalleryItem]
    deletions: dict[int, AuditEvent]
    marks: list[SearchMark]
    notes: list[Note]
    generated_at: datetime
    generated_by: ApiKey | None


def _utc(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") if when is not None else "-"


def _iso(text: str | None) -> str:
    if not text:
        return "-"
    try:
        return _utc(datetime.fromisoformat(text))
    except ValueError:
        return text


def _who(keys: dict[int, ApiKey], key_id: int | None) -> str:
    if key_id is None:
        return "the server's command line"
    key = keys.get(key_id)
    return f"{key.name} (key {key_id}, {key.role})" if key is not None else f"key {key_id}"


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=base["BodyText"], fontSize=9, leading=11.5)
    return {
        "title": ParagraphStyle("title", parent=base["Title"], fontSize=16, leading=19),
        "h2": ParagraphStyle("h2", parent=base["Heading2"], fontSize=11.5, leading=14),
        "body": body,
        "small": ParagraphStyle("small", parent=body, fontSize=7.5, leading=9.5),
        "mono": ParagraphStyle("mono", parent=body, fontName="Courier", fontSize=7, leading=9),
    }


def _image(data: bytes, max_w: float, max_h: float) -> Flowable:
    """An image scaled to fit ``max_w`` x ``max_h`` points, aspect kept."""
    with PILImage.open(io.BytesIO(data)) as img:
        img.load()
        rgb = img.convert("RGB")
    w, h = rgb.size
    scale = min(max_w / w, max_h / h)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=90)  # stored as is (DCT): a small sheet
    buf.seek(0)
    return Image(buf, width=w * scale, height=h * scale)


def _p(text: str, style: ParagraphStyle) -> Paragraph:
    return Paragraph(text, style)


def _grid(rows: list[list[Any]], widths: Sequence[float]) -> Table:
    table = Table(rows, colWidths=list(widths), hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, -1), 0.4, colors.grey),
                ("LEFTPADDING", (0, 0), (-1, -1), 3),
                ("RIGHTPADDING", (0, 0), (-1, -1), 3),
            ]
        )
    )
    return table


def gather(
    ctx: ServiceContext, session: Session, record: Search, generated_by: ApiKey | None
) -> SheetData:
    ids = [int(r["gallery_id"]) for r in record.results]
    found: list[GalleryItem] = (
        list(session.scalars(select(GalleryItem).where(GalleryItem.id.in_(ids)))) if ids else []
    )
    items = {int(i.id): i for i in found}
    marks = feedback.mark_history(session, record.id)
    notes = cases.notes_of(session, record.id)
    key_ids = {record.api_key_id, *(m.api_key_id for m in marks), *(n.api_key_id for n in notes)}
    wanted = sorted(k for k in key_ids if k is not None)
    keys = (
        {k.id: k for k in session.scalars(select(ApiKey).where(ApiKey.id.in_(wanted)))}
        if wanted
        else {}
    )
    return SheetData(
        record=record,
        case=session.get(Case, record.case_id) if record.case_id is not None else None,
        keys=keys,
        items=items,
        deletions=audit.deletions(session, ids),
        marks=marks,
        notes=notes,
        generated_at=utcnow(),
        generated_by=generated_by,
    )


def _model_rows(ctx: ServiceContext, data: SheetData, st: dict[str, ParagraphStyle]) -> list[Any]:
    record, params = data.record, data.record.parameters
    key = params.get("embedding_key") or "-"
    weights: dict[str, str] = dict(params.get("model_weights") or {})
    if not weights and key == ctx.embedding_key:  # searches recorded before weights were
        weights = model_weights(ctx.bundle.manifest)
    rows = [
        [
            _p("Model", st["body"]),
            _p(escape(f"{record.model_name} {record.model_version}"), st["body"]),
        ],
        [_p("Embedding key", st["body"]), _p(escape(key), st["mono"])],
    ]
    for name, sha in weights.items():
        rows.append([_p(escape(f"sha256 of {name}"), st["body"]), _p(escape(sha), st["mono"])])
    if not weights:
        rows.append([_p("Weights", st["body"]), _p("not recorded with this search", st["body"])])
    return rows


def _parameter_rows(data: SheetData, st: dict[str, ParagraphStyle]) -> list[Any]:
    p = data.record.parameters
    views = {
        "sketch": "the sketch as drawn",
        "translated": "its translation to a photo",
        "fused": "sketch and translation fused",
    }
    view = p.get("view") or ("translated" if p.get("translated") else "sketch")
    if p.get("reranked"):
        rerank = (
            f"on{' (automatic)' if p.get('rerank_auto') else ''}: k1 {p.get('k1')}, "
            f"k2 {p.get('k2')}, lambda {p.get('lambda_value')}, "
            f"{p.get('rerank_candidates')} candidates"
        )
    else:
        rerank = "off" + (" (automatic)" if p.get("rerank_auto") else "")
    cams = ", ".join(p.get("camera_id") or []) or "all"
    window = f"from {_iso(p.get('captured_after'))} to before {_iso(p.get('captured_before'))}"
    if not p.get("captured_after") and not p.get("captured_before"):
        window = "any time"
    fed = []
    if p.get("confirmed_ids"):
        fed.append("confirmed " + ", ".join(map(str, p["confirmed_ids"])))
    if p.get("rejected_ids"):
        fed.append("rejected " + ", ".join(map(str, p["rejected_ids"])))
    rows = [
        ("Query", views.get(view, view)),
        ("Results asked (top-k)", str(p.get("top_k"))),
        ("Re-ranking", rerank),
        ("Cameras", cams),
        ("Capture time", window),
        ("Feedback", "; ".join(fed) or "none"),
        ("Refines search", str(p.get("refine") or "-")),
        ("Index", str(p.get("index") or "-")),
    ]
    for note in p.get("notes") or []:
        rows.append(("Service note", str(note)))
    return [[_p(k, st["body"]), _p(escape(v), st["body"])] for k, v in rows]


def _query_table(ctx: ServiceContext, data: SheetData, st: dict[str, ParagraphStyle]) -> Table:
    cells: list[Any] = []
    for i, entry in enumerate(data.record.sketches):
        sketch = read_search_file(ctx, data.record, "sketch", i)
        name = entry.get("filename") or f"sketch {i + 1}"
        cells.append(
            [
                _image(sketch, 40 * mm, QUERY_H),
                _p(escape(f"Sketch {i + 1}: {name}"), st["small"]),
                _p(escape(entry["sha256"][:32]), st["mono"]),
                _p(escape(entry["sha256"][32:]), st["mono"]),
            ]
        )
        if entry.get("translated_path"):
            translated = read_search_file(ctx, data.record, "translated", i)
            cells.append(
                [_image(translated, 40 * mm, QUERY_H), _p(f"Translation {i + 1}", st["small"])]
            )
    per_row = 4
    rows = [cells[k : k + per_row] for k in range(0, len(cells), per_row)]
    rows[-1] += [""] * (per_row - len(rows[-1]))
    table = Table(rows, colWidths=[45 * mm] * per_row, hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return table


def _result_rows(ctx: ServiceContext, data: SheetData, st: dict[str, ParagraphStyle]) -> list[Any]:
    latest: dict[int, SearchMark] = {}
    for mark in data.marks:
        latest[int(mark.gallery_id)] = mark
    notes_by: dict[int, list[Note]] = {}
    for note in data.notes:
        if note.gallery_id is not None:
            notes_by.setdefault(int(note.gallery_id), []).append(note)
    rows: list[Any] = [
        [
            _p("<b>Crop</b>", st["small"]),
            _p("<b>Rank, score, where and when, identity, marks and notes</b>", st["small"]),
        ]
    ]
    for stored in data.record.results:
        gid = int(stored["gallery_id"])
        item = data.items.get(gid)
        lines = []
        score = f"score {stored['score']:.3f} (similarity)"
        if stored.get("distance") is not None:
            score += f" · re-rank {stored['distance']:.3f} (distance)"
        lines.append(f"<b>#{stored['rank']}</b> · {score}")
        if item is not None:
            picture: Any = _image(ctx.blobs.read(item.blob_path), THUMB_W, THUMB_H)
            where = f"camera {item.camera_id or '-'} · captured {_utc(item.captured_at)}"
            if item.location:
                where += f" · {item.location}"
            lines.append(escape(where))
            ident = f"item {gid}"
            if item.external_id:
                ident += f" · external id {item.external_id}"
            lines.append(escape(ident))
            sha = item.sha256
        else:
            picture = _p("(deleted)", st["small"])
            event = data.deletions.get(gid)
            gone = f"item {gid} · deleted"
            if event is not None:
                gone += f" {_utc(event.created_at)}"
                if event.details.get("reason"):
                    gone += f" ({event.details['reason']})"
            lines.append(escape(gone))
            sha = str(event.details.get("sha256") or "-") if event is not None else "-"
        latest_mark = latest.get(gid)
        if latest_mark is not None and latest_mark.mark != "none":
            who = escape(_who(data.keys, latest_mark.api_key_id))
            lines.append(
                f"<b>Mark: {latest_mark.mark.upper()}</b> by {who} "
                f"at {_utc(latest_mark.created_at)}"
            )
        else:
            lines.append("Mark: none")
        for note in notes_by.get(gid, []):
            lines.append(
                f"Note by {escape(_who(data.keys, note.api_key_id))} at {_utc(note.created_at)}: "
                f"<i>{escape(note.text)}</i>"
            )
        details = [_p("<br/>".join(lines), st["body"]), _p(f"sha256 {escape(sha)}", st["mono"])]
        rows.append([picture, details])
    return rows


def _footer(data: SheetData) -> Any:
    text = (
        f"sketch-reid result sheet · search {data.record.id} · generated {_utc(data.generated_at)}"
    )

    def draw(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.drawString(MARGIN, 8 * mm, text)
        canvas.drawRightString(A4[0] - MARGIN, 8 * mm, f"page {doc.page}")
        canvas.restoreState()

    return draw


def render_sheet(ctx: ServiceContext, data: SheetData) -> bytes:
    """The sheet as PDF bytes."""
    st = _styles()
    record = data.record
    width = A4[0] - 2 * MARGIN
    story: list[Any] = [_p("Search result sheet", st["title"])]
    case = (
        f"{escape(data.case.reference)}"
        + (f" - {escape(data.case.title)}" if data.case.title else "")
        if data.case is not None
        else "none"
    )
    head = [
        ("Case", case),
        ("Search", str(record.id)),
        ("Run by", escape(_who(data.keys, record.api_key_id))),
        ("Run at", _utc(record.created_at)),
        (
            "Sheet generated",
            f"{_utc(data.generated_at)}"
            + (
                f" by {escape(data.generated_by.name)} (key {data.generated_by.id})"
                if data.generated_by
                else ""
            ),
        ),
    ]
    story.append(
        _grid([[_p(k, st["body"]), _p(v, st["body"])] for k, v in head], [40 * mm, width - 40 * mm])
    )
    story += [Spacer(1, 3 * mm), _p("What was searched", st["h2"]), _query_table(ctx, data, st)]
    story += [_p("Parameters and filters", st["h2"])]
    story.append(_grid(_parameter_rows(data, st), [40 * mm, width - 40 * mm]))
    story += [_p("Model", st["h2"])]
    story.append(_grid(_model_rows(ctx, data, st), [40 * mm, width - 40 * mm]))
    search_notes = [n for n in data.notes if n.gallery_id is None]
    if search_notes:
        story.append(_p("Notes on the search", st["h2"]))
        for note in search_notes:
            story.append(
                _p(
                    f"{_utc(note.created_at)}, {escape(_who(data.keys, note.api_key_id))}: "
                    f"<i>{escape(note.text)}</i>",
                    st["body"],
                )
            )
    story.append(_p(f"Results ({len(record.results)}), best first", st["h2"]))
    story.append(_p(SCORE_LEGEND, st["small"]))
    story.append(Spacer(1, 2 * mm))
    if record.results:
        table = _grid(_result_rows(ctx, data, st), [THUMB_W + 6, width - THUMB_W - 6])
        table.repeatRows = 1
        story.append(table)
    else:
        story.append(_p("The search found no crops.", st["body"]))
    story.append(Spacer(1, 4 * mm))
    story.append(
        KeepTogether(
            [
                _p(
                    f"End of sheet. Generated {_utc(data.generated_at)}; the search's record "
                    f"stays at /api/v1/searches/{record.id}.",
                    st["small"],
                )
            ]
        )
    )
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 4 * mm,
        title=f"Search result sheet {record.id}",
        author="sketch-reid",
        subject=f"case {data.case.reference}" if data.case is not None else "search",
    )
    footer = _footer(data)
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()


def result_sheet(
    ctx: ServiceContext, session: Session, record: Search, generated_by: ApiKey | None
) -> bytes:
    """The PDF result sheet of ``record`` as it stands now (marks and notes included)."""
    return render_sheet(ctx, gather(ctx, session, record, generated_by))
