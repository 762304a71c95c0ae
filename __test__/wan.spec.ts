// Post-copy over an emulated wide-area path: every page crosses the bench's relay
// (src/bench/relay.ts), which delays each direction by 5 ms plus up to 1 ms of jitter (a
// 10 ms round trip; this kernel has no netem). A real CRIU dump of a process tree, our
// page server, our client daemon, `criu restore --lazy-pages`; every byte checked by the
// processes themselves while their pages arrive and again from outside through
// /proc/PID/mem; the daemon's counts reconcile. Then a connection cut mid-restore with
// --reconnect, and TLS with an urgent connection, over the same kind of path. First, the
// relay itself: delay, order under jitter, rate, half-close and reset both ways.
import test from 'ava'
import { once } from 'node:events'
import { existsSync, mkdirSync, rmSync } from 'node:fs'
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net'
import { join } from 'node:path'

import { bulkThroughRelay, monoMs, pingThroughRelay, Relay } from '../src/bench/relay'
import { assertCleanSummary, assertMemoryAsDumped, checksums } from './helpers/check'
import { lazyPages } from './helpers/cli'
import { restoreLogTail, startLazyRestore } from './helpers/criu'
import { readStats, startDaemon } from './helpers/daemon'
import { dumpAndWait } from './helpers/dumped'
import { describeViews, viewWorkload } from './helpers/memview'
import { startPageServer } from './helpers/page-server'
import { CRIU, LPW, ROOT, SCRATCH } from './helpers/paths'
import { run, waitFor } from './helpers/proc'
import { Workload } from './helpers/workload'

const PAGE = 4096
/** A 10 ms round trip with a millisecond of jitter each way. */
const WAN = { delayMs: 5, jitterMs: 1 }
const PKI = join(SCRATCH, `wan-pki-${process.pid}`)

test.before(async () => {
  for (const [what, path] of [
    ['CRIU (scripts/install-criu.sh)', CRIU],
    ['the lpw workload (make -C workloads)', LPW],
  ])
    if (!existsSync(path)) throw new Error(`missing ${what}: ${path}`)
  rmSync(PKI, { recursive: true, force: true })
  mkdirSync(PKI, { recursive: true })
  const r = await run('bash', [join(ROOT, 'scripts', 'make-test-certs.sh'), PKI])
  if (r.code !== 0) throw new Error(`make-test-certs.sh: ${r.stderr}`)
})

test.after.always(() => rmSync(PKI, { recursive: true, force: true }))

/** CRIU's --tls options with one of the test PKI's certificates (as tls.spec.ts). */
function tls(name: string): string[] {
  const f = (file: string) => join(PKI, file)
  return ['--tls', '--tls-cacert', f('ca.pem'), '--tls-cacrl', f('crl.pem'), '--tls-cert', f(`${name}.pem`), '--tls-key', f(`${name}.key`)]
}

async function listen(onConnection: (s: Socket) => void): Promise<Server> {
  const server = createServer({ allowHalfOpen: true }, onConnection)
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return server
}

const portOf = (s: Server) => (s.address() as AddressInfo).port

/** Resolves with the socket's error code once it errs, or 'closed' if it closes without one. */
const ended = (s: Socket) =>
  new Promise<string>((resolve) => {
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message))
    s.once('close', () => resolve('closed'))
  })

