// The list of past searches (GET /searches, newest first, optionally of one case); each entry
// shows the first sketch, the case, the query view, the filters and the result count. A click
// reopens the search as it was.

import { Pool, send } from "./api.js";
import { $, apiImage, el, formatTime, showError } from "./ui.js";

const PAGE = 20;
const VIEWS = { fused: "fused", translated: "translated", sketch: "as drawn" };

function filters(item) {
  const parts = [];
  const cams = item.camera_ids ?? item.parameters?.camera_id ?? [];
  parts.push(cams.length ? `cameras ${cams.join(", ")}` : "all cameras");
  const after = item.captured_after ?? item.parameters?.captured_after;
  const before = item.captured_before ?? item.parameters?.captured_before;
  if (after || before) parts.push(`from ${after ? formatTime(after) : "…"} to ${before ? formatTime(before) : "…"}`);
  return parts.join(" · ");
}

export function describe(item) {
  const p = item.parameters || {};
  const view = item.view || p.view || (p.translated ? "translated" : "sketch");
  const parts = [`${item.result_count} result(s)`, VIEWS[view] || view];
  if (p.reranked) parts.push("re-ranked");
  parts.push(filters(item));
  const fed = (p.confirmed_ids || []).length + (p.rejected_ids || []).length;
  if (fed) parts.push(`feedback on ${fed}`);
  if (p.refine) parts.push("refined");
  if (item.note_count) parts.push(`${item.note_count} note(s)`);
  return parts.join(" · ");
}

export class History {
  // caseFilter(): the case id to list, or null for all.
  constructor({ caps, onOpen, caseFilter = () => null }) {
    this.caps = caps;
    this.onOpen = onOpen;
    this.caseFilter = caseFilter;
    this.offset = 0;
    this.current = null;
    this.pool = new Pool(); // the sketch thumbnails
    this.loads = 0; // only the latest request may draw the list
    $("history-more").addEventListener("click", () => this.load(false));
  }

  async load(fresh = true) {
    if (!this.caps.history) {
      $("history-empty").textContent = "This server does not list past searches.";
      $("history-empty").hidden = false;
      return;
    }
    if (fresh) this.offset = 0;
    const load = ++this.loads;
    try {
      const caseId = this.caseFilter();
      const page = await send("searches", { query: { limit: PAGE, offset: this.offset, case_id: caseId } });
      if (load !== this.loads) return;
      if (fresh) this.pool.clear();
      const items = page.items.map((item) => this.entry(item));
      if (fresh) $("history-list").replaceChildren(...items);
      else $("history-list").append(...items);
      this.offset = page.next_offset ?? this.offset + page.items.length;
      $("history-more").hidden = page.next_offset === null;
      $("history-empty").textContent = caseId ? "No searches in this case yet." : "No searches yet.";
      $("history-empty").hidden = page.total > 0;
      showError($("history-error"), null);
      this.mark(this.current);
    } catch (error) {
      if (load === this.loads) showError($("history-error"), error);
    }
  }

  entry(item) {
    const when = formatTime(item.created_at);
    const caseText = item.case ? `Case ${item.case.reference}` : "No case";
    const thumb = item.sketch_urls?.length
      ? apiImage(item.sketch_urls[0], "", this.pool)
      : null;
    if (thumb) thumb.classList.add("history-thumb");
    return el("li", {},
      el("button", {
        type: "button", dataset: { searchId: item.id },
        "aria-label": `Reopen the search of ${when}: ${caseText}; ${describe(item)}`,
        onclick: () => this.onOpen(item.id),
      },
      thumb,
      el("span", { class: "history-text" },
        el("span", { class: "when", text: when }),
        el("span", { class: "case", text: caseText }),
        el("span", { class: "what", text: describe(item) }))));
  }

  // Highlights the search on show (aria-current).
  mark(searchId) {
    this.current = searchId;
    for (const button of $("history-list").querySelectorAll("button")) {
      button.setAttribute("aria-current", String(button.dataset.searchId === searchId));
    }
  }
}
