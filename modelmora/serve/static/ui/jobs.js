// Jobs: submit one, list (filtered by model and state, a page at a time), inspect one, cancel one.

import { get, post, request } from "./api.js";
import { h, ms, pre, when } from "./dom.js";

const STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
const LIMIT = 50;

export function mount(main, { notify, poll }) {
  const model = h("select", { id: "job-model", "aria-label": "model" }, h("option", { value: "" }, "any model"));
  const state = h("select", { id: "job-state", "aria-label": "state" }, h("option", { value: "" }, "any state"), ...STATES.map((s) => h("option", { value: s }, s)));
  const table = h("tbody");
  const pager = h("span", { class: "pager" });
  const detail = h("section", { id: "job-detail" });
  const newModel = h("select", { id: "new-job-model", "aria-label": "model of the new job" });
  const newInput = h("textarea", { id: "new-job-input", rows: 2, "aria-label": "input of the new job" }, '{"inputs": ["hello"]}');
  const newPriority = h("select", { id: "new-job-priority", "aria-label": "priority" }, ...["normal", "low", "high", "critical"].map((p) => h("option", { value: p }, p)));
  const submit = async (event) => {
    event.preventDefault();
    try {
      const job = await post("/jobs", { model: newModel.value, input: JSON.parse(newInput.value), priority: newPriority.value });
      notify(null);
      await refresh();
      await inspect(job.id);
    } catch (error) {
      notify(error);
    }
  };
  let page = 1;
  let total = 0;
  let shown = null;
  main.append(
    h("h2", {}, "Jobs"),
    h("form", { id: "job-form", onsubmit: submit },
      h("label", { class: "field" }, h("span", {}, "model"), newModel),
      h("label", { class: "field" }, h("span", {}, "input (JSON: the body of the model's task, or its inputs)"), newInput),
      h("label", { class: "field" }, h("span", {}, "priority"), newPriority),
      h("button", { type: "submit", id: "submit-job" }, "Submit job")),
    h("p", { class: "filters" }, model, " ", state, " ",
      h("button", { onclick: () => { page = Math.max(1, page - 1); refresh(); } }, "‹ Newer"), " ", pager, " ",
      h("button", { onclick: () => { if (page * LIMIT < total) page += 1; refresh(); } }, "Older ›")),
    h("table", { id: "jobs" }, h("thead", {}, h("tr", {}, ...["Job", "Model", "State", "Priority", "Created", "Queue", "Run", "Attempts", ""].map((t) => h("th", {}, t)))), table),
    detail,
  );
  model.onchange = state.onchange = () => {
    page = 1;
    refresh();
  };

  async function inspect(id) {
    shown = id;
    try {
      const job = await get(`/jobs/${id}`);
      detail.replaceChildren(h("h3", {}, `Job ${id}`), pre(job));
    } catch (error) {
      notify(error);
    }
  }

  async function cancel(button, id) {
    button.disabled = true;
    try {
      await request("DELETE", `/jobs/${id}`);
      notify(null);
    } catch (error) {
      notify(error);
    }
    await refresh();
    if (shown === id) await inspect(id);
  }

  function row(job) {
    const open = job.state === "queued" || job.state === "running";
    return h(
      "tr",
      { dataset: { job: job.id } },
      h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "inspect", onclick: (e) => { e.preventDefault(); inspect(job.id); } }, job.id.slice(0, 12))),
      h("td", {}, job.model),
      h("td", {}, h("span", { class: `state state-${job.state}` }, job.state)),
      h("td", {}, String(job.priority)),
      h("td", {}, when(job.created_at)),
      h("td", {}, ms(job.queue_ms)),
      h("td", {}, ms(job.run_ms)),
      h("td", {}, String(job.attempts)),
      h("td", {}, open ? h("button", { class: "cancel", onclick: (e) => cancel(e.target, job.id) }, "Cancel") : ""),
    );
  }

  async function refresh() {
    const query = new URLSearchParams({ page, limit: LIMIT });
    if (model.value) query.set("model", model.value);
    if (state.value) query.set("state", state.value);
    const [list, models] = await Promise.all([get(`/jobs?${query}`), get("/models?limit=1000")]);
    total = list.total;
    const names = [...new Set(models.models.map((m) => m.name.split("@")[0]))];
    if (model.options.length !== names.length + 1) {
      model.replaceChildren(h("option", { value: "" }, "any model"), ...names.map((n) => h("option", { value: n }, n)));
      newModel.replaceChildren(...models.models.map((m) => m.name).concat(names.filter((n) => !models.models.some((m) => m.name === n))).sort().map((n) => h("option", { value: n }, n)));
    }
    table.replaceChildren(...list.jobs.map(row));
    if (!list.jobs.length) table.append(h("tr", {}, h("td", { colspan: 9, class: "empty" }, "no jobs")));
    pager.textContent = `page ${page} of ${Math.max(1, Math.ceil(total / LIMIT))} (${total} jobs)`;
    main.dataset.loaded = "true";
  }

  const wanted = location.hash.split("/")[2];
  if (wanted) inspect(wanted);
  return poll(refresh);
}
