// Projects: the ones the caller sees; identity admins (region admins) create and delete
// them. A project is deleted only when empty: the API's refusal names what it holds.
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import {
  Button, ConfirmButton, ErrorBox, Field, Icon, Link, Loading, PageHeader, Table, useApi,
} from "../lib/components.js";
import { time } from "../lib/format.js";
import { navigate } from "../lib/router.js";
import { useSession } from "../lib/session.js";
import { useAction } from "./identity_parts.js";

function CreateProject({ onCancel }) {
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const { busy, error, run } = useAction();
  const submit = async (e) => {
    e.preventDefault();
    const made = await run(() => api.post("/projects", { name: name.trim(), description }));
    if (made) navigate(`/projects/${made.name}`);
  };
  return html`<form class="card form" onSubmit=${submit} aria-labelledby="project-new-title">
    <h2 id="project-new-title">New project</h2>
    <${ErrorBox} error=${error} title="The project was not created" />
    <${Field} id="project-name" label="Name" hint="lower-case letters, digits and dashes">
      <input id="project-name" required value=${name} aria-describedby="project-name-hint"
        onInput=${(e) => setName(e.target.value)} />
    <//>
    <${Field} id="project-description" label="Description">
      <input id="project-description" value=${description} maxlength="255"
        onInput=${(e) => setDescription(e.target.value)} />
    <//>
    <div class="dialog-actions">
      <${Button} onClick=${onCancel}>Cancel<//>
      <button type="submit" class="btn primary" disabled=${busy}>Create project</button>
    </div>
  </form>`;
}

export default function Projects() {
  const { can } = useSession();
  const { data, error, loading, reload } = useApi("/projects", { events: ["project"] });
  const [creating, setCreating] = useState(false);
  const remove = async (p) => {
    await api.del(`/projects/${encodeURIComponent(p.name)}`);
    reload();
  };
  const columns = [
    { label: "Name", render: (p) => html`<${Link} to=${`/projects/${p.name}`}>${p.name}<//>` },
    { label: "Description", render: (p) => p.description || "—" },
    { label: "Created by", key: "created_by" },
    { label: "Created", render: (p) => time(p.created_at) },
  ];
  if (can.identity) {
    columns.push({
      label: "Actions", render: (p) => p.name !== "default" && html`<${ConfirmButton}
        label=${html`Delete<span class="visually-hidden"> project ${p.name}</span>`}
        question=${`Delete the project ${p.name}? Only an empty project can be deleted.`}
        confirmLabel="Delete" onConfirm=${() => remove(p)} />`,
    });
  }
  return html`<section>
    <${PageHeader} title="Projects" subtitle=${data ? `${data.length} you can see` : ""}>
      ${can.identity && !creating && html`<${Button} kind="primary" onClick=${() => setCreating(true)}>
        <${Icon} name="plus" /> Create project<//>`}
    <//>
    ${creating && html`<${CreateProject} onCancel=${() => setCreating(false)} />`}
    <${ErrorBox} error=${error} title="The projects could not be listed" />
    ${loading ? html`<${Loading} />` : html`<${Table} columns=${columns} rows=${data || []}
      caption="Projects" empty="You are in no project yet: an administrator gives you a role in one." />`}
  </section>`;
}
