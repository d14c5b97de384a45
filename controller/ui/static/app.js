// The web UI's shell: session check, login, navigation and the page of the address.
import { html, render, useEffect, useState } from "./lib/html.js";
import { api, hasCsrf, onSessionEnded, rememberCsrf } from "./lib/api.js";
import { connect, disconnect, onConnection } from "./lib/events.js";
import { match, usePath, href } from "./lib/router.js";
import { SessionContext, abilities } from "./lib/session.js";
import { ErrorBox, Icon, Loading } from "./lib/components.js";
import { routes } from "./pages/routes.js";
import Login from "./pages/login.js";

function NotFound() {
  return html`<section><h1>Page not found</h1>
    <p>There is no page at this address. <a href="#/">Back to the dashboard</a>.</p></section>`;
}

function NotAllowed() {
  return html`<section><h1>Not allowed</h1>
    <p>Your roles do not give access to this page.</p></section>`;
}

/** Loads the page module of a route and draws it (the module's default export). The
 * module is kept with its route: while the next route's module loads, nothing is drawn,
 * never the previous page with the next route's parameters. */
function PageLoader({ found }) {
  const [loaded, setLoaded] = useState({ route: null, mod: null, error: null });
  useEffect(() => {
    let current = true;
    found.route.load().then(
      (mod) => current && setLoaded({ route: found.route, mod, error: null }),
      (error) => current && setLoaded({ route: found.route, mod: null, error }),
    );
    return () => { current = false; };
  }, [found.route]);
  useEffect(() => { document.title = `${found.route.title} · Vauban`; }, [found.route]);
  if (loaded.route !== found.route) return html`<${Loading} />`;
  if (loaded.error) return html`<${ErrorBox} error=${loaded.error} title="This page could not be loaded" />`;
  const Page = loaded.mod.default;
  // a new VM, node or project is a new page: no state carried over from the previous one
  return html`<${Page} key=${found.route.path + JSON.stringify(found.params)} params=${found.params}
    query=${found.query} />`;
}

function Nav({ can, path, open, onNavigate }) {
  const items = routes.filter((r) => r.nav && (!r.needs || can[r.needs]));
  const active = (r) => (r.path === "/" ? path === "/" : path === r.path || path.startsWith(r.path + "/"));
  return html`<nav id="nav" class=${"sidebar" + (open ? " open" : "")} aria-label="Main">
    <ul>${items.map((r) => html`<li>
      <a href=${href(r.path)} aria-current=${active(r) ? "page" : undefined} onClick=${onNavigate}>
        <${Icon} name=${r.icon} /><span>${r.nav}</span></a></li>`)}
    </ul></nav>`;
}

function LiveIndicator() {
  const [live, setLive] = useState(false);
  useEffect(() => onConnection(setLive), []);
  return html`<span class=${"live " + (live ? "on" : "off")} role="status"
    title=${live ? "Live updates on" : "Live updates reconnecting"}>
    ${live ? "live" : "reconnecting"}</span>`;
}

function Shell({ account, onLogout }) {
  const path = usePath();
  const [navOpen, setNavOpen] = useState(false);
  const can = abilities(account);
  const found = match(routes, path);
  const allowed = found && (!found.route.needs || can[found.route.needs]);
  return html`<${SessionContext.Provider} value=${{ account, can }}>
    <a class="skip-link" href="#main">Skip to content</a>
    <header class="topbar">
      <button type="button" class="btn icon-only menu-button" aria-controls="nav"
        aria-expanded=${navOpen ? "true" : "false"} aria-label="Menu"
        onClick=${() => setNavOpen(!navOpen)}><${Icon} name="menu" /></button>
      <a class="brand" href="#/">Vauban</a>
      <div class="topbar-right">
        <${LiveIndicator} />
        <a href="#/account" class="user">${account.name}</a>
        <button type="button" class="btn" onClick=${onLogout}><${Icon} name="log-out" /> Log out</button>
      </div>
    </header>
    <div class="layout">
      <${Nav} can=${can} path=${path} open=${navOpen} onNavigate=${() => setNavOpen(false)} />
      <main id="main" tabindex="-1">
        ${found ? (allowed ? html`<${PageLoader} key=${found.route.path + JSON.stringify(found.params)}
          found=${found} />` : html`<${NotAllowed} />`)
    : html`<${NotFound} />`}
      </main>
    </div>
  <//>`;
}

/** Ends the session once the pages are gone (their requests aborted: none is answered 401
 * after the session ended), then shows the login page whether or not it was still open. */
function LoggingOut({ onEnded }) {
  useEffect(() => {
    api.del("/sessions/current").catch(() => { /* ended already */ }).finally(onEnded);
  }, []);
  return html`<${Loading} what="Logging out" />`;
}

function App() {
  const [account, setAccount] = useState(undefined); // undefined: not known yet
  const [leaving, setLeaving] = useState(false);
  const ended = () => { rememberCsrf(null); disconnect(); setLeaving(false); setAccount(null); };
  // without a stored CSRF token this tab never logged in (or logged out): no session to ask for
  const load = () => (hasCsrf() ? api.get("/account").then(setAccount, () => setAccount(null))
    : setAccount(null));
  useEffect(() => {
    load();
    return onSessionEnded(ended);
  }, []);
  useEffect(() => { if (account) connect(); }, [account]);
  if (leaving) return html`<${LoggingOut} onEnded=${ended} />`;
  if (account === undefined) return html`<${Loading} what="Starting" />`;
  if (account === null) return html`<${Login} onLoggedIn=${load} />`;
  return html`<${Shell} account=${account} onLogout=${() => { disconnect(); setLeaving(true); }} />`;
}

render(html`<${App} />`, document.getElementById("app"));
