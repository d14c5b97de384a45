// The UI's shared pieces: data loading that follows the event stream, tables, forms,
// confirmation, errors in words, operation progress. Every control has a label and is
// reachable by keyboard.
import { html, useCallback, useEffect, useMemo, useRef, useState } from "./html.js";
import { api, ApiError } from "./api.js";
import { subscribe } from "./events.js";
import { href } from "./router.js";

export function Icon({ name, label }) {
  return html`<svg class="icon" aria-hidden=${label ? undefined : "true"} role=${label ? "img" : undefined}
    aria-label=${label}><use href=${"/ui/vendor/icons.svg#" + name} /></svg>`;
}

const NETWORK_RETRIES = 3; // a request cut by the network (not refused by the API) is sent again

/** GET `path` now and again whenever an event of `events` (type prefixes) arrives;
 * {data, error, loading, reload}. A burst of events costs one request. A request that
 * never got an answer (the network dropped it) is sent again a few times, a second
 * apart, before its error is shown: otherwise the page would show stale data until
 * the next event. Requests still in flight when the component goes (or the path changes)
 * are aborted: a page left at logout leaves no request to be answered 401 after the
 * session ended. `retire(work)` runs the deletion of the object shown: refreshes stop and
 * the one in flight is aborted first (asked for after its deletion, the object would be
 * answered 404, which the browser logs as an error); they resume if `work` throws. */
export function useApi(path, { events = [], query } = {}) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const generation = useRef(0);
  const retries = useRef(0);
  const again = useRef(null);
  const signal = useRef(null);
  const inflight = useRef(null);
  const held = useRef(false);
  const key = path + JSON.stringify(query || {});
  const reload = useCallback(() => {
    const page = signal.current;
    if (!path || held.current || !page || page.aborted) return;
    const mine = ++generation.current;
    clearTimeout(again.current);
    if (inflight.current) inflight.current.abort(); // its answer would be dropped anyway
    const request = new AbortController();
    inflight.current = request;
    const stop = () => request.abort();
    page.addEventListener("abort", stop, { once: true });
    api.get(path, { query, signal: request.signal }).finally(() => {
      page.removeEventListener("abort", stop);
      if (inflight.current === request) inflight.current = null;
    }).then(
      (data) => {
        if (mine !== generation.current) return;
        retries.current = 0;
        setState({ data, error: null, loading: false });
      },
      (error) => {
        if (mine !== generation.current) return;
        if (!(error instanceof ApiError) && retries.current < NETWORK_RETRIES) {
          retries.current += 1;
          again.current = setTimeout(() => mine === generation.current && reload(), 1000);
          return;
        }
        setState((s) => ({ ...s, error, loading: false }));
      },
    );
  }, [key]);
  useEffect(() => {
    const controller = new AbortController();
    signal.current = controller.signal;
    setState({ data: null, error: null, loading: true });
    retries.current = 0;
    held.current = false;
    reload();
    return () => { generation.current += 1; clearTimeout(again.current); controller.abort(); };
  }, [key]);
  const retire = useCallback(async (work) => {
    held.current = true;
    generation.current += 1;
    clearTimeout(again.current);
    if (inflight.current) inflight.current.abort();
    try {
      return await work();
    } catch (error) {
      held.current = false;
      reload();
      throw error;
    }
  }, [reload]);
  useEffect(() => {
    if (!events.length) return undefined;
    let timer = null;
    let gone = false;
    const off = subscribe(events, (event, type) => {
      if (gone) return;
      if (deletes(path, event, type)) {
        // the object shown is gone: asking for it again could only be answered 404 (the
        // user who deleted it may be on the way elsewhere already)
        gone = true;
        if (timer !== null) { clearTimeout(timer); timer = null; }
        generation.current += 1;
        setState((s) => ({ ...s, loading: false, error: new ApiError(404,
          { title: "Deleted", detail: `${event.object.name || event.object.id} was deleted` }) }));
        return;
      }
      if (timer === null) timer = setTimeout(() => { timer = null; reload(); }, 150);
    });
    return () => { off(); if (timer !== null) clearTimeout(timer); };
  }, [key, events.join(",")]);
  return { ...state, reload, retire };
}

/** Whether `event` tells that the one object `path` shows (`/<collection>/<id or name>`)
 * was deleted. */
function deletes(path, event, type) {
  if (!path || !type || !type.endsWith(".deleted") || !event || !event.object) return false;
  const parts = path.split("/").filter(Boolean);
  if (parts.length !== 2) return false;
  const ref = decodeURIComponent(parts[1]);
  return ref === event.object.id || ref === event.object.name;
}

export function PageHeader({ title, subtitle, children }) {
  return html`<header class="page-header">
    <div><h1>${title}</h1>${subtitle && html`<p class="subtitle">${subtitle}</p>`}</div>
    <div class="actions">${children}</div>
  </header>`;
}

export function Loading({ what = "Loading" }) {
  return html`<p class="loading" role="status">${what}…</p>`;
}

/** An API error in words: the problem's detail, and each field's error. */
export function ErrorBox({ error, title = "That did not work" }) {
  if (!error) return null;
  const fields = error.fieldErrors || [];
  return html`<div class="error-box" role="alert">
    <${Icon} name="circle-alert" />
    <div><strong>${title}</strong><p>${error.message || String(error)}</p>
      ${fields.length > 1 && html`<ul>${fields.map((f) => html`<li>
        ${f.field ? html`<code>${f.field}</code>: ` : ""}${f.message}</li>`)}</ul>`}
    </div></div>`;
}

