// Create a VM: name, project, image, size, NICs, security groups, GPUs, node pin, user-data.
// The form checks what it can before sending (the API's own patterns), but the API is the
// judge: its field errors are shown next to the fields, its other refusals in words.
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import { Button, ErrorBox, Field, Icon, Loading, OperationProgress, PageHeader, useApi } from "../lib/components.js";
import { bytes } from "../lib/format.js";
import { navigate } from "../lib/router.js";
import { useSession } from "../lib/session.js";

// the API's rule for names (controller/schemas.py NAME_PATTERN)
const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const NAME_RULE = "1-63 characters: lowercase letters, digits and '-', not starting or ending with '-'";

/** What GPUs are free, from /gpus: whole GPUs by model, vGPU instances by type. */
export function gpuChoices(gpus) {
  const models = new Map();
  const types = new Map();
  for (const g of gpus || []) {
    if (g.state === "unusable") continue;
    const m = models.get(g.model) || { model: g.model, free: 0, total: 0 };
    m.total += 1;
    if (g.state === "free") m.free += 1;
    models.set(g.model, m);
    const used = new Set((g.vgpus || []).map((v) => v.type_id));
    for (const t of g.vgpu_types || []) {
      const entry = types.get(t.id) || { id: t.id, name: t.name, free: 0 };
      // a GPU carved into vGPUs holds more of the same type only
      if (g.state === "free") entry.free += t.capacity;
      else if (g.state === "vgpu" && used.size === 1 && used.has(t.id)) {
        entry.free += Math.max(0, t.capacity - g.vgpus.length);
      }
      types.set(t.id, entry);
    }
  }
  const byName = (a, b) => (a.model || a.name).localeCompare(b.model || b.name);
  return { models: [...models.values()].sort(byName), types: [...types.values()].sort(byName) };
}

/** Client-side checks mirroring the API's; {field: message in words}. */
function check(form) {
  const errors = {};
  if (!NAME.test(form.name)) errors.name = `The name must be ${NAME_RULE}.`;
  if (form.hostname && !NAME.test(form.hostname)) errors.hostname = `The hostname must be ${NAME_RULE}.`;
  if (!form.image) errors.image = "Choose an image.";
  const vcpus = Number(form.vcpus);
  if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 256) errors.vcpus = "Between 1 and 256 vCPUs.";
  const memory = Number(form.memory_mib);
  if (!Number.isInteger(memory) || memory < 64 || memory > 4194304) errors.memory_mib = "Between 64 MiB and 4 TiB (in MiB).";
  if (form.root_disk_gib !== "") {
    const disk = Number(form.root_disk_gib);
    if (!Number.isInteger(disk) || disk < 1 || disk > 65536) errors.root_disk_gib = "Between 1 and 65536 GiB, or empty for the image's size.";
  }
  form.nics.forEach((nic, i) => {
    if (!nic.network) errors[`networks.${i}`] = "Choose a network, or remove this NIC.";
  });
  if (form.gpu_model && form.vgpu) errors.vgpu = "Ask for whole GPUs or a vGPU, not both.";
  const count = Number(form.gpu_count);
  if (form.gpu_model && (!Number.isInteger(count) || count < 1 || count > 16)) errors.gpu_count = "Between 1 and 16 GPUs.";
  if (form.user_data.length > 65536) errors.user_data = "At most 64 KiB of user-data.";
  return errors;
}

/** The API's field errors ({field: "networks.0", message}) by the form's field names. */
function apiFieldErrors(error) {
  const out = {};
  for (const f of (error && error.fieldErrors) || []) {
    const field = String(f.field || "").replace(/^body\./, "");
    const key = field.startsWith("gpus") ? "gpu_model" : field;
    if (key && !out[key]) out[key] = f.message;
  }
  return out;
}

function body(form, nics, withGroups) {
  const b = {
    name: form.name.trim(),
    image: form.image,
    vcpus: Number(form.vcpus),
    memory_mib: Number(form.memory_mib),
    user_data: form.user_data,
    start: form.start,
  };
  if (form.project) b.project = form.project;
  if (form.root_disk_gib !== "") b.root_disk_gib = Number(form.root_disk_gib);
  if (form.hostname) b.hostname = form.hostname;
  if (form.node) b.node = form.node;
  if (nics.length) {
    b.networks = nics.map((n) => (n.address.trim() ? `${n.network}:${n.address.trim()}` : n.network)
      + (n.dhcp ? ",dhcp" : ""));
    if (withGroups) b.security_groups = form.security_groups;
  }
  if (form.gpu_model) b.gpus = [{ model: form.gpu_model, count: Number(form.gpu_count) }];
  if (form.vgpu) b.vgpu = form.vgpu;
  return b;
}

