// The list of past searches (GET /searches, newest first); a click reopens one as it was.

import { send } from "./api.js";
import { $, el, formatTime, showError } from "./ui.js";

const PAGE = 20;

function describe(item) {
  const p = item.parameters || {};
  const parts = [`${item.result_count} result(s)`];
  if (p.view === "fused") parts.push("fused");
  else if (p.translated) parts.push("translated");
  if (p.reranked) parts.push("re-ranked");
  if (p.camera_id && p.camera_id.length) parts.push(`cameras ${p.camera_id.join(", ")}`);
  const fed = (p.confirmed_ids || []).length + (p.rejected_ids || []).length;
  if (fed) parts.push(`feedback on ${fed}`);
  if (p.refine) parts.push("refined");
  return parts.join(" · ");
}

export class History {
  constructor({ caps, onOpen }) {
    this.caps = caps;
    this.onOpen = onOpen;
    this.offset = 0;
    this.current = null;
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
      const page = await send("searches", { query: { limit: PAGE, offset: this.offset } });
      if (load !== this.loads) return;
      const items = page.items.map((item) => this.entry(item));
      if (fresh) $("history-list").replaceChildren(...items);
      else $("history-list").append(...items);
      this.offset = page.next_offset ?? this.offset + page.items.length;
      $("history-more").hidden = page.next_offset === null;
      $("history-empty").hidden = page.total > 0;
      showError($("history-error"), null);
      this.mark(this.current);
    } catch (error) {
      if (load === this.loads) showError($("history-error"), error);
    }
  }

  entry(item) {
    return el("li", {},
      el("button", {
        type: "button", dataset: { searchId: item.id },
        "aria-label": `Reopen the search of ${formatTime(item.created_at)}: ${describe(item)}`,
        onclick: () => this.onOpen(item.id),
      }, el("span", { class: "when", text: formatTime(item.created_at) }), el("span", { text: describe(item) })));
  }

  // Highlights the search on show (aria-current).
  mark(searchId) {
    this.current = searchId;
    for (const button of $("history-list").querySelectorAll("button")) {
      button.setAttribute("aria-current", String(button.dataset.searchId === searchId));
    }
  }
}
