// The dialog that shows one crop large, with Previous / Next (also ← →) through a list; a
// search's crops are shown beside its sketch, which stays in place while ← → move, and Zoom
// doubles the crop (scroll to move about it).
// Esc closes it (native <dialog>); focus goes back to the card that opened it. An entry may
// carry actions (the Confirm / Reject buttons of a search result), drawn under the crop.

import { Pool, imageUrl, message } from "./api.js";
import { $, metaList } from "./ui.js";

export class Viewer {
  constructor() {
    this.dialog = $("viewer");
    this.img = $("viewer-img");
    this.pool = new Pool();
    this.sketchPool = new Pool(); // the reference sketch: kept while ← → move
    this.entries = [];
    this.index = 0;
    this.opener = null;
    $("viewer-prev").addEventListener("click", () => this.go(-1));
    $("viewer-next").addEventListener("click", () => this.go(1));
    $("viewer-zoom").addEventListener("click", () => this.zoom(!$("viewer-frame").classList.contains("zoomed")));
    this.dialog.addEventListener("keydown", (event) => {
      if (event.key === "ArrowLeft") this.go(-1);
      if (event.key === "ArrowRight") this.go(1);
    });
    this.dialog.addEventListener("close", () => {
      this.pool.clear();
      this.sketchPool.clear();
      $("viewer-sketch").removeAttribute("src");
      this.img.removeAttribute("src");
      if (this.opener) this.opener.focus();
    });
  }

  // entries: [{title, imagePath, meta: [[label, value], …], actions?: () => Node}];
  // reference: {path, label} of a sketch shown beside every entry, or null.
  open(entries, index, opener, reference = null) {
    this.entries = entries;
    this.opener = opener;
    this.zoom(false);
    this.showReference(reference);
    this.showAt(index);
    if (!this.dialog.open) this.dialog.showModal();
    $("viewer-close").focus();
  }

  // Redraw the shown entry's actions (after its mark changed), if the viewer is open.
  drawActions() {
    const entry = this.entries[this.index];
    if (!entry) return;
    const slot = $("viewer-marks");
    // Keep the keyboard where it was: a mark redraws the buttons, and a focused button
    // that disappears would drop focus out of the dialog (← → would stop working).
    const focused = slot.contains(document.activeElement) ? document.activeElement.classList[0] : null;
    slot.replaceChildren(...(entry.actions ? [entry.actions()] : []));
    if (focused) slot.querySelector(`.${focused}`)?.focus();
  }

  showReference(reference) {
    this.sketchPool.clear();
    $("viewer-sketch").removeAttribute("src");
    $("viewer-sketch-box").hidden = !reference;
    if (!reference) return;
    $("viewer-sketch-label").textContent = reference.label;
    $("viewer-sketch").alt = reference.label;
    imageUrl(reference.path)
      .then((url) => {
        $("viewer-sketch").src = this.sketchPool.add(url);
      })
      .catch((error) => {
        $("viewer-sketch").alt = `${reference.label}: ${message(error)}`;
      });
  }

  zoom(on) {
    $("viewer-frame").classList.toggle("zoomed", on);
    $("viewer-zoom").setAttribute("aria-pressed", String(on));
  }

  go(step) {
    const next = this.index + step;
    if (next >= 0 && next < this.entries.length) this.showAt(next);
  }

  showAt(index) {
    this.index = index;
    const entry = this.entries[index];
    $("viewer-title").textContent = entry.title;
    $("viewer-meta").replaceWith(Object.assign(metaList(entry.meta), { id: "viewer-meta" }));
    this.drawActions();
    $("viewer-prev").disabled = index === 0;
    $("viewer-next").disabled = index === this.entries.length - 1;
    this.img.alt = entry.title;
    this.pool.clear();
    this.img.removeAttribute("src");
    imageUrl(entry.imagePath)
      .then((url) => {
        if (this.entries[this.index] === entry) this.img.src = this.pool.add(url);
        else URL.revokeObjectURL(url);
      })
      .catch((error) => {
        this.img.alt = `${entry.title}: ${message(error)}`;
      });
  }
}
