// Users (identity admins): list, create (a made password shown once), delete, reset a
// password (and one-time code seed, shown once), and each user's roles: region roles and
// project roles, given and taken.
import { html, useEffect, useRef, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import {
  Button, ConfirmButton, ErrorBox, Field, Icon, Loading, PageHeader, Table, useApi,
} from "../lib/components.js";
import { time } from "../lib/format.js";
import { useSession } from "../lib/session.js";
import {
  Bindings, PROJECT_ROLES, REGION_ROLES, SecretOnce, isProjectRole, roleText, useAction,
} from "./identity_parts.js";

function CreateUser({ onCreated, onCancel }) {
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const { busy, error, run } = useAction();
  const submit = async (e) => {
    e.preventDefault();
    const body = { name: name.trim() };
    if (password) body.password = password;
    const made = await run(() => api.post("/users", body));
    if (made) onCreated(made);
  };
  return html`<form class="card form" onSubmit=${submit} aria-labelledby="user-new-title">
    <h2 id="user-new-title">New user</h2>
    <p class="hint">A new user holds no role until one is given.</p>
    <${ErrorBox} error=${error} title="The user was not created" />
    <${Field} id="user-name" label="Name" hint="lower-case letters, digits and dashes">
      <input id="user-name" required value=${name} aria-describedby="user-name-hint"
        onInput=${(e) => setName(e.target.value)} />
    <//>
    <${Field} id="user-password" label="Initial password"
      hint="at least 12 characters; leave empty and one is made and shown once">
      <input id="user-password" type="password" autocomplete="new-password" minlength="12"
        value=${password} aria-describedby="user-password-hint"
        onInput=${(e) => setPassword(e.target.value)} />
    <//>
    <div class="dialog-actions">
      <${Button} onClick=${onCancel}>Cancel<//>
      <button type="submit" class="btn primary" disabled=${busy}>Create user</button>
    </div>
  </form>`;
}

function GrantUserRole({ user, onGranted }) {
  const { data: projects } = useApi("/projects", { events: ["project"] });
  const [role, setRole] = useState("project-member");
  const [project, setProject] = useState("");
  const { busy, error, run } = useAction();
  const inProject = isProjectRole(role);
  const submit = async (e) => {
    e.preventDefault();
    const body = { user: user.name, role, project: inProject ? project : null };
    if (await run(() => api.post("/role-bindings", body))) onGranted();
  };
  return html`<form class="toolbar grant-form" onSubmit=${submit} aria-label=${`Give ${user.name} a role`}>
    <${Field} id="user-grant-role" label="Role">
      <select id="user-grant-role" value=${role} onChange=${(e) => setRole(e.target.value)}>
        <optgroup label="In one project">
          ${PROJECT_ROLES.map((r) => html`<option value=${r}>${r}</option>`)}</optgroup>
        <optgroup label="Over the whole region">
          ${REGION_ROLES.map((r) => html`<option value=${r}>${r}</option>`)}</optgroup>
      </select>
    <//>
    ${inProject && html`<${Field} id="user-grant-project" label="Project">
      <select id="user-grant-project" required value=${project} onChange=${(e) => setProject(e.target.value)}>
        <option value="">choose a project</option>
        ${(projects || []).map((p) => html`<option value=${p.name}>${p.name}</option>`)}
      </select>
    <//>`}
    <button type="submit" class="btn primary" disabled=${busy}>Give role</button>
    <${ErrorBox} error=${error} title="The role was not given" />
  </form>`;
}

function ResetUser({ user }) {
  const [totp, setTotp] = useState(false);
  const [done, setDone] = useState(null);
  const reset = async () => setDone(await api.post(`/users/${encodeURIComponent(user.name)}/reset`, { totp }));
  // the confirmation stays drawn: its dialog closes itself once the reset is done
  return html`<div class="toolbar">
    <label class="checkbox"><input type="checkbox" checked=${totp}
      onChange=${(e) => setTotp(e.target.checked)} /> Also a new one-time code seed</label>
    <${ConfirmButton} label="Reset password" kind="secondary"
      question=${`Reset the password of ${user.name}${totp ? " and its one-time code seed" : ""}? ` +
        "Every token it holds is revoked; the new credentials are shown once."}
      onConfirm=${reset} />
  </div>
  ${done && html`<div>
    <p role="status">The password of ${done.username} was reset; ${done.tokens_revoked} of its
      tokens were revoked.</p>
    <${SecretOnce} id="reset-password" label=${`New password of ${done.username}`} value=${done.password} />
    ${done.provisioning_uri && html`<${SecretOnce} id="reset-totp"
      label=${`New one-time code seed of ${done.username}`} value=${done.provisioning_uri} />`}
    <${Button} onClick=${() => setDone(null)}>Done<//>
  </div>`}`;
}

function UserDetail({ name, onClose }) {
  const { data: user, error, reload } = useApi(`/users/${encodeURIComponent(name)}`,
    { events: ["role_binding", "user"] });
  // a refusal stays in the confirmation dialog, in words
  const take = async (b) => { await api.del(`/role-bindings/${b.id}`); reload(); };
  const heading = useRef(null);
  useEffect(() => heading.current.focus(), []); // a user picked below: the keyboard follows
  return html`<section class="card user-detail" aria-labelledby="user-detail-title">
    <div class="page-header">
      <h2 id="user-detail-title" tabindex="-1" ref=${heading}>User ${name}</h2>
      <${Button} onClick=${onClose} aria-label=${`Close the user ${name}`}><${Icon} name="x" /> Close<//>
    </div>
    <${ErrorBox} error=${error} title="This user could not be shown" />
    ${user ? html`
      <h3>Roles</h3>
      <${Bindings} bindings=${user.roles} canTake=${() => true} onTake=${take}
        empty=${`${user.name} holds no role yet.`} />
      <${GrantUserRole} user=${user} onGranted=${reload} />
      <h3>Password</h3>
      <${ResetUser} user=${user} />` : !error && html`<${Loading} />`}
  </section>`;
}

export default function Users() {
  const { account } = useSession();
  const { data, error, loading, reload } = useApi("/users", { events: ["user", "role_binding"] });
  const [creating, setCreating] = useState(false);
  const [created, setCreated] = useState(null);
  const [selected, setSelected] = useState(null);
  const remove = async (u) => {
    await api.del(`/users/${encodeURIComponent(u.name)}`);
    if (selected === u.name) setSelected(null);
    reload();
  };
  const columns = [
    { label: "Name", key: "name" },
    { label: "Roles", render: (u) => (u.roles.length ? html`<ul class="chips">
      ${u.roles.map((b) => html`<li>${roleText(b)}</li>`)}</ul>` : "none") },
    { label: "Created", render: (u) => time(u.created_at) },
    {
      label: "Actions", render: (u) => html`<div class="row-actions">
        <${Button} onClick=${() => setSelected(u.name)}>Manage<span class="visually-hidden"> ${u.name}</span><//>
        ${u.name !== account.name && html`<${ConfirmButton}
          label=${html`Delete<span class="visually-hidden"> user ${u.name}</span>`}
          question=${`Delete the user ${u.name}, with its roles and its tokens?`}
          confirmLabel="Delete" onConfirm=${() => remove(u)} />`}</div>`,
    },
  ];
  return html`<section>
    <${PageHeader} title="Users" subtitle=${data ? `${data.length} users` : ""}>
      ${!creating && html`<${Button} kind="primary" onClick=${() => { setCreated(null); setCreating(true); }}>
        <${Icon} name="plus" /> Create user<//>`}
    <//>
    ${creating && html`<${CreateUser} onCancel=${() => setCreating(false)}
      onCreated=${(u) => { setCreating(false); setCreated(u); setSelected(u.name); reload(); }} />`}
    ${created && html`<div class="card">
      <p role="status">User ${created.name} created.</p>
      ${created.password ? html`<${SecretOnce} id="created-password"
        label=${`Initial password of ${created.name}`} value=${created.password}
        onDone=${() => setCreated(null)} />` : html`<${Button} onClick=${() => setCreated(null)}>Done<//>`}
    </div>`}
    ${selected && html`<${UserDetail} key=${selected} name=${selected} onClose=${() => setSelected(null)} />`}
    <${ErrorBox} error=${error} title="The users could not be listed" />
    ${loading ? html`<${Loading} />` : html`<${Table} columns=${columns} rows=${data || []}
      caption="Users" empty="No user yet." />`}
  </section>`;
}