function ProjectField({ projects, value, onChange }) {
  if (!projects || projects.length < 2) return null;
  return html`<${Field} id="vm-project" label="Project">
    <select id="vm-project" value=${value} onChange=${(e) => onChange(e.target.value)}>
      ${projects.map((p) => html`<option value=${p.name}>${p.name}</option>`)}
    </select>
  <//>`;
}

function Nics({ nics, networks, errors, onChange }) {
  const set = (i, patch) => onChange(nics.map((n, j) => (j === i ? { ...n, ...patch } : n)));
  const byName = Object.fromEntries((networks || []).map((n) => [n.name, n]));
  return html`<fieldset>
    <legend>Network interfaces</legend>
    ${nics.length === 0 && html`<p class="hint">No NIC: the VM has no network.</p>`}
    ${nics.map((nic, i) => {
      const net = byName[nic.network];
      const cidrs = net ? net.subnets.map((s) => s.cidr).join(", ") : "";
      const hint = net ? (cidrs ? `Subnet ${cidrs}: empty takes the lowest free address.`
        : "This network has no subnet: no address.") : "";
      // the nodes answer DHCP on tenant networks only, for IPv4
      const dhcpable = net && net.kind === "tenant" && net.subnets.some((s) => !s.cidr.includes(":"));
      return html`<div class="nic-row" key=${i}>
        <${Field} id=${`vm-nic-${i}`} label=${`NIC ${i + 1} network`} error=${errors[`networks.${i}`]}>
          <select id=${`vm-nic-${i}`} value=${nic.network} onChange=${(e) => set(i, { network: e.target.value, dhcp: false })}>
            <option value="">choose…</option>
            ${(networks || []).map((n) => html`<option value=${n.name}>
              ${n.name} (${n.kind}${n.subnets.length ? ", " + n.subnets.map((s) => s.cidr).join(", ") : ""})</option>`)}
          </select>
        <//>
        <${Field} id=${`vm-nic-${i}-address`} label=${`NIC ${i + 1} fixed address (optional)`} hint=${hint}>
          <input id=${`vm-nic-${i}-address`} value=${nic.address} placeholder="lowest free"
            aria-describedby=${hint ? `vm-nic-${i}-address-hint` : undefined}
            onInput=${(e) => set(i, { address: e.target.value })} />
        <//>
        ${dhcpable && html`<span class="check-field">
          <input type="checkbox" id=${`vm-nic-${i}-dhcp`} checked=${Boolean(nic.dhcp)}
            onChange=${(e) => set(i, { dhcp: e.target.checked })} />
          <label for=${`vm-nic-${i}-dhcp`}>NIC ${i + 1}: IPv4 by DHCP</label></span>`}
        <${Button} class="btn icon-only" aria-label=${`Remove NIC ${i + 1}`}
          onClick=${() => onChange(nics.filter((_, j) => j !== i))}><${Icon} name="x" /><//>
      </div>`;
    })}
    <${Button} onClick=${() => onChange([...nics, { network: (networks && networks[0] && networks[0].name) || "", address: "", dhcp: false }])}
      disabled=${!networks || networks.length === 0}>
      <${Icon} name="plus" /> Add a NIC<//>
    ${networks && networks.length === 0 && html`<p class="hint">No network in this project yet.</p>`}
  </fieldset>`;
}

function SecurityGroups({ groups, value, onChange, error }) {
  const toggle = (name, on) => onChange(on ? [...value, name] : value.filter((v) => v !== name));
  return html`<fieldset>
    <legend>Security groups of the NICs</legend>
    ${(groups || []).length === 0 ? html`<p class="hint">This project has no security group yet.</p>`
      : html`<div class="checks">${groups.map((g) => html`<label class="check">
          <input type="checkbox" checked=${value.includes(g.name)}
            onChange=${(e) => toggle(g.name, e.target.checked)} />
          ${g.name}${g.description && html` <small class="hint">${g.description}</small>`}</label>`)}</div>`}
    ${value.length === 0 && html`<p class="hint">No group: the NICs are not filtered.</p>`}
    ${error && html`<small class="field-error" role="alert">${error}</small>`}
  </fieldset>`;
}