test('the relay: each direction delayed, order kept under jitter, rate limited, half-close and reset carried both ways', async (t) => {
  // Order and delay: 300 writes of random sizes arrive as one identical byte stream, the
  // first no sooner than the delay after it was written.
  const received: Buffer[] = []
  let firstAt = 0
  const sink = await listen((s) => {
    s.on('data', (d: Buffer) => {
      firstAt ||= monoMs()
      received.push(d)
    })
    s.on('end', () => s.end())
  })
  t.teardown(() => void sink.close())
  const relay = await Relay.start({ delayMs: 5, jitterMs: 3, target: { host: '127.0.0.1', port: portOf(sink) } })
  t.teardown(() => relay.close())
  const sent: Buffer[] = []
  const c = connect({ host: '127.0.0.1', port: relay.port, allowHalfOpen: true })
  await once(c, 'connect')
  const t0 = monoMs()
  let seq = 0
  for (let i = 0; i < 300; i++) {
    const b = Buffer.alloc(1 + Math.floor(Math.random() * 3000))
    for (let j = 0; j < b.length; j++) b[j] = seq++ & 0xff
    sent.push(b)
    c.write(b)
    // Spread over a few milliseconds, so that jitter could reorder them if it were allowed to.
    if (i % 30 === 0) await new Promise((r) => setImmediate(r))
  }
  c.end()
  await once(c, 'end')
  t.true(firstAt - t0 >= 5, `first byte after ${(firstAt - t0).toFixed(2)} ms`)
  t.true(Buffer.concat(received).equals(Buffer.concat(sent)), 'the same bytes in the same order')
  t.is(relay.stats.toTarget, Buffer.concat(sent).length)
  t.is(relay.stats.toClient, 0)
  await waitFor('both sockets of the connection closed', () => relay.stats.open === 0)
  t.is(relay.stats.accepted, 1)

  // Round trip: twice the delay, plus jitter, plus the relay's own cost.
  const rtts = await pingThroughRelay({ delayMs: 5, jitterMs: 1 }, 10)
  t.true(rtts[0] >= 10, `fastest round trip ${rtts[0].toFixed(2)} ms`)
  t.true(rtts[5] < 10 + 2 + 5, `median round trip ${rtts[5].toFixed(2)} ms`)

  // Rate: 4 MiB at 100 Mbit/s is 0.34 s (the 128 KiB bucket lets 10 ms of it out at once).
  const secs = await bulkThroughRelay({ delayMs: 0, rateBytesPerSec: 100e6 / 8 }, 4 * 2 ** 20)
  t.true(secs >= 0.3 && secs < 2, `4 MiB at 100 Mbit/s in ${secs.toFixed(3)} s`)

  // Half-close: the client's FIN reaches the server after the delay while the server
  // still answers; then the server's FIN reaches the client.
  const half = await listen((s) => {
    s.on('end', () => {
      s.write('after your FIN')
      s.end()
    })
    s.resume()
  })
  t.teardown(() => void half.close())
  const r2 = await Relay.start({ ...WAN, target: { host: '127.0.0.1', port: portOf(half) } })
  t.teardown(() => r2.close())
  const h = connect({ host: '127.0.0.1', port: r2.port, allowHalfOpen: true })
  await once(h, 'connect')
  let got = ''
  h.on('data', (d) => (got += d))
  const hEnd = once(h, 'end')
  const sentFin = monoMs()
  h.end('bye')
  await hEnd
  t.is(got, 'after your FIN')
  t.true(monoMs() - sentFin >= 10, 'the FIN went and the answer came back, each after the delay')

  // Resets, both ways: whoever resets, the other side gets ECONNRESET, after the delay.
  let serverSide: Socket | undefined
  const resetter = await listen((s) => {
    serverSide = s
    s.on('error', () => undefined)
  })
  t.teardown(() => void resetter.close())
  const r3 = await Relay.start({ ...WAN, target: { host: '127.0.0.1', port: portOf(resetter) } })
  t.teardown(() => r3.close())
  const a = connect({ host: '127.0.0.1', port: r3.port })
  await once(a, 'connect')
  a.write('x')
  await waitFor('the server side of the connection', () => serverSide)
  const aEnded = ended(a)
  const resetAt = monoMs()
  serverSide!.resetAndDestroy()
  t.is(await aEnded, 'ECONNRESET', 'server reset reaches the client')
  t.true(monoMs() - resetAt >= 5, 'after the delay')
  serverSide = undefined
  const b = connect({ host: '127.0.0.1', port: r3.port })
  await once(b, 'connect')
  b.write('x')
  const s = await waitFor('the server side of the second connection', () => serverSide)
  const sEnded = ended(s)
  b.resetAndDestroy()
  t.is(await sEnded, 'ECONNRESET', 'client reset reaches the server')

  // A target that refuses: the client's connection is reset, not left hanging.
  const closed = await listen(() => undefined)
  const deadPort = portOf(closed)
  await new Promise((r) => closed.close(r))
  const r4 = await Relay.start({ ...WAN, target: { host: '127.0.0.1', port: deadPort } })
  t.teardown(() => r4.close())
  const d = connect({ host: '127.0.0.1', port: r4.port })
  t.is(await ended(d), 'ECONNRESET')
})

