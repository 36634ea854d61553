// Sign-in, the role's views, sign-out. GET /api/v1/whoami tells the page the key's role:
//   investigator -> Search; operator -> Gallery; admin -> both.

import { UNAUTHORISED, send, session } from "./api.js";
import { loadCapabilities } from "./capabilities.js";
import { Investigator } from "./investigator.js";
import { Operator } from "./operator.js";
import { $, TIME_ZONE, showError } from "./ui.js";
import { Viewer } from "./viewer.js";
import { Alerts } from "./watch.js";

const VIEWS = { investigator: ["search"], operator: ["gallery"], admin: ["search", "gallery"] };

const state = { views: [], investigator: null, operator: null, alerts: null };

function showView(name) {
  for (const view of ["search", "gallery"]) {
    $(`view-${view}`).hidden = view !== name;
    $(`tab-${view}`).setAttribute("aria-pressed", String(view === name));
  }
  const controller = name === "search" ? state.investigator : state.operator;
  controller.enter();
}

function enter(me) {
  state.views = VIEWS[me.role] || [];
  $("view-signin").hidden = true;
  $("whoami").textContent = `${me.name} · ${me.role} · times in ${TIME_ZONE}`;
  $("whoami").hidden = false;
  $("signout").hidden = false;
  $("tabs").hidden = state.views.length < 2;
  $("tab-search").hidden = !state.views.includes("search");
  $("tab-gallery").hidden = !state.views.includes("gallery");
  if (state.views.length) showView(state.views[0]);
  if (state.views.includes("search")) state.alerts.start();
  $("main").focus();
}

function leave(reason) {
  for (const view of ["search", "gallery"]) $(`view-${view}`).hidden = true;
  state.alerts.stop();
  state.investigator.reset();
  state.operator.reset();
  $("tabs").hidden = true;
  $("whoami").hidden = true;
  $("signout").hidden = true;
  $("view-signin").hidden = false;
  showError($("signin-error"), reason || null);
  $("api-key").focus();
}

async function signIn(key) {
  const button = $("signin-submit");
  button.disabled = true;
  showError($("signin-error"), null);
  try {
    const me = await send("whoami", { key });
    session.set(key);
    $("api-key").value = "";
    enter(me);
  } catch (error) {
    if (error.status === 401) session.clear();
    leave(error.status === 401 ? `This key was refused: ${error.detail || "unknown key"}.` : error.message);
  } finally {
    button.disabled = false;
  }
}

async function main() {
  const caps = await loadCapabilities();
  const viewer = new Viewer();
  state.investigator = new Investigator({ caps, viewer });
  state.operator = new Operator({ viewer });
  state.alerts = new Alerts({ caps, viewer });

  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault(); // never a real form submission: the key must not leave in a URL
    const key = $("api-key").value.trim();
    if (!key) {
      showError($("signin-error"), "Enter your API key.");
      return;
    }
    signIn(key);
  });
  $("signout").addEventListener("click", () => {
    session.clear();
    leave(null);
  });
  for (const view of ["search", "gallery"]) {
    $(`tab-${view}`).addEventListener("click", () => showView(view));
  }
  window.addEventListener(UNAUTHORISED, (event) => {
    session.clear();
    leave(event.detail);
  });

  if (session.key) signIn(session.key);
  else leave(null);
}

main();