function Gpus({ can, form, set, errors }) {
  const { data: gpus, error } = useApi(can.regionRead ? "/gpus" : null, { events: ["node", "vm"] });
  if (!can.regionRead) {
    // /gpus is for who runs the region: others name a model or type, the API says if it fits
    return html`<fieldset><legend>GPU</legend>
      <div class="form-row">
        <${Field} id="vm-gpu" label="Whole GPUs of model (optional)" error=${errors.gpu_model}>
          <input id="vm-gpu" value=${form.gpu_model} placeholder="e.g. H100" onInput=${(e) => set({ gpu_model: e.target.value })} />
        <//>
        <${Field} id="vm-gpu-count" label="GPU count" error=${errors.gpu_count}>
          <input id="vm-gpu-count" type="number" min="1" max="16" value=${form.gpu_count}
            onInput=${(e) => set({ gpu_count: e.target.value })} />
        <//>
        <${Field} id="vm-vgpu" label="vGPU type (optional)" error=${errors.vgpu}>
          <input id="vm-vgpu" value=${form.vgpu} placeholder="e.g. H100XM-10C" onInput=${(e) => set({ vgpu: e.target.value })} />
        <//>
      </div></fieldset>`;
  }
  if (error) return html`<${ErrorBox} error=${error} title="The GPUs could not be listed" />`;
  if (!gpus) return html`<${Loading} what="Looking for GPUs" />`;
  const { models, types } = gpuChoices(gpus);
  if (!models.length) return html`<fieldset><legend>GPU</legend><p class="hint">This region has no GPU.</p></fieldset>`;
  const chosen = models.find((m) => m.model === form.gpu_model);
  return html`<fieldset><legend>GPU</legend>
    <div class="form-row">
      <${Field} id="vm-gpu" label="Whole GPUs" error=${errors.gpu_model}>
        <select id="vm-gpu" value=${form.gpu_model} onChange=${(e) => set({ gpu_model: e.target.value, vgpu: "" })}>
          <option value="">none</option>
          ${models.map((m) => html`<option value=${m.model} disabled=${m.free === 0}>
            ${m.model} — ${m.free ? `${m.free} of ${m.total} free` : "none free"}</option>`)}
        </select>
      <//>
      <${Field} id="vm-gpu-count" label="GPU count" error=${errors.gpu_count}>
        <input id="vm-gpu-count" type="number" min="1" max=${chosen ? Math.max(1, chosen.free) : 16}
          value=${form.gpu_count} disabled=${!form.gpu_model} onInput=${(e) => set({ gpu_count: e.target.value })} />
      <//>
      <${Field} id="vm-vgpu" label="vGPU" error=${errors.vgpu}>
        <select id="vm-vgpu" value=${form.vgpu} onChange=${(e) => set({ vgpu: e.target.value, gpu_model: "" })}>
          <option value="">none</option>
          ${types.map((t) => html`<option value=${t.id} disabled=${t.free === 0}>
            ${t.name} — ${t.free ? `${t.free} free` : "none free"}</option>`)}
        </select>
      <//>
    </div></fieldset>`;
}

const EMPTY = {
  name: "", project: "", image: "", vcpus: "1", memory_mib: "512", root_disk_gib: "", hostname: "",
  nics: [], security_groups: ["default"], gpu_model: "", gpu_count: "1", vgpu: "", node: "",
  user_data: "", start: true,
};

