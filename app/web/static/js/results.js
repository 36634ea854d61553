// One search shown as it was: the sketch(es) and translation(s) beside a ranked grid of crops
// with rank, score, camera and time; confirm / reject and notes on each result where the server
// takes them, a legend saying what the numbers mean, and why a result is empty. A fresh search (POST /search) and a reopened one (GET /searches/{id}) are first
// turned into the same shape by fromSearchOut / fromRecord.

import { API, Pool } from "./api.js";
import { $, apiImage, el, formatScore, formatTime, metaList, showError } from "./ui.js";

const galleryImage = (id) => `${API}/gallery/${id}/image`;

function feedbackOf(source) {
  return {
    confirmed: source?.confirmed_ids || [],
    rejected: source?.rejected_ids || [],
  };
}

export function fromSearchOut(out) {
  return {
    id: out.search_id,
    createdAt: new Date().toISOString(),
    translated: out.translated,
    view: out.view,
    reranked: out.reranked,
    rerankAuto: Boolean(out.rerank_auto),
    notes: out.notes || [],
    timings: out.timings_ms || {},
    case: out.case || null,
    caseNotes: [],
    filteredSize: out.filtered_size ?? null,
    gallerySize: out.gallery_size ?? null,
    sketchNames: [],
    sketchUrls: out.sketch_urls || [out.sketch_url],
    translatedUrls: out.translated_image_urls || (out.translated_image_url ? [out.translated_image_url] : []),
    feedback: feedbackOf(out.feedback),
    results: out.results.map((r) => ({
      rank: r.rank, galleryId: r.gallery_id, score: r.score, distance: r.distance,
      camera: r.camera_id, capturedAt: r.captured_at, location: r.location,
      externalId: r.external_id, deleted: null, mark: null,
    })),
  };
}

// items: Map gallery id -> GalleryItemOut (missing: deleted or unreadable).
export function fromRecord(record, items) {
  const params = record.parameters || {};
  const sketches = record.sketches;
  return {
    id: record.id,
    createdAt: record.created_at,
    translated: Boolean(params.translated),
    view: params.view || (params.translated ? "translated" : "sketch"),
    reranked: Boolean(params.reranked),
    rerankAuto: Boolean(params.rerank_auto),
    notes: params.notes || [],
    timings: params.timings_ms || {},
    case: record.case || null,
    caseNotes: record.case_notes || [],
    filteredSize: null,
    gallerySize: null,
    sketchNames: (sketches || []).map((s) => s.filename || null),
    sketchUrls: sketches ? sketches.map((s) => s.url) : [record.sketch_url],
    translatedUrls: sketches
      ? sketches.map((s) => s.translated_url).filter(Boolean)
      : (record.translated_image_url ? [record.translated_image_url] : []),
    feedback: feedbackOf(params),
    results: record.results.map((r) => {
      const item = items.get(r.gallery_id);
      return {
        rank: r.rank, galleryId: r.gallery_id, score: r.score, distance: r.distance,
        camera: item?.camera_id ?? null, capturedAt: item?.captured_at ?? null,
        location: item?.location ?? null, externalId: item?.external_id ?? null,
        deleted: r.deleted || (item ? null : { deleted_at: null, reason: "not found" }),
        mark: r.mark || null,
      };
    }),
  };
}

const MARK_WORDS = { confirmed: "Confirmed: the suspect", rejected: "Rejected: someone else" };

// What the numbers mean (issue 23): the score is a similarity, the re-rank figure a distance.
function legend(model) {
  const score = "Score: how similar the crop is to the query (cosine similarity, −1 to 1); higher is closer.";
  const rerank = model.reranked
    ? " Re-rank: the k-reciprocal re-ranking distance; lower is closer, and the results are ordered by it, so a lower-ranked crop can have a higher score."
    : "";
  return `${score}${rerank} Neither is a probability that the crop shows the suspect.`;
}

// Why there are no (or fewer) results: the service's notes say which filter emptied the search.
function why(model) {
  if (model.results.length) return "";
  const reasons = model.notes.filter((n) => /no crop|left out by the filters|gallery/.test(n));
  if (reasons.length) return `No crop was found: ${reasons.join("; ")}.`;
  if (model.gallerySize === 0) return "No crop was found: the gallery is empty.";
  return "No crop was found.";
}

function resultMeta(r) {
  const pairs = [["Rank", `#${r.rank}`], ["Score", formatScore(r.score)]];
  if (r.distance !== null && r.distance !== undefined) pairs.push(["Re-rank", formatScore(r.distance)]);
  pairs.push(["Camera", r.camera || "—"], ["Time", formatTime(r.capturedAt)]);
  if (r.location) pairs.push(["Location", r.location]);
  if (r.externalId) pairs.push(["External id", r.externalId]);
  pairs.push(["Item", String(r.galleryId)]);
  return pairs;
}

