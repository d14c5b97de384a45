// A network: its facts, its subnets (add one), the ports on it (reserve an address, set a
// port's security groups, delete a port no VM has), and its deletion.
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import {
  Button, ConfirmButton, ErrorBox, Field, Icon, Link, Loading, PageHeader, Table, useApi,
} from "../lib/components.js";
import { time } from "../lib/format.js";
import { navigate } from "../lib/router.js";
import { useSession } from "../lib/session.js";
import { useAction } from "./resource_forms.js";
import { EMPTY_SUBNET, SubnetFields, carrier, subnetBody } from "./networks.js";

function AddSubnet({ net, onDone }) {
  const [subnet, setSubnet] = useState(EMPTY_SUBNET);
  const action = useAction();
  const submit = async (e) => {
    e.preventDefault();
    const answer = await action.run(() => api.post(`/networks/${net.id}/subnets`, subnetBody(subnet)));
    if (answer) { setSubnet(EMPTY_SUBNET); onDone(); }
  };
  return html`<form class="card form" onSubmit=${submit} aria-labelledby="add-subnet-title">
    <h3 id="add-subnet-title">Add a subnet</h3>
    <${SubnetFields} id="subnet" subnet=${subnet} onChange=${setSubnet} />
    <${ErrorBox} error=${action.error} title="The subnet was not added" />
    <${Button} kind="primary" type="submit" busy=${action.busy} disabled=${!subnet.cidr.trim()}>
      <${Icon} name="plus" /> Add subnet<//>
  </form>`;
}

/** Checkboxes of the groups of the port's project: `chosen` is a list of names. */
function GroupChoice({ id, groups, chosen, onChange }) {
  return html`<fieldset class="chips" id=${id}>
    <legend>Security groups</legend>
    ${groups === null && html`<span class="hint" role="status">Loading the groups…</span>`}
    ${groups && groups.length === 0 && html`<span class="hint">No security group in this project.</span>`}
    ${(groups || []).map((g) => html`<span class="check-field">
      <input type="checkbox" id=${`${id}-${g.name}`} checked=${chosen.includes(g.name)}
        onChange=${(e) => onChange(e.target.checked ? [...chosen, g.name] : chosen.filter((n) => n !== g.name))} />
      <label for=${`${id}-${g.name}`}>${g.name}</label></span>`)}
  </fieldset>`;
}

function CreatePort({ net, groups, onDone }) {
  const [fixed, setFixed] = useState({});
  const [picked, setChosen] = useState(null); // null: the API's default, the group 'default'
  const chosen = picked ?? (groups || []).filter((g) => g.name === "default").map((g) => g.name);
  const action = useAction();
  const submit = async (e) => {
    e.preventDefault();
    const body = { network: net.id, fixed_ips: Object.values(fixed).map((a) => a.trim()).filter(Boolean) };
    if (picked !== null) body.security_groups = picked;
    if (net.project) body.project = net.project;
    const port = await action.run(() => api.post("/ports", body));
    if (port) { setFixed({}); setChosen(null); onDone(); }
  };
  return html`<form class="card form" onSubmit=${submit} aria-labelledby="new-port-title">
    <h3 id="new-port-title">Reserve an address (new port)</h3>
    <div class="form-row">
      ${net.subnets.map((s) => html`<${Field} id=${`port-ip-${s.id}`} label=${`Address in ${s.cidr}`}
          hint="empty: the lowest free one">
        <input id=${`port-ip-${s.id}`} aria-describedby=${`port-ip-${s.id}-hint`} value=${fixed[s.id] || ""}
          onInput=${(e) => setFixed({ ...fixed, [s.id]: e.target.value })} />
      <//>`)}
    </div>
    <${GroupChoice} id="port-groups" groups=${groups} chosen=${chosen} onChange=${setChosen} />
    <${ErrorBox} error=${action.error} title="The port was not created" />
    <${Button} kind="primary" type="submit" busy=${action.busy}><${Icon} name="plus" /> Create port<//>
  </form>`;
}

function EditPortGroups({ port, groups, onDone, onCancel }) {
  const [chosen, setChosen] = useState(port.security_groups || []);
  const action = useAction();
  const save = async (e) => {
    e.preventDefault();
    const answer = await action.run(() => api.put(`/ports/${port.id}/security-groups`, { groups: chosen }));
    if (answer) onDone();
  };
  return html`<form class="card form" onSubmit=${save} aria-labelledby="port-groups-title">
    <h3 id="port-groups-title">Security groups of port ${port.mac}</h3>
    <p class="hint">None leaves the port unfiltered.</p>
    <${GroupChoice} id="edit-groups" groups=${groups} chosen=${chosen} onChange=${setChosen} />
    <${ErrorBox} error=${action.error} title="The port's groups were not changed" />
    <div class="row-actions">
      <${Button} kind="primary" type="submit" busy=${action.busy}>Save groups<//>
      <${Button} onClick=${onCancel}>Cancel<//>
    </div>
  </form>`;
}

function Ports({ net, can }) {
  const { data: ports, error, reload } = useApi("/ports", { events: ["port"] });
  const { data: allGroups } = useApi("/security-groups", { events: ["security_group"] });
  const [editing, setEditing] = useState(null);
  const mine = (ports || []).filter((p) => p.network_id === net.id);
  const groupsOf = (project) => (allGroups ? allGroups.filter((g) => g.project === project) : null);
  const columns = [
    { label: "MAC", render: (p) => html`<code>${p.mac}</code>` },
    { label: "Addresses", render: (p) => p.addresses.join(", ") || "—" },
    { label: "VM", render: (p) => (p.instance ? html`<${Link} to=${`/vms/${p.instance}`}>${p.instance}<//>` : "—") },
    { label: "Security groups", render: (p) => (p.security_groups || []).join(", ") || "none (unfiltered)" },
    { label: "Project", render: (p) => p.project || "—" },
    { label: "Created", render: (p) => time(p.created_at) },
    {
      label: "Actions", render: (p) => can.canWrite && html`<div class="row-actions">
        <${Button} aria-label=${`Security groups of port ${p.mac}`} onClick=${() => setEditing(p)}>Groups<//>
        ${!p.instance && html`<${ConfirmButton} label="Delete"
          question=${`Delete the port ${p.mac} (${p.addresses.join(", ")})? Its addresses become free.`}
          confirmLabel=${`Delete port ${p.mac}`}
          onConfirm=${async () => { await api.del(`/ports/${p.id}`); reload(); }} />`}
      </div>`,
    },
  ];
  return html`<h2>Ports</h2>
    <${ErrorBox} error=${error} title="The ports could not be listed" />
    ${ports ? html`<${Table} columns=${columns} rows=${mine} caption="Ports" empty="No port on this network." />`
    : html`<${Loading} />`}
    ${editing && html`<${EditPortGroups} key=${editing.id} port=${editing} groups=${groupsOf(editing.project)}
      onDone=${() => { setEditing(null); reload(); }} onCancel=${() => setEditing(null)} />`}
    ${can.canWrite && net.subnets.length > 0 && html`<${CreatePort} net=${net}
      groups=${net.project ? groupsOf(net.project) : allGroups} onDone=${reload} />`}`;
}

