// Hash routing: "#/vms/web-1" → the route "/vms/:ref" with params {ref: "web-1"}.
import { useEffect, useState } from "./html.js";

export function currentPath() {
  const hash = window.location.hash.replace(/^#/, "");
  return hash.startsWith("/") ? hash : "/";
}

export function navigate(path) {
  if (currentPath() !== path) window.location.hash = path;
}

export function usePath() {
  const [path, setPath] = useState(currentPath());
  useEffect(() => {
    const onChange = () => setPath(currentPath());
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return path;
}

/** The first route whose pattern matches `path`: {route, params, query}, or null. */
export function match(routes, path) {
  const [pathname, search] = path.split("?");
  const parts = pathname.split("/").filter(Boolean);
  for (const route of routes) {
    const pattern = route.path.split("/").filter(Boolean);
    if (pattern.length !== parts.length) continue;
    const params = {};
    let ok = true;
    pattern.forEach((p, i) => {
      if (p.startsWith(":")) params[p.slice(1)] = decodeURIComponent(parts[i]);
      else if (p !== parts[i]) ok = false;
    });
    if (ok) return { route, params, query: Object.fromEntries(new URLSearchParams(search || "")) };
  }
  return null;
}

export function href(path) {
  return "#" + path;
}
