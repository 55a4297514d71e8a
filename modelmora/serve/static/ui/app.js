// The page: navigation by URL hash, the API key field, the notice line, and the current page.

import { apiKey, setApiKey } from "./api.js";
import * as models from "./models.js";
import * as playground from "./playground.js";
import * as jobs from "./jobs.js";
import * as errors from "./errors.js";

const PAGES = { models, playground, jobs, errors };
const POLL_MS = 3000;
let unmount = () => {};

export function notify(error) {
  const notice = document.getElementById("notice");
  if (!error) {
    notice.hidden = true;
    notice.textContent = "";
    return;
  }
  notice.textContent = error.message || String(error);
  notice.className = error.status === 401 || error.status === 403 ? "auth" : "error";
  notice.hidden = false;
}

// Run `task` now and then every POLL_MS (never two at once) until the page changes. A failed
// refresh shows its error until a refresh succeeds; an action's message stays until the next one.
function poll(task) {
  let timer = null;
  let stopped = false;
  let failed = false;
  const tick = async () => {
    try {
      await task();
      if (failed) notify(null);
      failed = false;
    } catch (error) {
      notify(error);
      failed = true;
    }
    if (!stopped) timer = setTimeout(tick, POLL_MS);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function show() {
  const name = location.hash.replace(/^#\/?/, "").split("/")[0] || "models";
  const page = PAGES[name] || models;
  unmount();
  notify(null);
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.dataset.page === name);
  }
  const main = document.getElementById("page");
  main.replaceChildren();
  main.dataset.page = name;
  delete main.dataset.loaded;
  unmount = page.mount(main, { notify, poll }) || (() => {});
}

function start() {
  const form = document.getElementById("key-form");
  const field = document.getElementById("key");
  field.value = apiKey();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(field.value.trim());
    show();
  });
  window.addEventListener("hashchange", show);
  show();
}

start();
