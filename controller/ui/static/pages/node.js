// One node: its state and capacity, labels (editable by those allowed), qualification
// report, hardware inventory, GPUs with telemetry, VMs, failures, and the rollouts that
// reached it when it was onboarded through the fleet; maintenance and HA (node_ha.js);
// removal with confirmation. An XCP-ng pool's page shows the pool and its hosts
// (node_pool.js) instead of this machine's hardware, GPUs and HA.
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import { navigate } from "../lib/router.js";
import {
  Button, ConfirmButton, ErrorBox, Field, Icon, Link, Loading, PageHeader, StateBadge, Table, UsageBar, useApi,
} from "../lib/components.js";
import { ago, bytes, mib, time } from "../lib/format.js";
import { useSession } from "../lib/session.js";
import { CertExpiry } from "./nodes.js";
import { Hardware, Qualification } from "./node_hardware.js";
import { NodeAvailability } from "./node_ha.js";
import { XcpngPool } from "./node_pool.js";

export default function Node({ params }) {
  const { can } = useSession();
  const path = `/nodes/${encodeURIComponent(params.ref)}`;
  const { data: node, error, loading, reload, retire } = useApi(path, { events: ["node", "vm"] });
  if (loading) return html`<${Loading} />`;
  if (!node) return html`<section><${PageHeader} title=${params.ref} />
    <${ErrorBox} error=${error} title="This node could not be read" /></section>`;
  const inv = node.inventory || {};
  const remove = () => retire(async () => {
    await api.del(path);
    navigate("/nodes");
  });
  return html`<section class="node-page">
    <${PageHeader} title=${node.name} subtitle=${html`<${StateBadge} state=${node.state} />${` last seen ${ago(node.last_seen_at)}`}`}>
      ${can.regionWrite && html`<${ConfirmButton} label="Remove node" confirmLabel="Remove"
        question=${`Remove node ${node.name} from the region? Its certificate is refused from then on; `
          + "it can only come back by joining again with a new join token."} onConfirm=${remove} />`}
    <//>
    <${ErrorBox} error=${error} title="This node could not be refreshed" />
    <div class="grid-2">
      <div class="card">
        <h2>Summary</h2>
        <dl class="facts">
          <dt>Id</dt><dd class="mono">${node.id}</dd>
          <dt>Host name</dt><dd>${inv.hostname || "—"}</dd>
          <dt>Agent</dt><dd>${inv.agent_version || "—"}</dd>
          <dt>Hypervisor</dt><dd>${inv.hypervisor || "—"}</dd>
          <dt>Storage</dt><dd>${inv.storage ? `${inv.storage}, ${bytes(inv.storage_free_bytes)} free` : "—"}</dd>
          <dt>Tunnel address</dt><dd>${inv.underlay_ip || "—"}</dd>
          <dt>Desired state</dt><dd>generation ${node.generation}, applied ${node.applied_generation}</dd>
          <dt>Certificate</dt><dd><span class="mono">${node.cert_serial || "—"}</span>,
            expires <${CertExpiry} at=${node.cert_expires_at} /></dd>
          <dt>Joined</dt><dd>${time(node.created_at)}</dd>
        </dl>
      </div>
      <div class="card">
        <h2>Capacity</h2>
        <${UsageBar} label="vCPUs" used=${node.vcpus_used} total=${node.cpus} />
        <${UsageBar} label="Memory" used=${node.memory_mib_used} total=${node.memory_mib} format=${mib} />
        <p>${node.instances} VM${node.instances === 1 ? "" : "s"}; KVM ${node.kvm_usable ? "usable" : "not usable"}.</p>
        <h2>Labels</h2>
        <${LabelEditor} node=${node} path=${path} editable=${can.regionWrite} onChanged=${reload} />
      </div>
    </div>
    ${node.xcpng && html`<${XcpngPool} node=${node} />`}
    ${!node.xcpng && html`<${NodeAvailability} node=${node} path=${path} canAct=${can.regionWrite} onChanged=${reload} />
    <h2>Qualification</h2>
    <${Qualification} report=${inv.qualification} />
    <h2>Hardware</h2>
    <${Hardware} inventory=${inv} />
    <h2>GPUs</h2>
    <${NodeGpus} node=${node} />`}
    <h2>VMs on this node</h2>
    <${NodeVms} node=${node} />
    <h2>Failures</h2>
    <${NodeFailures} failures=${node.failures} />
    <h2>Fleet and rollouts</h2>
    <${Rollouts} node=${node} />
  </section>`;
}

