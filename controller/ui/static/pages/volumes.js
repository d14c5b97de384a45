// Volumes: every volume the caller may see; create one (empty or a clone of a snapshot), and
// for the one chosen: grow it, take, delete and roll back snapshots, attach it to a running
// VM or detach it, delete it. Each action follows its operation and says why it failed.
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import {
  Button, ConfirmButton, ErrorBox, Field, Icon, Loading, OperationProgress, PageHeader, StateBadge, Table, useApi,
} from "../lib/components.js";
import { bytes, gib, time } from "../lib/format.js";
import { useSession } from "../lib/session.js";
import { ProjectField, nameError, useAction } from "./resource_forms.js";

const SNAPSHOT_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const SNAPSHOT_HINT = "1-63 characters: lowercase letters, digits, '.', '_' and '-', starting with a letter or digit";

/** An action's progress and error, under its form. */
function Outcome({ action, label, title }) {
  return html`<${OperationProgress} opId=${action.opId} label=${label} />
    <${ErrorBox} error=${action.error} title=${title} />`;
}

function CreateVolume({ volumes, onDone }) {
  const [form, setForm] = useState({ name: "", size: "10", project: "", source: "", pool: "" });
  const action = useAction();
  const set = (key) => (e) => setForm({ ...form, [key]: e.target.value });
  const sources = volumes.flatMap((v) => v.snapshots.map((s) => `${v.name}@${s}`));
  const submit = async (e) => {
    e.preventDefault();
    if (nameError(form.name)) return;
    const body = { name: form.name, size_gib: Number(form.size) };
    if (form.project) body.project = form.project;
    if (form.source) body.source = form.source;
    if (form.pool.trim()) body.pool = form.pool.trim();
    if (await action.run(() => api.post("/volumes", body))) onDone();
  };
  return html`<form class="card form" onSubmit=${submit} aria-labelledby="new-volume-title">
    <h2 id="new-volume-title">New volume</h2>
    <div class="form-row">
      <${Field} id="volume-name" label="Name" error=${nameError(form.name)}>
        <input id="volume-name" required value=${form.name} onInput=${set("name")} />
      <//>
      <${Field} id="volume-size" label="Size (GiB)">
        <input id="volume-size" type="number" min="1" max="65536" required value=${form.size} onInput=${set("size")} />
      <//>
      <${ProjectField} id="volume-project" value=${form.project} onChange=${(project) => setForm({ ...form, project })} />
      <${Field} id="volume-source" label="Contents" hint="a clone is at least its snapshot's size">
        <select id="volume-source" aria-describedby="volume-source-hint" value=${form.source} onChange=${set("source")}>
          <option value="">empty</option>
          ${sources.map((s) => html`<option value=${s}>clone of ${s}</option>`)}
        </select>
      <//>
      <${Field} id="volume-pool" label="Pool" hint="empty: the region's first volume pool">
        <input id="volume-pool" aria-describedby="volume-pool-hint" maxlength="63" value=${form.pool} onInput=${set("pool")} />
      <//>
    </div>
    <${Outcome} action=${action} label="Create" title="The volume was not created" />
    <${Button} kind="primary" type="submit" busy=${action.busy}>Create volume<//>
  </form>`;
}

function Resize({ volume, onDone }) {
  const [size, setSize] = useState(String(volume.size_gib + 1));
  const action = useAction();
  const tooSmall = Number(size) <= volume.size_gib;
  const submit = (e) => {
    e.preventDefault();
    if (!tooSmall) action.run(() => api.post(`/volumes/${volume.id}/resize`, { size_gib: Number(size) })).then(onDone);
  };
  return html`<form class="inline-form" onSubmit=${submit} aria-label="Grow">
    <${Field} id="resize-size" label="New size (GiB)" error=${tooSmall ? `more than ${volume.size_gib}: volumes only grow` : null}>
      <input id="resize-size" type="number" min=${volume.size_gib + 1} max="65536" value=${size}
        onInput=${(e) => setSize(e.target.value)} />
    <//>
    <${Button} type="submit" busy=${action.busy} disabled=${tooSmall}>Grow<//>
  </form>
  <${Outcome} action=${action} label="Grow" title="The volume was not grown" />`;
}

// what a snapshot holds: taken with the guest's filesystems frozen, or as after a power cut
const CONSISTENCY = { filesystem: "filesystem (quiesced)", crash: "crash-consistent" };

