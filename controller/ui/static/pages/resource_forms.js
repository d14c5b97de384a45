// Pieces shared by the resource pages (images, volumes, networks, security groups): the
// name rule of the API, the project chooser, and an action runner that keeps the API's
// error in words and the operation a 202 answer started.
import { html, useState } from "../lib/html.js";
import { Field, useApi } from "../lib/components.js";

export const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
export const NAME_HINT = "1-63 characters: lowercase letters, digits and '-', not starting or ending with '-'";

/** The API's words for a name that breaks its rule, or null when it is fine. */
export const nameError = (name) => (!name || NAME_RE.test(name) ? null : NAME_HINT);

/** A project chooser when the caller sees more than one project; "" is the API's default
 * (yours if you have one, else 'default' for a region admin). */
export function ProjectField({ id, value, onChange }) {
  const { data } = useApi("/projects");
  const projects = data || [];
  if (projects.length < 2) return null;
  return html`<${Field} id=${id} label="Project">
    <select id=${id} value=${value} onChange=${(e) => onChange(e.target.value)}>
      <option value="">default</option>
      ${projects.map((p) => html`<option value=${p.name}>${p.name}</option>`)}
    </select>
  <//>`;
}

const isOperation = (doc) => doc && typeof doc === "object" && "progress" in doc && "target_id" in doc;

/** run(fn): calls fn() once at a time; on failure keeps the ApiError (shown by ErrorBox),
 * on an operation answer keeps its id (followed by OperationProgress). Resolves to fn's
 * answer, or undefined when it failed. */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [opId, setOpId] = useState(null);
  const run = async (fn) => {
    setBusy(true);
    setError(null);
    try {
      const answer = await fn();
      if (isOperation(answer)) setOpId(answer.id);
      return answer;
    } catch (e) {
      setError(e);
      return undefined;
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, opId, run, setError };
}

/** A number from an <input type=number>, or null when empty. */
export const intOrNull = (text) => (String(text).trim() === "" ? null : Number(text));
