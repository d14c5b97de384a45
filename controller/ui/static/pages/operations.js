// Operations: the region's long actions (those the caller may see), newest first, with
// live progress from the event stream; filtered by state and kind; failed ones say why.
import { html, useState } from "../lib/html.js";
import { ErrorBox, Field, Link, Loading, PageHeader, StateBadge, Table, useApi } from "../lib/components.js";
import { ago, time } from "../lib/format.js";

// where the object of an operation is shown, by the first word of the operation's kind
const TARGET_PAGES = {
  instance: (name) => `/vms/${encodeURIComponent(name)}`,
  node: (name) => `/nodes/${encodeURIComponent(name)}`,
  network: (name) => `/networks/${encodeURIComponent(name)}`,
  security_group: (name) => `/security-groups/${encodeURIComponent(name)}`,
  volume: () => "/volumes",
  image: () => "/images",
};

/** The operation's target as a link to its page; plain text once the target is gone (a
 * delete that succeeded) or when it has no page. */
export function OperationTarget({ op }) {
  const [family, verb] = op.kind.split(".");
  const page = TARGET_PAGES[family];
  const gone = ["delete", "remove"].includes(verb) && op.state === "succeeded";
  if (!page || gone || !op.target_name) return html`<span>${op.target_name || op.target_id}</span>`;
  return html`<${Link} to=${page(op.target_name)}>${op.target_name}<//>`;
}

/** The operation's progress as a labelled bar (its number in words beside it). */
export function OperationBar({ op }) {
  return html`<span class="op-progress">
    <progress max="100" value=${op.progress}
      aria-label=${`${op.kind} ${op.target_name || op.target_id} progress`}>${op.progress}%</progress>
    <span class="op-progress-value">${op.progress}%</span>
  </span>`;
}

const STATES = ["pending", "running", "succeeded", "failed"];

export default function Operations() {
  const { data, error, loading } = useApi("/operations", { events: ["operation"], query: { limit: 200 } });
  const [state, setState] = useState("");
  const [kind, setKind] = useState("");
  const ops = data || [];
  const kinds = [...new Set(ops.map((o) => o.kind))].sort();
  const shown = ops.filter((o) => (!state || o.state === state) && (!kind || o.kind === kind));
  const columns = [
    { label: "Kind", render: (o) => html`<span class="mono">${o.kind}</span>` },
    { label: "Target", render: (o) => html`<${OperationTarget} op=${o} />` },
    { label: "State", render: (o) => html`<${StateBadge} state=${o.state} />` },
    { label: "Progress", render: (o) => html`<${OperationBar} op=${o} />`, className: "op-progress-cell" },
    { label: "Project", render: (o) => o.project || "region" },
    { label: "By", key: "requested_by" },
    { label: "Started", render: (o) => html`<time datetime=${o.created_at} title=${time(o.created_at)}>
      ${ago(o.created_at)}</time>` },
    { label: "Error", render: (o) => (o.error ? html`<span class="error-text">${o.error}</span>` : "—") },
  ];
  return html`<section>
    <${PageHeader} title="Operations" subtitle=${data ? `${shown.length} of the ${ops.length} most recent` : ""} />
    <div class="toolbar" role="search">
      <${Field} id="op-state" label="State">
        <select id="op-state" value=${state} onChange=${(e) => setState(e.target.value)}>
          <option value="">any</option>
          ${STATES.map((s) => html`<option value=${s}>${s}</option>`)}
        </select>
      <//>
      <${Field} id="op-kind" label="Kind">
        <select id="op-kind" value=${kind} onChange=${(e) => setKind(e.target.value)}>
          <option value="">any</option>
          ${kinds.map((k) => html`<option value=${k}>${k}</option>`)}
        </select>
      <//>
    </div>
    <${ErrorBox} error=${error} title="The operations could not be listed" />
    ${loading ? html`<${Loading} />` : html`<${Table} columns=${columns} rows=${shown} caption="Operations"
      empty=${ops.length ? "No operation matches these filters." : "No operation yet."} />`}
  </section>`;
}
