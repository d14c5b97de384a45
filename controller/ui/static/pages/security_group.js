// A security group: its allow rules (add with a form checked like the API checks it, delete),
// and the group's deletion (refused in words while ports are in it or rules name it).
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import {
  Button, ConfirmButton, ErrorBox, Field, Icon, Link, Loading, PageHeader, Table, useApi,
} from "../lib/components.js";
import { time } from "../lib/format.js";
import { navigate } from "../lib/router.js";
import { useSession } from "../lib/session.js";
import { useAction } from "./resource_forms.js";

const PORTED = ["tcp", "udp"];
export const EMPTY_RULE = {
  direction: "ingress", ethertype: "ipv4", protocol: "tcp", portMin: "", portMax: "",
  remote: "anywhere", remoteCidr: "", remoteGroup: "",
};

const IPV4_CIDR = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/;
const IPV6_CIDR = /^[0-9a-fA-F:.]*:[0-9a-fA-F:.]*\/(\d{1,3})$/;

function cidrError(text, ethertype) {
  if (ethertype === "ipv4") {
    const m = IPV4_CIDR.exec(text);
    if (!m || m.slice(1, 5).some((o) => Number(o) > 255) || Number(m[5]) > 32) {
      return "an IPv4 network such as 10.0.0.0/24";
    }
  } else {
    const m = IPV6_CIDR.exec(text);
    if (!m || Number(m[1]) > 128) return "an IPv6 network such as 2001:db8::/64";
  }
  return null;
}

/** Errors per field of a rule being written (the API's checks), {} when it may be sent. */
export function ruleErrors(rule) {
  const errors = {};
  const ported = PORTED.includes(rule.protocol);
  const port = (text) => Number.isInteger(Number(text)) && Number(text) >= 1 && Number(text) <= 65535;
  if (ported) {
    if (rule.portMin !== "" && !port(rule.portMin)) errors.portMin = "a port from 1 to 65535";
    if (rule.portMax !== "" && !port(rule.portMax)) errors.portMax = "a port from 1 to 65535";
    if (rule.portMax !== "" && rule.portMin === "") errors.portMin = "the first port is needed with a last port";
    if (!errors.portMin && !errors.portMax && rule.portMax !== "" && Number(rule.portMin) > Number(rule.portMax)) {
      errors.portMax = "not below the first port";
    }
  }
  if (rule.remote === "cidr") errors.remoteCidr = cidrError(rule.remoteCidr.trim(), rule.ethertype) || undefined;
  if (rule.remote === "group" && !rule.remoteGroup) errors.remoteGroup = "choose a group";
  return Object.fromEntries(Object.entries(errors).filter(([, v]) => v));
}

/** A rule being written, as the API takes it. */
export function ruleBody(rule) {
  const ported = PORTED.includes(rule.protocol);
  return {
    direction: rule.direction, ethertype: rule.ethertype, protocol: rule.protocol,
    port_min: ported && rule.portMin !== "" ? Number(rule.portMin) : null,
    port_max: ported && rule.portMax !== "" ? Number(rule.portMax) : null,
    remote_cidr: rule.remote === "cidr" ? rule.remoteCidr.trim() : null,
    remote_group: rule.remote === "group" ? rule.remoteGroup : null,
  };
}

