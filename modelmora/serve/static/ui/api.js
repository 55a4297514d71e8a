// Every call to the API goes through here: the key the user typed (sessionStorage, sent as a
// Bearer token), the server's error shapes turned into one clear message.

const KEY = "modelmora.api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(body) {
  const result = {};
  const key = apiKey();
  if (key) result.Authorization = `Bearer ${key}`;
  if (body !== undefined) result["Content-Type"] = "application/json";
  return result;
}

export async function request(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: headers(body),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await errorOf(response);
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);

// POST a body whose answer is server-sent events; calls onData with each event's parsed JSON.
export async function stream(path, body, onData) {
  const response = await fetch(path, { method: "POST", headers: headers(body), body: JSON.stringify(body) });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new ApiError(response.status, parsed.error.code, parsed.error.message);
        onData(parsed);
      }
    }
  }
}

async function errorOf(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    error = {};
  }
  const code = error.code || error.type || "";
  const said = error.message || response.statusText;
  if (response.status === 401) {
    const hint = apiKey() ? "the key you entered is not valid (unknown or revoked)" : "this server needs an API key";
    return new ApiError(401, code, `401 Unauthorized: ${hint}. Enter a valid key in "API key" above.`);
  }
  if (response.status === 403) {
    return new ApiError(403, code, `403 Forbidden: ${said}. Enter an admin key in "API key" above.`);
  }
  return new ApiError(response.status, code, `${response.status} ${code}: ${said}`);
}