function Snapshots({ volume, can, onDone }) {
  const [name, setName] = useState("");
  const take = useAction();
  const other = useAction();
  const invalid = name && !SNAPSHOT_RE.test(name) ? SNAPSHOT_HINT : null;
  const submit = (e) => {
    e.preventDefault();
    if (name && !invalid) take.run(() => api.post(`/volumes/${volume.id}/snapshots`, { name })).then((op) => { if (op) setName(""); onDone(); });
  };
  const rows = volume.snapshots.map((s) => ({ id: s, name: s }));
  const consistency = volume.snapshot_consistency || {};
  const columns = [
    { label: "Snapshot", key: "name" },
    { label: "Consistency", render: (s) => CONSISTENCY[consistency[s.name]] || "not taken yet" },
    {
      label: "Actions", render: (s) => can.canWrite && html`<div class="row-actions">
        <${ConfirmButton} label="Roll back" kind="secondary"
          question=${`Roll ${volume.name} back to ${s.name}? What was written since is lost. The volume must be detached.`}
          confirmLabel=${`Roll back to ${s.name}`} disabled=${Boolean(volume.attached_to)}
          onConfirm=${() => other.run(() => api.post(`/volumes/${volume.id}/rollback`, { snapshot: s.name })).then(onDone)} />
        <${ConfirmButton} label="Delete" question=${`Delete the snapshot ${s.name} of ${volume.name}?`}
          confirmLabel=${`Delete snapshot ${s.name}`}
          onConfirm=${() => other.run(() => api.del(`/volumes/${volume.id}/snapshots/${encodeURIComponent(s.name)}`)).then(onDone)} />
      </div>`,
    },
  ];
  return html`<h3>Snapshots</h3>
    <${Table} columns=${columns} rows=${rows} caption="Snapshots" empty="No snapshot." />
    <${Outcome} action=${other} label="Snapshot" title="That did not work" />
    ${can.canWrite && html`<form class="inline-form" onSubmit=${submit} aria-label="Take a snapshot">
      <${Field} id="snapshot-name" label="Snapshot name" error=${invalid}>
        <input id="snapshot-name" value=${name} onInput=${(e) => setName(e.target.value)} placeholder="before-upgrade" />
      <//>
      <${Button} type="submit" busy=${take.busy} disabled=${!name || Boolean(invalid)}>Take snapshot<//>
    </form>
    <${Outcome} action=${take} label="Snapshot" title="The snapshot was not taken" />`}`;
}

function Attachment({ volume, onDone }) {
  const { data: vms } = useApi("/instances", { events: ["vm"] });
  const [vm, setVm] = useState("");
  const [target, setTarget] = useState("");
  const action = useAction();
  const running = (vms || []).filter((v) => v.state === "running" && v.project === volume.project);
  if (volume.attached_to) {
    return html`<p>Attached to <strong>${volume.attached_to}</strong> as <code>${volume.target || "—"}</code>.</p>
      <${Button} busy=${action.busy} onClick=${() => action.run(() => api.post(`/volumes/${volume.id}/detach`)).then(onDone)}>Detach<//>
      <${Outcome} action=${action} label="Detach" title="The volume was not detached" />`;
  }
  const submit = (e) => {
    e.preventDefault();
    const body = { instance: vm };
    if (target) body.target = target;
    if (vm) action.run(() => api.post(`/volumes/${volume.id}/attach`, body)).then(onDone);
  };
  return html`<form class="inline-form" onSubmit=${submit} aria-label="Attach">
    <${Field} id="attach-vm" label="Running VM">
      <select id="attach-vm" value=${vm} onChange=${(e) => setVm(e.target.value)}>
        <option value="">choose…</option>
        ${running.map((v) => html`<option value=${v.name}>${v.name}</option>`)}
      </select>
    <//>
    <${Field} id="attach-target" label="Guest disk" hint="empty: the next free vdc…vdz">
      <select id="attach-target" aria-describedby="attach-target-hint" value=${target} onChange=${(e) => setTarget(e.target.value)}>
        <option value="">next free</option>
        ${"cdefghijklmnopqrstuvwxyz".split("").map((c) => html`<option value=${"vd" + c}>vd${c}</option>`)}
      </select>
    <//>
    <${Button} type="submit" busy=${action.busy} disabled=${!vm}>Attach<//>
  </form>
  ${running.length === 0 && html`<p class="hint">No running VM of this project to attach it to.</p>`}
  <${Outcome} action=${action} label="Attach" title="The volume was not attached" />`;
}

