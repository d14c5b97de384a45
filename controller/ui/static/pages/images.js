// Images: every image the caller may use (its projects' and the public ones), uploaded from
// the browser with the SHA-256 computed here while reading the file in chunks, then sent
// with progress; the stored image's checksum is shown beside the one computed here.
import { html, useState } from "../lib/html.js";
import { api, upload } from "../lib/api.js";
import {
  Button, ConfirmButton, ErrorBox, Field, Icon, Loading, PageHeader, Table, useApi,
} from "../lib/components.js";
import { bytes, time } from "../lib/format.js";
import { useSession } from "../lib/session.js";
import { sha256 } from "../vendor/noble-hashes/sha2.js";
import { bytesToHex } from "../vendor/noble-hashes/utils.js";
import { ProjectField, nameError } from "./resource_forms.js";

const CHUNK = 4 * 1024 * 1024;
const QCOW2_MAGIC = [0x51, 0x46, 0x49, 0xfb]; // "QFI\xfb"

/** "qcow2" when the file starts with the qcow2 magic, else "raw". */
async function guessFormat(file) {
  const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
  return QCOW2_MAGIC.every((b, i) => head[i] === b) ? "qcow2" : "raw";
}

/** The file's SHA-256 in hex, read CHUNK bytes at a time; onProgress(done, total). */
async function checksum(file, onProgress) {
  const hash = sha256.create();
  for (let offset = 0; offset < file.size; offset += CHUNK) {
    const part = new Uint8Array(await file.slice(offset, offset + CHUNK).arrayBuffer());
    hash.update(part);
    onProgress(Math.min(file.size, offset + part.length), file.size);
  }
  onProgress(file.size, file.size);
  return bytesToHex(hash.digest());
}

/** A default image name from a file name: "Debian-12.qcow2" → "debian-12". */
const nameOf = (fileName) => fileName.replace(/\.[^.]*$/, "").toLowerCase()
  .replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 63);

function Phase({ id, label, done, total, finished }) {
  const pct = total ? Math.floor((100 * done) / total) : 0;
  return html`<div class="phase">
    <label for=${id}>${label}</label>
    <progress id=${id} max=${total || 1} value=${done}>${pct}%</progress>
    <span class="phase-state">${finished ? `${label} done` : `${pct}%`}</span>
  </div>`;
}

function UploadForm({ can, onDone }) {
  const [file, setFile] = useState(null);
  const [form, setForm] = useState({ name: "", format: "raw", os: "", minDisk: "1", project: "", public: false });
  const [progress, setProgress] = useState(null); // {phase, hashed, sent, total, sha, stored}
  const [error, setError] = useState(null);
  const set = (key) => (e) => setForm({ ...form, [key]: e.target.type === "checkbox" ? e.target.checked : e.target.value });
  const busy = progress && (progress.phase === "checksum" || progress.phase === "upload");
  const invalidName = nameError(form.name);

  const choose = async (e) => {
    const chosen = e.target.files[0] || null;
    setFile(chosen);
    setProgress(null);
    setError(null);
    if (chosen) {
      const format = await guessFormat(chosen);
      setForm((f) => ({ ...f, format, name: f.name || nameOf(chosen.name) }));
    }
  };

  const submit = async (e) => {
    e.preventDefault();
    if (!file || invalidName || !form.name) return;
    setError(null);
    const state = { phase: "checksum", hashed: 0, sent: 0, total: file.size, sha: null, stored: null };
    setProgress(state);
    try {
      const sha = await checksum(file, (done) => setProgress((p) => ({ ...p, hashed: done })));
      setProgress((p) => ({ ...p, sha, phase: "upload" }));
      const query = { name: form.name, disk_format: form.format, sha256: sha, min_disk_gib: form.minDisk };
      if (form.os.trim()) query.os = form.os.trim();
      if (form.public) query.public = "true";
      else if (form.project) query.project = form.project;
      const image = await upload("/images", file, {
        query, onProgress: (sent) => setProgress((p) => ({ ...p, sent })),
      });
      setProgress((p) => ({ ...p, sent: p.total, stored: image, phase: "done" }));
      onDone();
    } catch (err) {
      setProgress((p) => ({ ...p, phase: "failed" }));
      setError(err);
    }
  };

  return html`<form class="card form" onSubmit=${submit} aria-labelledby="upload-title">
    <h2 id="upload-title">Upload an image</h2>
    <${Field} id="image-file" label="Image file" hint="raw (a whole number of 512-byte sectors, at least 1 MiB) or qcow2">
      <input id="image-file" aria-describedby="image-file-hint" type="file" required onChange=${choose} disabled=${busy} />
    <//>
    <div class="form-row">
      <${Field} id="image-name" label="Name" error=${invalidName}>
        <input id="image-name" required value=${form.name} onInput=${set("name")} disabled=${busy} />
      <//>
      <${Field} id="image-format" label="Format" hint="guessed from the file's first bytes">
        <select id="image-format" aria-describedby="image-format-hint" value=${form.format} onChange=${set("format")} disabled=${busy}>
          <option value="raw">raw</option><option value="qcow2">qcow2</option>
        </select>
      <//>
      <${Field} id="image-os" label="Operating system" hint="e.g. debian12 (optional)">
        <input id="image-os" aria-describedby="image-os-hint" maxlength="63" value=${form.os} onInput=${set("os")} disabled=${busy} />
      <//>
      <${Field} id="image-min-disk" label="Minimum disk (GiB)">
        <input id="image-min-disk" type="number" min="1" max="65536" required value=${form.minDisk}
          onInput=${set("minDisk")} disabled=${busy} />
      <//>
      ${!form.public && html`<${ProjectField} id="image-project" value=${form.project}
        onChange=${(project) => setForm({ ...form, project })} />`}
    </div>
    ${can.regionWrite && html`<div class="check-field">
      <input id="image-public" type="checkbox" checked=${form.public} onChange=${set("public")} disabled=${busy} />
      <label for="image-public">Public (every project may use it)</label>
    </div>`}
    ${progress && html`<div class="phases" role="status" aria-live="polite">
      <${Phase} id="image-checksum-progress" label="Checksum" done=${progress.hashed} total=${progress.total}
        finished=${Boolean(progress.sha)} />
      ${progress.sha && html`<p>SHA-256 computed here: <code class="checksum" data-testid="computed-sha">${progress.sha}</code></p>`}
      ${progress.phase !== "checksum" && html`<${Phase} id="image-upload-progress" label="Upload"
        done=${progress.sent} total=${progress.total} finished=${Boolean(progress.stored)} />`}
      ${progress.stored && html`<p>SHA-256 stored by the region: <code class="checksum" data-testid="stored-sha">
        ${progress.stored.sha256}</code> ${progress.stored.sha256 === progress.sha
          ? html`<span class="badge ok">matches</span>` : html`<span class="badge bad">differs</span>`}</p>`}
    </div>`}
    <${ErrorBox} error=${error} title="The image was not uploaded" />
    <${Button} kind="primary" type="submit" busy=${busy} disabled=${!file || Boolean(invalidName)}>
      <${Icon} name="plus" /> Upload<//>
  </form>`;
}