/** A tree dumped, split (what a destination host gets), with its checksums from before the dump. */
async function splitTree(name: string, args: string[]) {
  const w = await Workload.start(name, args)
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  const out = join(w.dir, 'split')
  const split = await lazyPages(['split', '-D', w.images, '-o', out])
  if (split.code !== 0) throw new Error(`lazy-pages split: ${split.stderr}`)
  return { w, before, report, out, lazyBytes: report.total.lazy * PAGE }
}

/** Every page of every role's regions, read from outside through /proc/PID/mem, holds its dumped bytes. */
async function assertEveryPageFromOutside(t: import('ava').ExecutionContext, w: Workload, roles: string[]) {
  const views = await viewWorkload(w, roles)
  for (const v of views) t.true(v.data === v.region.pages && v.eio + v.zero + v.wrong === 0, describeViews([v]))
}

test('a process tree restored through a 10 ms round trip: every byte checked while it arrives and after, every lazy page accounted once', async (t) => {
  const { w, before, report, out, lazyBytes } = await splitTree('wan-tree', ['tree', '--mib', '16', '--children', '3'])
  const roles = [...before.keys()]
  t.is(roles.length, 4, 'main and three children')
  const server = await startPageServer(w.images)
  t.teardown(() => void server.child.kill('SIGKILL'))
  const relay = await Relay.start({ ...WAN, target: { host: '127.0.0.1', port: server.port } })
  t.teardown(() => relay.close())
  const daemon = await startDaemon(out, ['--page-server', '--address', '127.0.0.1', '--port', String(relay.port)])
  t.teardown(() => void daemon.child.kill('SIGKILL'))
  t.is(await startLazyRestore(out).done, 0, restoreLogTail(out))
  // The four processes read all their memory at once while it is still arriving: faults
  // of four tasks through the delayed path, next to the background transfer.
  const during = await w.verify(roles)
  for (const v of during) {
    t.true(v.ok, v.line)
    t.is(/fnv=([0-9a-f]+)/.exec(v.line)?.[1], before.get(v.role), `${v.role}: read while arriving, as dumped`)
  }
  const exit = await daemon.exit
  const stats = readStats(out)
  assertCleanSummary(t, exit, daemon.stderr(), stats)
  t.is(stats.tasks.length, 4)
  t.is(stats.total.lazy, report.total.lazy)
  t.is(stats.total.faulted + stats.total.background, report.total.lazy, 'every lazy page copied once, over the relay')
  t.true(stats.total.faulted > 0, `faults were served too (${stats.total.faulted})`)
  t.is(relay.stats.accepted, 1)
  t.true(relay.stats.toClient >= lazyBytes, `the relay carried ${relay.stats.toClient} bytes to the client, ${lazyBytes} of lazy pages`)
  await assertEveryPageFromOutside(t, w, roles)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
  t.is(await server.exit, 0, server.output())
  t.regex(server.output(), /1 sessions \(0 failed\)/)
})

