// The investigator's view: choose sketches, a case and options, search, mark and note results,
// search again with that feedback, download the result sheet, reopen past searches.

import { Pool, send } from "./api.js";
import { Cases, downloadReport } from "./casework.js";
import { History } from "./history.js";
import { ResultView, fromRecord, fromSearchOut } from "./results.js";
import { WatchForm } from "./watch.js";
import { $, Busy, dropZone, el, fromIso, notImages, showError, splitList, toIso } from "./ui.js";

const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif", "image/bmp": "bmp" };

export class Investigator {
  constructor({ caps, viewer }) {
    this.caps = caps;
    this.chosen = []; // [{blob, name, url}]
    this.pool = new Pool(); // previews of the chosen sketches
    this.current = null; // {model, sketches: [{blob, name}], params}
    this.busy = new Busy($("search-busy"), $("search-status"), $("search-submit"));
    this.view = new ResultView({
      caps, viewer,
      onMark: (id, mark) => this.markResult(id, mark),
      onResearch: () => this.research(),
      onNote: (galleryId, text) => this.addNote(galleryId, text),
      onReport: () => this.report(),
    });
    this.watch = new WatchForm({ caps });
    this.cases = new Cases({ caps, onFilter: () => this.history.load() });
    this.history = new History({
      caps, onOpen: (id) => this.reopen(id), caseFilter: () => this.cases.filter,
    });
    $("cameras").addEventListener("input", () => this.cases.paintCameras());
    $("sketch-files").multiple = caps.multiSketch;
    $("sketch-hint").textContent = caps.multiSketch
      ? "One or more sketches of one suspect (several are searched together)."
      : "One sketch (this server takes one sketch per search).";
    dropZone($("sketch-drop"), $("sketch-files"), (files) => this.choose(files));
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.search();
    });
  }

  enter() {
    this.cases.load();
    this.history.load();
  }

  async addNote(galleryId, text) {
    const json = galleryId === null ? { text } : { text, gallery_id: galleryId };
    return send(`searches/${this.current.model.id}/notes`, { method: "POST", json });
  }

  async report() {
    $("report-status").textContent = "Making the result sheet…";
    try {
      await downloadReport(this.current.model.id);
      $("report-status").textContent = "Result sheet downloaded.";
    } catch (error) {
      $("report-status").textContent = "";
      showError($("search-error"), error);
    }
  }

  reset() {
    this.chosen = [];
    this.pool.clear();
    this.drawChosen();
    this.view.clear();
    this.current = null;
  }

  choose(files) {
    const bad = notImages(files);
    showError($("search-error"), bad.length ? `Not an image: ${bad.join(", ")}. Choose PNG, JPEG or WEBP sketches.` : null);
    const images = files.filter((f) => f.type.startsWith("image/"));
    if (!images.length) return;
    const added = images.map((f) => ({ blob: f, name: f.name, url: this.pool.add(URL.createObjectURL(f)) }));
    this.chosen = this.caps.multiSketch ? [...this.chosen, ...added] : added.slice(0, 1);
    this.drawChosen();
  }

  drawChosen() {
    const items = this.chosen.map((s, i) => el("li", {},
      el("img", { src: s.url, alt: `Sketch ${i + 1}: ${s.name}` }),
      el("span", { class: "name", text: s.name, title: s.name }),
      el("button", {
        type: "button", class: "secondary", "aria-label": `Remove sketch ${s.name}`,
        onclick: () => {
          this.chosen.splice(i, 1);
          this.drawChosen();
          $("sketch-files").focus();
        },
      }, "Remove")));
    $("sketch-list").replaceChildren(...items);
  }

  readParams() {
    const topK = Number($("top-k").value);
    if (!Number.isInteger(topK) || topK < 1 || topK > 100) throw new Error("Results (top-k) must be a whole number from 1 to 100.");
    return {
      case_id: this.cases.chosen,
      top_k: topK,
      view: $("view").value,
      rerank: $("rerank").value, // "" (automatic), "true" or "false"
      camera_id: splitList($("cameras").value),
      captured_after: toIso($("after").value),
      captured_before: toIso($("before").value),
    };
  }

  writeParams(p) {
    $("top-k").value = p.top_k ?? 20;
    // Searches recorded before views existed carry only the translate switch.
    const older = p.translate === false ? "sketch" : p.translate === true ? "translated" : "";
    $("view").value = p.view || older;
    // Recorded as true, false or null (left to the service, by the gallery's size).
    $("rerank").value = p.rerank === true ? "true" : p.rerank === false ? "false" : "";
    $("cameras").value = (p.camera_id || []).join(", ");
    $("after").value = fromIso(p.captured_after);
    $("before").value = fromIso(p.captured_before);
    this.cases.paintCameras();
  }

  formData(sketches, params, extra = {}) {
    const form = new FormData();
    for (const s of sketches) form.append("sketch", s.blob, s.name);
    form.append("top_k", String(params.top_k));
    if (params.case_id) form.append("case_id", String(params.case_id));
    if (params.view) form.append("view", params.view);
    if (params.rerank) form.append("rerank", params.rerank);
    for (const c of params.camera_id) form.append("camera_id", c);
    if (params.captured_after) form.append("captured_after", params.captured_after);
    if (params.captured_before) form.append("captured_before", params.captured_before);
    for (const [name, value] of Object.entries(extra)) {
      for (const v of Array.isArray(value) ? value : [value]) form.append(name, String(v));
    }
    return form;
  }

  async search() {
    let params;
    try {
      params = this.readParams();
    } catch (error) {
      showError($("search-error"), error.message);
      return;
    }
    if (!this.chosen.length) {
      showError($("search-error"), "Choose a sketch first.");
      $("sketch-files").focus();
      return;
    }
    await this.run([...this.chosen], params, {}, "Searching: translating and embedding the sketch, ranking the gallery…");
  }

  async run(sketches, params, extra, status) {
    showError($("search-error"), null);
    this.busy.start(status);
    $("result").setAttribute("aria-busy", "true");
    try {
      const out = await send("search", { method: "POST", form: this.formData(sketches, params, extra) });
      const model = fromSearchOut(out);
      model.sketchNames = sketches.map((s) => s.name);
      this.current = { model, sketches, params };
      this.view.show(this.current.model, new Map());
      this.watch.show(model, new Map());
      this.history.mark(out.search_id);
      this.history.load();
    } catch (error) {
      // A refused search: the results on screen belong to another one, never left as if
      // current. A refused key (401 / 403) ran nothing: the results stay, a key is asked for.
      if (error.status !== 401 && error.status !== 403) {
        this.view.clear();
        $("watch-form").hidden = true;
        this.current = null;
      }
      showError($("search-error"), error);
    } finally {
      this.busy.done();
      $("result").removeAttribute("aria-busy");
    }
  }

  async markResult(galleryId, mark) {
    const marks = new Map(this.view.marks);
    if (this.caps.marks) {
      try {
        await send(`searches/${this.current.model.id}/marks`, { method: "POST", json: { gallery_id: galleryId, mark } });
      } catch (error) {
        showError($("search-error"), error);
        return;
      }
    }
    if (mark === "none") marks.delete(galleryId);
    else marks.set(galleryId, mark);
    this.view.setMarks(marks);
    this.watch.setMarks(marks);
  }

  async research() {
    const { model, sketches, params } = this.current;
    const extra = {};
    if (this.caps.refine) extra.refine = model.id;
    if (this.caps.feedbackIds && !(this.caps.refine && this.caps.marks)) {
      const ids = (m) => [...this.view.marks].filter(([, v]) => v === m).map(([id]) => id);
      extra.confirmed_id = [...new Set([...model.feedback.confirmed, ...ids("confirmed")])];
      extra.rejected_id = [...new Set([...model.feedback.rejected, ...ids("rejected")])];
    }
    await this.run(sketches, params, extra, "Searching again with your feedback…");
  }

  async reopen(searchId) {
    showError($("search-error"), null);
    this.busy.start("Reopening the search…");
    try {
      const record = await send(`searches/${searchId}`);
      const ids = record.results.filter((r) => !r.deleted).map((r) => r.gallery_id);
      const found = await Promise.allSettled(ids.map((id) => send(`gallery/${id}`)));
      const items = new Map();
      found.forEach((f, i) => f.status === "fulfilled" && items.set(ids[i], f.value));
      const model = fromRecord(record, items);
      const blobs = await Promise.all(model.sketchUrls.map((url) => send(url, { expect: "blob" })));
      const sketches = blobs.map((blob, i) => ({
        blob, name: model.sketchNames[i] || `sketch-${i + 1}.${EXTENSIONS[blob.type] || "png"}`,
      }));
      const p = record.parameters || {};
      this.writeParams(p);
      $("case").value = record.case && this.cases.byId(record.case.id) ? String(record.case.id) : "";
      this.pool.clear();
      this.chosen = sketches.map((s) => ({ ...s, url: this.pool.add(URL.createObjectURL(s.blob)) }));
      this.drawChosen();
      this.current = { model, sketches, params: this.readParams() };
      const marks = new Map(model.results.filter((r) => r.mark).map((r) => [r.galleryId, r.mark]));
      this.view.show(model, marks);
      this.watch.show(model, marks);
      this.history.mark(searchId);
    } catch (error) {
      showError($("search-error"), error);
    } finally {
      this.busy.done();
    }
  }
}
