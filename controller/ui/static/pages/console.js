// A VM's consoles: the graphical one (noVNC over the controller's websocket to the VM's
// VNC on its node) and the serial one (xterm.js, read and type). Each connection opens
// with a short-lived single-use ticket from the API; the controller audits console access.
import { html, useEffect, useRef, useState } from "../lib/html.js";
import { api } from "../lib/api.js";
import { Button, ErrorBox, Link, PageHeader, StateBadge, useApi } from "../lib/components.js";

const wsUrl = (path) => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;

async function ticket(ref, kind) {
  const answer = await api.post(`/instances/${encodeURIComponent(ref)}/consoles`, { kind });
  return wsUrl(answer.websocket);
}

function useStylesheet(href) {
  useEffect(() => {
    if (document.querySelector(`link[href="${href}"]`)) return;
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = href;
    document.head.appendChild(link);
  }, [href]);
}

function Graphical({ vmRef, generation }) {
  const screen = useRef(null);
  const rfb = useRef(null);
  const [status, setStatus] = useState("connecting");
  const [error, setError] = useState(null);
  useEffect(() => {
    let cancelled = false;
    setStatus("connecting");
    setError(null);
    Promise.all([import("../vendor/novnc/core/rfb.js"), ticket(vmRef, "vnc")]).then(([mod, url]) => {
      if (cancelled) return;
      const conn = new mod.default(screen.current, url, { shared: true });
      conn.scaleViewport = true;
      conn.focusOnClick = true;
      conn.addEventListener("connect", () => { setStatus("connected"); conn.focus(); });
      conn.addEventListener("disconnect", (e) => setStatus(e.detail.clean ? "closed" : "lost"));
      conn.addEventListener("securityfailure", (e) => setError(new Error(e.detail.reason || "VNC security failure")));
      rfb.current = conn;
    }).catch((e) => { if (!cancelled) { setError(e); setStatus("failed"); } });
    return () => { cancelled = true; if (rfb.current) rfb.current.disconnect(); rfb.current = null; };
  }, [vmRef, generation]);
  return html`<div>
    <div class="toolbar">
      <span role="status">Graphical console: <${StateBadge} state=${status} /></span>
      <${Button} disabled=${status !== "connected"} onClick=${() => rfb.current.sendCtrlAltDel()}>Send Ctrl-Alt-Del<//>
    </div>
    <${ErrorBox} error=${error} title="The graphical console could not be opened" />
    <div class="console-screen" ref=${screen} aria-label="Graphical console of the VM" role="application"></div>
  </div>`;
}

function Serial({ vmRef, generation }) {
  useStylesheet("/ui/vendor/xterm/xterm.css");
  const box = useRef(null);
  const [status, setStatus] = useState("connecting");
  const [error, setError] = useState(null);
  useEffect(() => {
    let socket = null;
    let term = null;
    let cancelled = false;
    const onResize = () => term && term.fit && term.fit();
    setStatus("connecting");
    setError(null);
    Promise.all([import("../vendor/xterm/xterm.mjs"), import("../vendor/xterm/addon-fit.mjs"),
      ticket(vmRef, "serial")]).then(([xterm, fit, url]) => {
      if (cancelled) return;
      term = new xterm.Terminal({ convertEol: false, cursorBlink: true, fontFamily: "IBM Plex Mono, monospace",
        screenReaderMode: true });
      const fitter = new fit.FitAddon();
      term.loadAddon(fitter);
      term.open(box.current);
      term.fit = () => fitter.fit();
      fitter.fit();
      window.addEventListener("resize", onResize);
      socket = new WebSocket(url);
      socket.binaryType = "arraybuffer";
      socket.onopen = () => { setStatus("connected"); term.focus(); };
      socket.onmessage = (e) => term.write(new Uint8Array(e.data));
      socket.onclose = (e) => {
        setStatus(e.code === 1000 ? "closed" : "lost");
        if (e.reason) setError(new Error(e.reason));
      };
      const encoder = new TextEncoder();
      term.onData((data) => socket.readyState === WebSocket.OPEN && socket.send(encoder.encode(data)));
    }).catch((e) => { if (!cancelled) { setError(e); setStatus("failed"); } });
    return () => {
      cancelled = true;
      window.removeEventListener("resize", onResize);
      if (socket) socket.close();
      if (term) term.dispose();
    };
  }, [vmRef, generation]);
  return html`<div>
    <p role="status">Serial console: <${StateBadge} state=${status} /></p>
    <${ErrorBox} error=${error} title="The serial console could not be opened" />
    <div class="serial-screen" ref=${box} aria-label="Serial console of the VM"></div>
  </div>`;
}

export default function Console({ params, query }) {
  const { data: vm, error } = useApi(`/instances/${encodeURIComponent(params.ref)}`, { events: ["vm"] });
  const [tab, setTab] = useState(query.kind === "serial" ? "serial" : "vnc");
  const [generation, setGeneration] = useState(0);
  const running = vm && vm.state === "running";
  return html`<section>
    <${PageHeader} title=${`Console of ${params.ref}`}
      subtitle=${vm ? html`<${StateBadge} state=${vm.state} /> on ${vm.node_name || "no node"}` : ""}>
      <${Link} class="btn" to=${`/vms/${params.ref}`}>Back to the VM<//>
      <${Button} onClick=${() => setGeneration(generation + 1)}>Reconnect<//>
    <//>
    <${ErrorBox} error=${error} title="The VM could not be read" />
    <div class="tabs" role="tablist" aria-label="Console kind">
      <button type="button" role="tab" id="tab-vnc" aria-selected=${tab === "vnc" ? "true" : "false"}
        aria-controls="panel-console" onClick=${() => setTab("vnc")}>Graphical</button>
      <button type="button" role="tab" id="tab-serial" aria-selected=${tab === "serial" ? "true" : "false"}
        aria-controls="panel-console" onClick=${() => setTab("serial")}>Serial</button>
    </div>
    <div id="panel-console" role="tabpanel" aria-labelledby=${"tab-" + tab}>
      ${vm && !running ? html`<p class="empty">The VM is ${vm.state}: its consoles open once it runs.</p>`
    : vm && (tab === "vnc" ? html`<${Graphical} vmRef=${params.ref} generation=${generation} />`
      : html`<${Serial} vmRef=${params.ref} generation=${generation} />`)}
    </div>
  </section>`;
}
