// A key refused while signed in (revoked or expired: 401; a role that may not do this: 403):
// a dialog asks for a key and leaves the page as it is, so an investigator's chosen sketches,
// results and form survive. Only "Sign out" clears the page.

import { send, session } from "./api.js";
import { $, showError } from "./ui.js";

export class KeyPrompt {
  // onKey(me): a valid key was given (stored already); onSignOut(): the person gave up.
  constructor({ onKey, onSignOut }) {
    this.status = null;
    this.onKey = onKey;
    const dialog = $("reauth");
    dialog.addEventListener("cancel", (event) => {
      if (this.status === 401) event.preventDefault(); // no key is left to go on with
    });
    dialog.addEventListener("close", () => {
      this.status = null;
    });
    $("reauth-form").addEventListener("submit", (event) => {
      event.preventDefault(); // never a real form submission: the key must not leave in a URL
      this.submit();
    });
    $("reauth-signout").addEventListener("click", () => {
      this.close();
      onSignOut();
    });
    $("reauth-close").addEventListener("click", () => this.close());
  }

  get open() {
    return $("reauth").open;
  }

  ask(status, message) {
    if (status === 401) session.clear(); // the refused key is of no more use
    if (this.open && this.status === 401) return; // the first refusal says why
    this.status = status;
    $("reauth-title").textContent = status === 401 ? "Your key was refused" : "Your key may not do this";
    $("reauth-reason").textContent = message;
    $("reauth-close").hidden = status === 401;
    $("reauth-key").value = "";
    showError($("reauth-error"), null);
    if (!this.open) $("reauth").showModal();
    $("reauth-key").focus();
  }

  close() {
    if (this.open) $("reauth").close();
  }

  async submit() {
    const key = $("reauth-key").value.trim();
    if (!key) {
      showError($("reauth-error"), "Enter your API key.");
      return;
    }
    $("reauth-submit").disabled = true;
    try {
      const me = await send("whoami", { key });
      session.set(key);
      $("reauth-key").value = "";
      this.close();
      this.onKey(me);
    } catch (error) {
      showError($("reauth-error"), error.status === 401 ? `This key was refused: ${error.detail || "unknown key"}.` : error);
    } finally {
      $("reauth-submit").disabled = false;
    }
  }
}
