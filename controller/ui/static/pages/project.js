// One project: its quotas against what it holds now, the quotas' editor (identity
// admins), and its members: the project's role bindings, given and taken by its project
// admins and by identity admins.
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import { Button, ErrorBox, Field, Loading, PageHeader, UsageBar, useApi } from "../lib/components.js";
import { gib, mib } from "../lib/format.js";
import { useSession } from "../lib/session.js";
import { Bindings, PROJECT_ROLES, useAction } from "./identity_parts.js";

// every quota of the API (schemas.ProjectQuotas) but the GPUs, which are per model
const QUOTAS = [
  { key: "instances", label: "VMs" },
  { key: "vcpus", label: "vCPUs" },
  { key: "memory_mib", label: "Memory", format: mib, unit: "MiB" },
  { key: "vgpus", label: "vGPUs" },
  { key: "storage_gib", label: "Storage", format: gib, unit: "GiB" },
  { key: "volumes", label: "Volumes" },
  { key: "networks", label: "Networks" },
  { key: "public_addresses", label: "Shared addresses" },
];

function Usage({ label, used, limit, format = (v) => String(v) }) {
  if (limit === null || limit === undefined) {
    return html`<div class="usage"><div class="usage-label"><span>${label}</span>
      <span>${format(used)} used · no limit</span></div></div>`;
  }
  return html`<${UsageBar} label=${label} used=${used} total=${limit} format=${format} />`;
}

function QuotaUsage({ project }) {
  const quotas = project.quotas || {};
  const usage = project.usage || {};
  const gpus = Object.entries(quotas.gpus || {});
  return html`<div class="card quota-grid">
    ${QUOTAS.map((q) => html`<${Usage} label=${q.label} used=${usage[q.key] || 0}
      limit=${quotas[q.key]} format=${q.format} />`)}
    ${gpus.map(([model, limit]) => html`<${Usage} label=${`GPUs ${model}`}
      used=${(usage.gpus || {})[model] || 0} limit=${limit} />`)}
    ${gpus.length === 0 && html`<div class="usage"><div class="usage-label"><span>GPUs</span>
      <span>no limit</span></div></div>`}
  </div>`;
}

const gpuText = (gpus) => Object.entries(gpus || {}).map(([m, n]) => `${m}=${n}`).join(", ");

/** "H100=4, A100 80GB=2" → {H100: 4, "A100 80GB": 2}; throws in words when malformed. */
function parseGpus(text) {
  const out = {};
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const m = part.match(/^(.+?)\s*=\s*(\d+)$/);
    if (!m) throw new Error(`GPUs: '${part}' is not MODEL=COUNT (for example H100=4)`);
    out[m[1]] = Number(m[2]);
  }
  return Object.keys(out).length ? out : null;
}

