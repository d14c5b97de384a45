// Where a VM runs, and what keeps it running when a node goes: moving it to another node
// (live when it runs, cold when it is stopped; operators only) and its HA mark (restarted
// elsewhere when its node is lost; those who may act on the VM). The API decides each.
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import { Button, ErrorBox, Field, Icon, useApi } from "../lib/components.js";

/** Whether the VM can be moved now: running (live) or stopped (cold), nothing else. */
export function movable(vm) {
  return (vm.state === "running" || vm.state === "stopped") && !vm.migrating_to;
}

function Move({ vm, onOp }) {
  const nodes = useApi("/nodes", { events: ["node"] });
  const [to, setTo] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  // an XCP-ng pool takes no VM moved from a KVM node (the API says why if asked)
  const others = (nodes.data || []).filter((n) => n.name !== vm.node_name
    && (n.inventory || {}).hypervisor !== "xapi");
  const how = vm.state === "running" ? "live: it keeps running" : "cold: it stays stopped";
  const move = async () => {
    setError(null);
    setBusy(true);
    try {
      const op = await api.post(`/instances/${encodeURIComponent(vm.name)}/migrate`, to ? { to } : {});
      onOp(op.id, "Migrating");
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return html`<div class="toolbar">
      <${Field} id="move-to" label="Move to node" hint=${`Moved ${how}; a root disk on local storage is copied along.`}>
        <select id="move-to" value=${to} onChange=${(e) => setTo(e.target.value)} aria-describedby="move-to-hint">
          <option value="">Any node (the scheduler chooses)</option>
          ${others.map((n) => html`<option value=${n.name} disabled=${n.state !== "up" || n.maintenance}>
            ${n.name}${n.state !== "up" ? ` (${n.state})` : n.maintenance ? " (in maintenance)" : ""}</option>`)}
        </select>
      <//>
      <${Button} onClick=${move} disabled=${!movable(vm)} busy=${busy}><${Icon} name="chevron-right" /> Migrate<//>
    </div>
    ${vm.migrating_to && html`<p role="status">Moving to node ${vm.migrating_to}.</p>`}
    <${ErrorBox} error=${error} title="The VM was not moved" />`;
}

function HaMark({ vm, canMark, onChanged }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const set = async (enabled) => {
    setError(null);
    setBusy(true);
    try {
      await api.put(`/instances/${encodeURIComponent(vm.name)}/ha`, { enabled });
      onChanged();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return html`<p>High availability: <strong>${vm.ha ? "on" : "off"}</strong>
      ${vm.ha ? " (restarted on another node when its node is lost, once that node is fenced)" : ""}</p>
    ${canMark && html`<div class="toolbar"><${Button} busy=${busy} onClick=${() => set(!vm.ha)}>
      <${Icon} name="shield" /> ${vm.ha ? "Turn HA off" : "Turn HA on"}<//></div>`}
    <${ErrorBox} error=${error} title="The HA mark was not changed" />`;
}

/** The VM's placement card: where it runs, moving it, its HA mark. */
export function Placement({ vm, canMove, canMark, onOp, onChanged }) {
  return html`<div class="card placement">
    <h2>Placement and availability</h2>
    <p>Runs on node <strong>${vm.node_name}</strong>.</p>
    ${canMove && html`<${Move} vm=${vm} onOp=${onOp} />`}
    <${HaMark} vm=${vm} canMark=${canMark} onChanged=${onChanged} />
  </div>`;
}
