// Calls to /api/v1 with the API key in the X-API-Key header, and errors a person can read.
//
// The key lives in this tab's sessionStorage (gone when the tab closes or on sign-out) and is
// only ever sent as a header: never in a URL (so never in a server log, the history or a
// Referer), never in the page's HTML. Images are fetched the same way and shown from blob: URLs.

const STORAGE_KEY = "sketchreid.apiKey";
export const API = "/api/v1";

export class ApiError extends Error {
  // status: the HTTP status, or 0 when the server could not be reached.
  constructor(status, message, detail = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

export const session = {
  get key() {
    return sessionStorage.getItem(STORAGE_KEY);
  },
  set(key) {
    sessionStorage.setItem(STORAGE_KEY, key);
  },
  clear() {
    sessionStorage.removeItem(STORAGE_KEY);
  },
};

// The page listens for this to ask for a key (401: refused; 403: its role may not do this),
// leaving what is on screen as it is.
export const UNAUTHORISED = "sketchreid:unauthorised";

function explain(status, detail) {
  const text = detail || `HTTP ${status}`;
  if (status === 401) return `The server refused the API key (${text}). Sign in again with a valid key.`;
  if (status === 403) return `Your key's role may not do this (${text}).`;
  if (status === 400 || status === 422) return `The server refused it: ${text}.`;
  if (status === 404) return `Not found: ${text}.`;
  if (status === 413) return `Too large: ${text}.`;
  if (status === 429) return `The server is busy: ${text}.`;
  if (status >= 500) return `The server failed (${status}): ${text}. Try again; if it persists, tell the administrator.`;
  return text;
}

async function errorFrom(response) {
  let detail = null;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    detail = response.statusText || null;
  }
  return new ApiError(response.status, explain(response.status, detail), detail);
}

// fetch() with the key; `key` overrides the stored one (sign-in checks a key before storing it).
export async function send(path, { method = "GET", json, form, query, key, expect = "json" } = {}) {
  const headers = {};
  const useKey = key ?? session.key;
  if (useKey) headers["X-API-Key"] = useKey;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets the multipart boundary
  }
  let url = path.startsWith("/") ? path : `${API}/${path}`;
  if (query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      for (const v of Array.isArray(value) ? value : [value]) {
        if (v !== null && v !== undefined && v !== "") params.append(name, String(v));
      }
    }
    const text = params.toString();
    if (text) url += (url.includes("?") ? "&" : "?") + text;
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body, cache: "no-store", credentials: "omit" });
  } catch (exc) {
    throw new ApiError(0, "The server cannot be reached: is it running, and is this the right address? " +
      `(${exc.message || exc})`);
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    error.retryAfter = Number(response.headers.get("Retry-After")) || null;
    if ((response.status === 401 || response.status === 403) && key === undefined) {
      // `key`: the key this request went with, so that a request sent before the key was
      // replaced does not refuse the new one.
      window.dispatchEvent(new CustomEvent(UNAUTHORISED, { detail: { status: response.status, message: error.message, key: useKey } }));
    }
    throw error;
  }
  if (response.status === 204) return null;
  if (expect === "blob") return response.blob();
  return response.json();
}

// A blob: URL of an image the API serves (the key goes in the header). The caller owns the
// URL: hand it to a Pool so it is revoked when the view is redrawn.
export async function imageUrl(path) {
  const blob = await send(path, { expect: "blob" });
  return URL.createObjectURL(blob);
}

// blob: URLs of one view; `clear()` frees them all.
export class Pool {
  constructor() {
    this.urls = [];
  }
  add(url) {
    this.urls.push(url);
    return url;
  }
  clear() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
  }
}

export function message(error) {
  return error instanceof ApiError ? error.message : `Unexpected error: ${error.message || error}`;
}
