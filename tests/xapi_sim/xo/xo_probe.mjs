// Drives Xen Orchestra's `xen-api` client against the XAPI simulator and reports what
// that client sees, one JSON object per line on stdout:
//   {"kind": "ready", "host", "counts": {type: n}}  once connected and every object read
//   {"kind": "add"|"update"|"remove", "type", "uuid", "name"}  for each cache change
//   {"kind": "session"}  at each login
//   {"kind": "object", "type", "uuid", "value"}  answering `get TYPE UUID` on stdin
//   {"kind": "result", "value"} or {"kind": "result", "code", "params"}  answering
//     `async METHOD UUID ARG…` (the object's ref first, each ARG as JSON) on stdin, run
//     with XO's callAsync: Async.METHOD, the task awaited through events, then destroyed
//   {"kind": "put", "result"} or {"kind": "put", "error"}  answering `put VDI_UUID FILE`:
//     the file's bytes into that VDI with putResource (PUT /import_raw_vdi, raw, a task)
// Certificates are checked (NODE_EXTRA_CA_CERTS names the simulator's): no
// allowUnauthorized. Usage: node xo_probe.mjs URL USER PASSWORD; `quit` on stdin ends it.
import { createReadStream, statSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { createClient } from 'xen-api'

const [url, user, password] = process.argv.slice(2)
const say = line => process.stdout.write(JSON.stringify(line) + '\n')

const xapi = createClient({ url, auth: { user, password }, allowUnauthorized: false })
xapi.on('sessionId', () => say({ kind: 'session' }))

for (const kind of ['add', 'update', 'remove']) {
  xapi.objects.on(kind, items => {
    for (const [id, object] of Object.entries(items)) {
      say({ kind, type: object?.$type ?? null, uuid: object?.uuid ?? id, name: object?.name_label ?? null })
    }
  })
}

await xapi.connect()
await xapi.objectsFetched
const counts = {}
for (const object of Object.values(xapi.objects.all)) {
  counts[object.$type] = (counts[object.$type] ?? 0) + 1
}
say({ kind: 'ready', host: xapi._url.hostname, counts })

for await (const line of createInterface({ input: process.stdin })) {
  const [command, type, uuid] = line.trim().split(/\s+/)
  if (command === 'quit') {
    break
  }
  if (command === 'async') {
    const [, method, uuid, ...rest] = line.trim().split(/\s+/)
    const object = xapi.getObjectByUuid(uuid)
    try {
      const value = await xapi.callAsync(method, object.$ref, ...rest.map(arg => JSON.parse(arg)))
      say({ kind: 'result', value })
    } catch (error) {
      say({ kind: 'result', code: error.code ?? String(error), params: error.params ?? [] })
    }
    continue
  }
  if (command === 'put') {
    const stream = createReadStream(uuid)
    stream.length = statSync(uuid).size // a known length: no 1 PiB Content-Length hack
    try {
      const result = await xapi.putResource(stream, '/import_raw_vdi', {
        query: { vdi: type, format: 'raw' },
        task: true,
      })
      say({ kind: 'put', result })
    } catch (error) {
      say({ kind: 'put', error: error?.code ?? String(error) })
    }
  }
  if (command === 'get') {
    const object = xapi.getObjectByUuid(uuid, null)
    say({ kind: 'object', type, uuid, value: object === null ? null : { ...object } })
  }
}
await xapi.disconnect()
process.exit(0)
