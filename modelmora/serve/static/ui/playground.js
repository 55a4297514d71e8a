// Playground: one form per task, the answer beside the same request as curl and Python.

import { get, post, stream } from "./api.js";
import { h, ms, pre } from "./dom.js";
import { curl, python } from "./snippets.js";

const lines = (text) => text.split("\n").map((l) => l.trim()).filter(Boolean);

export function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  a.forEach((x, i) => {
    dot += x * b[i];
    na += x * x;
    nb += b[i] * b[i];
  });
  return dot / Math.sqrt(na * nb);
}

function timing(reply) {
  const t = reply.timing || {};
  return h("p", { class: "timing" }, `answered by ${reply.model}: queue ${ms(t.queue_ms)}, load ${ms(t.load_ms)}, inference ${ms(t.inference_ms)}`);
}

function embeddingView(reply, texts) {
  const vectors = reply.result.embeddings;
  const head = h("tr", {}, h("th", {}, ""), ...texts.map((_, j) => h("th", {}, `#${j + 1}`)));
  const rows = vectors.map((a, i) =>
    h("tr", {}, h("th", {}, `#${i + 1}`), ...vectors.map((b) => h("td", {}, cosine(a, b).toFixed(4)))),
  );
  return [
    timing(reply),
    h("h4", {}, "Cosine similarity"),
    h("table", { id: "similarity" }, h("thead", {}, head), h("tbody", {}, rows)),
    h("h4", {}, `Vectors (${reply.result.dimensions} dimensions)`),
    h("ol", { class: "vectors" }, vectors.map((v, i) =>
      h("li", {}, h("span", { class: "text" }, texts[i]), " ", h("code", {}, `[${v.slice(0, 8).map((x) => x.toFixed(4)).join(", ")}${v.length > 8 ? ", …" : ""}]`)),
    )),
  ];
}

function classificationView(reply, texts) {
  return [
    timing(reply),
    h("ol", { class: "predictions" }, reply.result.predictions.map((labels, i) =>
      h("li", {}, h("span", { class: "text" }, texts[i]), h("ul", {}, labels.map((p) =>
        h("li", {}, h("span", { class: "bar", style: `width:${Math.round(p.score * 100)}px` }), ` ${p.label} ${p.score.toFixed(4)}`),
      ))),
    )),
  ];
}

// task -> {fields(), build(fields, model) -> {path, body, stream?}, show(reply, fields, output)}
const FORMS = {
  embedding: {
    fields: () => ({ inputs: h("textarea", { id: "inputs", rows: 4 }, "The quick brown fox\nA fast auburn fox\nStock markets fell today") }),
    build: (f, model) => ({ path: `/infer/${model}`, body: { inputs: lines(f.inputs.value), normalize: true } }),
    show: async (req, output) => output.replaceChildren(...embeddingView(await post(req.path, req.body), req.body.inputs)),
  },
  "text-classification": {
    fields: () => ({
      inputs: h("textarea", { id: "inputs", rows: 3 }, "What a lovely day\nThis is terrible"),
      top_k: h("input", { id: "top-k", type: "number", min: 1, value: 2 }),
    }),
    build: (f, model) => ({ path: `/infer/${model}`, body: { inputs: lines(f.inputs.value), top_k: Number(f.top_k.value) } }),
    show: async (req, output) => output.replaceChildren(...classificationView(await post(req.path, req.body), req.body.inputs)),
  },
  "text-generation": {
    fields: () => ({
      prompt: h("textarea", { id: "prompt", rows: 3 }, "Write a haiku about servers."),
      max_tokens: h("input", { id: "max-tokens", type: "number", min: 1, value: 32 }),
    }),
    build: (f, model) => ({
      path: "/v1/chat/completions",
      body: { model, messages: [{ role: "user", content: f.prompt.value }], max_tokens: Number(f.max_tokens.value), stream: true },
      stream: true,
    }),
    show: async (req, output) => {
      const text = h("pre", { id: "generated", class: "generated" });
      const state = h("p", { class: "timing" }, "streaming…");
      output.replaceChildren(state, text);
      let finish = null;
      let chunks = 0;
      await stream(req.path, req.body, (chunk) => {
        const choice = chunk.choices[0] || {};
        text.textContent += (choice.delta && choice.delta.content) || "";
        finish = choice.finish_reason || finish;
        chunks += 1;
      });
      state.textContent = `done: ${chunks} chunks, finish reason ${finish}`;
      output.dataset.done = "true";
    },
  },
  "text-to-image": {
    fields: () => ({
      prompt: h("textarea", { id: "prompt", rows: 2 }, "a watercolour lighthouse at dawn"),
      size: h("input", { id: "size", placeholder: "e.g. 64x64 (the model's default if empty)" }),
    }),
    build: (f, model) => {
      const body = { model, prompt: f.prompt.value, n: 1, response_format: "b64_json" };
      if (f.size.value.trim()) body.size = f.size.value.trim();
      return { path: "/v1/images/generations", body };
    },
    show: async (req, output) => {
      const reply = await post(req.path, req.body);
      output.replaceChildren(...reply.data.map((image, i) => h("img", { class: "generated-image", alt: `image ${i + 1} for: ${req.body.prompt}`, src: `data:image/png;base64,${image.b64_json}` })));
    },
  },
};

