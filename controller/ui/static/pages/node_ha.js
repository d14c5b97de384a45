// A node's maintenance and high availability, on its page: maintenance on and off (its VMs
// moved away, the operation's words saying which cannot move and why), its BMC, storage
// heartbeat, fences and failover, and taking it back after a fence. Operators act; the
// API decides each action and its refusal is shown in words.
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import { Button, ErrorBox, Icon, StateBadge, useApi } from "../lib/components.js";
import { ago, time } from "../lib/format.js";

const ACTIVE = ["pending", "running"];

/** Runs `request` (a promise maker) with a busy flag and its error kept for display. */
function useAction(onDone) {
  const [busy, setBusy] = useState("");
  const [error, setError] = useState(null);
  const run = async (what, request) => {
    setError(null);
    setBusy(what);
    try {
      onDone(await request());
    } catch (e) {
      setError(e);
    } finally {
      setBusy("");
    }
  };
  return { busy, error, run };
}

function Maintenance({ node, path, canAct, onChanged }) {
  const ops = useApi("/operations", { query: { target: node.id, limit: 10 }, events: ["operation"] });
  const { busy, error, run } = useAction(onChanged);
  const latest = (ops.data || []).find((o) => o.kind === "node.maintenance");
  const set = (on) => run(on ? "on" : "off", () => api.post(`${path}/maintenance`, { on }));
  return html`<h3>Maintenance</h3>
    <p>${node.maintenance ? "On: the node takes no new VM, and its VMs are moved to other nodes."
      : "Off: the node takes VMs."}</p>
    ${latest && html`<div class="operation" role="status" aria-label="Maintenance operation">
      <span>Emptying the node, asked ${ago(latest.created_at)}: <${StateBadge} state=${latest.state} /></span>
      ${ACTIVE.includes(latest.state) && latest.message && html`<p class="hint">${latest.message}</p>`}
      ${latest.error && html`<p class="error-text">${latest.error}</p>`}
    </div>`}
    ${canAct && html`<div class="toolbar">
      <${Button} onClick=${() => set(!node.maintenance)} busy=${busy !== ""}>
        <${Icon} name="server" /> ${node.maintenance ? "End maintenance" : "Start maintenance"}<//>
    </div>`}
    <${ErrorBox} error=${error} title="Maintenance was not changed" />`;
}

function bmcWords(bmc) {
  if (!bmc) {
    return "none configured: if this node is lost, its HA VMs wait until an operator vouches that its power is off (vauban node fence)";
  }
  return `${bmc.kind.toUpperCase()} at ${bmc.address}:${bmc.port} as ${bmc.username}`;
}

function Fencing({ node, path, canAct, onChanged }) {
  const { busy, error, run } = useAction(onChanged);
  const beat = node.storage_heartbeat;
  const fo = node.failover;
  return html`<h3>Fencing and failover</h3>
    <dl class="facts">
      <dt>BMC</dt><dd>${bmcWords(node.bmc)}</dd>
      <dt>Storage heartbeat</dt><dd>${beat ? `${beat.stale ? "stale" : "alive"}: ${beat.detail}` : "— (no shared storage, or not read yet)"}</dd>
      <dt>Fenced by a failover</dt><dd>${node.fenced_at ? `since ${time(node.fenced_at)}: it takes no VM until taken back` : "no"}</dd>
      <dt>Fenced itself</dt><dd>${node.self_fenced_at ? `since ${time(node.self_fenced_at)}: it starts no VM until the fence is cleared` : "no"}</dd>
      <dt>Failover</dt><dd>${fo ? html`<${StateBadge} state=${fo.state} /> ${fo.reason || ""}` : "none"}</dd>
    </dl>
    ${canAct && (node.fenced_at || node.self_fenced_at) && html`<div class="toolbar">
      ${node.fenced_at && html`<${Button} busy=${busy === "recover"}
        onClick=${() => run("recover", () => api.post(`${path}/recover`))}>Take the node back (repaired)<//>`}
      ${node.self_fenced_at && html`<${Button} busy=${busy === "clear"}
        onClick=${() => run("clear", () => api.post(`${path}/clear-fence`))}>Clear its own fence<//>`}
    </div>`}
    <${ErrorBox} error=${error} title="The node was not changed" />`;
}

/** The node's maintenance and HA card. */
export function NodeAvailability({ node, path, canAct, onChanged }) {
  return html`<div class="card availability">
    <h2>Maintenance and high availability</h2>
    <${Maintenance} node=${node} path=${path} canAct=${canAct} onChanged=${onChanged} />
    <${Fencing} node=${node} path=${path} canAct=${canAct} onChanged=${onChanged} />
  </div>`;
}
