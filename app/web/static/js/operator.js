// The operator's view: upload crops (one or many, with camera / time / location, cleared once a
// batch is stored whole), browse the gallery page by page (newest first) with filters, delete
// items (the dialog shows the crop; a reason for the audit trail).

import { API, Pool, send } from "./api.js";
import { $, Busy, apiImage, dropZone, el, formatTime, metaList, notImages, showError, splitList, toIso } from "./ui.js";

const BATCH = 10; // files per request: progress moves in steps, no request nears the size cap
const RETRIES = 5; // on 429 (too many batch uploads at once), after Retry-After seconds

const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

// A server refusal names the file (or starts with its name): the line names it once.
export function refusalLine(name, error) {
  const reason = name && error.startsWith(`${name}: `) ? error.slice(name.length + 2) : error;
  return name && !reason.includes(name) ? `${name}: refused: ${reason}` : `Refused: ${reason}`;
}

// The details a batch was sent with, for its summary line.
function described(meta) {
  const parts = [meta.camera_id ? `camera ${meta.camera_id}` : null,
    meta.captured_at ? `captured ${formatTime(meta.captured_at)}` : null,
    meta.location ? `location ${meta.location}` : null].filter(Boolean);
  return `This batch was sent with ${parts.length ? parts.join(", ") : "no camera, time or location"}.`;
}

// The delete dialog: the crop itself, its file name and external id, and the reason asked.
function askDeleteReason(item, pool) {
  const dialog = $("confirm-delete");
  $("delete-title").textContent = `Delete gallery item ${item.id}?`;
  $("delete-crop").replaceChildren(apiImage(item.image_url, `Gallery item ${item.id}`, pool));
  $("delete-what").textContent = [item.filename ? `File ${item.filename}` : "No file name",
    item.external_id ? `external id ${item.external_id}` : null, `camera ${item.camera_id || "—"}`,
    `captured ${formatTime(item.captured_at)}`].filter(Boolean).join(" · ");
  $("delete-reason").value = "";
  dialog.returnValue = "";
  dialog.showModal();
  $("delete-reason").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      $("delete-crop").replaceChildren();
      pool.clear();
      resolve(dialog.returnValue === "delete" ? $("delete-reason").value.trim() : null);
    }, { once: true });
  });
}

