// Networks: every network the caller may see (tenant VXLAN overlays and provider VLANs), and
// a form that creates one, with a first subnet if wanted.
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import { Button, ErrorBox, Field, Icon, Link, Loading, PageHeader, Table, useApi } from "../lib/components.js";
import { navigate } from "../lib/router.js";
import { useSession } from "../lib/session.js";
import { ProjectField, intOrNull, nameError, useAction } from "./resource_forms.js";

/** "VXLAN 1001" or "VLAN 100 on bond0". */
export const carrier = (n) => (n.kind === "tenant" ? `VXLAN ${n.vni ?? "—"}` : `VLAN ${n.vlan} on ${n.physical}`);

/** The labelled fields of a subnet; ids start with `id`. */
export function SubnetFields({ id, subnet, onChange }) {
  const set = (key) => (e) => onChange({ ...subnet, [key]: e.target.value });
  return html`<div class="form-row">
    <${Field} id=${`${id}-cidr`} label="CIDR" hint="IPv4 or IPv6, e.g. 10.0.0.0/24">
      <input id=${`${id}-cidr`} aria-describedby=${`${id}-cidr-hint`} value=${subnet.cidr} onInput=${set("cidr")} maxlength="64" />
    <//>
    <${Field} id=${`${id}-gateway`} label="Gateway" hint="optional; never given to a port">
      <input id=${`${id}-gateway`} aria-describedby=${`${id}-gateway-hint`} value=${subnet.gateway} onInput=${set("gateway")} maxlength="64" />
    <//>
    <${Field} id=${`${id}-dns`} label="Name servers" hint="optional, separated by commas or spaces">
      <input id=${`${id}-dns`} aria-describedby=${`${id}-dns-hint`} value=${subnet.dns} onInput=${set("dns")} />
    <//>
  </div>`;
}

export const EMPTY_SUBNET = { cidr: "", gateway: "", dns: "" };

/** A subnet being written, as the API takes it. */
export const subnetBody = (s) => ({
  cidr: s.cidr.trim(), gateway: s.gateway.trim() || null, dns: s.dns.split(/[\s,]+/).filter(Boolean),
});

function CreateNetwork({ can }) {
  const [form, setForm] = useState({ name: "", kind: "tenant", project: "", vlan: "", physical: "", mtu: "" });
  const [subnet, setSubnet] = useState(EMPTY_SUBNET);
  const action = useAction();
  const set = (key) => (e) => setForm({ ...form, [key]: e.target.value });
  const submit = async (e) => {
    e.preventDefault();
    if (nameError(form.name)) return;
    const body = { name: form.name, kind: form.kind, mtu: intOrNull(form.mtu) };
    if (form.kind === "tenant" && form.project) body.project = form.project;
    if (form.kind === "provider") Object.assign(body, { vlan: intOrNull(form.vlan), physical: form.physical.trim() });
    if (subnet.cidr.trim()) body.subnets = [subnetBody(subnet)];
    const net = await action.run(() => api.post("/networks", body));
    if (net) navigate(`/networks/${net.name}`);
  };
  return html`<form class="card form" onSubmit=${submit} aria-labelledby="new-network-title">
    <h2 id="new-network-title">New network</h2>
    <div class="form-row">
      <${Field} id="network-name" label="Name" error=${nameError(form.name)}>
        <input id="network-name" required value=${form.name} onInput=${set("name")} />
      <//>
      ${can.regionWrite && html`<${Field} id="network-kind" label="Kind">
        <select id="network-kind" value=${form.kind} onChange=${set("kind")}>
          <option value="tenant">tenant (VXLAN overlay)</option>
          <option value="provider">provider (VLAN of a physical interface)</option>
        </select>
      <//>`}
      ${form.kind === "tenant" && html`<${ProjectField} id="network-project" value=${form.project}
        onChange=${(project) => setForm({ ...form, project })} />`}
      ${form.kind === "provider" && html`<${Field} id="network-vlan" label="VLAN id" hint="1-4094">
        <input id="network-vlan" aria-describedby="network-vlan-hint" type="number" min="1" max="4094" required value=${form.vlan} onInput=${set("vlan")} />
      <//>
      <${Field} id="network-physical" label="Physical interface" hint="the interface or bond of every node, e.g. bond0">
        <input id="network-physical" aria-describedby="network-physical-hint" required value=${form.physical}
          onInput=${set("physical")} />
      <//>`}
      <${Field} id="network-mtu" label="MTU" hint=${form.kind === "tenant" ? "default 1450" : "default 1500"}>
        <input id="network-mtu" aria-describedby="network-mtu-hint" type="number" min="576" max="9000" value=${form.mtu} onInput=${set("mtu")} />
      <//>
    </div>
    <fieldset>
      <legend>First subnet (optional)</legend>
      <${SubnetFields} id="network-subnet" subnet=${subnet} onChange=${setSubnet} />
    </fieldset>
    <${ErrorBox} error=${action.error} title="The network was not created" />
    <${Button} kind="primary" type="submit" busy=${action.busy}>Create network<//>
  </form>`;
}

export default function Networks() {
  const { can } = useSession();
  const { data, error, loading } = useApi("/networks", { events: ["network", "subnet", "port"] });
  const [showForm, setShowForm] = useState(false);
  const columns = [
    { label: "Name", render: (n) => html`<${Link} to=${`/networks/${n.name}`}>${n.name}<//>` },
    { label: "Kind", render: (n) => html`<span class=${"badge " + (n.kind === "tenant" ? "ok" : "idle")}>${n.kind}</span>` },
    { label: "Carried by", render: carrier },
    { label: "Project", render: (n) => n.project || "shared" },
    { label: "Subnets", render: (n) => n.subnets.map((s) => s.cidr).join(", ") || "—" },
    { label: "MTU", className: "num", key: "mtu" },
    { label: "Ports", className: "num", key: "ports" },
  ];
  return html`<section>
    <${PageHeader} title="Networks" subtitle=${data ? `${data.length} network${data.length === 1 ? "" : "s"}` : ""}>
      ${(can.canWrite || can.regionWrite) && html`<${Button} kind="primary" aria-expanded=${showForm ? "true" : "false"}
        onClick=${() => setShowForm(!showForm)}><${Icon} name="plus" /> Create network<//>`}
    <//>
    ${showForm && html`<${CreateNetwork} can=${can} />`}
    <${ErrorBox} error=${error} title="The networks could not be listed" />
    ${loading ? html`<${Loading} />` : html`<${Table} columns=${columns} rows=${data} caption="Networks"
      empty="No network yet." />`}
  </section>`;
}
