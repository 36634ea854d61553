// Casework on the search view: the case a search goes into (and opening a new one), the
// past-searches filter by case, the cameras the gallery holds, and the result sheet (PDF).
// An investigator's key sees its own cases; an admin's every case.

import { send } from "./api.js";
import { $, el, showError, splitList } from "./ui.js";

function caseLabel(c) {
  return c.title ? `${c.reference} — ${c.title}` : c.reference;
}

export class Cases {
  // onFilter(caseId|null): the past-searches filter changed.
  constructor({ caps, onFilter }) {
    this.caps = caps;
    this.items = [];
    $("case-field").hidden = !caps.cases;
    $("case-new").hidden = !caps.cases;
    $("history-case-field").hidden = !caps.cases;
    $("case-create").addEventListener("click", () => this.create());
    $("history-case").addEventListener("change", () => onFilter(this.filter));
  }

  get chosen() {
    return $("case").value ? Number($("case").value) : null;
  }

  get filter() {
    return $("history-case").value ? Number($("history-case").value) : null;
  }

  byId(id) {
    return this.items.find((c) => c.id === id) || null;
  }

  async load() {
    if (this.caps.cameras) this.loadCameras();
    if (!this.caps.cases) return;
    try {
      const page = await send("cases");
      this.items = page.items;
      this.draw();
    } catch (error) {
      showError($("case-error"), error);
    }
  }

  draw() {
    for (const [id, first] of [["case", "No case"], ["history-case", "All searches"]]) {
      const keep = $(id).value;
      $(id).replaceChildren(
        el("option", { value: "", text: first }),
        ...this.items.map((c) => el("option", { value: String(c.id), text: caseLabel(c) })),
      );
      if (this.items.some((c) => String(c.id) === keep)) $(id).value = keep;
    }
  }

  async create() {
    const reference = $("case-ref").value.trim();
    if (!reference) {
      showError($("case-error"), "Enter the case reference.");
      $("case-ref").focus();
      return;
    }
    try {
      const made = await send("cases", {
        method: "POST", json: { reference, title: $("case-title").value.trim() || null },
      });
      showError($("case-error"), null);
      $("case-ref").value = "";
      $("case-title").value = "";
      await this.load();
      $("case").value = String(made.id);
      $("case-new").open = false;
      $("case").focus();
    } catch (error) {
      showError($("case-error"), error);
    }
  }

  // The cameras the gallery holds, as buttons that add / remove one in the cameras field.
  async loadCameras() {
    try {
      const page = await send("cameras");
      const buttons = page.items.map((c) => el("button", {
        type: "button", class: "chip", dataset: { camera: c.camera_id },
        title: `${c.items} crop(s)`,
        "aria-pressed": String(splitList($("cameras").value).includes(c.camera_id)),
        onclick: () => this.toggleCamera(c.camera_id),
      }, `${c.camera_id} (${c.items})`));
      $("camera-choice").replaceChildren(
        ...(buttons.length ? [el("span", { class: "hint", text: "In the gallery: " }), ...buttons] : []),
      );
    } catch {
      $("camera-choice").replaceChildren();
    }
  }

  toggleCamera(camera) {
    const chosen = splitList($("cameras").value);
    const next = chosen.includes(camera) ? chosen.filter((c) => c !== camera) : [...chosen, camera];
    $("cameras").value = next.join(", ");
    this.paintCameras();
  }

  paintCameras() {
    const chosen = splitList($("cameras").value);
    for (const button of $("camera-choice").querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(chosen.includes(button.dataset.camera)));
    }
  }
}

// Fetch the result sheet with the key (never in a URL) and hand it to the browser as a file.
export async function downloadReport(searchId) {
  const blob = await send(`searches/${searchId}/report`, { expect: "blob" });
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: `search-${searchId}.pdf`, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