// params.ref is absent for one render when leaving for another page (the shell draws the
// old page once with the new route's params): nothing is fetched then.
export default function Network({ params }) {
  const { can } = useSession();
  const { data: net, error, loading, reload, retire } = useApi(params.ref ? `/networks/${encodeURIComponent(params.ref)}` : null,
    { events: ["network", "subnet", "port"] });
  if (loading) return html`<${Loading} />`;
  if (!net) return html`<${ErrorBox} error=${error} title="This network could not be shown" />`;
  const mayChange = net.kind === "provider" ? can.regionWrite : can.canWrite;
  const subnetColumns = [
    { label: "CIDR", render: (s) => html`<code>${s.cidr}</code>` },
    { label: "Gateway", render: (s) => s.gateway || "—" },
    { label: "Name servers", render: (s) => s.dns.join(", ") || "—" },
    { label: "Added", render: (s) => time(s.created_at) },
  ];
  return html`<section>
    <${PageHeader} title=${`Network ${net.name}`} subtitle=${`${net.kind} · ${carrier(net)} · ${net.project || "shared"}`}>
      ${mayChange && html`<${ConfirmButton} label="Delete network"
        question=${`Delete the network ${net.name} and its subnets? It is refused while it has ports.`}
        confirmLabel=${`Delete ${net.name}`}
        onConfirm=${() => retire(async () => { await api.del(`/networks/${net.id}`); navigate("/networks"); })} />`}
    <//>
    <p><${Link} to="/networks">← All networks<//></p>
    <${ErrorBox} error=${error} title="This network could not be refreshed" />
    <dl class="facts card">
      <dt>Kind</dt><dd>${net.kind === "tenant" ? "tenant (VXLAN overlay)" : "provider (VLAN)"}</dd>
      <dt>Carried by</dt><dd>${carrier(net)}</dd>
      <dt>MTU</dt><dd>${net.mtu}</dd>
      <dt>Project</dt><dd>${net.project || "shared with every project"}</dd>
      <dt>Ports</dt><dd>${net.ports}</dd>
      <dt>Created</dt><dd>${time(net.created_at)}</dd>
    </dl>
    <h2>Subnets</h2>
    <${Table} columns=${subnetColumns} rows=${net.subnets} rowKey=${(s) => s.id} caption="Subnets"
      empty="No subnet: ports on it get no address." />
    ${mayChange && html`<${AddSubnet} net=${net} onDone=${reload} />`}
    <${Ports} net=${net} can=${can} />
  </section>`;
}
