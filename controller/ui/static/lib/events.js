// One event stream per tab (GET /api/v1/events, server-sent events), shared by every page.
// Each event names its type ("vm.changed", "operation.changed", ...) and the object it is
// about; pages subscribe by type prefix and refetch what they show. `stream.reset` (the
// stream could not resume where it left off) makes every subscriber refetch.

const subscribers = new Set();
let source = null;
let opened = false; // the current stream has opened once
const status = { connected: false, listeners: new Set() };

function dispatch(type, data) {
  for (const sub of subscribers) {
    if (type === "stream.reset" || sub.prefixes.some((p) => type === p || type.startsWith(p + "."))) {
      try { sub.fn(data, type); } catch (e) { console.warn("event handler failed", e); }
    }
  }
}

function setConnected(value) {
  status.connected = value;
  status.listeners.forEach((fn) => fn(value));
}

export function connect() {
  if (source) return;
  source = new EventSource("/api/v1/events");
  source.onopen = () => {
    setConnected(true);
    // what changed between a page's first request and the stream's start was told to no
    // one: the first opening has every subscriber read again (a reconnection resumes from
    // its Last-Event-ID and misses nothing)
    if (!opened) {
      opened = true;
      dispatch("stream.reset", { id: null, at: null, type: "stream.reset", project: null, object: null,
        data: { reason: "the stream opened" } });
    }
  };
  // EventSource reconnects by itself, with Last-Event-ID: nothing is lost in between
  source.onerror = () => setConnected(false);
  source.onmessage = (e) => dispatch("message", JSON.parse(e.data));
  const known = ["operation", "vm", "node", "image", "volume", "network", "subnet", "port",
    "security_group", "project", "user", "token", "rollout", "stream"];
  for (const kind of known) {
    for (const verb of ["changed", "deleted", "reset"]) {
      source.addEventListener(`${kind}.${verb}`, (e) => dispatch(`${kind}.${verb}`, JSON.parse(e.data)));
    }
  }
}

export function disconnect() {
  if (source) source.close();
  source = null;
  opened = false;
  setConnected(false);
}

/** fn(event, type) for every event whose type is one of `prefixes` or below one
 * ("vm" matches "vm.changed"); returns the unsubscribe function. */
export function subscribe(prefixes, fn) {
  const sub = { prefixes: Array.isArray(prefixes) ? prefixes : [prefixes], fn };
  subscribers.add(sub);
  return () => subscribers.delete(sub);
}

export function onConnection(fn) {
  status.listeners.add(fn);
  fn(status.connected);
  return () => status.listeners.delete(fn);
}
