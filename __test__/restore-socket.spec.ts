// The restore socket against a peer that is not a well-behaved `criu restore`
// (workloads/restore_peer.c plays it, one scripted message at a time): whatever it
// does, the daemon ends within --connect-timeout of it, with one line naming the
// pid and what is wrong, exit 1, and never a summary claiming pages were served.
import test from 'ava'
import { existsSync, mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { lazyPages } from './helpers/cli'
import { dumpAndWait } from './helpers/dumped'
import { LPW } from './helpers/paths'
import { run, waitFor } from './helpers/proc'
import { Workload } from './helpers/workload'

const PEER = join(LPW, '..', 'restore-peer')
let w: Workload
let main: number
let child: number
let zombie: number

test.before(async () => {
  w = await Workload.start('restore-socket', ['tree', '--mib', '4', '--children', '1', '--zombie'])
  const report = await dumpAndWait(w)
  ;[main, child] = report.tasks.map((t: { pid: number }) => t.pid)
  zombie = report.zombies[0]
})

/** A daemon with its own work dir, the peer's steps once it listens; the daemon's result. */
async function scenario(name: string, steps: (string | number)[], timeout = 2) {
  const work = join(w.dir, `work-${name}`)
  rmSync(work, { recursive: true, force: true })
  mkdirSync(work)
  const started = Date.now()
  // A daemon that hangs fails the test (killed after 20 s) instead of hanging it.
  const daemon = lazyPages(['-D', w.images, '-W', work, '--connect-timeout', String(timeout)], 20_000)
  const sock = join(work, 'lazy-pages.socket')
  await waitFor('the socket', () => existsSync(sock), 10_000)
  const peer = run(PEER, [sock, ...steps.map(String)], { timeoutMs: 30_000 })
  const r = await daemon
  await peer
  const lines = r.stderr.split('\n').filter((l) => l.trim())
  return { ...r, lines, ms: Date.now() - started }
}

function assertOneLine(t: import('ava').ExecutionContext, r: Awaited<ReturnType<typeof scenario>>, re: RegExp) {
  t.is(r.code, 1, r.stderr)
  t.is(r.lines.length, 1, r.stderr)
  t.log(r.lines[0])
  t.regex(r.lines[0], re)
  t.notRegex(r.stdout + r.stderr, /accounted for/)
}

test('a peer that connects and says nothing is dropped after --connect-timeout', async (t) => {
  const r = await scenario('silent', ['hold'])
  assertOneLine(t, r, /timed out waiting for a task pid from criu restore \(the handshake on .*lazy-pages\.socket must end within 2 s\)/)
  t.notRegex(r.stderr, /from criu restore from criu restore/)
  t.true(r.ms < 10_000, `took ${r.ms} ms`)
})

test('a peer that sends every task and then goes silent is dropped after --connect-timeout', async (t) => {
  const r = await scenario('no-finish', [`pid:${main}`, 'uffd', `pid:${child}`, 'uffd', `pid:${-zombie}`, 'hold'])
  assertOneLine(t, r, /timed out waiting for RESTORE_FINISHED from criu restore \(the handshake .* within 2 s\)/)
  t.true(r.ms < 10_000, `took ${r.ms} ms`)
})

test('the same pid twice: one line naming it, exit 1', async (t) => {
  const r = await scenario('twice', [`pid:${main}`, 'uffd', `pid:${main}`, 'uffd', 'hold'])
  assertOneLine(t, r, new RegExp(`criu restore sent task ${main} twice`))
})

test('a live pid announced as a zombie: one line naming it, exit 1', async (t) => {
  const r = await scenario('live-zombie', [`pid:${-main}`, `pid:${child}`, 'uffd', `pid:${-zombie}`, 'finish', 'hold'])
  assertOneLine(t, r, new RegExp(`criu restore sent task ${main} as a zombie, but it is a live process`))
})

test('more tasks than the pstree has: one line naming the extra pid, exit 1', async (t) => {
  const r = await scenario('extra', [`pid:${main}`, 'uffd', `pid:${child}`, 'uffd', `pid:${-zombie}`, 'pid:4242', 'uffd', 'finish', 'hold'])
  assertOneLine(t, r, /criu restore sent task 4242 after all 3 tasks of the pstree/)
})

for (const [kind, shown] of [['eventfd', /anon_inode:\[eventfd\]/], ['pipe', /pipe:\[\d+\]/], ['devnull', /\/dev\/null/]] as const) {
  test(`a ${kind} in place of a uffd: one line naming the task and the descriptor, exit 1`, async (t) => {
    const r = await scenario(`fd-${kind}`, [`pid:${main}`, kind, 'hold'])
    assertOneLine(t, r, new RegExp(`task ${main}: the descriptor it sent is ${shown.source}, not a userfaultfd`))
  })
}