export class Operator {
  constructor({ viewer }) {
    this.viewer = viewer;
    this.files = [];
    this.pool = new Pool();
    this.dialogPool = new Pool(); // the crop in the delete dialog
    this.offset = 0;
    this.loads = 0; // only the latest listing request may draw the grid
    this.busy = new Busy($("upload-busy"), $("upload-status"), $("upload-submit"));
    dropZone($("crop-drop"), $("crop-files"), (files) => this.choose(files));
    $("upload-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.upload();
    });
    $("gallery-filter").addEventListener("submit", (event) => {
      event.preventDefault();
      this.offset = 0;
      this.load();
    });
    $("g-prev").addEventListener("click", () => {
      this.offset = Math.max(0, this.offset - this.pageSize);
      this.load();
    });
    $("g-next").addEventListener("click", () => {
      this.offset += this.pageSize;
      this.load();
    });
  }

  get pageSize() {
    return Number($("g-size").value);
  }

  enter() {
    this.load();
  }

  reset() {
    this.files = [];
    this.pool.clear();
    $("gallery-grid").replaceChildren();
    $("upload-results").replaceChildren();
    $("upload-next").textContent = "";
    $("crop-chosen").textContent = "";
  }

  choose(files) {
    const bad = notImages(files);
    showError($("upload-error"), bad.length ? `Not an image, left out: ${bad.join(", ")}` : null);
    this.files = files.filter((f) => f.type.startsWith("image/"));
    $("crop-chosen").textContent = this.files.length
      ? `${this.files.length} file(s) chosen: ${this.files.slice(0, 5).map((f) => f.name).join(", ")}${this.files.length > 5 ? ", …" : ""}`
      : "";
  }

  metadata() {
    const meta = {};
    const camera = $("up-camera").value.trim();
    if (camera) meta.camera_id = camera;
    const time = toIso($("up-time").value);
    if (time) meta.captured_at = time;
    const location = $("up-location").value.trim();
    if (location) meta.location = location;
    return meta;
  }

  async postBatch(files, meta) {
    const form = new FormData();
    for (const f of files) form.append("images", f, f.name);
    form.append("metadata", JSON.stringify(files.map(() => meta)));
    form.append("camera_from_filename", String($("up-camera-from-name").checked));
    for (let attempt = 0; ; attempt++) {
      try {
        return await send("gallery/batch", { method: "POST", form });
      } catch (error) {
        if (error.status !== 429 || attempt >= RETRIES) throw error;
        this.busy.status.textContent = `The server is busy; retrying in ${error.retryAfter || 5} s…`;
        await sleep(error.retryAfter || 5);
      }
    }
  }

  async upload() {
    showError($("upload-error"), null);
    if (!this.files.length) {
      showError($("upload-error"), "Choose one or more crops first.");
      $("crop-files").focus();
      return;
    }
    let meta;
    try {
      meta = this.metadata();
    } catch (error) {
      showError($("upload-error"), error.message);
      return;
    }
    const files = this.files;
    const list = $("upload-results");
    list.replaceChildren();
    const counts = { created: 0, exists: 0, error: 0 };
    let keyRefused = false;
    this.busy.start(`Uploading 0 of ${files.length}…`, files.length);
    for (let start = 0; start < files.length; start += BATCH) {
      const part = files.slice(start, start + BATCH);
      try {
        const result = await this.postBatch(part, meta);
        for (const r of result.results) {
          counts[r.status] += 1;
          const name = r.filename || part[r.index].name;
          const text = r.status === "created" ? `${name}: stored as item ${r.item.id}`
            : r.status === "exists" ? `${name}: already stored (item ${r.item.id})`
              : refusalLine(name, r.error || "");
          list.append(el("li", { class: r.status, text }));
        }
      } catch (error) {
        counts.error += part.length;
        for (const f of part) list.append(el("li", { class: "error", text: `${f.name}: ${error.message}` }));
        if ([0, 401, 403].includes(error.status)) {
          keyRefused = error.status !== 0;
          break;
        }
      }
      const done = Math.min(start + BATCH, files.length);
      this.busy.step(done, `Uploading ${done} of ${files.length}…`);
    }
    this.busy.done();
    const summary = `${counts.created} stored, ${counts.exists} already stored, ${counts.error} failed`;
    list.prepend(el("li", { class: "summary", text: summary }));
    if (counts.error) {
      // The details stay, to send the failed files again; say that they apply to the next upload.
      showError($("upload-error"), `Some files were not stored: ${summary}. The camera, time and ` +
        "location above are kept for sending them again: check them before the next upload.");
      $("upload-next").textContent = described(meta);
    } else {
      // A batch stored whole: its details must not label the next batch.
      for (const id of ["up-camera", "up-time", "up-location"]) $(id).value = "";
      $("upload-next").textContent = `${described(meta)} Camera, time and location cleared for the next batch.`;
    }
    if (!keyRefused) { // a refused key keeps the chosen files, to send once a key is given
      this.files = [];
      $("crop-chosen").textContent = "";
    }
    this.load();
  }

  async load() {
    let query;
    try {
      query = {
        limit: this.pageSize, offset: this.offset, order: "newest", camera_id: splitList($("g-cameras").value),
        captured_after: toIso($("g-after").value), captured_before: toIso($("g-before").value),
      };
    } catch (error) {
      showError($("gallery-error"), error.message);
      return;
    }
    const load = ++this.loads;
    $("gallery-grid").setAttribute("aria-busy", "true");
    try {
      const page = await send("gallery", { query });
      if (load !== this.loads) return; // a newer request was sent meanwhile
      if (!page.items.length && this.offset > 0 && page.total > 0) {
        this.offset = Math.max(0, page.total - this.pageSize);
        return this.load();
      }
      this.draw(page);
      showError($("gallery-error"), null);
    } catch (error) {
      if (load === this.loads) showError($("gallery-error"), error);
    } finally {
      if (load === this.loads) $("gallery-grid").removeAttribute("aria-busy");
    }
  }

  draw(page) {
    this.pool.clear();
    const first = page.items.length ? page.offset + 1 : 0;
    $("g-range").textContent = `Items ${first}–${page.offset + page.items.length} of ${page.total}`;
    $("g-prev").disabled = page.offset === 0;
    $("g-next").disabled = page.next_offset === null;
    const meta = (item) => [
      ["Id", String(item.id)], ["Camera", item.camera_id || "—"], ["Time", formatTime(item.captured_at)],
      ["Location", item.location || "—"], ["File", item.filename || "—"],
      ["External id", item.external_id || "—"], ["Ingested", formatTime(item.created_at)],
    ];
    const entries = page.items.map((item) => ({ title: `Gallery item ${item.id}`, imagePath: `${API}/gallery/${item.id}/image`, meta: meta(item) }));
    const cards = page.items.map((item, i) => el("li", { class: "card", dataset: { galleryId: item.id } },
      el("button", {
        type: "button", class: "thumb", "aria-label": `Open gallery item ${item.id} large`,
        onclick: (event) => this.viewer.open(entries, i, event.currentTarget),
      }, apiImage(item.image_url, `Gallery item ${item.id}`, this.pool)),
      metaList(meta(item)),
      el("div", { class: "card-actions" }, el("button", {
        type: "button", class: "delete", "aria-label": `Delete gallery item ${item.id}`,
        onclick: () => this.remove(item),
      }, "Delete"))));
    $("gallery-grid").replaceChildren(...cards);
  }

  async remove(item) {
    const id = item.id;
    const reason = await askDeleteReason(item, this.dialogPool);
    if (reason === null) return;
    try {
      await send(`gallery/${id}`, { method: "DELETE", query: { reason: reason || null } });
      showError($("gallery-error"), null);
      await this.load();
      $("g-range").textContent += ` · item ${id} deleted`;
    } catch (error) {
      showError($("gallery-error"), error);
    }
  }
}
