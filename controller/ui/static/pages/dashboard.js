// The region at a glance, kept live by the event stream: capacity and usage per node (for
// the region's roles) and per project (where the caller may see them), node health, VMs by
// state, recent operations and recent failures with their causes in words. What the caller's
// roles cannot read is not asked for: the API would refuse it anyway.
import { html, useCallback, useEffect, useRef, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import { subscribe } from "../lib/events.js";
import { ErrorBox, Link, Loading, PageHeader, StateBadge, Table, useApi } from "../lib/components.js";
import { UsageChart } from "../lib/charts.js";
import { ago, bytes, gib, mib, time } from "../lib/format.js";
import { useSession } from "../lib/session.js";
import { OperationBar, OperationTarget } from "./operations.js";

const PROJECTS_DRAWN = 20; // past this many projects the charts would be unreadable
const GPU_BUSY = ["in-use", "vgpu"];

const count = (n) => String(Math.round(Number(n) * 100) / 100);

export default function Dashboard() {
  const { can } = useSession();
  return html`<section class="dashboard">
    <${PageHeader} title="Dashboard" subtitle="The region at a glance, live" />
    ${can.regionRead && html`<${RegionPanels} />`}
    <${ProjectPanels} />
    <div class="grid-2">
      <${VmStates} />
      <${RecentOperations} />
    </div>
  </section>`;
}

function Stat({ value, label }) {
  return html`<div class="card"><div class="stat">${value}</div><div class="stat-label">${label}</div></div>`;
}

/** What only the region's roles see: status, nodes and their GPUs. */
function RegionPanels() {
  const status = useApi("/status", { events: ["node", "vm", "operation", "image"] });
  const nodes = useApi("/nodes", { events: ["node", "vm"] });
  const gpus = useApi("/gpus", { events: ["node", "vm"] });
  const s = status.data;
  return html`
    <${ErrorBox} error=${status.error} title="The region's status could not be read" />
    ${s && html`<div class="grid stats" aria-label="Region">
      <${Stat} value=${s.nodes_up} label="nodes up" />
      <${Stat} value=${s.nodes_down} label="nodes down" />
      <${Stat} value=${`${s.instances_running} / ${s.instances}`} label="VMs running" />
      <${Stat} value=${s.operations_pending} label="operations in progress" />
      <${Stat} value=${s.images} label="images" />
      <${Stat} value=${s.storage ? s.storage.health : s.storage_driver}
        label=${`storage (${s.storage_driver})`} />
    </div>`}
    <h2>Capacity per node</h2>
    <${ErrorBox} error=${nodes.error} title="The nodes could not be listed" />
    <${ErrorBox} error=${gpus.error} title="The GPUs could not be listed" />
    ${nodes.loading ? html`<${Loading} />` : nodes.data && html`<${NodeCharts} nodes=${nodes.data}
      gpus=${gpus.data || []} storage=${s && s.storage} />`}
    <h2>Node health</h2>
    ${nodes.data && html`<${NodeHealth} nodes=${nodes.data} />`}
    <h2>Failures reported by nodes</h2>
    ${nodes.data && html`<${NodeFailures} nodes=${nodes.data} />`}`;
}

function NodeCharts({ nodes, gpus, storage }) {
  if (nodes.length === 0) return html`<p class="empty">No node has joined the region yet.</p>`;
  const gpuRows = nodes.map((n) => {
    const mine = gpus.filter((g) => g.node === n.name);
    return { name: n.name, used: mine.filter((g) => GPU_BUSY.includes(g.state)).length, total: mine.length };
  }).filter((r) => r.total > 0);
  const pools = (storage && storage.pools) || [];
  return html`<div class="grid charts">
    <${UsageChart} key="vcpus" title="vCPUs used per node" format=${count}
      rows=${nodes.map((n) => ({ name: n.name, used: n.vcpus_used, total: n.cpus }))} />
    <${UsageChart} key="memory" title="Memory used per node" format=${mib}
      rows=${nodes.map((n) => ({ name: n.name, used: n.memory_mib_used, total: n.memory_mib }))} />
    ${pools.length > 0 ? html`<${UsageChart} key="pools" title="Storage used per pool" format=${bytes}
      rows=${pools.map((p) => ({ name: p.pool, used: p.used_bytes, total: p.used_bytes + p.max_avail_bytes }))} />`
    : html`<${NodeStorage} key="local" nodes=${nodes} />`}
    ${gpuRows.length > 0 ? html`<${UsageChart} key="gpus" title="GPUs in use per node" format=${count} rows=${gpuRows} />`
    : html`<div class="card" key="no-gpus"><h3>GPUs</h3><p>No node of the region reports a GPU.</p></div>`}
  </div>`;
}

/** Local storage: each node reports what is free where its VM disks live. */
function NodeStorage({ nodes }) {
  return html`<div class="card"><h3>Storage free per node</h3>
    <dl class="facts">${nodes.map((n) => html`<dt>${n.name}</dt>
      <dd>${n.inventory && n.inventory.storage_free_bytes !== undefined
    ? `${bytes(n.inventory.storage_free_bytes)} free (${n.inventory.storage})` : "not reported"}</dd>`)}
    </dl></div>`;
}

function NodeHealth({ nodes }) {
  const columns = [
    { label: "Node", render: (n) => html`<${Link} to=${`/nodes/${encodeURIComponent(n.name)}`}>${n.name}<//>` },
    { label: "State", render: (n) => html`<${StateBadge} state=${n.state} />` },
    { label: "Last seen", render: (n) => html`<span title=${time(n.last_seen_at)}>${ago(n.last_seen_at)}</span>` },
    { label: "VMs", key: "instances", className: "num" },
    { label: "Failures", render: (n) => n.failures.length, className: "num" },
  ];
  return html`<${Table} columns=${columns} rows=${nodes} caption="Node health" empty="No node yet." />`;
}

function NodeFailures({ nodes }) {
  const rows = nodes.flatMap((n) => n.failures.map((f) => ({ ...f, node: n.name })))
    .sort((a, b) => (a.since < b.since ? 1 : -1));
  const columns = [
    { label: "Node", render: (f) => html`<${Link} to=${`/nodes/${encodeURIComponent(f.node)}`}>${f.node}<//>` },
    { label: "What", render: (f) => `${f.action} ${f.kind} ${f.object_id}` },
    { label: "Cause", render: (f) => html`<span class="error-text">${f.message}</span>` },
    { label: "Since", render: (f) => html`<span title=${time(f.since)}>${ago(f.since)}</span>` },
    { label: "Retry", render: (f) => (f.final ? "given up" : f.next_retry_at ? `again ${time(f.next_retry_at)}` : "—") },
  ];
  return html`<${Table} columns=${columns} rows=${rows} rowKey=${(f) => `${f.node}/${f.kind}/${f.object_id}/${f.action}`}
    caption="Failures reported by nodes" empty="No node reports a failure." />`;
}

/** GET every path of `paths` now and again on events of `events`; {data (in order), error}.
 * Like useApi, what is in flight when the component goes is aborted. */
function useEach(paths, events) {
  const [state, setState] = useState({ data: null, error: null });
  const generation = useRef(0);
  const signal = useRef(null);
  const key = paths.join("\n");
  const reload = useCallback(() => {
    if (!signal.current || signal.current.aborted) return;
    const mine = ++generation.current;
    const aborted = signal.current;
    Promise.all(paths.map((p) => api.get(p, { signal: aborted }))).then(
      (data) => mine === generation.current && setState({ data, error: null }),
      (error) => mine === generation.current && !aborted.aborted && setState((s) => ({ ...s, error })),
    );
  }, [key]);
  useEffect(() => {
    const controller = new AbortController();
    signal.current = controller.signal;
    reload();
    return () => controller.abort();
  }, [key]);
  useEffect(() => {
    let timer = null;
    const off = subscribe(events, () => {
      if (timer === null) timer = setTimeout(() => { timer = null; reload(); }, 150);
    });
    return () => { off(); if (timer !== null) clearTimeout(timer); };
  }, [key]);
  return state;
}

// what changes a project's usage (not each step of an operation: that would ask for every
// project's usage again and again while one runs)
const PROJECT_EVENTS = ["project", "vm", "volume", "network", "port"];

/** Usage against quotas of the projects the caller sees (all of them for the region's roles). */
function ProjectPanels() {
  const list = useApi("/projects", { events: ["project"] });
  const names = (list.data || []).map((p) => p.name).sort().slice(0, PROJECTS_DRAWN);
  const details = useEach(names.map((n) => `/projects/${encodeURIComponent(n)}`), PROJECT_EVENTS);
  const projects = details.data || [];
  const rows = (key) => projects.map((p) => ({ name: p.name, used: p.usage[key] || 0, total: p.quotas[key] ?? null }));
  const gpuRows = projects.flatMap((p) => Object.entries(p.quotas.gpus || {}).map(([model, quota]) => ({
    name: `${p.name}: ${model}`, used: (p.usage.gpus || {})[model] || 0, total: quota })));
  const vgpuRows = rows("vgpus").filter((r) => r.used > 0 || r.total !== null);
  return html`<h2>Usage per project</h2>
    <${ErrorBox} error=${list.error || details.error} title="The projects' usage could not be read" />
    ${list.loading || (names.length > 0 && !details.data && !details.error) ? html`<${Loading} />`
    : names.length === 0 ? html`<p class="empty">You are in no project.</p>`
      : html`${list.data.length > PROJECTS_DRAWN && html`<p class="hint">The first ${PROJECTS_DRAWN} of
          ${list.data.length} projects, by name.</p>`}
        <p class="hint">A project without a quota of a resource shows what it holds, against no limit.</p>
        <div class="grid charts">
          <${UsageChart} key="vcpus" title="vCPUs per project (against quota)" format=${count} rows=${rows("vcpus")} />
          <${UsageChart} key="memory" title="Memory per project (against quota)" format=${mib} rows=${rows("memory_mib")} />
          <${UsageChart} key="storage" title="Storage per project (against quota)" format=${gib} rows=${rows("storage_gib")} />
          ${gpuRows.length + vgpuRows.length > 0
    ? html`<${UsageChart} key="gpus" title="GPUs per project (against quota)" format=${count}
              rows=${[...gpuRows, ...vgpuRows.map((r) => ({ ...r, name: `${r.name}: vGPUs` }))]} />`
    : html`<div class="card" key="no-gpus"><h3>GPUs per project</h3><p>No project holds or has a quota of GPUs.</p></div>`}
        </div>`}`;
}

function VmStates() {
  const { can } = useSession();
  const { data, error } = useApi("/instances", { events: ["vm"] });
  const byState = {};
  for (const vm of data || []) byState[vm.state] = (byState[vm.state] || 0) + 1;
  const states = Object.keys(byState).sort();
  return html`<div class="card">
    <h2>VMs by state</h2>
    <${ErrorBox} error=${error} title="The VMs could not be listed" />
    ${!data && !error ? html`<${Loading} />` : data && (states.length === 0
    ? html`<p>No VM yet.${can.canWrite && html` <${Link} to="/vms/new">Create one<//>.`}</p>`
    : html`<ul class="state-counts" aria-label="VMs by state">${states.map((s) => html`<li>
        <${StateBadge} state=${s} /> <strong>${byState[s]}</strong></li>`)}</ul>`)}
  </div>`;
}

function RecentOperations() {
  const { data, error } = useApi("/operations", { events: ["operation"], query: { limit: 100 } });
  const ops = data || [];
  const recent = ops.slice(0, 8);
  const failed = ops.filter((o) => o.state === "failed").slice(0, 8);
  return html`<div class="card">
    <h2>Recent operations</h2>
    <${ErrorBox} error=${error} title="The operations could not be listed" />
    ${!data && !error ? html`<${Loading} />` : data && (recent.length === 0 ? html`<p>No operation yet.</p>`
    : html`<ul class="op-list" aria-label="Recent operations">${recent.map((o) => html`<li key=${o.id}>
        <span><span class="mono">${o.kind}</span> <${OperationTarget} op=${o} /></span>
        <${StateBadge} state=${o.state} /><${OperationBar} op=${o} /></li>`)}</ul>`)}
    <h2>Recent failures</h2>
    ${data && (failed.length === 0 ? html`<p>No operation failed lately.</p>`
    : html`<ul class="op-list" aria-label="Recent failures">${failed.map((o) => html`<li key=${o.id}>
        <span><span class="mono">${o.kind}</span> <${OperationTarget} op=${o} />
          <small title=${time(o.finished_at || o.updated_at)}> ${ago(o.finished_at || o.updated_at)}</small></span>
        <span class="error-text">${o.error || "failed without a cause in words"}</span></li>`)}</ul>`)}
    <p><${Link} to="/operations">All operations<//></p>
  </div>`;
}
