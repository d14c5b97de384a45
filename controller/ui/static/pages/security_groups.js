// Security groups: every group the caller may see, and a form that creates one with its
// first rules.
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import { Button, ErrorBox, Field, Icon, Link, Loading, PageHeader, Table, useApi } from "../lib/components.js";
import { navigate } from "../lib/router.js";
import { useSession } from "../lib/session.js";
import { ProjectField, nameError, useAction } from "./resource_forms.js";
import { EMPTY_RULE, RuleFields, ruleBody, ruleErrors } from "./security_group.js";

function CreateGroup({ groupNames }) {
  const [form, setForm] = useState({ name: "", description: "", project: "" });
  const [rules, setRules] = useState([]);
  const [tried, setTried] = useState(false);
  const action = useAction();
  const errors = rules.map(ruleErrors);
  const invalid = nameError(form.name) || errors.some((e) => Object.keys(e).length);
  const submit = async (e) => {
    e.preventDefault();
    setTried(true);
    if (invalid || !form.name) return;
    const body = { name: form.name, description: form.description, rules: rules.map(ruleBody) };
    if (form.project) body.project = form.project;
    const group = await action.run(() => api.post("/security-groups", body));
    if (group) navigate(`/security-groups/${group.name}`);
  };
  return html`<form class="card form" onSubmit=${submit} aria-labelledby="new-group-title">
    <h2 id="new-group-title">New security group</h2>
    <div class="form-row">
      <${Field} id="group-name" label="Name" error=${nameError(form.name)}>
        <input id="group-name" required value=${form.name} onInput=${(e) => setForm({ ...form, name: e.target.value })} />
      <//>
      <${ProjectField} id="group-project" value=${form.project} onChange=${(project) => setForm({ ...form, project })} />
    </div>
    <${Field} id="group-description" label="Description">
      <input id="group-description" maxlength="255" value=${form.description}
        onInput=${(e) => setForm({ ...form, description: e.target.value })} />
    <//>
    ${rules.map((rule, i) => html`<fieldset key=${i}>
      <legend>Rule ${i + 1}</legend>
      <${RuleFields} id=${`new-rule-${i}`} rule=${rule} groups=${[...groupNames, form.name].filter(Boolean)}
        errors=${tried ? errors[i] : {}} onChange=${(r) => setRules(rules.map((old, j) => (j === i ? r : old)))} />
      <${Button} aria-label=${`Remove rule ${i + 1}`} onClick=${() => setRules(rules.filter((_, j) => j !== i))}>
        <${Icon} name="x" /> Remove<//>
    </fieldset>`)}
    <p><${Button} onClick=${() => setRules([...rules, EMPTY_RULE])}><${Icon} name="plus" /> Add a rule<//></p>
    <${ErrorBox} error=${action.error} title="The security group was not created" />
    <${Button} kind="primary" type="submit" busy=${action.busy}>Create security group<//>
  </form>`;
}

export default function SecurityGroups() {
  const { can } = useSession();
  const { data, error, loading } = useApi("/security-groups", { events: ["security_group"] });
  const [showForm, setShowForm] = useState(false);
  const columns = [
    { label: "Name", render: (g) => html`<${Link} to=${`/security-groups/${g.name}`}>${g.name}<//>` },
    { label: "Project", render: (g) => g.project || "shared" },
    { label: "Description", render: (g) => g.description || "—" },
    { label: "Rules", className: "num", render: (g) => g.rules.length },
    { label: "Ports", className: "num", key: "ports" },
  ];
  return html`<section>
    <${PageHeader} title="Security groups" subtitle=${data ? `${data.length} group${data.length === 1 ? "" : "s"}` : ""}>
      ${can.canWrite && html`<${Button} kind="primary" aria-expanded=${showForm ? "true" : "false"}
        onClick=${() => setShowForm(!showForm)}><${Icon} name="plus" /> Create security group<//>`}
    <//>
    ${showForm && html`<${CreateGroup} groupNames=${(data || []).map((g) => g.name)} />`}
    <${ErrorBox} error=${error} title="The security groups could not be listed" />
    ${loading ? html`<${Loading} />` : html`<${Table} columns=${columns} rows=${data} caption="Security groups"
      empty="No security group yet." />`}
  </section>`;
}
