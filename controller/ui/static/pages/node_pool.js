// An XCP-ng pool's node page: how the region reaches the pool (URL, user, storage
// repository; never the password), whether its agent reads it now and why not, and each
// host with its pinned certificate beside what the agent last read of it. Re-pinning
// stays with the CLI (vauban node xcpng-repin): it asks for a confirmation per host.
import { html } from "../lib/html.js";
import { Table } from "../lib/components.js";
import { mib } from "../lib/format.js";

function reachWords(pool) {
  if (!pool) return "its agent has not reported the pool yet";
  return pool.reachable ? `read now, master ${pool.master_address}`
    : `cannot be read now: ${pool.problem || "no reason given"} (nothing is placed on it meanwhile)`;
}

export function XcpngPool({ node }) {
  const x = node.xcpng;
  const pool = (node.inventory || {}).pool;
  const seen = Object.fromEntries(((pool && pool.hosts) || []).map((h) => [h.uuid, h]));
  const hosts = x.members.map((m) => ({ ...m, seen: seen[m.host_uuid] }));
  const columns = [
    { label: "Host", render: (h) => html`${h.name}${h.seen && h.seen.master ? " (master)" : ""}` },
    { label: "Address", key: "address", className: "mono" },
    { label: "State", render: (h) => (!h.seen ? "—" : !h.seen.enabled ? "disabled"
      : h.seen.live ? "live" : "not live") },
    { label: "Memory free", render: (h) => (h.seen
      ? `${mib(h.seen.memory_free_mib)} of ${mib(h.seen.memory_total_mib)}` : "—") },
    { label: "Pinned certificate (SHA-256)", render: (h) => html`<span class="mono fingerprint">${h.sha256}</span>` },
  ];
  return html`<div class="card xcpng-pool">
    <h2>XCP-ng pool</h2>
    <dl class="facts">
      <dt>Pool</dt><dd>${x.pool_name} <span class="mono">${x.pool_uuid}</span></dd>
      <dt>Reached at</dt><dd><span class="mono">${x.url}</span> as ${x.username}</dd>
      <dt>Storage repository</dt><dd>${x.sr_uuid ? html`<span class="mono">${x.sr_uuid}</span>` : "the pool's default"}</dd>
      <dt>VM template</dt><dd>${x.template || "Other install media"}</dd>
      <dt>Pool state</dt><dd>${reachWords(pool)}</dd>
      ${pool && html`<dt>Largest free host</dt><dd>${mib(pool.largest_free_mib)} (no VM larger fits)</dd>`}
    </dl>
    <${Table} caption="Hosts of the pool" columns=${columns} rows=${hosts} rowKey=${(h) => h.host_uuid}
      empty="The pool has no host." />
    <p class="hint">A host whose certificate changed is refused until it is re-pinned:
      <span class="mono">vauban node xcpng-repin ${node.name}</span>.</p>
  </div>`;
}
