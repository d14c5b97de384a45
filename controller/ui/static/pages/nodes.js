// Nodes: the region's servers with their state, size, what their VMs take, labels, when
// they were last heard from and when their certificate runs out; kept live by events.
import { html } from "../lib/html.js";
import { ErrorBox, Link, Loading, PageHeader, StateBadge, Table, useApi } from "../lib/components.js";
import { ago, mib, time } from "../lib/format.js";

const CERT_WARN_DAYS = 30;

/** A node's labels as "key=value" chips. */
export function Labels({ labels }) {
  const entries = Object.entries(labels || {}).sort(([a], [b]) => a.localeCompare(b));
  if (entries.length === 0) return html`<span class="muted">none</span>`;
  return html`<ul class="chips">${entries.map(([k, v]) => html`<li class="chip">
    <span class="mono">${k}=${v}</span></li>`)}</ul>`;
}

/** The certificate's expiry, flagged when it is near or past. */
export function CertExpiry({ at }) {
  if (!at) return html`<span>—</span>`;
  const days = (new Date(at).getTime() - Date.now()) / 86400000;
  const cls = days < 0 ? "bad" : days < CERT_WARN_DAYS ? "warn" : "";
  const words = days < 0 ? "expired" : `in ${Math.floor(days)} d`;
  return html`<span class=${cls ? `badge ${cls}` : ""} title=${time(at)}>${time(at)} (${words})</span>`;
}

export default function Nodes() {
  const { data, error, loading } = useApi("/nodes", { events: ["node", "vm"] });
  const columns = [
    { label: "Name", render: (n) => html`<${Link} to=${`/nodes/${encodeURIComponent(n.name)}`}>${n.name}<//>` },
    { label: "State", render: (n) => html`<${StateBadge} state=${n.state} />` },
    { label: "CPUs", key: "cpus", className: "num" },
    { label: "Memory", render: (n) => mib(n.memory_mib), className: "num" },
    { label: "vCPUs used", render: (n) => `${n.vcpus_used} / ${n.cpus}`, className: "num" },
    { label: "Memory used", render: (n) => `${mib(n.memory_mib_used)} / ${mib(n.memory_mib)}`, className: "num" },
    { label: "VMs", key: "instances", className: "num" },
    { label: "Labels", render: (n) => html`<${Labels} labels=${n.labels} />` },
    { label: "Last seen", render: (n) => html`<span title=${time(n.last_seen_at)}>${ago(n.last_seen_at)}</span>` },
    { label: "Certificate expires", render: (n) => html`<${CertExpiry} at=${n.cert_expires_at} />` },
  ];
  return html`<section>
    <${PageHeader} title="Nodes" subtitle=${data ? `${data.length} in the region` : ""} />
    <${ErrorBox} error=${error} title="The nodes could not be listed" />
    ${loading ? html`<${Loading} />` : html`<${Table} columns=${columns} rows=${data} caption="Nodes"
      empty="No node has joined the region yet." />`}
  </section>`;
}
