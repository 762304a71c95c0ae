// `lazy-pages page-server --keep-serving` against connections that never ask for
// anything or ask one byte a second, from many addresses, and a crowd from one
// address: a real restore through it still gets a session and completes, every byte
// as dumped, in about the time it takes unattacked.
import test from 'ava'
import { connect, type Socket } from 'node:net'
import { join } from 'node:path'

import { assertCleanSummary, assertMemoryAsDumped, checksums } from './helpers/check'
import { lazyPages } from './helpers/cli'
import { lazyRestore } from './helpers/daemon'
import { dumpAndWait, killAndWait } from './helpers/dumped'
import { startPageServer } from './helpers/page-server'
import { sleep, waitFor } from './helpers/proc'
import { Workload } from './helpers/workload'

/** A connection to 127.0.0.1:port from `from` (anything in 127/8 is ours); resolves once connected. */
function open(port: number, from: string, sockets: Socket[]): Promise<Socket> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: from })
    sockets.push(s)
    s.on('error', () => {})
    s.on('connect', () => resolve(s))
    s.on('close', () => resolve(s))
  })
}

/** Waits up to 10 s; a server that never gets there is caught by what follows (the restore). */
const settle = (what: string, probe: () => boolean) => waitFor(what, probe, 10_000).catch(() => undefined)

const count = (text: string, re: RegExp) => (text.match(new RegExp(re, 'g')) ?? []).length

test('64 idle and 64 slow clients, then a crowd from one address: a real restore through the page server still completes', async (t) => {
  const w = await Workload.start('ps-hostile', ['dense', '--mib', '64'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  const out = join(w.dir, 'split')
  t.is((await lazyPages(['split', '-D', w.images, '-o', out])).code, 0)
  const server = await startPageServer(w.images, ['--keep-serving'])
  const daemonArgs = ['--page-server', '--address', '127.0.0.1', '--port', String(server.port)]
  const sockets: Socket[] = []
  const timers: NodeJS.Timeout[] = []
  try {
    // The time a restore takes here, unattacked.
    let started = Date.now()
    let r = await lazyRestore(out, daemonArgs)
    const normalMs = Date.now() - started
    assertCleanSummary(t, r.exit, r.stderr, r.stats)
    await assertMemoryAsDumped(t, w, before)
    await killAndWait(w, report)

    // 64 connections that never send a byte, each from its own address: every slot.
    for (let i = 1; i <= 64; i++) await open(server.port, `127.0.1.${i}`, sockets)
    await waitFor('64 idle sessions', () => count(server.output(), /session from 127\.0\.1\./) >= 64, 10_000)
    // Only a session idle for a second may be cut to make room.
    await sleep(1500)
    // 64 that send one byte a second (a 24-byte header takes 24 s), each from its own address.
    for (let i = 1; i <= 64; i++) {
      const s = await open(server.port, `127.0.2.${i}`, sockets)
      timers.push(setInterval(() => s.writable && s.write(Buffer.from([7])), 1000))
    }
    await settle('64 slow sessions', () => count(server.output(), /session from 127\.0\.2\./) >= 64)
    await sleep(1500)
    // 40 from one address: past the per-address cap, they are refused.
    for (let i = 0; i < 40; i++) await open(server.port, '127.0.3.1', sockets)
    await settle('the crowd from 127.0.3.1 capped', () => count(server.output(), /refused 127\.0\.3\.1:\d+: \d+ sessions from this address already/) >= 8)
    started = Date.now()
    r = await lazyRestore(out, daemonArgs)
    const attackedMs = Date.now() - started
    assertCleanSummary(t, r.exit, r.stderr, r.stats)
    t.is(r.stats!.total.faulted + r.stats!.total.background, report.total.lazy, 'every lazy page once, over the wire')
    await assertMemoryAsDumped(t, w, before)
    t.log(`restore: ${normalMs} ms unattacked, ${attackedMs} ms with 64 idle + 64 slow + 40 capped connections`)
    // Not a benchmark: only "no timeout waited out" (the slow clients' deadline is 10 s).
    t.true(attackedMs < normalMs + 5000, `${attackedMs} ms attacked vs ${normalMs} ms`)
    const out2 = server.output()
    t.true(count(out2, /closed to make room for a new client/) >= 64, 'idle sessions made room')
    t.true(count(out2, /refused 127\.0\.3\.1:\d+: \d+ sessions from this address already/) >= 8, 'one address is capped')
    t.log(`server: ${count(out2, /closed to make room/)} idle sessions cut to make room, ${count(out2, /refused 127\.0\.3\.1/)} capped`)
  } finally {
    for (const tm of timers) clearInterval(tm)
    for (const s of sockets) s.destroy()
    server.child.kill('SIGTERM')
    await server.exit
    await killAndWait(w, report)
  }
})

test('a client that trickles its request is cut after the request deadline', async (t) => {
  const w = await Workload.start('ps-slow', ['dense', '--mib', '4'])
  await dumpAndWait(w)
  const server = await startPageServer(w.images, ['--keep-serving'])
  const sockets: Socket[] = []
  try {
    const s = await open(server.port, '127.0.4.1', sockets)
    const closed = new Promise<number>((resolve) => s.on('close', () => resolve(Date.now())))
    const startedAt = Date.now()
    const timer = setInterval(() => s.writable && s.write(Buffer.from([7])), 1000)
    const at = await closed
    clearInterval(timer)
    t.true(at - startedAt >= 9000 && at - startedAt < 14_000, `cut after ${at - startedAt} ms (deadline 10 s)`)
    await waitFor('the session report', () => /session from 127\.0\.4\.1:\d+ failed .*too slow/.test(server.output()), 5000)
  } finally {
    for (const s of sockets) s.destroy()
    server.child.kill('SIGTERM')
    await server.exit
  }
})
