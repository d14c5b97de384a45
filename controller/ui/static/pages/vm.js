// One VM: its state (live from the event stream), where it runs, its disks, volumes, NICs,
// GPUs, what its node failed to do, its operations; the power actions, each followed by
// its operation's progress; moving it and its HA mark (vm_move.js).
import { html, useEffect, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import { subscribe } from "../lib/events.js";
import {
  Button, ConfirmButton, ErrorBox, Icon, Link, Loading, OperationProgress, PageHeader, StateBadge,
  Table, useApi, useOperation,
} from "../lib/components.js";
import { ago, bytes, gib, mib, time } from "../lib/format.js";
import { useSession } from "../lib/session.js";
import { Placement } from "./vm_move.js";

const WRITERS = ["project-admin", "project-member"];
// terminal control sequences (colours, cursor moves) and carriage returns: a log shown as text
const CONTROL = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]|\r/g;

/** The last 256 KiB of the VM's serial log, read from its node through a console ticket
 * ("log": sent once, then the end; the VM may be stopped). */
function readLog(vmName) {
  return api.post(`/instances/${encodeURIComponent(vmName)}/consoles`, { kind: "log" }).then(
    (answer) => new Promise((resolve, reject) => {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const socket = new WebSocket(`${scheme}://${location.host}${answer.websocket}`);
      socket.binaryType = "arraybuffer";
      const parts = [];
      socket.onmessage = (e) => parts.push(new Uint8Array(e.data));
      socket.onclose = (e) => {
        if (e.code !== 1000) {
          reject(new Error(e.reason || "the serial log could not be read"));
          return;
        }
        const text = new TextDecoder().decode(concat(parts));
        resolve(text.replace(CONTROL, ""));
      };
    }));
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function SerialLog({ vm, canRead }) {
  const [log, setLog] = useState(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const load = () => {
    setBusy(true);
    setError(null);
    readLog(vm.name).then(setLog, setError).finally(() => setBusy(false));
  };
  return html`<h2>Serial log</h2>
    <p>What the VM wrote to its serial port, as its node ${vm.node_name} keeps it (the last
      256 KiB). <a href=${`#/vms/${encodeURIComponent(vm.name)}/console`}>Open the console</a>
      to see it live and type.</p>
    ${canRead && html`<div class="toolbar"><${Button} busy=${busy} onClick=${load}>
      <${Icon} name="scroll-text" /> ${log === null ? "Show the serial log" : "Read it again"}<//></div>`}
    <${ErrorBox} error=${error} title="The serial log could not be read" />
    ${log !== null && html`<pre class="serial-log" aria-label="Serial log" tabindex="0">${log || "(empty)"}</pre>`}`;
}

/** Whether the caller's roles let it act on a VM of `project` (the API decides anyway). */
export function mayAct(account, can, project) {
  if (can.regionWrite) return true;
  return ((account && account.roles) || []).some((r) => r.project && r.project === project &&
    WRITERS.includes(r.role));
}

/** Which power actions make sense in the VM's state: {start, stop, force, reboot, del}. */
export function possible(vm) {
  const s = vm.state;
  const busy = ["creating", "starting", "stopping", "rebooting", "deleting"].includes(s);
  const up = s === "running";
  return {
    start: !busy && (s === "stopped" || (s === "error" && vm.desired_power === "stopped")),
    stop: up,
    // cutting the power also helps a VM stuck starting, stopping or rebooting
    force: up || s === "starting" || s === "stopping" || s === "rebooting" ||
      (s === "error" && vm.desired_power === "running"),
    reboot: up,
    del: s !== "deleting",
  };
}

function failureWords(f) {
  const when = f.final ? "given up" : f.next_retry_at ? `tried again ${time(f.next_retry_at)}` : "will be retried";
  return `${f.kind} ${f.action} failed ${f.attempts} time${f.attempts === 1 ? "" : "s"} since ${ago(f.since)}: ${f.message} (${when})`;
}

function Actions({ vm, onOp }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState("");
  const ok = possible(vm);
  const run = async (what, request) => {
    setError(null);
    setBusy(what);
    try {
      const op = await request();
      onOp(op.id, what);
    } catch (e) {
      setError(e);
    } finally {
      setBusy("");
    }
  };
  const ref = encodeURIComponent(vm.name);
  const power = (action, body) => () => api.post(`/instances/${ref}/${action}`, body);
  return html`<div class="vm-actions" role="group" aria-label="Power actions">
      <${Button} onClick=${() => run("Starting", power("start"))} disabled=${!ok.start} busy=${busy === "Starting"}>
        <${Icon} name="play" /> Start<//>
      <${Button} onClick=${() => run("Stopping", power("stop"))} disabled=${!ok.stop} busy=${busy === "Stopping"}>
        <${Icon} name="square" /> Stop<//>
      <${Button} onClick=${() => run("Rebooting", power("reboot"))} disabled=${!ok.reboot} busy=${busy === "Rebooting"}>
        <${Icon} name="rotate-cw" /> Reboot<//>
      <${ConfirmButton} label="Force off" disabled=${!ok.force}
        question=${`Cut the power of ${vm.name} now? Its guest is not asked to shut down: unsaved data in it is lost.`}
        onConfirm=${async () => { const op = await power("stop", { force: true })(); onOp(op.id, "Forcing off"); }} />
      <${ConfirmButton} label="Delete" disabled=${!ok.del}
        question=${`Delete ${vm.name} and its disks? Attached volumes are detached and kept. This cannot be undone.`}
        onConfirm=${async () => { const op = await api.del(`/instances/${ref}`); onOp(op.id, "Deleting"); }} />
      <${ErrorBox} error=${error} title="The VM did not accept that" />
    </div>`;
}

function Facts({ vm, image }) {
  const root = vm.root_disk_gib ? gib(vm.root_disk_gib) : image ? `${bytes(image.virtual_size_bytes)} (the image's size)` : "the image's size";
  return html`<dl class="facts">
    <dt>State</dt><dd><${StateBadge} state=${vm.state} /> <span class="hint">asked: ${vm.desired_power}</span></dd>
    <dt>Project</dt><dd>${vm.project || "—"}</dd>
    <dt>Node</dt><dd>${vm.node_name}</dd>
    <dt>Image</dt><dd>${vm.image_name}${image && image.os ? ` (${image.os})` : ""}</dd>
    <dt>Size</dt><dd>${vm.vcpus} vCPU${vm.vcpus === 1 ? "" : "s"}, ${mib(vm.memory_mib)} memory</dd>
    <dt>Root disk</dt><dd>${root}</dd>
    <dt>Hostname</dt><dd>${vm.hostname}</dd>
    <dt>Created</dt><dd>${time(vm.created_at)}</dd>
    <dt>ID</dt><dd class="mono">${vm.id}</dd>
  </dl>`;
}

function Hardware({ vm, volumes }) {
  const nics = vm.ports || [];
  return html`<h2>Network interfaces</h2>
    <${Table} caption="Network interfaces" rowKey=${(p) => p.mac} rows=${nics} empty="No NIC: this VM has no network."
      columns=${[
        { label: "NIC", render: (p) => `#${nics.indexOf(p) + 1}` },
        { label: "Network", render: (p) => html`<${Link} to=${`/networks/${p.network}`}>${p.network}<//>` },
        { label: "MAC", render: (p) => html`<span class="mono">${p.mac}</span>` },
        { label: "Addresses", render: (p) => (p.addresses.join(", ") || "—") + (p.dhcp ? " (IPv4 by DHCP)" : "") },
        { label: "Security groups", render: (p) => (p.security_groups || []).map((g) => html`<${Link}
          to=${`/security-groups/${g}`}>${g}<//> `) },
      ]} />
    <h2>Volumes</h2>
    <${Table} caption="Attached volumes" rows=${volumes} empty="No volume attached."
      columns=${[
        { label: "Name", key: "name" },
        { label: "Guest disk", render: (v) => html`<span class="mono">${v.target || "—"}</span>` },
        { label: "Size", render: (v) => gib(v.size_gib), className: "num" },
        { label: "State", render: (v) => html`<${StateBadge} state=${v.state} />` },
      ]} />
    ${(vm.gpus.length > 0 || vm.vgpus.length > 0) && html`<h2>GPUs</h2>
      <${Table} caption="GPUs" rowKey=${(g) => g.address || g.uuid}
        rows=${[...vm.gpus.map((g) => ({ ...g, kind: "whole GPU" })),
          ...vm.vgpus.map((v) => ({ ...v, kind: "vGPU", address: v.parent, model: v.type_name }))]}
        columns=${[
          { label: "Kind", key: "kind" },
          { label: "Model", key: "model" },
          { label: "PCI address", render: (g) => html`<span class="mono">${g.address}</span>` },
        ]} />`}`;
}

function Operations({ vmId }) {
  const { data, error } = useApi(vmId ? "/operations" : null, { query: { target: vmId, limit: 20 }, events: ["operation"] });
  return html`<h2>Operations</h2>
    <${ErrorBox} error=${error} title="The operations could not be listed" />
    <${Table} caption="Operations of this VM" rows=${data} empty="No operation yet."
      columns=${[
        { label: "Action", render: (o) => o.kind.replace(/^instance\./, "") },
        { label: "State", render: (o) => html`<${StateBadge} state=${o.state} />` },
        { label: "By", key: "requested_by" },
        { label: "When", render: (o) => html`<span title=${time(o.created_at)}>${ago(o.created_at)}</span>` },
        { label: "Error", render: (o) => o.error || "—" },
      ]} />`;
}

export default function Vm({ params, query }) {
  const { account, can } = useSession();
  const ref = params.ref;
  // Once its deletion has begun the VM is no longer asked for (the answer would soon be a
  // 404): the page keeps what it last saw and waits for the event that says it is gone.
  const [frozen, setFrozen] = useState(null);
  const [deleted, setDeleted] = useState(false);
  const { data, error, loading, reload } = useApi(frozen ? null : `/instances/${encodeURIComponent(ref)}`,
    { events: ["vm", "operation"] });
  const vm = frozen || data;
  const vols = useApi("/volumes", { events: ["volume"] });
  const images = useApi("/images", { events: ["image"] });
  const [op, setOp] = useState(query && query.op ? { id: query.op, label: "Creating" } : null);
  const vmId = vm && vm.id;
  useEffect(() => { if (data && data.state === "deleting") setFrozen(data); }, [data]);
  useEffect(() => (vmId ? subscribe(["vm"], (event, type) => {
    if (type === "vm.deleted" && event && event.object && event.object.id === vmId) setDeleted(true);
  }) : undefined), [vmId]);
  const followed = useOperation(op && op.id).op; // its end also says the VM is gone
  const gone = deleted || (error && error.status === 404) ||
    Boolean(followed && followed.kind === "instance.delete" && followed.state === "succeeded");
  if (loading && !frozen) return html`<${Loading} />`;
  if (!vm || gone) {
    return html`<section><${PageHeader} title=${ref} />
      ${gone ? html`<p role="status">There is no VM ${ref} (any more). <a href="#/vms">Back to the VMs</a>.</p>`
        : html`<${ErrorBox} error=${error} title="This VM could not be read" />`}
      <${OperationProgress} opId=${op && op.id} label=${op && op.label} />
    </section>`;
  }
  const volumes = (vols.data || []).filter((v) => v.attached_to === vm.name || v.attached_to === vm.id);
  const image = (images.data || []).find((i) => i.id === vm.image_id);
  const onOp = (id, label) => {
    setOp({ id, label });
    if (label === "Deleting") setFrozen({ ...vm, state: "deleting" });
  };
  return html`<section class="vm-page">
    <${PageHeader} title=${vm.name} subtitle=${html`<${StateBadge} state=${vm.state} /> on ${vm.node_name}`}>
      <a class="btn" href=${`#/vms/${encodeURIComponent(vm.name)}/console`}><${Icon} name="terminal" /> Console</a>
    <//>
    ${mayAct(account, can, vm.project) && html`<${Actions} vm=${vm} onOp=${onOp} />`}
    <${OperationProgress} opId=${op && op.id} label=${op && op.label} />
    ${vm.error && html`<div class="error-box" role="alert"><${Icon} name="circle-alert" />
      <div><strong>The node reports an error</strong><p>${vm.error}</p></div></div>`}
    ${vm.failures.length > 0 && html`<div class="card failures"><h2>What its node could not do</h2>
      <ul>${vm.failures.map((f) => html`<li>${failureWords(f)}</li>`)}</ul></div>`}
    <div class="card"><${Facts} vm=${vm} image=${image} /></div>
    <${Placement} vm=${vm} canMove=${can.regionWrite} canMark=${mayAct(account, can, vm.project)}
      onOp=${onOp} onChanged=${reload} />
    <${Hardware} vm=${vm} volumes=${volumes} />
    <${Operations} vmId=${vm.id} />
    <${SerialLog} vm=${vm} canRead=${mayAct(account, can, vm.project)} />
  </section>`;
}