function LabelEditor({ node, path, editable, onChanged }) {
  const [key, setKey] = useState("");
  const [value, setValue] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const change = async (body) => {
    setBusy(true);
    setError(null);
    try {
      await api.post(`${path}/labels`, body);
      onChanged();
      return true;
    } catch (e) {
      setError(e);
      return false;
    } finally {
      setBusy(false);
    }
  };
  const add = async (e) => {
    e.preventDefault();
    if (await change({ set: { [key.trim()]: value.trim() } })) { setKey(""); setValue(""); }
  };
  const entries = Object.entries(node.labels || {}).sort(([a], [b]) => a.localeCompare(b));
  return html`<div>
    ${entries.length === 0 ? html`<p class="muted">No label.</p>` : html`<ul class="chips" aria-label="Labels">
      ${entries.map(([k, v]) => html`<li class="chip" key=${k}><span class="mono">${k}=${v}</span>
        ${editable && html`<button type="button" class="chip-remove" aria-label=${`Remove label ${k}`}
          disabled=${busy} onClick=${() => change({ remove: [k] })}><${Icon} name="x" /></button>`}</li>`)}
    </ul>`}
    <${ErrorBox} error=${error} title="The labels were not changed" />
    ${editable && html`<form class="label-form" onSubmit=${add}>
      <${Field} id="label-key" label="Label key">
        <input id="label-key" value=${key} required maxlength="63" onInput=${(e) => setKey(e.target.value)} />
      <//>
      <${Field} id="label-value" label="Label value">
        <input id="label-value" value=${value} maxlength="63" onInput=${(e) => setValue(e.target.value)} />
      <//>
      <${Button} kind="primary" type="submit" busy=${busy} disabled=${!key.trim()}>Add label<//>
    </form>`}
  </div>`;
}

function NodeGpus({ node }) {
  const { data, error } = useApi("/gpus", { events: ["node", "vm"] });
  const gpus = (data || []).filter((g) => g.node === node.name);
  const t = (g) => g.telemetry || {};
  const columns = [
    { label: "Address", render: (g) => html`<span class="mono">${g.address}</span>` },
    { label: "Model", key: "model" },
    { label: "State", render: (g) => html`<${StateBadge} state=${g.state} />${g.reason && html`<br /><small>${g.reason}</small>`}` },
    { label: "Held by", render: (g) => (g.instance ? html`<${Link} to=${`/vms/${encodeURIComponent(g.instance)}`}>${g.instance}<//>` : "—") },
    { label: "Utilisation", render: (g) => pct(t(g).utilization_pct), className: "num" },
    { label: "Memory", render: (g) => (t(g).memory_total_bytes ? `${bytes(t(g).memory_used_bytes)} / ${bytes(t(g).memory_total_bytes)}` : "—"), className: "num" },
    { label: "Temperature", render: (g) => (t(g).temperature_c ?? null) === null ? "—" : `${t(g).temperature_c} °C`, className: "num" },
    { label: "Power", render: (g) => power(t(g)), className: "num" },
    { label: "ECC uncorrected", render: (g) => ecc(t(g)), className: "num" },
    { label: "Xid events", render: (g) => xids(t(g).xid_events) },
    { label: "MIG / vGPU", render: (g) => partitioning(g) },
  ];
  return html`<${ErrorBox} error=${error} title="The GPUs could not be listed" />
    ${!data && !error ? html`<${Loading} />` : data && html`<${Table} columns=${columns} rows=${gpus}
      rowKey=${(g) => g.address} caption="GPUs of this node"
      empty=${`This node reports no GPU${(node.inventory || {}).nvml_detail ? ` (${node.inventory.nvml_detail})` : ""}.`} />`}`;
}

const pct = (v) => (v === null || v === undefined ? "—" : `${v} %`);
function power(t) {
  if (t.power_w === null || t.power_w === undefined) return "—";
  return `${Math.round(t.power_w)} W${t.power_limit_w ? ` of ${Math.round(t.power_limit_w)} W` : ""}`;
}
function ecc(t) {
  if (t.ecc_uncorrected_volatile === null || t.ecc_uncorrected_volatile === undefined) return "—";
  return `${t.ecc_uncorrected_volatile} since boot, ${t.ecc_uncorrected_aggregate ?? "?"} in all`;
}
function xids(events) {
  if (!events || events.length === 0) return "none";
  return html`<ul class="plain">${events.slice(-5).map((e) => html`<li>Xid ${e.xid}, ${time(e.at)}</li>`)}</ul>`;
}
function partitioning(g) {
  const parts = [];
  if (g.mig) {
    parts.push(`MIG ${g.mig.current ? "on" : "off"}${g.mig.pending !== g.mig.current ? ` (${g.mig.pending ? "on" : "off"} after reset)` : ""}`
      + (g.mig.current ? `, ${g.mig.instances.length} instance(s)` : ""));
  }
  if (g.vgpus.length || g.vgpu_types.length) {
    parts.push(`${g.vgpus.length} vGPU(s)` + (g.vgpus.length ? `: ${[...new Set(g.vgpus.map((v) => v.instance))].join(", ")}` : ""));
  }
  return parts.length ? parts.join("; ") : "—";
}

