// The server's recent errors: error log records and 5xx responses, newest first (GET /errors).

import { get } from "./api.js";
import { h, when } from "./dom.js";

export function mount(main, { poll }) {
  const list = h("tbody");
  const note = h("p", { class: "note" });
  main.append(
    h("h2", {}, "Recent errors"),
    note,
    h("table", { id: "errors" }, h("thead", {}, h("tr", {}, ...["When", "Level", "Where", "What"].map((t) => h("th", {}, t)))), list),
  );

  function row(entry) {
    const where = entry.path ? `${entry.method} ${entry.path}` : entry.logger;
    const what = [entry.message, entry.model ? ` model=${entry.model}` : "", entry.request_id ? ` request_id=${entry.request_id}` : ""].join("");
    return h(
      "tr",
      { class: entry.status ? "level-error" : `level-${entry.level.toLowerCase()}` },
      h("td", {}, when(entry.at)),
      h("td", {}, entry.status ? `HTTP ${entry.status}` : entry.level),
      h("td", {}, where),
      h("td", {}, what, entry.traceback ? h("details", {}, h("summary", {}, "traceback"), h("pre", {}, entry.traceback)) : ""),
    );
  }

  async function refresh() {
    const answer = await get("/errors");
    note.textContent = `The last ${answer.capacity} warnings, errors and 5xx responses since the server started are kept.`;
    list.replaceChildren(...answer.errors.map(row));
    if (!answer.errors.length) list.append(h("tr", {}, h("td", { colspan: 4, class: "empty" }, "no errors: all is well")));
    main.dataset.loaded = "true";
  }

  return poll(refresh);
}
