// Sign-in, the role's views, sign-out. GET /api/v1/whoami tells the page the key's role:
//   investigator -> Search; operator -> Gallery; admin -> both.
// A key refused later asks for a key over the page as it is (reauth.js), never wipes it.

import { UNAUTHORISED, send, session } from "./api.js";
import { loadCapabilities } from "./capabilities.js";
import { Investigator } from "./investigator.js";
import { Operator } from "./operator.js";
import { KeyPrompt } from "./reauth.js";
import { $, TIME_ZONE, showError } from "./ui.js";
import { Viewer } from "./viewer.js";
import { Alerts } from "./watch.js";

const VIEWS = { investigator: ["search"], operator: ["gallery"], admin: ["search", "gallery"] };

const state = { me: null, views: [], investigator: null, operator: null, alerts: null, prompt: null };

const describe = (me) => `${me.name} · ${me.role} · times in ${TIME_ZONE}`;

function showView(name) {
  for (const view of ["search", "gallery"]) {
    $(`view-${view}`).hidden = view !== name;
    $(`tab-${view}`).setAttribute("aria-pressed", String(view === name));
  }
  const controller = name === "search" ? state.investigator : state.operator;
  controller.enter();
}

function enter(me) {
  state.me = me;
  state.views = VIEWS[me.role] || [];
  $("view-signin").hidden = true;
  $("whoami").textContent = describe(me);
  $("whoami").hidden = false;
  $("signout").hidden = false;
  $("tabs").hidden = state.views.length < 2;
  $("tab-search").hidden = !state.views.includes("search");
  $("tab-gallery").hidden = !state.views.includes("gallery");
  if (state.views.length) showView(state.views[0]);
  if (state.views.includes("search")) state.alerts.start();
  $("main").focus();
}

// A key given after one was refused: the same person (name and role) goes on with the page as
// it was; anyone else starts afresh, as after a sign-in.
function resume(me) {
  if (state.me && me.name === state.me.name && me.role === state.me.role) {
    state.me = me;
    $("whoami").textContent = describe(me);
    if (state.views.includes("search")) state.alerts.start();
    return;
  }
  state.investigator.reset();
  state.operator.reset();
  enter(me);
}

function signOut() {
  session.clear();
  leave(null);
}

function leave(reason) {
  state.me = null;
  state.prompt.close();
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
  state.prompt = new KeyPrompt({ onKey: resume, onSignOut: signOut });

  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault(); // never a real form submission: the key must not leave in a URL
    const key = $("api-key").value.trim();
    if (!key) {
      showError($("signin-error"), "Enter your API key.");
      return;
    }
    signIn(key);
  });
  $("signout").addEventListener("click", signOut);
  for (const view of ["search", "gallery"]) {
    $(`tab-${view}`).addEventListener("click", () => showView(view));
  }
  window.addEventListener(UNAUTHORISED, (event) => {
    const { status, message, key } = event.detail;
    // A request that went with an older key (an alert poll in flight when a new key was
    // given) says nothing about the key in use now.
    if (session.key && key !== session.key) return;
    if (!state.me) { // not signed in (yet): the sign-in form says why
      session.clear();
      leave(message);
      return;
    }
    if (status === 401) state.alerts.stop(); // no polling without a key
    state.prompt.ask(status, message);
  });

  if (session.key) signIn(session.key);
  else leave(null);
}

main();
