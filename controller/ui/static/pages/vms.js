// VMs: every VM the caller may see, filtered by state, project and node, searchable by
// name or address; kept current by the event stream.
import { html, useState } from "../lib/html.js";
import { ErrorBox, Field, Icon, Link, Loading, PageHeader, StateBadge, Table, useApi } from "../lib/components.js";
import { mib } from "../lib/format.js";
import { useSession } from "../lib/session.js";

const addresses = (vm) => (vm.ports || []).flatMap((p) => p.addresses || []);

export default function Vms() {
  const { can } = useSession();
  const { data, error, loading } = useApi("/instances", { events: ["vm", "operation"] });
  const [search, setSearch] = useState("");
  const [state, setState] = useState("");
  const [project, setProject] = useState("");
  const vms = data || [];
  const states = [...new Set(vms.map((v) => v.state))].sort();
  const projects = [...new Set(vms.map((v) => v.project).filter(Boolean))].sort();
  const needle = search.trim().toLowerCase();
  const shown = vms.filter((v) => (!state || v.state === state) && (!project || v.project === project) &&
    (!needle || v.name.includes(needle) || (v.node_name || "").includes(needle) ||
      addresses(v).some((a) => a.includes(needle)) || v.id.startsWith(needle)));
  const columns = [
    { label: "Name", render: (v) => html`<${Link} to=${`/vms/${v.name}`}>${v.name}<//>` },
    { label: "State", render: (v) => html`<${StateBadge} state=${v.state} />` },
    { label: "Project", key: "project" },
    { label: "Node", render: (v) => v.node_name || "—" },
    { label: "Image", key: "image_name" },
    { label: "vCPUs", key: "vcpus", className: "num" },
    { label: "Memory", render: (v) => mib(v.memory_mib), className: "num" },
    { label: "Addresses", render: (v) => addresses(v).join(", ") || "—" },
  ];
  return html`<section>
    <${PageHeader} title="Virtual machines" subtitle=${data ? `${shown.length} of ${vms.length}` : ""}>
      ${can.canWrite && html`<a class="btn primary" href="#/vms/new"><${Icon} name="plus" /> Create VM</a>`}
    <//>
    <div class="toolbar" role="search">
      <${Field} id="vm-search" label="Search">
        <input id="vm-search" type="search" placeholder="name, node or address" value=${search}
          onInput=${(e) => setSearch(e.target.value)} />
      <//>
      <${Field} id="vm-state" label="State">
        <select id="vm-state" value=${state} onChange=${(e) => setState(e.target.value)}>
          <option value="">any</option>
          ${states.map((s) => html`<option value=${s}>${s}</option>`)}
        </select>
      <//>
      ${projects.length > 1 && html`<${Field} id="vm-project" label="Project">
        <select id="vm-project" value=${project} onChange=${(e) => setProject(e.target.value)}>
          <option value="">any</option>
          ${projects.map((p) => html`<option value=${p}>${p}</option>`)}
        </select>
      <//>`}
    </div>
    <${ErrorBox} error=${error} title="The VMs could not be listed" />
    ${loading ? html`<${Loading} />` : html`<${Table} columns=${columns} rows=${shown} caption="Virtual machines"
      empty=${vms.length ? "No VM matches these filters." : "No VM yet."} />`}
  </section>`;
}