test('--reconnect over the 10 ms path: the connection cut mid-restore, the daemon reconnects through the relay and finishes, every byte as dumped', async (t) => {
  const { w, before, report, out, lazyBytes } = await splitTree('wan-reconnect', ['tree', '--mib', '16', '--children', '1'])
  const roles = [...before.keys()]
  const server = await startPageServer(w.images, ['--keep-serving'])
  t.teardown(() => void server.child.kill('SIGKILL'))
  // 50 Mbit/s: the transfer takes seconds however fast the client, so the cut lands in it.
  const relay = await Relay.start({ ...WAN, rateBytesPerSec: 50e6 / 8, target: { host: '127.0.0.1', port: server.port } })
  t.teardown(() => relay.close())
  const daemon = await startDaemon(out, ['--page-server', '--address', '127.0.0.1', '--port', String(relay.port), '--reconnect', '30'])
  t.teardown(() => void daemon.child.kill('SIGKILL'))
  let exited = false
  void daemon.exit.then(() => (exited = true))
  t.is(await startLazyRestore(out).done, 0, restoreLogTail(out))
  const verifying = w.verify(roles)
  await waitFor('a quarter of the lazy pages through the relay', () => relay.stats.toClient >= lazyBytes / 4, 60_000)
  t.false(exited, 'the daemon was still restoring')
  const carried = relay.stats.toClient
  t.true(carried < lazyBytes, `cut before the transfer ended (${carried} of ${lazyBytes} bytes)`)
  t.is(relay.cutAll(), 1, 'one connection, reset at both ends')
  for (const v of await verifying) {
    t.true(v.ok, v.line)
    t.is(/fnv=([0-9a-f]+)/.exec(v.line)?.[1], before.get(v.role), `${v.role}: read across the cut, as dumped`)
  }
  const exit = await daemon.exit
  const stats = readStats(out)
  assertCleanSummary(t, exit, daemon.stderr(), stats)
  t.is(stats.total.faulted + stats.total.background, report.total.lazy, 'every lazy page copied once, across the reconnect')
  t.true(relay.stats.accepted >= 2, `reconnected through the relay (${relay.stats.accepted} connections)`)
  await assertEveryPageFromOutside(t, w, roles)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
  t.true(server.child.exitCode === null, 'the page server serves on after the cut')
  server.child.kill('SIGTERM')
  t.is(await server.exit, 0, server.output())
})

test('--tls with an urgent connection over the 10 ms path: two TLS sessions through the relay, every byte as dumped', async (t) => {
  const { w, before, report, out } = await splitTree('wan-tls', ['tree', '--mib', '8', '--children', '1'])
  const roles = [...before.keys()]
  // One client, two connections: a server without --keep-serving takes both and exits after.
  const server = await startPageServer(w.images, tls('server'))
  t.teardown(() => void server.child.kill('SIGKILL'))
  const relay = await Relay.start({ ...WAN, target: { host: '127.0.0.1', port: server.port } })
  t.teardown(() => relay.close())
  const daemon = await startDaemon(out, ['--page-server', '--address', '127.0.0.1', '--port', String(relay.port), '--urgent-connection', ...tls('client')])
  t.teardown(() => void daemon.child.kill('SIGKILL'))
  t.is(await startLazyRestore(out).done, 0, restoreLogTail(out))
  const during = await w.verify(roles)
  for (const v of during) t.true(v.ok, v.line)
  const exit = await daemon.exit
  const stats = readStats(out)
  assertCleanSummary(t, exit, daemon.stderr(), stats)
  t.is(stats.total.faulted + stats.total.background, report.total.lazy, 'every lazy page once, over TLS through the relay')
  t.is(relay.stats.accepted, 2, 'a bulk and an urgent connection')
  await assertEveryPageFromOutside(t, w, roles)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
  t.is(await server.exit, 0, server.output())
  t.regex(server.output(), /2 sessions \(0 failed\)/, 'a bulk and an urgent session, both closed cleanly')
})