function NodeVms({ node }) {
  const { data, error } = useApi("/instances", { events: ["vm"] });
  const vms = (data || []).filter((v) => v.node_id === node.id);
  const columns = [
    { label: "Name", render: (v) => html`<${Link} to=${`/vms/${encodeURIComponent(v.name)}`}>${v.name}<//>` },
    { label: "State", render: (v) => html`<${StateBadge} state=${v.state} />` },
    { label: "Project", key: "project" },
    { label: "vCPUs", key: "vcpus", className: "num" },
    { label: "Memory", render: (v) => mib(v.memory_mib), className: "num" },
  ];
  return html`<${ErrorBox} error=${error} title="The VMs could not be listed" />
    ${data && html`<${Table} columns=${columns} rows=${vms} caption="VMs on this node" empty="No VM on this node." />`}`;
}

function NodeFailures({ failures }) {
  const columns = [
    { label: "What", render: (f) => `${f.action} ${f.kind} ${f.object_id}` },
    { label: "Cause", render: (f) => html`<span class="error-text">${f.message}</span>` },
    { label: "Since", render: (f) => html`<span title=${time(f.since)}>${ago(f.since)}</span>` },
    { label: "Attempts", key: "attempts", className: "num" },
    { label: "Retry", render: (f) => (f.final ? "given up until the request changes"
      : f.next_retry_at ? `${f.retryable ? "" : "not retryable; "}again ${time(f.next_retry_at)}` : "—") },
  ];
  return html`<${Table} columns=${columns} rows=${failures} caption="Failures of this node"
    rowKey=${(f) => `${f.kind}/${f.object_id}/${f.action}`} empty="The node reports no failure." />`;
}

/** The fleet host that is this node (same name, host name or address), and its rollouts. */
function Rollouts({ node }) {
  const hosts = useApi("/fleet/hosts", { events: ["node"] });
  const rollouts = useApi("/rollouts", { events: ["operation"] });
  const inv = node.inventory || {};
  if (hosts.error) return html`<${ErrorBox} error=${hosts.error} title="The fleet could not be listed" />`;
  if (!hosts.data) return html`<${Loading} />`;
  const host = hosts.data.find((h) => h.name === node.name || (inv.hostname && h.name === inv.hostname)
    || (inv.underlay_ip && h.address === inv.underlay_ip));
  if (!host) {
    return html`<p class="notice">This node was not onboarded through the fleet: no fleet server has its
      name or address, so no rollout manages it. It joined with a join token.</p>`;
  }
  const mine = (rollouts.data || []).flatMap((r) => r.hosts.filter((h) => h.host === host.name)
    .map((h) => ({ ...h, rollout: r })));
  const columns = [
    { label: "Rollout", render: (h) => html`<span class="mono">${h.rollout.id.slice(0, 8)}</span>
      ${h.rollout.upgrade ? " upgrade" : ""} ${h.rollout.version}` },
    { label: "Started", render: (h) => html`<span title=${time(h.rollout.created_at)}>${ago(h.rollout.created_at)}</span>` },
    { label: "Rollout state", render: (h) => html`<${StateBadge} state=${h.rollout.state} />` },
    { label: "This host", render: (h) => html`<${StateBadge} state=${h.state} />` },
    { label: "Tasks", render: (h) => `${h.tasks_done} done, ${h.changed} changed`, className: "num" },
    { label: "Message", render: (h) => h.message || h.rollout.error || h.task || "—" },
  ];
  return html`<p>Fleet server <strong>${host.name}</strong> (${host.user}@${host.address}:${host.port},
      ${host.role}), added by ${host.created_by} ${ago(host.created_at)}.</p>
    <${ErrorBox} error=${rollouts.error} title="The rollouts could not be listed" />
    ${rollouts.data && html`<${Table} columns=${columns} rows=${mine} caption="Rollouts of this node"
      rowKey=${(h) => h.rollout.id} empty="No rollout has reached this server yet." />`}`;
}
