// What a node is made of, as its agent's probes found it (the inventory's `hardware`),
// and how it fared against its requirement profile (the qualification report).
import { html } from "../lib/html.js";
import { StateBadge, Table } from "../lib/components.js";
import { bytes, mib } from "../lib/format.js";

function Verdict({ verdict }) {
  const cls = verdict === "PASS" ? "ok" : verdict === "WARN" ? "warn" : "bad";
  return html`<span class=${"badge " + cls}>${verdict}</span>`;
}

/** Each check with its verdict and reason; says so when the agent sent no report. */
export function Qualification({ report }) {
  if (!report) return html`<p class="notice">This node's agent sent no qualification report.</p>`;
  const columns = [
    { label: "Check", render: (r) => html`<span class="mono">${r.check}</span>` },
    { label: "Verdict", render: (r) => html`<${Verdict} verdict=${r.verdict} />` },
    { label: "Reason", key: "reason" },
  ];
  return html`<p>Profile <strong>${report.profile}</strong>: <${Verdict} verdict=${report.verdict} />
      ${report.free_osd_disks.length > 0 && html` — disks free for Ceph OSDs:
        <span class="mono">${report.free_osd_disks.join(", ")}</span>`}</p>
    <${Table} columns=${columns} rows=${report.results} rowKey=${(r) => r.check}
      caption="Qualification checks" empty="The report has no check." />`;
}

const yes = (v) => (v === null || v === undefined ? "unknown" : v ? "yes" : "no");

/** The hardware inventory; the agent's short inventory when its probes sent nothing more. */
export function Hardware({ inventory }) {
  const hw = inventory.hardware;
  if (!hw) return html`<${ShortInventory} inv=${inventory} />`;
  return html`<div class="grid-2">
      <div class="card"><h3>CPU</h3><dl class="facts">
        <dt>Model</dt><dd>${hw.cpu.model}</dd>
        <dt>Vendor</dt><dd>${hw.cpu.vendor}</dd>
        <dt>Topology</dt><dd>${hw.cpu.sockets} socket(s), ${hw.cpu.cores} cores, ${hw.cpu.threads} threads</dd>
        <dt>Virtualization</dt><dd>${hw.cpu.virtualization || "none"}${hw.cpu.is_virtual_machine ? " (this host is itself a VM)" : ""}</dd>
        <dt>Flags</dt><dd class="mono">${hw.cpu.flags.join(" ") || "—"}</dd>
      </dl></div>
      <div class="card"><h3>Memory</h3><dl class="facts">
        <dt>Total</dt><dd>${mib(hw.memory.total_mib)}</dd>
        <dt>Available</dt><dd>${mib(hw.memory.available_mib)}</dd>
        <dt>Huge pages</dt><dd>${hw.memory.hugepages.length === 0 ? "none" : hw.memory.hugepages.map((p) =>
    `${bytes(p.size_kib * 1024)}: ${p.free} free of ${p.total}`).join("; ")}</dd>
      </dl></div>
      <div class="card"><h3>Virtualization</h3><dl class="facts">
        <dt>KVM</dt><dd>device ${yes(hw.kvm.device)}, module ${hw.kvm.module || "none"}, nested ${yes(hw.kvm.nested)},
          usable ${yes(hw.kvm.usable)}<br /><small>${hw.kvm.detail}</small></dd>
        <dt>IOMMU</dt><dd>${hw.iommu.enabled ? `${hw.iommu.kind || "on"}, ${hw.iommu.groups} groups` : "off"}
          <br /><small>${hw.iommu.detail}</small></dd>
        <dt>BMC</dt><dd>${hw.bmc.present ? "present" : "none"}<br /><small>${hw.bmc.detail}</small></dd>
      </dl></div>
    </div>
    <h3>NUMA</h3>
    <${Table} caption="NUMA nodes" rows=${hw.numa} rowKey=${(n) => n.id} empty="No NUMA node reported."
      columns=${[
    { label: "Node", key: "id", className: "num" },
    { label: "CPUs", render: (n) => ranges(n.cpus) },
    { label: "Memory", render: (n) => mib(n.memory_mib), className: "num" },
  ]} />
    <h3>Disks</h3>
    <${Table} caption="Disks" rows=${hw.disks} rowKey=${(d) => d.name} empty="No disk reported."
      columns=${[
    { label: "Name", render: (d) => html`<span class="mono">${d.name}</span>` },
    { label: "Size", render: (d) => bytes(d.size_bytes), className: "num" },
    { label: "Kind", render: (d) => `${d.rotational ? "rotational" : "solid state"}${d.removable ? ", removable" : ""}` },
    { label: "Model", render: (d) => [d.model, d.serial].filter(Boolean).join(", ") || "—" },
    { label: "Use", render: (d) => (d.free_for_osd ? "free (a Ceph OSD may take it)" : d.in_use_reason || "in use") },
  ]} />
    <h3>Network interfaces</h3>
    <${Table} caption="Network interfaces" rows=${hw.nics} rowKey=${(n) => n.name} empty="No interface reported."
      columns=${[
    { label: "Name", render: (n) => html`<span class="mono">${n.name}</span>` },
    { label: "Link", render: (n) => html`<${StateBadge} state=${n.link ? "up" : "down"} />
      ${n.speed_mbps ? ` ${n.speed_mbps} Mb/s` : ""}` },
    { label: "MAC", render: (n) => html`<span class="mono">${n.mac || "—"}</span>` },
    { label: "Driver", render: (n) => `${n.driver || "virtual"}${n.pci_address ? ` (${n.pci_address})` : ""}` },
    { label: "MTU", key: "mtu", className: "num" },
    { label: "SR-IOV", render: (n) => (n.sriov_total_vfs ? `${n.sriov_num_vfs} of ${n.sriov_total_vfs} VFs` : "—") },
  ]} />`;
}

/** What every agent sends, even without the hardware probes. */
function ShortInventory({ inv }) {
  if (!inv.cpu_model) return html`<p class="notice">This node has not reported its inventory yet.</p>`;
  return html`<p class="hint">The agent's probes sent no detailed hardware inventory; what it reported:</p>
    <div class="card"><dl class="facts">
      <dt>CPU</dt><dd>${inv.cpu_model}, ${inv.cpus} CPUs, flags <span class="mono">${inv.cpu_flags.join(" ")}</span></dd>
      <dt>Memory</dt><dd>${mib(inv.memory_mib)}</dd>
      <dt>KVM</dt><dd>device ${yes(inv.kvm_device)}, usable ${yes(inv.kvm_usable)}<br /><small>${inv.kvm_probe_detail}</small></dd>
      <dt>Disks</dt><dd>${inv.disks.map((d) => `${d.name} ${bytes(d.size_bytes)}`).join(", ") || "—"}</dd>
      <dt>Interfaces</dt><dd>${inv.nics.map((n) => `${n.name} (${n.up ? "up" : "down"}, MTU ${n.mtu})`).join(", ") || "—"}</dd>
    </dl></div>`;
}

/** [0,1,2,3,8] → "0-3, 8" */
function ranges(cpus) {
  const out = [];
  let start = null;
  let prev = null;
  for (const c of [...cpus].sort((a, b) => a - b)) {
    if (start === null) { start = c; } else if (c !== prev + 1) { out.push(start === prev ? `${start}` : `${start}-${prev}`); start = c; }
    prev = c;
  }
  if (start !== null) out.push(start === prev ? `${start}` : `${start}-${prev}`);
  return out.join(", ") || "—";
}