const RAW = {
  fields: () => ({ body: h("textarea", { id: "body", rows: 6 }, '{"inputs": "hello"}') }),
  build: (f, model) => ({ path: `/infer/${model}`, body: JSON.parse(f.body.value) }),
  show: async (req, output) => output.replaceChildren(pre(await post(req.path, req.body))),
};

function choices(statuses) {
  const names = [];
  for (const s of statuses) {
    const base = s.name.split("@")[0];
    if (base !== s.name && !names.some((n) => n.name === base)) names.push({ name: base, task: s.task, note: " (routed)" });
    names.push({ name: s.name, task: s.task, note: "" });
  }
  return names;
}

export function mount(main, { notify }) {
  const select = h("select", { id: "model", "aria-label": "model" });
  const form = h("form", { id: "playground-form" });
  const output = h("div", { id: "result", class: "result" });
  const curlBox = h("pre", { id: "curl", class: "snippet" });
  const pythonBox = h("pre", { id: "python", class: "snippet" });
  main.append(
    h("h2", {}, "Playground"),
    h("p", {}, h("label", {}, "Model ", select)),
    form,
    h("div", { class: "result-grid" },
      h("section", {}, h("h3", {}, "Result"), output),
      h("section", {}, h("h3", {}, "curl"), curlBox, h("h3", {}, "Python"), pythonBox)),
  );
  let models = [];

  function showForm() {
    const chosen = models.find((m) => m.name === select.value);
    if (!chosen) return;
    const kind = FORMS[chosen.task] || RAW;
    const fields = kind.fields();
    form.replaceChildren(
      h("p", { class: "task" }, `task: ${chosen.task}`),
      ...Object.entries(fields).map(([name, field]) => h("label", { class: "field" }, h("span", {}, name), field)),
      h("button", { id: "run", type: "submit" }, "Run"),
    );
    form.onsubmit = async (event) => {
      event.preventDefault();
      const button = form.querySelector("#run");
      button.disabled = true;
      delete output.dataset.done;
      try {
        const req = kind.build(fields, chosen.name);
        curlBox.textContent = curl(req.path, req.body, req);
        pythonBox.textContent = python(req.path, req.body, req);
        output.replaceChildren(h("p", { class: "timing" }, "running…"));
        await kind.show(req, output);
        output.dataset.done = "true";
        notify(null);
      } catch (error) {
        output.replaceChildren(h("p", { class: "error" }, error.message));
        notify(error);
      } finally {
        button.disabled = false;
      }
    };
  }

  async function load() {
    try {
      models = choices((await get("/models?limit=1000")).models);
      const wanted = location.hash.split("/")[2];
      select.replaceChildren(...models.map((m) => h("option", { value: m.name, selected: m.name === wanted }, `${m.name}${m.note} · ${m.task}`)));
      select.onchange = () => {
        history.replaceState(null, "", `#/playground/${select.value}`);
        showForm();
      };
      showForm();
      main.dataset.loaded = "true";
    } catch (error) {
      notify(error);
    }
  }

  load();
}
