// The UI is a client of the REST API (/api/v1), authenticated by the session cookie.
// A request that changes something carries the session's CSRF token; errors arrive as
// RFC 9457 problem documents and are thrown as ApiError with the message in words.

const BASE = "/api/v1";
const CSRF_KEY = "vauban.csrf";

export class ApiError extends Error {
  constructor(status, problem) {
    const detail = problem.detail || problem.title || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.problem = problem;
    this.fieldErrors = problem.errors || [];
  }
}

const listeners = new Set();
/** Calls fn() when the session is found ended (401): the app shows the login page. */
export function onSessionEnded(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export const hasCsrf = () => Boolean(localStorage.getItem(CSRF_KEY));

export function rememberCsrf(token) {
  if (token) localStorage.setItem(CSRF_KEY, token);
  else localStorage.removeItem(CSRF_KEY);
}

async function problemOf(response) {
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try { return await response.json(); } catch (_) { /* not JSON after all */ }
  }
  return { title: response.statusText || `HTTP ${response.status}` };
}

/** fetch() against the API; resolves to the JSON answer (null for 204), throws ApiError. */
export async function request(method, path, { body, query, raw, signal, headers } = {}) {
  let url = path.startsWith("/") && !path.startsWith(BASE) ? BASE + path : path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== "") params.append(k, v);
    }
    const qs = params.toString();
    if (qs) url += (url.includes("?") ? "&" : "?") + qs;
  }
  const init = { method, credentials: "same-origin", headers: { ...(headers || {}) }, signal };
  if (method !== "GET" && method !== "HEAD") {
    const csrf = localStorage.getItem(CSRF_KEY);
    if (csrf) init.headers["X-CSRF-Token"] = csrf;
  }
  if (raw !== undefined) {
    init.body = raw;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (!response.ok) {
    const problem = await problemOf(response);
    if (response.status === 401 || (response.status === 403 && problem.check === "csrf-token")) {
      listeners.forEach((fn) => fn(problem));
    }
    throw new ApiError(response.status, problem);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  if (!type.includes("json")) return response.text();
  const answer = await response.json();
  // a list asked without a limit: every page of it, following Link: <...>; rel="next"
  const next = nextPage(response);
  if (method === "GET" && Array.isArray(answer) && next && !(query && "limit" in query)) {
    return answer.concat(await request("GET", next, { signal, headers }));
  }
  return answer;
}

/** The URL of the next page named by the answer's Link header (RFC 8288), or null. */
function nextPage(response) {
  const link = response.headers.get("Link") || "";
  const match = /<([^>]+)>;\s*rel="next"/.exec(link);
  return match ? match[1] : null;
}

export const api = {
  get: (path, opts) => request("GET", path, opts),
  post: (path, body, opts) => request("POST", path, { ...opts, body }),
  put: (path, body, opts) => request("PUT", path, { ...opts, body }),
  patch: (path, body, opts) => request("PATCH", path, { ...opts, body }),
  del: (path, opts) => request("DELETE", path, opts),
};

/** Upload a file as the body of a POST with progress: onProgress(sent, total). */
export function upload(path, file, { query, onProgress } = {}) {
  return new Promise((resolve, reject) => {
    const params = new URLSearchParams(query || {});
    const xhr = new XMLHttpRequest();
    xhr.open("POST", BASE + path + (params.toString() ? "?" + params : ""));
    xhr.withCredentials = true;
    const csrf = localStorage.getItem(CSRF_KEY);
    if (csrf) xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => onProgress && onProgress(e.loaded, e.total);
    xhr.onerror = () => reject(new ApiError(0, { title: "the upload was cut off (network error)" }));
    xhr.onload = () => {
      let doc = {};
      try { doc = JSON.parse(xhr.responseText || "{}"); } catch (_) { doc = {}; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(doc);
      else reject(new ApiError(xhr.status, doc.title ? doc : { title: xhr.statusText }));
    };
    xhr.send(file);
  });
}