export default function Images() {
  const { can } = useSession();
  const { data, error, loading, reload } = useApi("/images", { events: ["image"] });
  const { data: vms } = useApi("/instances", { events: ["vm"] });
  const [showForm, setShowForm] = useState(false);
  const users = (image) => (vms || []).filter((v) => v.image_id === image.id).length;
  const columns = [
    { label: "Name", render: (i) => html`<strong>${i.name}</strong>` },
    { label: "Project", render: (i) => i.project || html`<span class="badge ok">public</span>` },
    { label: "Format", key: "disk_format" },
    { label: "Size", className: "num", render: (i) => html`<span title=${`${i.size_bytes} bytes`}>${bytes(i.size_bytes)}</span>
      ${i.virtual_size_bytes !== i.size_bytes && html`<br /><small class="hint">disk ${bytes(i.virtual_size_bytes)}</small>`}` },
    { label: "SHA-256", render: (i) => html`<code class="checksum">${i.sha256}</code>` },
    { label: "OS", render: (i) => i.os || "—" },
    { label: "Min disk", className: "num", render: (i) => `${i.min_disk_gib} GiB` },
    { label: "Used by", className: "num", render: (i) => (vms ? `${users(i)} VM${users(i) === 1 ? "" : "s"}` : "—") },
    { label: "Created", render: (i) => time(i.created_at) },
    {
      // public images are the operators' (images.public); a project's, its members'
      label: "Actions", render: (i) => (i.project ? can.canWrite : can.regionWrite) && html`<${ConfirmButton} label="Delete"
        question=${`Delete the image ${i.name}? VMs made from it must be gone (or flattened) first.`}
        confirmLabel=${`Delete ${i.name}`}
        onConfirm=${async () => { await api.del(`/images/${i.id}`); reload(); }} />`,
    },
  ];
  return html`<section>
    <${PageHeader} title="Images" subtitle=${data ? `${data.length} image${data.length === 1 ? "" : "s"}` : ""}>
      ${(can.canWrite || can.regionWrite) && html`<${Button} kind="primary" aria-expanded=${showForm ? "true" : "false"}
        onClick=${() => setShowForm(!showForm)}><${Icon} name="plus" /> Upload image<//>`}
    <//>
    ${showForm && html`<${UploadForm} can=${can} onDone=${reload} />`}
    <${ErrorBox} error=${error} title="The images could not be listed" />
    ${loading ? html`<${Loading} />` : html`<${Table} columns=${columns} rows=${data} caption="Images"
      empty="No image yet." />`}
  </section>`;
}
