// REST + WebSocket addressing, with the optional API token kept in localStorage.

const TOKEN_KEY = "metastream.token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
  }
}

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return ""; // storage disabled (private mode): run without a token
  }
}

export function setToken(value) {
  try {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* ignore: the token then lives for this page only */
  }
}

const listeners = new Set();
/** Called with an ApiError on every 401/403, so the page can ask for a token. */
export function onAuthError(fn) {
  listeners.add(fn);
}

async function request(path, { method = "GET", body, as = "json" } = {}) {
  const headers = {};
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) {
    let detail = res.statusText;
    try {
      const data = await res.json();
      detail = data.detail ?? detail;
    } catch {
      /* not JSON: keep the status text */
    }
    if (Array.isArray(detail)) {
      // FastAPI's 422: a list of {loc, msg}; show the messages.
      detail = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    }
    const err = new ApiError(res.status, detail);
    if (res.status === 401 || res.status === 403) listeners.forEach((fn) => fn(err));
    throw err;
  }
  if (as === "blob") return res.blob();
  return as === "text" ? res.text() : res.json();
}

/** Save what `path` answers as `filename` (fetched with the token, so it works with auth on). */
async function download(path, filename) {
  const blob = await request(path, { as: "blob" });
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export const api = {
  listTasks: (limit = 50, offset = 0) => request(`/api/tasks?limit=${limit}&offset=${offset}`),
  getTask: (id) => request(`/api/tasks/${encodeURIComponent(id)}`),
  createTask: (body) => request("/api/tasks", { method: "POST", body }),
  cancelTask: (id) => request(`/api/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" }),
  sendMessage: (id, requirement) =>
    request(`/api/tasks/${encodeURIComponent(id)}/messages`, { method: "POST", body: { requirement } }),
  resumeTask: (id) => request(`/api/tasks/${encodeURIComponent(id)}/resume`, { method: "POST" }),
  ticket: (id) => request(`/api/tasks/${encodeURIComponent(id)}/ticket`, { method: "POST" }),
  listFiles: (id) => request(`/api/tasks/${encodeURIComponent(id)}/files`),
  downloadFile: (id, path) =>
    download(
      `/api/tasks/${encodeURIComponent(id)}/files/${path.split("/").map(encodeURIComponent).join("/")}`,
      path.split("/").pop(),
    ),
  downloadArchive: (id) => download(`/api/tasks/${encodeURIComponent(id)}/archive`, `task-${id.slice(0, 8)}.zip`),
  getFile: (id, path) =>
    request(
      `/api/tasks/${encodeURIComponent(id)}/files/${path.split("/").map(encodeURIComponent).join("/")}`,
      { as: "text" },
    ),
};

/**
 * ws(s):// URL for a path on this origin. Browsers cannot set headers on a WebSocket, so with a
 * token the caller first gets a short-lived per-task ticket over REST (see stream.js); the
 * long-lived token itself never goes into a URL (URLs end up in logs).
 */
export function wsUrl(path, params = {}) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, String(v));
  return url.toString();
}
