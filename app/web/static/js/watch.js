// Watchlists and alerts: "Keep watching…" saves the shown search as a watchlist (POST
// /watchlists); the header's Alerts button counts the open alerts (polled) and opens their
// list, where each crop can be opened large and acknowledged.

import { Pool, send } from "./api.js";
import { $, apiImage, el, formatScore, formatTime, showError } from "./ui.js";

const POLL_MS = 10_000;
const galleryImage = (id) => `/api/v1/gallery/${id}/image`;

// The form under a search's results.
export class WatchForm {
  constructor({ caps }) {
    this.caps = caps;
    this.model = null;
    $("watch-open").addEventListener("click", () => this.toggle());
    $("watch-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
  }

  // A default threshold: a little under the lowest confirmed result's score (else the best one).
  show(model, marks) {
    this.model = model;
    $("watch-open").hidden = !this.caps.watchlists;
    $("watch-form").hidden = true;
    $("watch-open").setAttribute("aria-expanded", "false");
    showError($("watch-error"), null);
    $("watch-status").textContent = "";
    const confirmed = model.results.filter((r) => marks.get(r.galleryId) === "confirmed").map((r) => r.score);
    const base = confirmed.length ? Math.min(...confirmed) : model.results[0]?.score;
    $("watch-score").value = base === undefined ? "" : (Math.floor((base - 0.05) * 100) / 100).toFixed(2);
    $("watch-rank").value = "";
    $("watch-name").value = model.case ? `Case ${model.case.reference}` : "";
  }

  setMarks(marks) {
    if (this.model && $("watch-form").hidden) this.show(this.model, marks);
  }

  toggle() {
    const form = $("watch-form");
    form.hidden = !form.hidden;
    $("watch-open").setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) $("watch-score").focus();
  }

  async save() {
    const score = $("watch-score").value.trim();
    const rank = $("watch-rank").value.trim();
    if (!score && !rank) {
      showError($("watch-error"), "Give a score, a rank, or both.");
      return;
    }
    const json = { search_id: this.model.id };
    if ($("watch-name").value.trim()) json.name = $("watch-name").value.trim();
    if (score) json.min_score = Number(score);
    if (rank) json.max_rank = Number(rank);
    try {
      const made = await send("watchlists", { method: "POST", json });
      showError($("watch-error"), null);
      const rule = [made.min_score !== null ? `score ≥ ${formatScore(made.min_score)}` : null,
        made.max_rank !== null ? `among the first ${made.max_rank}` : null].filter(Boolean).join(" or ");
      const today = (made.best_now || []).map((b) => formatScore(b.score)).join(", ");
      $("watch-status").textContent = `Watching as “${made.name}”: new crops with ${rule} raise an alert.` +
        (today ? ` Best scores in today's gallery: ${today}.` : "");
    } catch (error) {
      showError($("watch-error"), error);
    }
  }
}

// The header's alert count and the list of alerts.
export class Alerts {
  constructor({ caps, viewer }) {
    this.caps = caps;
    this.viewer = viewer;
    this.pool = new Pool();
    this.timer = null;
    $("alerts-button").addEventListener("click", () => this.open());
    $("alerts-all").addEventListener("change", () => this.draw());
    $("alerts-dialog").addEventListener("close", () => this.pool.clear());
  }

  start() {
    this.stop();
    if (!this.caps.watchlists) return;
    $("alerts-button").hidden = false;
    this.count();
    this.timer = setInterval(() => this.count(), POLL_MS);
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    $("alerts-button").hidden = true;
    if ($("alerts-dialog").open) $("alerts-dialog").close();
  }

  async count() {
    try {
      const page = await send("alerts", { query: { status: "open", limit: 1 } });
      this.paint(page.open);
    } catch {
      // the next poll tries again; a refused key signs the page out (api.js)
    }
  }

  paint(open) {
    $("alerts-count").textContent = String(open);
    $("alerts-button").classList.toggle("has-open", open > 0);
    $("alerts-button").setAttribute("aria-label", `Alerts: ${open} open`);
  }

  async open() {
    $("alerts-dialog").showModal();
    await this.draw();
  }

  async draw() {
    try {
      const page = await send("alerts", { query: { status: $("alerts-all").checked ? "all" : "open", limit: 100 } });
      this.pool.clear();
      this.paint(page.open);
      $("alerts-empty").hidden = page.items.length > 0;
      showError($("alerts-error"), null);
      const entries = page.items.filter((a) => a.item).map((a) => ({
        title: `Alert ${a.id}: ${a.watchlist_name}`,
        imagePath: galleryImage(a.gallery_id),
        meta: this.meta(a),
      }));
      $("alerts-list").replaceChildren(...page.items.map((a) => this.entry(a, entries)));
    } catch (error) {
      showError($("alerts-error"), error);
    }
  }

  meta(a) {
    const pairs = [["Watchlist", a.watchlist_name]];
    if (a.case) pairs.push(["Case", a.case.reference]);
    pairs.push(["Score", `${formatScore(a.score)} (similarity)`]);
    if (a.rank !== null) pairs.push(["Rank", `#${a.rank} in the gallery`]);
    pairs.push(["Camera", a.item?.camera_id || "—"], ["Time", formatTime(a.item?.captured_at)],
      ["Item", String(a.gallery_id)], ["Alerted", formatTime(a.created_at)]);
    if (a.acknowledged_at) pairs.push(["Acknowledged", formatTime(a.acknowledged_at)]);
    return pairs;
  }

  entry(a, entries) {
    const index = entries.findIndex((e) => e.title === `Alert ${a.id}: ${a.watchlist_name}`);
    const thumb = a.item
      ? el("button", {
        type: "button", class: "thumb", "aria-label": `Open the crop of alert ${a.id} large`,
        onclick: (event) => {
          $("alerts-dialog").close();
          this.viewer.open(entries, index, event.currentTarget);
        },
      }, apiImage(galleryImage(a.gallery_id), `Alert ${a.id}: gallery item ${a.gallery_id}`, this.pool))
      : el("p", { class: "hint", text: "The crop was deleted." });
    const ack = a.acknowledged_at ? null : el("button", {
      type: "button", class: "secondary ack", "aria-label": `Acknowledge alert ${a.id}`,
      onclick: async () => {
        try {
          await send(`alerts/${a.id}/ack`, { method: "POST" });
          await this.draw();
        } catch (error) {
          showError($("alerts-error"), error);
        }
      },
    }, "Acknowledge");
    const rows = this.meta(a).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]);
    return el("li", { class: "alert-card", dataset: { alertId: a.id, galleryId: a.gallery_id } },
      thumb, el("dl", { class: "meta" }, rows), ack);
  }
}
