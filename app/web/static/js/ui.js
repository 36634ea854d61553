// Small DOM helpers shared by the views. Text goes in as text nodes (textContent), never as markup.

import { imageUrl, message } from "./api.js";

export const $ = (id) => document.getElementById(id);

// el("li", {class: "card", dataset: {id: 3}, onclick: f, "aria-label": "…"}, child, "text", …)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function showError(node, error) {
  node.textContent = error ? (typeof error === "string" ? error : message(error)) : "";
  node.hidden = !error;
}

// A progress row (a <progress> and a role=status text) plus the button it disables.
export class Busy {
  constructor(row, status, button) {
    this.row = row;
    this.status = status;
    this.button = button;
    this.bar = row.querySelector("progress");
  }
  start(text, total = null) {
    this.row.hidden = false;
    this.button.disabled = true;
    this.status.textContent = text;
    if (total === null) this.bar.removeAttribute("value");
    else {
      this.bar.max = total;
      this.bar.value = 0;
    }
  }
  step(value, text) {
    this.bar.value = value;
    this.status.textContent = text;
  }
  done() {
    this.row.hidden = true;
    this.button.disabled = false;
    this.status.textContent = "";
  }
}

// An <img> whose bytes are fetched with the key; the blob: URL goes into `pool`.
export function apiImage(path, alt, pool) {
  const img = el("img", { alt, decoding: "async" });
  imageUrl(path)
    .then((url) => {
      img.src = pool.add(url);
    })
    .catch((error) => {
      img.alt = `${alt} (could not be loaded: ${message(error)})`;
      img.title = img.alt;
      img.classList.add("broken");
    });
  return img;
}

const pad = (n) => String(n).padStart(2, "0");

// The browser's time zone, named once on the page: every time shown is in it.
export const TIME_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";

// "2024-05-01T13:45:00Z" -> "2024-05-01 14:45:00" in the browser's zone (TIME_ZONE).
export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

export const formatScore = (x) => (x === null || x === undefined ? "—" : x.toFixed(3));

// <input type=datetime-local> value (local time, no zone) -> ISO 8601 in UTC, or null.
export function toIso(value) {
  if (!value) return null;
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) throw new Error(`not a date and time: ${value}`);
  return date.toISOString();
}

// ISO 8601 -> the value of a datetime-local input in the browser's zone.
export function fromIso(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

export const splitList = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

// A drop zone over a file input: dropped files go through `onFiles` like chosen ones.
export function dropZone(zone, input, onFiles) {
  input.addEventListener("change", () => {
    onFiles([...input.files]);
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    onFiles([...event.dataTransfer.files]);
  });
}

// Files that are not images, by their type (the server checks the bytes as well).
export function notImages(files) {
  return files.filter((f) => !f.type.startsWith("image/")).map((f) => f.name);
}

// The metadata list of a result or gallery card.
export function metaList(pairs) {
  return el("dl", { class: "meta" }, pairs.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}