/** Rows as a table; columns: [{key, label, render(row), className}]. */
export function Table({ columns, rows, rowKey = (r) => r.id, empty = "Nothing here yet.", caption }) {
  if (!rows) return null;
  if (rows.length === 0) return html`<p class="empty">${empty}</p>`;
  return html`<div class="table-wrap"><table>
    ${caption && html`<caption class="visually-hidden">${caption}</caption>`}
    <thead><tr>${columns.map((c) => html`<th scope="col" class=${c.className}>${c.label}</th>`)}</tr></thead>
    <tbody>${rows.map((row) => html`<tr key=${rowKey(row)}>
      ${columns.map((c) => html`<td class=${c.className} data-label=${c.label}>
        ${c.render ? c.render(row) : row[c.key]}</td>`)}</tr>`)}
    </tbody></table></div>`;
}

export function Link({ to, children, ...rest }) {
  return html`<a href=${href(to)} ...${rest}>${children}</a>`;
}

const STATE_CLASS = {
  running: "ok", up: "ok", ready: "ok", succeeded: "ok", active: "ok", available: "ok",
  attached: "ok", passed: "ok", "in-use": "ok",
  stopped: "idle", shutoff: "idle", detached: "idle",
  pending: "busy", running_op: "busy", creating: "busy", starting: "busy", stopping: "busy",
  rebooting: "busy",
  deleting: "busy", building: "busy", queued: "busy", in_progress: "busy",
  failed: "bad", error: "bad", down: "bad", lost: "bad", refused: "bad",
};
export function StateBadge({ state }) {
  const cls = STATE_CLASS[state] || "idle";
  return html`<span class=${"badge " + cls}>${state || "unknown"}</span>`;
}

/** A labelled form field: the label is bound to the control by id. */
export function Field({ id, label, hint, error, children }) {
  return html`<div class=${"field" + (error ? " invalid" : "")}>
    <label for=${id}>${label}</label>
    ${children}
    ${hint && html`<small id=${id + "-hint"} class="hint">${hint}</small>`}
    ${error && html`<small class="field-error" role="alert">${error}</small>`}
  </div>`;
}

export function Button({ kind = "secondary", busy, disabled, children, ...rest }) {
  return html`<button type="button" class=${"btn " + kind} disabled=${disabled || busy}
    aria-busy=${busy ? "true" : undefined} ...${rest}>${children}</button>`;
}

let dialogCount = 0;

/** A modal confirmation (<dialog>): resolves the action only when the operator confirms. */
export function ConfirmButton({ label, question, confirmLabel = label, kind = "danger", onConfirm, disabled }) {
  const dialog = useRef(null);
  const titleId = useMemo(() => `confirm-title-${++dialogCount}`, []);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const open = () => { setError(null); dialog.current.showModal(); };
  const confirm = async () => {
    setBusy(true);
    try {
      await onConfirm();
      dialog.current.close();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return html`<${Button} kind=${kind} onClick=${open} disabled=${disabled}>${label}<//>
    <dialog ref=${dialog} aria-labelledby=${titleId}>
      <h2 id=${titleId}>${label}</h2>
      <p>${question}</p>
      <${ErrorBox} error=${error} />
      <div class="dialog-actions">
        <${Button} onClick=${() => dialog.current.close()}>Cancel<//>
        <${Button} kind=${kind} busy=${busy} onClick=${confirm}>${confirmLabel}<//>
      </div>
    </dialog>`;
}

/** Follows one operation by the event stream until it ends; {op, done, failed}. */
export function useOperation(opId) {
  const { data: op, reload } = useApi(opId ? `/operations/${opId}` : null, { events: [] });
  useEffect(() => {
    if (!opId) return undefined;
    return subscribe(["operation"], (event) => {
      if (!event || !event.object || event.object.id === opId) reload();
    });
  }, [opId]);
  const done = op && ["succeeded", "failed", "cancelled"].includes(op.state);
  return { op, done, failed: op && op.state === "failed" };
}

/** An operation's progress bar and, when it failed, its error in words. */
export function OperationProgress({ opId, label }) {
  const { op, failed } = useOperation(opId);
  if (!opId) return null;
  if (!op) return html`<p role="status">${label || "Working"}…</p>`;
  return html`<div class="operation" role="status" aria-live="polite">
    <span>${label || op.kind} on ${op.target_name}: <${StateBadge} state=${op.state} /></span>
    <progress max="100" value=${op.progress} aria-label=${`${op.kind} progress`}>${op.progress}%</progress>
    ${!failed && op.message && html`<p class="hint">${op.message}</p>`}
    ${failed && html`<p class="error-text">${op.error}</p>`}
  </div>`;
}

/** A bar of used against total, with its numbers in words for screen readers. */
export function UsageBar({ used, total, label, format = (v) => v }) {
  const pct = total ? Math.min(100, Math.round((100 * used) / total)) : 0;
  const level = pct >= 90 ? "bad" : pct >= 70 ? "warn" : "ok";
  return html`<div class="usage">
    <div class="usage-label"><span>${label}</span><span>${format(used)} / ${format(total)}</span></div>
    <div class=${"usage-bar " + level} role="meter" aria-label=${label} aria-valuemin="0"
      aria-valuemax=${total} aria-valuenow=${used}><span style=${`width:${pct}%`}></span></div>
  </div>`;
}
