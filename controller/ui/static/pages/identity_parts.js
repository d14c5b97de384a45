// Pieces shared by the identity pages (projects, users, account): role names, a secret
// shown once with its copy button, a form action's busy/error state, and role bindings
// with the button that takes one away.
import { html, useState } from "../lib/html.js";
import { Button, ConfirmButton, Table } from "../lib/components.js";
import { time } from "../lib/format.js";

export const REGION_ROLES = ["region-admin", "operator", "auditor"];
export const PROJECT_ROLES = ["project-admin", "project-member", "project-viewer"];
export const isProjectRole = (role) => PROJECT_ROLES.includes(role);

/** "project-member in shop", or the region role alone. */
export const roleText = (b) => (b.project ? `${b.role} in ${b.project}` : b.role);

/** A form's action: run(fn) marks it busy, keeps the API's error for an ErrorBox, and
 * resolves to fn's answer (undefined when it failed). */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const run = async (fn) => {
    setBusy(true);
    setError(null);
    try {
      return await fn();
    } catch (e) {
      setError(e);
      return undefined;
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, run, clear: () => setError(null) };
}

/** A secret the API shows this once (a password, a token, a one-time code seed): in
 * full, selectable, with a copy button, and said to be shown only now. */
export function SecretOnce({ id, label, value, onDone }) {
  const [copied, setCopied] = useState(null);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(value);
      setCopied("Copied.");
    } catch (_) {
      setCopied("The browser did not let the page copy: select the text and copy it.");
    }
  };
  return html`<div class="secret-once" role="region" aria-labelledby=${id + "-label"}>
    <p id=${id + "-label"}><strong>${label}</strong>: shown only now, copy it before you leave
      this page.</p>
    <code id=${id} class="secret-value" tabindex="0">${value}</code>
    <div class="secret-actions">
      <${Button} onClick=${copy} aria-label=${"Copy " + label}>Copy<//>
      ${onDone && html`<${Button} onClick=${onDone}>Done<//>`}
      <span role="status">${copied}</span>
    </div>
  </div>`;
}

/** Role bindings as a table; each one `canTake(b)` allows has a button that takes it
 * away (after confirmation), then calls onChanged(). */
export function Bindings({ bindings, canTake, onTake, empty = "No role." }) {
  const columns = [
    { label: "User", key: "user" },
    { label: "Role", key: "role" },
    { label: "Project", render: (b) => b.project || "whole region" },
    { label: "Given by", render: (b) => `${b.created_by}, ${time(b.created_at)}` },
    {
      label: "Actions", render: (b) => canTake(b) && html`<${ConfirmButton}
        label=${html`Take away<span class="visually-hidden"> ${roleText(b)} from ${b.user}</span>`}
        question=${`Take the role ${roleText(b)} away from ${b.user}? Their tokens lose it too.`}
        confirmLabel="Take away" onConfirm=${() => onTake(b)} />`,
    },
  ];
  return html`<${Table} columns=${columns} rows=${bindings} empty=${empty} caption="Role bindings" />`;
}
