// The audit trail (audit.read: region admins and auditors): newest first, filtered as the
// API filters (actor, action, object, project, time range), paged by sequence number, under
// the verdict of the chain's verification in words.
import { html, useState } from "../lib/html.js";
import { Button, ErrorBox, Field, Loading, PageHeader, StateBadge, Table, useApi } from "../lib/components.js";
import { time } from "../lib/format.js";

const PAGE = 50;
// a change of any of these writes an entry: the first page follows them
const CHANGES = ["project", "user", "token", "role_binding", "vm", "operation", "node", "image",
  "volume", "network", "subnet", "port", "security_group"];
const FINDING_WORDS = {
  edited: "an entry was changed",
  removed: "entries are missing",
  "inserted-or-reordered": "an entry was put in, or entries swapped",
  "out-of-order": "entries out of order",
  "beyond-head": "entries added after the head without moving it",
  head: "the chain's head changed or is gone",
};

function Verification() {
  const { data: v, error, loading, reload } = useApi("/audit-events/verify");
  const again = html`<${Button} onClick=${reload} disabled=${loading}>Verify again<//>`;
  if (error) {
    return html`<div><${ErrorBox} error=${error} title="The chain could not be verified" />${again}</div>`;
  }
  if (!v) return html`<${Loading} what="Verifying the chain" />`;
  if (v.ok) {
    return html`<div class="banner ok" role="status">
      <strong>Verified: the audit trail is intact.</strong>
      <span>All ${v.entries} entries match their hashes and link up to the chain's head,
        entry ${v.head_seq} (<code title=${v.head_hash}>${(v.head_hash || "").slice(0, 16)}…</code>).</span>
      ${again}
    </div>`;
  }
  return html`<div class="banner bad" role="alert">
    <strong>Broken: the audit trail was tampered with.</strong>
    <span>${v.breaks} ${v.breaks === 1 ? "break" : "breaks"} found in ${v.entries} entries${
  v.breaks > v.findings.length ? ` (the first ${v.findings.length} below)` : ""}:</span>
    <ul>${v.findings.map((f) => html`<li>At entry ${f.seq}, ${FINDING_WORDS[f.kind] || f.kind}: ${
  f.message}</li>`)}</ul>
    ${again}
  </div>`;
}

/** An entry's detail in words: "name: shop; quotas: {"vcpus":8}". */
const detailText = (detail) => Object.entries(detail)
  .map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join("; ");

const EMPTY = { actor: "", action: "", target: "", project: "", since: "", until: "" };
// a datetime-local value is the browser's local time: the API takes a time with its zone
const zoned = (local) => (local ? new Date(local).toISOString() : undefined);

function Filters({ applied, onApply }) {
  const [f, setF] = useState(applied);
  const set = (key) => (e) => setF({ ...f, [key]: e.target.value });
  const submit = (e) => { e.preventDefault(); onApply(f); };
  const text = (key, label, hint) => html`<${Field} id=${"audit-" + key} label=${label} hint=${hint}>
    <input id=${"audit-" + key} value=${f[key]} onInput=${set(key)}
      aria-describedby=${hint ? `audit-${key}-hint` : undefined} />
  <//>`;
  return html`<form class="card audit-filters" onSubmit=${submit} role="search" aria-label="Filter the trail">
    <div class="form-row">
      ${text("actor", "Actor", "a user, node:NAME, controller")}
      ${text("action", "Action", "e.g. project.create")}
      ${text("target", "Object", "e.g. project/ID; project/ for every project")}
      ${text("project", "Project", "its name")}
      <${Field} id="audit-since" label="From">
        <input id="audit-since" type="datetime-local" step="1" value=${f.since} onInput=${set("since")} />
      <//>
      <${Field} id="audit-until" label="Until">
        <input id="audit-until" type="datetime-local" step="1" value=${f.until} onInput=${set("until")} />
      <//>
    </div>
    <div class="dialog-actions">
      <${Button} onClick=${() => { setF(EMPTY); onApply(EMPTY); }}>Clear filters<//>
      <button type="submit" class="btn primary">Apply filters</button>
    </div>
  </form>`;
}

export default function Audit() {
  const [filters, setFilters] = useState(EMPTY);
  const [pages, setPages] = useState([]); // the `before` of each page after the first
  const before = pages.length ? pages[pages.length - 1] : undefined;
  const query = { ...filters, since: zoned(filters.since), until: zoned(filters.until), before, limit: PAGE };
  const { data, error, loading } = useApi("/audit-events", { query, events: before ? [] : CHANGES });
  const apply = (f) => { setFilters(f); setPages([]); };
  const entries = data || [];
  const columns = [
    { label: "Seq", key: "seq", className: "num" },
    { label: "When", render: (e) => time(e.at) },
    // one element per cell: a narrow screen lays a cell's children out as a grid
    { label: "Actor", render: (e) => html`<span>${e.actor}${e.source && html`<br />
      <small class="hint">from ${e.source}</small>`}</span>` },
    { label: "Action", render: (e) => html`<code>${e.action}</code>` },
    { label: "Object", render: (e) => html`<code>${e.target}</code>` },
    { label: "Project", render: (e) => html`<span>${e.project || "—"}${e.admin_in_project
      && html` <span class="badge warn" title="an administrator acted inside a customer's project">admin inside</span>`}</span>` },
    { label: "Outcome", render: (e) => html`<${StateBadge} state=${e.outcome} />` },
    { label: "Detail", render: (e) => (Object.keys(e.detail || {}).length
      ? html`<span class="audit-detail">${detailText(e.detail)}</span>` : "—") },
  ];
  return html`<section>
    <${PageHeader} title="Audit trail" subtitle="Every change, newest first, in a hash chain" />
    <${Verification} />
    <${Filters} applied=${filters} onApply=${apply} />
    <${ErrorBox} error=${error} title="The trail could not be read" />
    ${loading ? html`<${Loading} />` : html`<${Table} columns=${columns} rows=${entries}
      rowKey=${(e) => e.seq} caption="Audit entries"
      empty=${pages.length ? "No older entry." : "No entry matches these filters."} />`}
    <nav class="pager" aria-label="Pages of the trail">
      <${Button} disabled=${!pages.length} onClick=${() => setPages(pages.slice(0, -1))}>Newer<//>
      <span>${entries.length ? `entries ${entries[0].seq} to ${entries[entries.length - 1].seq}` : ""}</span>
      <${Button} disabled=${entries.length < PAGE}
        onClick=${() => setPages([...pages, entries[entries.length - 1].seq])}>Older<//>
    </nav>
  </section>`;
}
