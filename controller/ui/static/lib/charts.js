// Charts: the vendored Chart.js (window.Chart), loaded once by a <script src> element the
// first time a chart is drawn. Every chart is an image with an aria-label and comes with a
// visually-hidden table of the same numbers, so a screen reader (and a test) reads them.
import { html, useEffect, useRef, useState } from "./html.js";

const SRC = "/ui/vendor/chart.umd.min.js";
let loading = null;

/** Resolves to window.Chart once the vendored script ran; a failed load can be retried. */
export function loadChart() {
  if (window.Chart) return Promise.resolve(window.Chart);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = SRC;
      script.onload = () => {
        const Chart = window.Chart;
        Chart.defaults.font.family = "\"IBM Plex Sans\", system-ui, sans-serif";
        Chart.defaults.color = cssVar("--muted");
        Chart.defaults.animation = false; // numbers change live: no bouncing bars
        resolve(Chart);
      };
      script.onerror = () => {
        loading = null;
        script.remove();
        reject(new Error("the chart library could not be loaded"));
      };
      document.head.appendChild(script);
    });
  }
  return loading;
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

/** Horizontal bars of used against total, one per row: [{name, used, total}] (total null:
 * no limit); `format` writes a value in words (axis, tooltip and the hidden table). */
export function UsageChart({ title, rows, format = (v) => String(v) }) {
  const canvas = useRef(null);
  const chart = useRef(null);
  const [failed, setFailed] = useState(null);
  const labels = rows.map((r) => r.name);
  const used = rows.map((r) => r.used);
  const free = rows.map((r) => (r.total === null || r.total === undefined ? 0 : Math.max(0, r.total - r.used)));
  const summary = rows.map((r) => `${r.name}: ${format(r.used)} of ${total(r, format)}`).join("; ");
  const latest = useRef(null);
  latest.current = { labels, used, free, format };
  // draws the latest numbers (also those that arrived while the library was loading),
  // written by the latest `format`
  const draw = () => {
    const c = chart.current;
    if (!c) return;
    c.data.labels = latest.current.labels;
    c.data.datasets[0].data = latest.current.used;
    c.data.datasets[1].data = latest.current.free;
    c.update();
  };

  useEffect(() => {
    let alive = true;
    loadChart().then((Chart) => {
      if (!alive || !canvas.current) return;
      chart.current = new Chart(canvas.current, {
        type: "bar",
        data: { labels: [], datasets: [
          { label: "used", data: [], backgroundColor: cssVar("--accent"), stack: "s" },
          { label: "free", data: [], backgroundColor: cssVar("--idle-soft"), stack: "s" },
        ] },
        options: {
          indexAxis: "y", responsive: true, maintainAspectRatio: false,
          scales: { x: { stacked: true, beginAtZero: true, ticks: { precision: 0, callback: (v) => latest.current.format(v) } },
            y: { stacked: true } },
          plugins: { legend: { position: "bottom" },
            tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${latest.current.format(c.raw)}` } } },
        },
      });
      draw();
    }, (e) => alive && setFailed(e));
    return () => {
      alive = false;
      if (chart.current) chart.current.destroy();
      chart.current = null;
    };
  }, []);

  useEffect(draw, [JSON.stringify([labels, used, free]), format]);

  const height = `${Math.max(7, 3 + rows.length * 2.2)}rem`;
  return html`<figure class="chart">
    <figcaption>${title}</figcaption>
    ${failed ? html`<p class="error-text">${failed.message}</p>`
    : html`<div class="chart-box" style=${{ height }}>
        <canvas ref=${canvas} role="img" aria-label=${`${title}: ${summary || "nothing to show"}`}></canvas>
      </div>`}
    <table class="visually-hidden">
      <caption>${title}</caption>
      <thead><tr><th scope="col">Name</th><th scope="col">Used</th><th scope="col">Total</th></tr></thead>
      <tbody>${rows.map((r) => html`<tr key=${r.name}><th scope="row">${r.name}</th>
        <td>${format(r.used)}</td><td>${total(r, format)}</td></tr>`)}</tbody>
    </table>
  </figure>`;
}

function total(row, format) {
  return row.total === null || row.total === undefined ? "no limit" : format(row.total);
}
