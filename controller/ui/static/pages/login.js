// Log in: user name and password, then the one-time code when the user has a second factor.
import { html, useEffect, useRef, useState } from "../lib/html.js";
import { api, rememberCsrf } from "../lib/api.js";
import { Button, ErrorBox, Field } from "../lib/components.js";

export default function Login({ onLoggedIn }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [totp, setTotp] = useState("");
  const [needCode, setNeedCode] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const codeInput = useRef(null);
  useEffect(() => { document.title = "Log in · Vauban"; }, []);
  useEffect(() => { if (needCode && codeInput.current) codeInput.current.focus(); }, [needCode]);

  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body = { username, password };
      if (needCode) body.totp = totp;
      const session = await api.post("/sessions", body);
      rememberCsrf(session.csrf_token);
      onLoggedIn();
    } catch (err) {
      if (err.status === 401 && err.problem && err.problem.totp_required && !needCode) {
        setNeedCode(true);
      } else {
        setError(err);
        if (needCode) setTotp("");
      }
    } finally {
      setBusy(false);
    }
  };

  return html`<main id="main" class="login">
    <form class="card login-card" onSubmit=${submit} aria-labelledby="login-title">
      <h1 id="login-title">Vauban</h1>
      <p class="subtitle">Log in to the region</p>
      <${ErrorBox} error=${error} title="Login refused" />
      ${!needCode ? html`
        <${Field} id="username" label="User name">
          <input id="username" name="username" autocomplete="username" required autofocus
            value=${username} onInput=${(e) => setUsername(e.target.value)} />
        <//>
        <${Field} id="password" label="Password">
          <input id="password" name="password" type="password" autocomplete="current-password"
            required value=${password} onInput=${(e) => setPassword(e.target.value)} />
        <//>` : html`
        <p>Enter the one-time code of your authenticator app for <strong>${username}</strong>.</p>
        <${Field} id="totp" label="One-time code">
          <input id="totp" name="totp" ref=${codeInput} inputmode="numeric" pattern="[0-9]{6}"
            autocomplete="one-time-code" required maxlength="6" value=${totp}
            onInput=${(e) => setTotp(e.target.value.trim())} />
        <//>`}
      <button type="submit" class="btn primary" disabled=${busy}>${needCode ? "Verify" : "Log in"}</button>
      ${needCode && html`<${Button} onClick=${() => { setNeedCode(false); setTotp(""); setError(null); }}>Back<//>`}
    </form>
  </main>`;
}
