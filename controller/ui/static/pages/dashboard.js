// The region at a glance: nodes, VMs, operations in flight.
import { html } from "../lib/html.js";
import { ErrorBox, Loading, PageHeader, useApi } from "../lib/components.js";

export default function Dashboard() {
  const { data: status, error } = useApi("/status", { events: ["node", "vm", "operation", "image"] });
  return html`<section>
    <${PageHeader} title="Dashboard" subtitle=${status ? `Vauban ${status.version}` : ""} />
    <${ErrorBox} error=${error} title="The region's status could not be read" />
    ${!status && !error ? html`<${Loading} />` : status && html`<div class="grid">
      <div class="card"><div class="stat">${status.nodes_up}</div><div class="stat-label">nodes up</div></div>
      <div class="card"><div class="stat">${status.nodes_down}</div><div class="stat-label">nodes down</div></div>
      <div class="card"><div class="stat">${status.instances_running} / ${status.instances}</div>
        <div class="stat-label">VMs running</div></div>
      <div class="card"><div class="stat">${status.operations_pending}</div>
        <div class="stat-label">operations in progress</div></div>
    </div>`}
  </section>`;
}