/** The labelled fields of one rule; ids start with `id`. */
export function RuleFields({ id, rule, onChange, groups, errors = {} }) {
  const set = (key) => (e) => onChange({ ...rule, [key]: e.target.value });
  const ported = PORTED.includes(rule.protocol);
  return html`<div class="form-row rule-fields">
    <${Field} id=${`${id}-direction`} label="Direction">
      <select id=${`${id}-direction`} value=${rule.direction} onChange=${set("direction")}>
        <option value="ingress">ingress (to the port)</option>
        <option value="egress">egress (from the port)</option>
      </select>
    <//>
    <${Field} id=${`${id}-ethertype`} label="IP version">
      <select id=${`${id}-ethertype`} value=${rule.ethertype} onChange=${set("ethertype")}>
        <option value="ipv4">IPv4</option><option value="ipv6">IPv6</option>
      </select>
    <//>
    <${Field} id=${`${id}-protocol`} label="Protocol">
      <select id=${`${id}-protocol`} value=${rule.protocol} onChange=${set("protocol")}>
        ${["any", "tcp", "udp", "icmp"].map((p) => html`<option value=${p}>${p}</option>`)}
      </select>
    <//>
    ${ported && html`<${Field} id=${`${id}-port-min`} label="First port" error=${errors.portMin}
        hint="empty: every port">
      <input id=${`${id}-port-min`} aria-describedby=${`${id}-port-min-hint`} type="number" min="1" max="65535" value=${rule.portMin} onInput=${set("portMin")} />
    <//>
    <${Field} id=${`${id}-port-max`} label="Last port" error=${errors.portMax} hint="empty: the first port only">
      <input id=${`${id}-port-max`} aria-describedby=${`${id}-port-max-hint`} type="number" min="1" max="65535" value=${rule.portMax} onInput=${set("portMax")} />
    <//>`}
    <${Field} id=${`${id}-remote`} label="Peers">
      <select id=${`${id}-remote`} value=${rule.remote} onChange=${set("remote")}>
        <option value="anywhere">anywhere</option>
        <option value="cidr">a network (CIDR)</option>
        <option value="group">ports of a group</option>
      </select>
    <//>
    ${rule.remote === "cidr" && html`<${Field} id=${`${id}-cidr`} label="Remote network" error=${errors.remoteCidr}>
      <input id=${`${id}-cidr`} placeholder=${rule.ethertype === "ipv4" ? "0.0.0.0/0" : "::/0"}
        value=${rule.remoteCidr} onInput=${set("remoteCidr")} />
    <//>`}
    ${rule.remote === "group" && html`<${Field} id=${`${id}-group`} label="Remote group" error=${errors.remoteGroup}>
      <select id=${`${id}-group`} value=${rule.remoteGroup} onChange=${set("remoteGroup")}>
        <option value="">choose…</option>
        ${(groups || []).map((g) => html`<option value=${g}>${g}</option>`)}
      </select>
    <//>`}
  </div>`;
}

export function describePorts(r) {
  if (r.port_min === null || r.port_min === undefined) return PORTED.includes(r.protocol) ? "all" : "—";
  return r.port_max && r.port_max !== r.port_min ? `${r.port_min}-${r.port_max}` : String(r.port_min);
}

function AddRule({ group, groupNames, onDone }) {
  const [rule, setRule] = useState(EMPTY_RULE);
  const [tried, setTried] = useState(false);
  const action = useAction();
  const errors = ruleErrors(rule);
  const submit = async (e) => {
    e.preventDefault();
    setTried(true);
    if (Object.keys(errors).length) return;
    const answer = await action.run(() => api.post(`/security-groups/${group.id}/rules`, ruleBody(rule)));
    if (answer) { setRule(EMPTY_RULE); setTried(false); onDone(); }
  };
  return html`<form class="card form" onSubmit=${submit} aria-labelledby="add-rule-title">
    <h2 id="add-rule-title">Add a rule</h2>
    <${RuleFields} id="rule" rule=${rule} onChange=${setRule} groups=${groupNames} errors=${tried ? errors : {}} />
    <${ErrorBox} error=${action.error} title="The rule was not added" />
    <${Button} kind="primary" type="submit" busy=${action.busy}><${Icon} name="plus" /> Add rule<//>
  </form>`;
}

// params.ref is absent for one render when leaving for another page (the shell draws the
// old page once with the new route's params): nothing is fetched then.
export default function SecurityGroup({ params }) {
  const { can } = useSession();
  const { data: group, error, loading, reload, retire } = useApi(params.ref ? `/security-groups/${encodeURIComponent(params.ref)}` : null,
    { events: ["security_group"] });
  const { data: all } = useApi("/security-groups", { events: ["security_group"] });
  const [ruleError, setRuleError] = useState(null);
  if (loading) return html`<${Loading} />`;
  if (!group) return html`<${ErrorBox} error=${error} title="This security group could not be shown" />`;
  const groupNames = (all || []).filter((g) => g.project === group.project).map((g) => g.name);
  const deleteRule = async (r) => {
    setRuleError(null);
    try { await api.del(`/security-groups/${group.id}/rules/${r.id}`); reload(); } catch (e) { setRuleError(e); }
  };
  const columns = [
    { label: "Direction", key: "direction" },
    { label: "IP", key: "ethertype" },
    { label: "Protocol", key: "protocol" },
    { label: "Ports", render: describePorts },
    { label: "Peers", render: (r) => r.remote_cidr || (r.remote_group ? `group ${r.remote_group}` : "anywhere") },
    { label: "Added", render: (r) => time(r.created_at) },
    {
      label: "Actions", render: (r) => can.canWrite && html`<${Button} kind="secondary"
        aria-label=${`Delete rule ${r.direction} ${r.protocol} ${describePorts(r)}`}
        onClick=${() => deleteRule(r)}><${Icon} name="trash-2" /> Delete<//>`,
    },
  ];
  return html`<section>
    <${PageHeader} title=${`Security group ${group.name}`}
      subtitle=${`${group.project || "shared"} · ${group.ports} port${group.ports === 1 ? "" : "s"} in it`}>
      ${can.canWrite && html`<${ConfirmButton} label="Delete group"
        question=${`Delete the security group ${group.name}? It is refused while ports are in it or rules of other groups name it.`}
        confirmLabel=${`Delete ${group.name}`}
        onConfirm=${() => retire(async () => { await api.del(`/security-groups/${group.id}`); navigate("/security-groups"); })} />`}
    <//>
    <p><${Link} to="/security-groups">← All security groups<//></p>
    ${group.description && html`<p>${group.description}</p>`}
    <${ErrorBox} error=${error} title="This security group could not be refreshed" />
    <h2>Rules</h2>
    <p class="hint">Everything inbound that no rule allows is dropped; replies pass.</p>
    <${ErrorBox} error=${ruleError} title="The rule was not deleted" />
    <${Table} columns=${columns} rows=${group.rules} caption="Rules" empty="No rule: nothing inbound is allowed." />
    ${can.canWrite && html`<${AddRule} group=${group} groupNames=${groupNames} onDone=${reload} />`}
  </section>`;
}