export default function VmCreate() {
  const { account, can } = useSession();
  const projects = useApi("/projects", { events: ["project"] });
  const images = useApi("/images", { events: ["image"] });
  const networks = useApi("/networks", { events: ["network", "subnet"] });
  const groups = useApi("/security-groups", { events: ["security_group"] });
  const nodes = useApi(can.regionWrite ? "/nodes" : null, { events: ["node"] });
  const [form, setForm] = useState(EMPTY);
  const [errors, setErrors] = useState({});
  const [failure, setFailure] = useState(null);
  const [busy, setBusy] = useState(false);
  const [opId, setOpId] = useState(null);
  const set = (patch) => setForm((f) => ({ ...f, ...patch }));

  const mine = (projects.data || []).map((p) => p.name);
  // default: the caller's only project with a role, else "default" (an admin's), else the first
  const own = can.projects.filter((p) => mine.includes(p));
  const project = form.project || (own.length === 1 ? own[0] : mine.includes("default") ? "default" : mine[0] || "");
  const inProject = (o) => !o.project || o.project === project;
  const projectImages = (images.data || []).filter(inProject);
  const projectNetworks = networks.data && networks.data.filter(inProject);
  const projectGroups = groups.data && groups.data.filter((g) => g.project === project);
  const image = projectImages.find((i) => i.name === form.image);

  const submit = async (e) => {
    e.preventDefault();
    const found = check(form);
    setErrors(found);
    setFailure(null);
    if (Object.keys(found).length) return;
    setBusy(true);
    try {
      const op = await api.post("/instances", body({ ...form, project }, form.nics, form.nics.length > 0));
      setOpId(op.id);
      navigate(`/vms/${encodeURIComponent(form.name.trim())}?op=${op.id}`);
    } catch (err) {
      setErrors(apiFieldErrors(err));
      setFailure(err);
    } finally {
      setBusy(false);
    }
  };

  if (!can.canWrite) {
    return html`<section><${PageHeader} title="Create a VM" />
      <p>Your roles (${(account.roles || []).map((r) => r.role).join(", ") || "none"}) do not let you create VMs.</p></section>`;
  }
  const loadError = projects.error || images.error || networks.error || groups.error;
  return html`<section>
    <${PageHeader} title="Create a VM" subtitle="It is placed on a node with room for it, then built and started there." />
    <${ErrorBox} error=${loadError} title="What the form offers could not be listed" />
    <form class="form" onSubmit=${submit} novalidate>
      <div class="form-row">
        <${Field} id="vm-name" label="Name" hint=${NAME_RULE} error=${errors.name}>
          <input id="vm-name" required value=${form.name} autocomplete="off" pattern=${NAME.source}
            aria-describedby="vm-name-hint" onInput=${(e) => set({ name: e.target.value })} />
        <//>
        <${ProjectField} projects=${projects.data} value=${project}
          onChange=${(p) => set({ project: p, nics: [], security_groups: ["default"], image: "" })} />
      </div>
      <${Field} id="vm-image" label="Image" error=${errors.image}
        hint=${image ? `${image.os || "unknown OS"}, ${bytes(image.virtual_size_bytes)} disk, at least ${image.min_disk_gib || 1} GiB` : ""}>
        <select id="vm-image" value=${form.image} onChange=${(e) => set({ image: e.target.value })}>
          <option value="">choose…</option>
          ${projectImages.map((i) => html`<option value=${i.name}>
            ${i.name} (${i.os || "unknown OS"}, ${bytes(i.virtual_size_bytes)}${i.project ? "" : ", public"})</option>`)}
        </select>
      <//>
      <fieldset><legend>Size</legend>
        <div class="form-row">
          <${Field} id="vm-vcpus" label="vCPUs" error=${errors.vcpus}>
            <input id="vm-vcpus" type="number" min="1" max="256" required value=${form.vcpus}
              onInput=${(e) => set({ vcpus: e.target.value })} />
          <//>
          <${Field} id="vm-memory" label="Memory (MiB)" error=${errors.memory_mib}>
            <input id="vm-memory" type="number" min="64" step="64" required value=${form.memory_mib}
              onInput=${(e) => set({ memory_mib: e.target.value })} />
          <//>
          <${Field} id="vm-disk" label="Root disk (GiB)" error=${errors.root_disk_gib}
            hint="Empty: the image's size">
            <input id="vm-disk" type="number" min="1" value=${form.root_disk_gib} placeholder="image size"
              onInput=${(e) => set({ root_disk_gib: e.target.value })} />
          <//>
        </div>
      </fieldset>
      <${Nics} nics=${form.nics} networks=${projectNetworks} errors=${errors} onChange=${(nics) => set({ nics })} />
      ${form.nics.length > 0 && html`<${SecurityGroups} groups=${projectGroups} value=${form.security_groups}
        error=${errors.security_groups} onChange=${(security_groups) => set({ security_groups })} />`}
      <${Gpus} can=${can} form=${form} set=${set} errors=${errors} />
      ${can.regionWrite && html`<${Field} id="vm-node" label="Node (optional)" error=${errors.node}
        hint="Empty: the scheduler chooses">
        <select id="vm-node" value=${form.node} onChange=${(e) => set({ node: e.target.value })}>
          <option value="">any node</option>
          ${(nodes.data || []).map((n) => html`<option value=${n.name}>${n.name} (${n.state}${
            (n.inventory || {}).hypervisor === "xapi" ? ", XCP-ng pool" : ""})</option>`)}
        </select>
      <//>`}
      <${Field} id="vm-hostname" label="Hostname (optional)" error=${errors.hostname} hint="Empty: the name">
        <input id="vm-hostname" value=${form.hostname} autocomplete="off" onInput=${(e) => set({ hostname: e.target.value })} />
      <//>
      <${Field} id="vm-user-data" label="User-data (cloud-init, optional)" error=${errors.user_data}>
        <textarea id="vm-user-data" rows="5" class="mono" value=${form.user_data}
          onInput=${(e) => set({ user_data: e.target.value })}></textarea>
      <//>
      <label class="check"><input type="checkbox" checked=${form.start}
        onChange=${(e) => set({ start: e.target.checked })} /> Start it once created</label>
      <${ErrorBox} error=${failure} title="The VM was not created" />
      <${OperationProgress} opId=${opId} label="Creating" />
      <div class="form-actions">
        <button type="submit" class="btn primary" disabled=${busy} aria-busy=${busy ? "true" : undefined}>
          <${Icon} name="plus" /> Create VM</button>
        <a class="btn" href="#/vms">Cancel</a>
      </div>
    </form>
  </section>`;
}
