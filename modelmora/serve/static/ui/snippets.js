// The request the playground just sent, as a curl command and as Python, to copy and run.
// The key is never written out: both read it from $MODELMORA_API_KEY.

import { apiKey } from "./api.js";

function pythonLiteral(value, indent = "") {
  const inner = indent + "    ";
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") return String(value);
  if (Array.isArray(value)) {
    const flat = `[${value.map((v) => pythonLiteral(v)).join(", ")}]`;
    if (flat.length <= 60 && value.every((v) => typeof v !== "object" || v === null)) return flat;
    return `[\n${value.map((v) => inner + pythonLiteral(v, inner)).join(",\n")},\n${indent}]`;
  }
  const entries = Object.entries(value).map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pythonLiteral(v, inner)}`);
  return `{\n${entries.join(",\n")},\n${indent}}`;
}

export function curl(path, body, { stream = false } = {}) {
  const json = JSON.stringify(body).replaceAll("'", "'\\''");
  const lines = [`curl -s${stream ? "N" : ""} ${location.origin}${path}`];
  if (apiKey()) lines.push(`  -H "Authorization: Bearer $MODELMORA_API_KEY"`);
  lines.push(`  -H 'Content-Type: application/json'`, `  -d '${json}'`);
  return lines.join(" \\\n");
}

export function python(path, body, { stream = false } = {}) {
  const key = apiKey();
  if (stream) {
    return [
      "import os",
      "",
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url="${location.origin}/v1", api_key=os.environ.get("MODELMORA_API_KEY", "unused"))`,
      `stream = client.chat.completions.create(**${pythonLiteral({ ...body, stream: true })})`,
      "for chunk in stream:",
      '    print(chunk.choices[0].delta.content or "", end="")',
    ].join("\n");
  }
  const lines = key ? ["import os", "", "import httpx", ""] : ["import httpx", ""];
  lines.push("reply = httpx.post(", `    "${location.origin}${path}",`, `    json=${pythonLiteral(body, "    ")},`);
  if (key) lines.push('    headers={"Authorization": f"Bearer {os.environ[\'MODELMORA_API_KEY\']}"},');
  lines.push("    timeout=60,", ")", "print(reply.json())");
  return lines.join("\n");
}