function QuotaEditor({ project, onSaved, onCancel }) {
  const initial = Object.fromEntries(QUOTAS.map((q) => [q.key, project.quotas[q.key] ?? ""]));
  const [values, setValues] = useState({ ...initial, gpus: gpuText(project.quotas.gpus) });
  const { busy, error, run } = useAction();
  const set = (key) => (e) => setValues({ ...values, [key]: e.target.value });
  const submit = async (e) => {
    e.preventDefault();
    const saved = await run(() => {
      const body = { gpus: parseGpus(values.gpus) };
      for (const q of QUOTAS) body[q.key] = values[q.key] === "" ? null : Number(values[q.key]);
      return api.put(`/projects/${encodeURIComponent(project.name)}/quotas`, body);
    });
    if (saved) onSaved();
  };
  return html`<form class="card form" onSubmit=${submit} aria-labelledby="quota-edit-title">
    <h3 id="quota-edit-title">Edit quotas</h3>
    <p class="hint">An empty quota is no limit. Lowering one below what the project holds keeps
      what is there and refuses what would add more.</p>
    <${ErrorBox} error=${error} title="The quotas were not saved" />
    <div class="form-row">
      ${QUOTAS.map((q) => html`<${Field} id=${"quota-" + q.key}
        label=${q.unit ? `${q.label} (${q.unit})` : q.label}>
        <input id=${"quota-" + q.key} type="number" min="0" step="1" value=${values[q.key]}
          placeholder="no limit" onInput=${set(q.key)} />
      <//>`)}
    </div>
    <${Field} id="quota-gpus" label="GPUs per model" hint="MODEL=COUNT, comma separated: H100=4, A100=2">
      <input id="quota-gpus" value=${values.gpus} placeholder="no limit" onInput=${set("gpus")}
        aria-describedby="quota-gpus-hint" />
    <//>
    <div class="dialog-actions">
      <${Button} onClick=${onCancel}>Cancel<//>
      <button type="submit" class="btn primary" disabled=${busy}>Save quotas</button>
    </div>
  </form>`;
}

function GrantRole({ project, onGranted }) {
  const [user, setUser] = useState("");
  const [role, setRole] = useState("project-member");
  const { busy, error, run } = useAction();
  const submit = async (e) => {
    e.preventDefault();
    const made = await run(() => api.post("/role-bindings", { user: user.trim(), role, project: project.name }));
    if (made) { setUser(""); onGranted(); }
  };
  return html`<form class="toolbar grant-form" onSubmit=${submit} aria-label="Give a role in this project">
    <${Field} id="grant-user" label="User">
      <input id="grant-user" required value=${user} onInput=${(e) => setUser(e.target.value)} />
    <//>
    <${Field} id="grant-role" label="Role">
      <select id="grant-role" value=${role} onChange=${(e) => setRole(e.target.value)}>
        ${PROJECT_ROLES.map((r) => html`<option value=${r}>${r}</option>`)}
      </select>
    <//>
    <button type="submit" class="btn primary" disabled=${busy}>Give role</button>
    <${ErrorBox} error=${error} title="The role was not given" />
  </form>`;
}

function Members({ project, manages }) {
  const { data, error, reload } = useApi("/role-bindings",
    { query: { project: project.name }, events: ["role_binding", "user"] });
  // a refusal stays in the confirmation dialog, in words
  const take = async (b) => { await api.del(`/role-bindings/${b.id}`); reload(); };
  return html`<section aria-labelledby="members-title">
    <h2 id="members-title">Members</h2>
    ${!manages && html`<p class="hint">You see your own roles in this project; its project
      admins see every member.</p>`}
    <${ErrorBox} error=${error} title="The members could not be listed" />
    ${manages && html`<${GrantRole} project=${project} onGranted=${reload} />`}
    ${data ? html`<${Bindings} bindings=${data} canTake=${() => manages} onTake=${take}
      empty="Nobody holds a role in this project yet." />` : !error && html`<${Loading} />`}
  </section>`;
}

export default function Project({ params }) {
  const { account, can } = useSession();
  const path = `/projects/${encodeURIComponent(params.ref)}`;
  const { data: project, error, reload } = useApi(path,
    { events: ["project", "vm", "volume", "network", "port"] });
  const [editing, setEditing] = useState(false);
  if (error) {
    return html`<section><${PageHeader} title=${`Project ${params.ref}`} />
      <${ErrorBox} error=${error} title="This project could not be shown" /></section>`;
  }
  if (!project) return html`<${Loading} />`;
  const manages = can.identity || (account.roles || []).some(
    (r) => r.role === "project-admin" && r.project === project.name);
  return html`<section>
    <${PageHeader} title=${`Project ${project.name}`} subtitle=${project.description}>
      ${can.identity && !editing && html`<${Button} onClick=${() => setEditing(true)}>Edit quotas<//>`}
    <//>
    <h2>Quotas and usage</h2>
    ${editing ? html`<${QuotaEditor} project=${project} onCancel=${() => setEditing(false)}
      onSaved=${() => { setEditing(false); reload(); }} />` : html`<${QuotaUsage} project=${project} />`}
    <${Members} project=${project} manages=${manages} />
  </section>`;
}