function VolumePanel({ volume, can, onClose, onDone }) {
  const remove = useAction();
  return html`<section class="card volume-panel" aria-labelledby="volume-title">
    <div class="page-header">
      <h2 id="volume-title">Volume ${volume.name}</h2>
      <div class="actions">
        ${can.canWrite && html`<${ConfirmButton} label="Delete volume" disabled=${Boolean(volume.attached_to)}
          question=${`Delete the volume ${volume.name} and its snapshots? Its data is lost.`}
          confirmLabel=${`Delete ${volume.name}`}
          onConfirm=${() => remove.run(() => api.del(`/volumes/${volume.id}`)).then(onDone)} />`}
        <${Button} aria-label="Close the volume's panel" onClick=${onClose}><${Icon} name="x" /><//>
      </div>
    </div>
    <${Outcome} action=${remove} label="Delete" title="The volume was not deleted" />
    ${volume.attached_to && html`<p class="hint">Attached: detach it before deleting it or rolling it back.</p>`}
    <dl class="facts">
      <dt>State</dt><dd><${StateBadge} state=${volume.state} /></dd>
      <dt>Size</dt><dd>${gib(volume.size_gib)}${volume.used_bytes !== null ? ` (${bytes(volume.used_bytes)} used)` : ""}</dd>
      <dt>Pool</dt><dd>${volume.pool}</dd>
      <dt>Made from</dt><dd>${volume.source || "empty"}</dd>
      <dt>Steward node</dt><dd>${volume.steward}</dd>
      <dt>Created</dt><dd>${time(volume.created_at)}</dd>
      ${volume.error && html`<dt>Error</dt><dd class="error-text">${volume.error}</dd>`}
    </dl>
    ${can.canWrite && html`<h3>Size</h3><${Resize} key=${volume.size_gib} volume=${volume} onDone=${onDone} />
      <h3>Attachment</h3><${Attachment} volume=${volume} onDone=${onDone} />`}
    <${Snapshots} volume=${volume} can=${can} onDone=${onDone} />
  </section>`;
}

export default function Volumes() {
  const { can } = useSession();
  // each action reloads the list once when accepted; the event stream brings what follows
  const { data, error, loading, reload } = useApi("/volumes", { events: ["volume", "operation"] });
  const [showForm, setShowForm] = useState(false);
  const [selected, setSelected] = useState(null);
  const volumes = data || [];
  const chosen = volumes.find((v) => v.id === selected);
  const columns = [
    { label: "Name", render: (v) => html`<strong>${v.name}</strong>` },
    { label: "State", render: (v) => html`<${StateBadge} state=${v.state} />` },
    { label: "Project", render: (v) => v.project || "shared" },
    { label: "Size", className: "num", render: (v) => gib(v.size_gib) },
    { label: "Attached to", render: (v) => (v.attached_to ? `${v.attached_to} (${v.target})` : "—") },
    { label: "Snapshots", className: "num", render: (v) => v.snapshots.length },
    { label: "Pool", key: "pool" },
    {
      label: "Actions", render: (v) => html`<${Button} aria-label=${`Manage ${v.name}`}
        aria-expanded=${selected === v.id ? "true" : "false"} onClick=${() => setSelected(selected === v.id ? null : v.id)}>
        Manage<//>`,
    },
  ];
  return html`<section>
    <${PageHeader} title="Volumes" subtitle=${data ? `${volumes.length} volume${volumes.length === 1 ? "" : "s"}` : ""}>
      ${can.canWrite && html`<${Button} kind="primary" aria-expanded=${showForm ? "true" : "false"}
        onClick=${() => setShowForm(!showForm)}><${Icon} name="plus" /> Create volume<//>`}
    <//>
    ${showForm && html`<${CreateVolume} volumes=${volumes} onDone=${reload} />`}
    <${ErrorBox} error=${error} title="The volumes could not be listed" />
    ${loading ? html`<${Loading} />` : html`<${Table} columns=${columns} rows=${volumes} caption="Volumes"
      empty="No volume yet." />`}
    ${chosen && html`<${VolumePanel} key=${chosen.id} volume=${chosen} can=${can} onClose=${() => setSelected(null)} onDone=${reload} />`}
  </section>`;
}