export class ResultView {
  // caps: capabilities; viewer: Viewer; onMark(galleryId, mark); onResearch();
  // onNote(galleryId | null, text) -> the added note (throws on refusal); onReport()
  constructor({ caps, viewer, onMark, onResearch, onNote, onReport }) {
    this.caps = caps;
    this.viewer = viewer;
    this.onMark = onMark;
    this.onNote = onNote;
    this.pool = new Pool();
    this.model = null;
    this.marks = new Map();
    $("research").addEventListener("click", onResearch);
    $("report-download").addEventListener("click", onReport);
    $("print-results").addEventListener("click", () => window.print());
    $("search-note-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.addNote(null, $("search-note"), $("search-note-form"));
    });
  }

  async addNote(galleryId, input, form) {
    const text = input.value.trim();
    const error = form.querySelector(".error") || form.appendChild(el("p", { class: "error", role: "alert", hidden: true }));
    if (!text) {
      showError(error, "Write the note first.");
      input.focus();
      return;
    }
    try {
      const note = await this.onNote(galleryId, text);
      this.model.caseNotes.push(note);
      input.value = "";
      showError(error, null);
      this.drawNotes();
    } catch (exc) {
      showError(error, exc);
    }
  }

  noteItems(galleryId) {
    return this.model.caseNotes.filter((n) => (n.gallery_id ?? null) === galleryId).map((n) =>
      el("li", {}, el("span", { class: "note-meta", text: `${formatTime(n.created_at)} · key ${n.api_key_id ?? "—"}: ` }), n.text));
  }

  drawNotes() {
    $("search-notes").replaceChildren(...this.noteItems(null));
    for (const card of $("result-grid").children) {
      const list = card.querySelector(".note-list");
      if (list) list.replaceChildren(...this.noteItems(Number(card.dataset.galleryId)));
    }
  }

  noteForm(galleryId) {
    const input = el("textarea", { class: "note-text", rows: 2, maxlength: 4000, "aria-label": `A note on gallery item ${galleryId}` });
    const form = el("form", { class: "note-form", hidden: true },
      input, el("button", { type: "submit", class: "secondary" }, "Add note"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.addNote(galleryId, input, form);
    });
    const open = el("button", {
      type: "button", class: "note-add secondary", "aria-label": `Add a note on gallery item ${galleryId}`,
      onclick: () => {
        form.hidden = false;
        input.focus();
      },
    }, "Note");
    return [open, form];
  }

  get takesFeedback() {
    return this.caps.marks || this.caps.feedbackIds;
  }

  clear() {
    this.pool.clear();
    this.model = null;
    $("result-body").hidden = true;
    $("result-empty").hidden = false;
  }

  show(model, marks) {
    this.pool.clear();
    this.model = model;
    this.marks = marks;
    $("result-empty").hidden = true;
    $("result-body").hidden = false;
    const views = { sketch: "as drawn", translated: "translated", fused: "sketch + translation fused" };
    const flags = [views[model.view] || (model.translated ? "translated" : "as drawn"), model.reranked ? (model.rerankAuto ? "re-ranked (automatic)" : "re-ranked") : null]
      .filter(Boolean).join(", ");
    const ms = Object.values(model.timings).reduce((a, b) => a + b, 0);
    $("result-summary").textContent =
      `${model.results.length} result(s) · ${flags} · ${formatTime(model.createdAt)}` +
      (ms ? ` · ${Math.round(ms)} ms` : "") + ` · search ${model.id}`;
    $("result-notes").replaceChildren(...model.notes.map((n) => el("li", { text: n })));
    $("result-case").hidden = !model.case;
    $("result-case").textContent = model.case
      ? `Case ${model.case.reference}${model.case.title ? ` — ${model.case.title}` : ""}` : "";
    $("result-why").textContent = why(model);
    $("result-why").hidden = !$("result-why").textContent;
    $("result-legend").textContent = legend(model);
    $("report-download").hidden = !this.caps.report;
    $("report-status").textContent = "";
    $("search-notes-box").hidden = !this.caps.cases;
    this.drawQuery();
    this.drawGrid();
    this.drawFeedback();
    this.drawNotes();
    $("result-title").focus?.();
  }

  drawQuery() {
    const figures = [];
    this.model.sketchUrls.forEach((url, i) => {
      const name = this.model.sketchNames?.[i];
      const label = this.model.sketchUrls.length > 1 ? `Sketch ${i + 1}` : "Sketch";
      figures.push(el("figure", {}, apiImage(url, name ? `${label}: ${name}` : label, this.pool),
        el("figcaption", { text: label }), name ? el("span", { class: "sketch-name", text: name }) : null));
    });
    this.model.translatedUrls.forEach((url, i) => {
      const label = this.model.translatedUrls.length > 1 ? `Translation ${i + 1}` : "Translation";
      figures.push(el("figure", {}, apiImage(url, label, this.pool), el("figcaption", { text: label })));
    });
    $("query-strip").replaceChildren(...figures);
  }

  drawGrid() {
    const live = this.model.results.filter((r) => !r.deleted);
    const entries = live.map((r) => ({
      title: `Rank ${r.rank} · gallery item ${r.galleryId}`,
      imagePath: galleryImage(r.galleryId),
      meta: resultMeta(r),
      actions: this.takesFeedback ? () => this.markButtons(r.galleryId) : null,
    }));
    const cards = this.model.results.map((r) => {
      const card = el("li", { class: "card", dataset: { galleryId: r.galleryId } });
      if (r.deleted) {
        card.classList.add("deleted");
        const when = r.deleted.deleted_at ? `deleted ${formatTime(r.deleted.deleted_at)}` : "deleted";
        card.append(metaList([...resultMeta(r), ["Status", when + (r.deleted.reason ? ` (${r.deleted.reason})` : "")]]));
        return card;
      }
      const index = live.indexOf(r);
      const open = el("button", {
        type: "button", class: "thumb", "aria-label": `Open rank ${r.rank}, gallery item ${r.galleryId}, large`,
        onclick: (event) => this.viewer.open(entries, index, event.currentTarget, {
          path: this.model.sketchUrls[0],
          label: this.model.sketchUrls.length > 1 ? "Sketch 1" : "Sketch",
        }),
      }, apiImage(galleryImage(r.galleryId), `Rank ${r.rank}, gallery item ${r.galleryId}`, this.pool));
      card.append(open, metaList(resultMeta(r)), el("p", { class: "mark-label" }));
      if (this.takesFeedback) card.append(this.markButtons(r.galleryId));
      if (this.caps.cases) card.append(el("ul", { class: "note-list" }), ...this.noteForm(r.galleryId));
      return card;
    });
    $("result-grid").replaceChildren(...cards);
    this.paintMarks();
  }

  markButtons(galleryId) {
    const current = this.marks.get(galleryId) || null;
    const button = (mark, text) => el("button", {
      type: "button", class: mark === "confirmed" ? "confirm" : "reject",
      "aria-pressed": String(current === mark),
      "aria-label": `${text} gallery item ${galleryId}`,
      onclick: () => this.onMark(galleryId, this.marks.get(galleryId) === mark ? "none" : mark),
    }, text);
    return el("div", { class: "card-actions" }, button("confirmed", "Confirm"), button("rejected", "Reject"));
  }

  setMarks(marks) {
    this.marks = marks;
    this.paintMarks();
    this.drawFeedback();
    if (this.viewer.dialog.open) this.viewer.drawActions();
  }

  paintMarks() {
    for (const card of $("result-grid").children) {
      const mark = this.marks.get(Number(card.dataset.galleryId)) || null;
      card.classList.toggle("confirmed", mark === "confirmed");
      card.classList.toggle("rejected", mark === "rejected");
      const label = card.querySelector(".mark-label");
      if (label) label.textContent = MARK_WORDS[mark] || "";
      card.querySelector(".confirm")?.setAttribute("aria-pressed", String(mark === "confirmed"));
      card.querySelector(".reject")?.setAttribute("aria-pressed", String(mark === "rejected"));
    }
  }

  drawFeedback() {
    $("feedback-unsupported").hidden = this.takesFeedback;
    $("feedback-bar").hidden = !this.takesFeedback;
    if (!this.takesFeedback) return;
    const groups = [];
    const carried = this.model.feedback;
    const group = (cls, label, ids) => el("div", { class: `group ${cls}` },
      el("span", { text: `${label} (${ids.length}):` }),
      ids.map((id) => apiImage(galleryImage(id), `${label}: gallery item ${id}`, this.pool)));
    if (carried.confirmed.length) groups.push(group("confirmed", "Searched with confirmed", carried.confirmed));
    if (carried.rejected.length) groups.push(group("rejected", "Searched with rejected", carried.rejected));
    const confirmed = [...this.marks].filter(([, m]) => m === "confirmed").map(([id]) => id);
    const rejected = [...this.marks].filter(([, m]) => m === "rejected").map(([id]) => id);
    groups.push(el("span", { text: `Marked here: ${confirmed.length} confirmed, ${rejected.length} rejected` }));
    $("feedback-marked").replaceChildren(...groups);
    $("research").disabled = confirmed.length + rejected.length === 0;
    $("feedback-hint").textContent = $("research").disabled
      ? "Confirm (the suspect) or reject (someone else) results, then search again." : "";
  }
}
