// Models: state, version and route share, memory, queue, requests and latency (live chart from
// /metrics), load and unload; for models with versions, route weights, promote and rollback.

import { get, post, request } from "./api.js";
import { color, draw, push } from "./chart.js";
import { bytes, h, ms } from "./dom.js";

const baseName = (name) => name.split("@")[0];

// Per served name (`minilm@v1` or `sentiment`): requests and seconds, summed over endpoints.
export function requestTotals(metricsText) {
  const totals = {};
  const line = /^modelmora_request_duration_seconds_(sum|count)\{(.*)\} (\S+)$/; // labels hold "{name}"
  for (const text of metricsText.split("\n")) {
    const match = line.exec(text);
    if (!match) continue;
    const labels = Object.fromEntries([...match[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    if (!labels.model) continue;
    const name = labels.version ? `${labels.model}@${labels.version}` : labels.model;
    const total = (totals[name] ||= { sum: 0, count: 0 });
    total[match[1]] += Number(match[3]);
  }
  return totals;
}

export function mount(main, { notify, poll }) {
  const table = h("tbody");
  const legend = h("ul", { class: "legend" });
  const rateCanvas = h("canvas", { id: "rate-chart", class: "chart" });
  const latencyCanvas = h("canvas", { id: "latency-chart", class: "chart" });
  const routes = h("div", { id: "routes" });
  main.append(
    h("h2", {}, "Models"),
    h(
      "table",
      { id: "models" },
      h(
        "thead",
        {},
        h("tr", {}, ...["Model", "Version", "Task", "State", "Route share", "Memory (RSS)", "Queue", "In flight",
          "Requests", "Failed", "Latency", ""].map((t) => h("th", {}, t))),
      ),
      table,
    ),
    h("section", { class: "charts" }, rateCanvas, latencyCanvas, legend),
    routes,
  );
  const history = {};
  let previous = null;
  let routeSignature = "";

  async function act(button, method, path, body) {
    button.disabled = true;
    button.textContent += "…";
    try {
      await request(method, path, body);
      notify(null);
    } catch (error) {
      notify(error);
    }
    await refresh();
  }

  function row(status, shares) {
    const [base, version] = status.name.split("@");
    const queued = Object.values(status.queued || {}).reduce((a, b) => a + b, 0);
    const sample = history[status.name];
    const latency = sample ? sample.latency[sample.latency.length - 1] : null;
    const loaded = ["ready", "loading", "restarting"].includes(status.state);
    const share = shares[base] ? `${Math.round((shares[base][version || ""] || 0) * 100)}%` : "–";
    return h(
      "tr",
      { dataset: { model: status.name } },
      h("td", { class: "name" }, base),
      h("td", {}, version || "–"),
      h("td", {}, status.task),
      h("td", {}, h("span", { class: `state state-${status.state}` }, status.state), status.error ? h("div", { class: "why" }, status.error) : null),
      h("td", {}, share),
      h("td", { title: `USS ${bytes(status.uss_bytes)}` }, bytes(status.rss_bytes)),
      h("td", { class: "queue" }, String(queued)),
      h("td", {}, String(status.in_flight)),
      h("td", { class: "requests" }, String(status.requests_total)),
      h("td", {}, String(status.requests_failed)),
      h("td", {}, ms(latency)),
      h(
        "td",
        { class: "actions" },
        h("button", { class: "load", disabled: loaded, onclick: (e) => act(e.target, "POST", `/models/${status.name}/load`) }, "Load"),
        h("button", { class: "unload", disabled: !loaded, onclick: (e) => act(e.target, "POST", `/models/${status.name}/unload`) }, "Unload"),
      ),
    );
  }

  function routeCard(info) {
    const weights = info.route ? info.route.weights : {};
    const inputs = {};
    const rows = info.versions
      .filter((v) => v.state !== "archived")
      .map((v) => {
        inputs[v.version] = h("input", { type: "number", min: 0, max: 100, step: 1, value: weights[v.version] || 0, "aria-label": `weight of ${v.version}` });
        return h(
          "tr",
          { dataset: { version: v.version } },
          h("td", {}, v.version),
          h("td", {}, v.state),
          h("td", {}, `${Math.round(v.share * 100)}%`),
          h("td", {}, inputs[v.version]),
          h("td", {}, h("button", { class: "promote", onclick: (e) => act(e.target, "POST", `/models/${info.model}/promote`, { version: v.version }) }, "Promote")),
        );
      });
    const setRoute = (e) => {
      const chosen = Object.fromEntries(Object.entries(inputs).map(([v, input]) => [v, Number(input.value)]).filter(([, w]) => w > 0));
      act(e.target, "PUT", `/models/${info.model}/route`, { weights: chosen });
    };
    return h(
      "section",
      { class: "card route", dataset: { model: info.model } },
      h("h3", {}, `${info.model}: versions and route`),
      h("table", {}, h("thead", {}, h("tr", {}, ...["Version", "State", "Share", "Weight", ""].map((t) => h("th", {}, t)))), h("tbody", {}, rows)),
      h(
        "p",
        {},
        h("button", { class: "set-route", onclick: setRoute }, "Set route"),
        " ",
        h("button", { class: "rollback", onclick: (e) => act(e.target, "POST", `/models/${info.model}/rollback`) }, "Roll back"),
        info.route && info.route.shadow ? ` shadow: ${info.route.shadow} (${info.route.shadow_fraction * 100}%)` : "",
      ),
    );
  }

  function record(statuses, totals, now) {
    for (const status of statuses) {
      const sample = (history[status.name] ||= { rate: [], latency: [] });
      const before = previous && previous.totals[status.name];
      const after = totals[status.name] || { sum: 0, count: 0 };
      if (!before) continue;
      const requests = after.count - before.count;
      push(sample.rate, requests / ((now - previous.at) / 1000));
      push(sample.latency, requests > 0 ? ((after.sum - before.sum) / requests) * 1000 : null);
    }
    previous = { at: now, totals };
  }

  function drawCharts(statuses) {
    const names = statuses.map((s) => s.name);
    const series = (field) => names.map((name) => ({ label: name, points: (history[name] || {})[field] || [] }));
    draw(rateCanvas, "Requests per second", series("rate"), (v) => v.toFixed(1));
    draw(latencyCanvas, "Mean latency (ms)", series("latency"), (v) => v.toFixed(1));
    rateCanvas.dataset.samples = Math.max(0, ...names.map((name) => ((history[name] || {}).rate || []).length));
    legend.replaceChildren(...names.map((name, i) => h("li", {}, h("span", { class: "swatch", style: `background:${color(i)}` }), name)));
  }

  async function refresh() {
    const [list, metrics] = await Promise.all([get("/models?limit=1000"), get("/metrics")]);
    const statuses = list.models;
    const versioned = [...new Set(statuses.filter((s) => s.name.includes("@")).map((s) => baseName(s.name)))];
    const infos = await Promise.all(versioned.map((name) => get(`/models/${name}/versions`)));
    const shares = Object.fromEntries(infos.map((info) => [info.model, Object.fromEntries(info.versions.map((v) => [v.version, v.share]))]));
    record(statuses, requestTotals(metrics), Date.now());
    table.replaceChildren(...statuses.map((status) => row(status, shares)));
    drawCharts(statuses);
    const signature = JSON.stringify(infos.map((i) => [i.route, i.versions.map((v) => [v.version, v.state, v.share])]));
    if (signature !== routeSignature) {
      routeSignature = signature;
      routes.replaceChildren(...infos.map(routeCard));
    }
    main.dataset.loaded = "true";
  }

  return poll(refresh);
}
