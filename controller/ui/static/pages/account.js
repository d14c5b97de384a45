// My account: who I am and my roles; my password; my one-time code (enrolled with the
// password and the current code, confirmed with a code of the new seed); my API tokens.
import { html, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import {
  Button, ConfirmButton, ErrorBox, Field, Icon, Loading, PageHeader, Table, useApi,
} from "../lib/components.js";
import { ago, time } from "../lib/format.js";
import { useSession } from "../lib/session.js";
import { SecretOnce, roleText, useAction } from "./identity_parts.js";

const CODE = { inputmode: "numeric", pattern: "[0-9]{6}", maxlength: "6", autocomplete: "one-time-code" };

function WhoAmI({ account }) {
  return html`<section class="card" aria-labelledby="whoami-title">
    <h2 id="whoami-title">${account.name}</h2>
    <dl class="facts">
      <dt>Roles</dt>
      <dd>${account.roles.length ? html`<ul class="chips">${account.roles.map((b) => html`
        <li>${roleText(b)}</li>`)}</ul>` : "none: an administrator gives you a role"}</dd>
      <dt>This session acts as</dt>
      <dd>${account.acting_as.join(", ") || "nothing"}</dd>
    </dl>
  </section>`;
}

function ChangePassword({ enrolled }) {
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [again, setAgain] = useState("");
  const [code, setCode] = useState("");
  const [done, setDone] = useState(null);
  const { busy, error, run } = useAction();
  const submit = async (e) => {
    e.preventDefault();
    setDone(null);
    const changed = await run(() => {
      if (next !== again) throw new Error("The new password and its repetition differ.");
      const body = { current_password: current, new_password: next };
      if (enrolled) body.totp = code;
      return api.post("/account/password", body);
    });
    if (changed) {
      setCurrent(""); setNext(""); setAgain(""); setCode("");
      setDone(`Password changed; ${changed.tokens_revoked} of your other tokens were revoked.`);
    }
  };
  return html`<form class="card form" onSubmit=${submit} aria-labelledby="password-title">
    <h2 id="password-title">Password</h2>
    <${ErrorBox} error=${error} title="The password was not changed" />
    ${done && html`<p role="status" class="ok-text">${done}</p>`}
    <${Field} id="pw-current" label="Current password">
      <input id="pw-current" type="password" autocomplete="current-password" required
        value=${current} onInput=${(e) => setCurrent(e.target.value)} />
    <//>
    <div class="form-row">
      <${Field} id="pw-new" label="New password" hint="at least 12 characters">
        <input id="pw-new" type="password" autocomplete="new-password" required minlength="12"
          value=${next} aria-describedby="pw-new-hint" onInput=${(e) => setNext(e.target.value)} />
      <//>
      <${Field} id="pw-again" label="New password again">
        <input id="pw-again" type="password" autocomplete="new-password" required minlength="12"
          value=${again} onInput=${(e) => setAgain(e.target.value)} />
      <//>
    </div>
    ${enrolled && html`<${Field} id="pw-code" label="One-time code">
      <input id="pw-code" required ...${CODE} value=${code} onInput=${(e) => setCode(e.target.value.trim())} />
    <//>`}
    <button type="submit" class="btn primary" disabled=${busy}>Change password</button>
  </form>`;
}

const secretOf = (uri) => new URL(uri).searchParams.get("secret") || "";

function OneTimeCode({ status, statusError, reload }) {
  const [password, setPassword] = useState("");
  const [code, setCode] = useState("");
  const [pending, setPending] = useState(null);
  const [confirmCode, setConfirmCode] = useState("");
  const [done, setDone] = useState(null);
  const start = useAction();
  const confirm = useAction();
  const enroll = async (e) => {
    e.preventDefault();
    setDone(null);
    const body = { password };
    if (status.enrolled) body.totp = code;
    const made = await start.run(() => api.post("/account/totp", body));
    if (made) { setPassword(""); setCode(""); setPending(made); }
  };
  const activate = async (e) => {
    e.preventDefault();
    if (await confirm.run(() => api.post("/account/totp/confirm", { code: confirmCode }))) {
      setPending(null); setConfirmCode("");
      setDone("The new one-time code is active: log in with its codes from now on.");
      reload();
    }
  };
  if (statusError) return html`<${ErrorBox} error=${statusError} title="The one-time code's state could not be read" />`;
  if (!status) return html`<${Loading} />`;
  return html`<section class="card form" aria-labelledby="totp-title">
    <h2 id="totp-title">One-time code</h2>
    <p>${status.enrolled ? "You log in with a one-time code from your authenticator app."
    : "You log in with your password only."}
      ${status.required && " Your roles require a one-time code."}</p>
    ${done && html`<p role="status" class="ok-text">${done}</p>`}
    ${!pending ? html`<form onSubmit=${enroll} aria-label="Enroll a new one-time code">
      <p class="hint">Enrolling a new seed asks for your password${status.enrolled
        ? " and a code of your current seed" : ""}; the new seed replaces the old one once you
        confirm it with one of its codes.</p>
      <${ErrorBox} error=${start.error} title="No new seed was made" />
      <div class="form-row">
        <${Field} id="totp-password" label="Password">
          <input id="totp-password" type="password" autocomplete="current-password" required
            value=${password} onInput=${(e) => setPassword(e.target.value)} />
        <//>
        ${status.enrolled && html`<${Field} id="totp-current" label="Current one-time code">
          <input id="totp-current" required ...${CODE} value=${code}
            onInput=${(e) => setCode(e.target.value.trim())} />
        <//>`}
      </div>
      <button type="submit" class="btn primary" disabled=${start.busy}>
        ${status.enrolled ? "Enroll a new seed" : "Enroll a one-time code"}</button>
    </form>` : html`<div>
      <p>Add this seed to your authenticator app (its address, or the secret alone), then enter
        a code it shows to confirm.</p>
      <${SecretOnce} id="totp-uri" label="Seed address (otpauth URI)" value=${pending.provisioning_uri} />
      <${SecretOnce} id="totp-secret" label="Secret" value=${secretOf(pending.provisioning_uri)} />
      <form class="toolbar" onSubmit=${activate} aria-label="Confirm the new one-time code">
        <${Field} id="totp-confirm" label="Code of the new seed">
          <input id="totp-confirm" required ...${CODE} value=${confirmCode}
            onInput=${(e) => setConfirmCode(e.target.value.trim())} />
        <//>
        <button type="submit" class="btn primary" disabled=${confirm.busy}>Confirm</button>
        <${Button} onClick=${() => setPending(null)}>Cancel<//>
      </form>
      <${ErrorBox} error=${confirm.error} title="The new seed was not confirmed" />
    </div>`}
  </section>`;
}

function CreateToken({ account, onCreated }) {
  const [name, setName] = useState("");
  const [choice, setChoice] = useState("0");
  const [days, setDays] = useState("90");
  const { busy, error, run } = useAction();
  const roles = account.roles;
  const submit = async (e) => {
    e.preventDefault();
    const b = roles[Number(choice)];
    const body = { name: name.trim(), role: b.role, project: b.project || null,
      ttl_seconds: Math.round(Number(days) * 86400) };
    const made = await run(() => api.post("/api-tokens", body));
    if (made) { setName(""); onCreated(made); }
  };
  if (!roles.length) return html`<p class="hint">A token acts with one of your roles: you hold none yet.</p>`;
  return html`<form class="toolbar" onSubmit=${submit} aria-label="Create an API token">
    <${Field} id="token-name" label="Token name">
      <input id="token-name" required value=${name} onInput=${(e) => setName(e.target.value)} />
    <//>
    <${Field} id="token-role" label="Acts as">
      <select id="token-role" value=${choice} onChange=${(e) => setChoice(e.target.value)}>
        ${roles.map((b, i) => html`<option value=${String(i)}>${roleText(b)}</option>`)}
      </select>
    <//>
    <${Field} id="token-days" label="Valid for (days)">
      <input id="token-days" type="number" min="1" max="366" step="1" required value=${days}
        onInput=${(e) => setDays(e.target.value)} />
    <//>
    <button type="submit" class="btn primary" disabled=${busy}><${Icon} name="plus" /> Create token</button>
    <${ErrorBox} error=${error} title="The token was not created" />
  </form>`;
}

function Tokens({ account }) {
  const { data, error, reload } = useApi("/api-tokens", { events: ["token"] });
  const [created, setCreated] = useState(null);
  const revoke = async (t) => { await api.del(`/api-tokens/${t.id}`); reload(); };
  const columns = [
    { label: "Name", render: (t) => (t.id === account.token_id ? "this session"
      : t.name || "a login (no name)") },
    { label: "Role", render: (t) => t.role || "all your roles" },
    { label: "Project", render: (t) => t.project || "—" },
    { label: "Expires", render: (t) => time(t.expires_at) },
    { label: "Last used", render: (t) => (t.last_used_at ? ago(t.last_used_at) : "never") },
    { label: "State", render: (t) => (t.revoked_at ? `revoked ${time(t.revoked_at)}` : "valid") },
    {
      label: "Actions", render: (t) => !t.revoked_at && t.id !== account.token_id && html`<${ConfirmButton}
        label=${html`Revoke<span class="visually-hidden"> token ${t.name || t.id}</span>`}
        question=${`Revoke the token ${t.name || t.id}? It is refused from its next request on.`}
        confirmLabel="Revoke" onConfirm=${() => revoke(t)} />`,
    },
  ];
  return html`<section aria-labelledby="tokens-title">
    <h2 id="tokens-title">API tokens</h2>
    <p class="hint">For scripts and CI: a named token acts with one of your roles until it
      expires or is revoked. Send it as <code>Authorization: Bearer …</code> or give it to the
      CLI as <code>VAUBAN_TOKEN</code>.</p>
    <${CreateToken} account=${account} onCreated=${(t) => { setCreated(t); reload(); }} />
    ${created && html`<${SecretOnce} id="token-secret" label=${`Token ${created.name}`}
      value=${created.token} onDone=${() => setCreated(null)} />`}
    <${ErrorBox} error=${error} title="Your tokens could not be listed" />
    ${data ? html`<${Table} columns=${columns} rows=${data} caption="API tokens"
      empty="No token." />` : !error && html`<${Loading} />`}
  </section>`;
}

export default function Account() {
  const session = useSession();
  const { data, error } = useApi("/account", { events: ["role_binding", "user"] });
  const account = data || session.account;
  const { data: totp, error: totpError, reload: reloadTotp } = useApi("/account/totp");
  return html`<section>
    <${PageHeader} title="My account" subtitle="Who you are, your password, one-time code and API tokens" />
    <${ErrorBox} error=${error} title="Your account could not be read" />
    <${WhoAmI} account=${account} />
    <div class="grid account-forms">
      <${ChangePassword} enrolled=${Boolean(totp && totp.enrolled)} />
      <${OneTimeCode} status=${totp} statusError=${totpError} reload=${reloadTotp} />
    </div>
    <${Tokens} account=${account} />
  </section>`;
}
