// A daemon that stops before every lazy page is in (its page server gone, told to
// abort) never leaves the restored process reading zeros: every page still unserved
// is poisoned before the uffds close, so the process dies by SIGBUS when it touches
// one, and never reports a checksum, right or wrong.
import test, { type ExecutionContext } from 'ava'
import { readFileSync, rmSync } from 'node:fs'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { join } from 'node:path'

import { checksums } from './helpers/check'
import { lazyPages } from './helpers/cli'
import { restoreLogTail, startLazyRestore } from './helpers/criu'
import { startDaemon, type DaemonRun } from './helpers/daemon'
import { dumpAndWait, killAndWait } from './helpers/dumped'
import { startPageServer } from './helpers/page-server'
import { alive, sleep, waitFor } from './helpers/proc'
import { BUS_ADRERR, BUS_MCEERR_AR, SIGBUS, SigbusTrace } from './helpers/sigbus'
import { Workload } from './helpers/workload'

// With --fill-delay only faults are served for that long: the kill or the abort lands
// while nearly every page is still missing, every time.
const FILL_DELAY_MS = 5000
const TRACE = `lazy-pages-test-${process.pid}`
const NEVER_SERVED = /; (\d+) lazy pages were never served: (?:all poisoned: a restored process that touches one gets SIGBUS, never zeros|(\d+) poisoned \(SIGBUS on touch\); the rest belonged to tasks that were exiting)$/

type Report = Awaited<ReturnType<typeof dumpAndWait>>

/** The daemon's exit, or a failure with what it printed if it hangs. */
async function exitWithin(daemon: DaemonRun, ms: number) {
  const exit = await Promise.race([daemon.exit, sleep(ms).then(() => undefined)])
  if (!exit) throw new Error(`daemon still running ${ms} ms later: ${daemon.stderr()}`)
  return exit
}

/**
 * The failure is one line, the last, told once (the only line that says "poisoned"),
 * matching `what`, ending with how many pages were never served: nearly all of them,
 * as only faults were served before the stop (the stack and such, not the region).
 * All of them are poisoned, except with `dying`: a process woken by the poisoning of
 * the page it waits on dies by SIGBUS at once, and the rest of its pages may find no
 * process left to poison.
 */
function assertPoisonedLine(t: ExecutionContext, stderr: string, report: Report, what: RegExp, dying = false) {
  const lines = stderr.trim().split('\n')
  const last = lines[lines.length - 1]
  t.deepEqual(
    lines.filter((l) => /poisoned/.test(l)),
    [last],
    `one line says poisoned, the last: ${stderr}`,
  )
  t.regex(last, what)
  const m = NEVER_SERVED.exec(last)
  t.truthy(m, `ends with how many pages were never served and poisoned: ${last}`)
  const unserved = Number(m?.[1] ?? 0)
  const poisoned = m?.[2] === undefined ? unserved : Number(m[2])
  t.true(unserved <= report.total.lazy && unserved >= report.total.lazy * 0.99, `${unserved} unserved of ${report.total.lazy} lazy pages`)
  if (!dying) t.is(poisoned, unserved, 'all poisoned')
  t.true(poisoned >= unserved * 0.99, `${poisoned} of ${unserved} unserved pages poisoned`)
  return { unserved, poisoned }
}

/**
 * A signal handler's frame goes on the stack below where the idle process sleeps: on
 * pages of the dump that nothing has touched since the restore. Delivering a signal
 * while the daemon serves makes the kernel fault them in, so that SIGUSR1 reaches its
 * handler after the stop. (With the frame's page poisoned, the kernel cannot write the
 * frame: the process dies by SIGSEGV, SI_KERNEL, before it touches its memory.) lpw's
 * dense shape ignores SIGUSR2.
 */
async function settleSignalStack(t: ExecutionContext, pid: number) {
  process.kill(pid, 'SIGUSR2')
  await sleep(500)
  t.true(alive(pid), `restored pid ${pid} took SIGUSR2`)
}

/** Dead: a zombie (init reaps the restored tree, and slowly here) or gone. */
function dead(pid: number): boolean {
  try {
    return /^\d+ \(.*\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return true
  }
}

/** Send SIGUSR1 (verify) and wait until the restored process reports or dies. */
async function askToVerify(w: Workload, pid: number) {
  rmSync(join(w.state, 'result-main.txt'), { force: true })
  process.kill(-pid, 'SIGUSR1')
  return waitFor('the restored process to die or to report', () => (w.verdict('main') ? 'verdict' : dead(pid) && 'dead'), 20_000)
}

/**
 * The restored process, asked to check its memory, dies by SIGBUS on its first
 * unserved page. A verdict of any kind (ok, or a checksum other than the dumped one)
 * would mean it read zeros where its memory never arrived.
 */
function assertDiedBySigbus(t: ExecutionContext, w: Workload, pid: number, outcome: string, dumpedFnv: string, trace: SigbusTrace | undefined) {
  const verdict = w.verdict('main')
  t.is(outcome, 'dead', 'died instead of reporting')
  t.is(
    verdict,
    undefined,
    verdict && `a verdict from unserved memory: ${verdict.line} (dumped fnv=${dumpedFnv}: ${verdict.line.includes(`fnv=${dumpedFnv}`) ? 'same' : 'different, zeros read'})`,
  )
  if (!trace) {
    t.log('no tracefs: the process died without a verdict; the signal that killed it is not observed')
    return
  }
  // The kernel's own account: a SIGBUS for a touch of a poisoned page (BUS_MCEERR_AR
  // with CONFIG_MEMORY_FAILURE, else BUS_ADRERR), taken with the default action.
  const events = trace.events(pid)
  const generated = events.find((e) => e.event === 'signal_generate')
  const delivered = events.find((e) => e.event === 'signal_deliver')
  const all = events.map((e) => e.line).join(' | ') || 'none'
  t.is(generated?.sig, SIGBUS, `the first fatal signal generated for ${pid} is SIGBUS: ${all}`)
  t.true(generated?.code === BUS_MCEERR_AR || generated?.code === BUS_ADRERR, `si_code of a poisoned page: ${all}`)
  t.is(delivered?.sig, SIGBUS, `SIGBUS taken by ${pid}: ${all}`)
  t.is(delivered?.handler, '0', `SIG_DFL: it killed the process: ${all}`)
  t.log(`pid ${pid}: ${all}`)
}

/** Dump `mib` MiB of lpw dense, split it, serve it with our page server. */
async function remoteDump(name: string, mib: number) {
  const w = await Workload.start(name, ['dense', '--mib', String(mib)])
  const before = (await checksums(w)).get('main')!
  const report = await dumpAndWait(w)
  const out = join(w.dir, 'split')
  const split = await lazyPages(['split', '-D', w.images, '-o', out])
  if (split.code !== 0) throw new Error(`lazy-pages split: ${split.stderr}`)
  const server = await startPageServer(w.images)
  const daemonArgs = ['--page-server', '--address', '127.0.0.1', '--port', String(server.port), '--fill-delay', String(FILL_DELAY_MS)]
  // One way the daemon can name the dead peer: `task PID: pages at ADDR: page server A:P closed the connection (...)`.
  const peer = `page server 127\\.0\\.0\\.1:${server.port} closed the connection`
  return { w, before, report, pid: report.tasks[0].pid as number, out, server, daemonArgs, peer }
}

/**
 * A remote restore (our daemon, `--fill-delay`) whose page server is `kill -9`ed once the
 * restored process's signal stack is in; `then` runs after the kill. Cleans up after.
 */
async function withServerKilled(
  t: ExecutionContext,
  name: string,
  mib: number,
  then: (r: Awaited<ReturnType<typeof remoteDump>> & { daemon: DaemonRun; killedAt: number; trace: SigbusTrace | undefined }) => Promise<void>,
) {
  const r = await remoteDump(name, mib)
  const trace = SigbusTrace.open(TRACE)
  let daemon: DaemonRun | undefined
  try {
    daemon = await startDaemon(r.out, r.daemonArgs)
    t.is(await startLazyRestore(r.out).done, 0, restoreLogTail(r.out))
    await settleSignalStack(t, r.pid)
    const killedAt = Date.now()
    r.server.child.kill('SIGKILL')
    await r.server.exit
    await then({ ...r, daemon, killedAt, trace })
  } finally {
    daemon?.child.kill('SIGKILL')
    r.server.child.kill('SIGKILL')
    trace?.close()
    await killAndWait(r.w, r.report)
  }
}

test('remote: the page server killed during --fill-delay, no --reconnect: exit 1 at once, one line naming the peer, unserved pages poisoned, the process dies by SIGBUS', async (t) => {
  await withServerKilled(t, 'unserved-remote', 256, async ({ w, before, report, pid, peer, daemon, killedAt, trace }) => {
    // Nothing is asked during --fill-delay, but the socket is watched all the same:
    // the drop ends the daemon at once, not when the fill would next ask.
    const exit = await exitWithin(daemon, FILL_DELAY_MS + 10_000)
    t.is(exit.code, 1, daemon.stderr())
    t.true(exit.at - killedAt < 1500, `exited ${exit.at - killedAt} ms after the kill, within the ${FILL_DELAY_MS} ms fill delay`)
    const { unserved } = assertPoisonedLine(t, daemon.stderr(), report, new RegExp(`^lazy-pages: .*${peer}`))
    t.log(`${unserved} of ${report.total.lazy} lazy pages poisoned; daemon exited ${exit.at - killedAt} ms after the kill`)
    t.log(daemon.stderr().trim().split('\n').pop())
    assertDiedBySigbus(t, w, pid, await askToVerify(w, pid), before, trace)
  })
})

test('remote: a fault waiting on a page server that died: its page is poisoned, not left waiting, and the process dies by SIGBUS', async (t) => {
  await withServerKilled(t, 'unserved-fault', 64, async ({ w, before, report, pid, peer, daemon, trace }) => {
    // Still within the fill delay. The daemon notices the drop at once, so it has
    // usually stopped and poisoned the page before the verification's first touch; if
    // not, that touch's request fails while the process waits on it. Either way the
    // page is poisoned, never left waiting.
    const askedAt = Date.now()
    const outcome = await askToVerify(w, pid)
    const exit = await exitWithin(daemon, FILL_DELAY_MS + 10_000)
    t.is(exit.code, 1, daemon.stderr())
    // The engine stops at once, and the session does not wait out --fill-delay.
    t.true(exit.at - askedAt < 2000, `exited ${exit.at - askedAt} ms after SIGUSR1, within the ${FILL_DELAY_MS} ms fill delay`)
    const { unserved, poisoned } = assertPoisonedLine(t, daemon.stderr(), report, new RegExp(`^lazy-pages: .*${peer}`), true)
    t.log(`${poisoned} of ${unserved} unserved pages poisoned (${report.total.lazy} lazy); daemon exited ${exit.at - askedAt} ms after SIGUSR1`)
    t.log(daemon.stderr().trim().split('\n').pop())
    assertDiedBySigbus(t, w, pid, outcome, before, trace)
  })
})

/**
 * A lying page server: answers the first GET (CRIU 4.1 layout, 24-byte header) with
 * a reply header and then nothing, holding the connection open; later requests get
 * nothing at all.
 */
async function headerThenNothing() {
  const sockets: Socket[] = []
  let answeredAt = 0
  const server = createServer((sock) => {
    sockets.push(sock)
    let got = Buffer.alloc(0)
    sock.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d])
      if (answeredAt || got.length < 24) return
      const reply = Buffer.from(got.subarray(0, 24))
      reply.writeUInt32LE((0x4 << 16) | 6, 0) // PE_PRESENT << 16 | PS_IOV_ADD_F, the rest echoed
      sock.write(reply)
      answeredAt = Date.now()
    })
    sock.on('error', () => {})
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as AddressInfo).port
  const close = () => {
    for (const s of sockets) s.destroy()
    server.close()
  }
  return { port, close, answeredAt: () => answeredAt }
}

test('remote: a page server that sends a reply header and then nothing: --stall-timeout ends it, one line naming the peer, the process dies by SIGBUS', async (t) => {
  const r = await remoteDump('unserved-stall', 16)
  r.server.child.kill('SIGKILL')
  const fake = await headerThenNothing()
  const trace = SigbusTrace.open(TRACE)
  const args = ['--page-server', '--address', '127.0.0.1', '--port', String(fake.port), '--criu-version', '4.1', '--fill-delay', '60000', '--stall-timeout', '2']
  let daemon: DaemonRun | undefined
  let restore: ReturnType<typeof startLazyRestore> | undefined
  try {
    daemon = await startDaemon(r.out, args)
    restore = startLazyRestore(r.out)
    // criu's restorer may fault on a lazy page itself; if not, the first touch is the
    // process's own once it is asked to verify. Either way one GET is all that is asked.
    const restored = await Promise.race([restore.done, daemon.exit.then(() => 'daemon exited')])
    let outcome: string | undefined
    if (restored === 0) outcome = await askToVerify(r.w, r.pid)
    const exit = await exitWithin(daemon, 15_000)
    t.is(exit.code, 1, daemon.stderr())
    t.true(fake.answeredAt() > 0, 'the page server was asked')
    t.true(exit.at - fake.answeredAt() < 4000, `exited ${exit.at - fake.answeredAt()} ms after the reply header, stall timeout 2 s`)
    const port = fake.port
    assertPoisonedLine(t, daemon.stderr(), r.report, new RegExp(`^lazy-pages: .*page server 127\\.0\\.0\\.1:${port}: reading \\d+ pages of task ${r.pid} at 0x[0-9a-f]+: sent nothing for 2s`), true)
    t.log(daemon.stderr().trim().split('\n').pop())
    if (outcome) assertDiedBySigbus(t, r.w, r.pid, outcome, r.before, trace)
  } finally {
    daemon?.child.kill('SIGKILL')
    restore?.kill('SIGKILL')
    fake.close()
    trace?.close()
    await killAndWait(r.w, r.report)
  }
})

test('local: SIGTERM to the daemon mid-restore: exit 1, unserved pages poisoned, the process dies by SIGBUS', async (t) => {
  const w = await Workload.start('unserved-abort', ['dense', '--mib', '64'])
  const before = (await checksums(w)).get('main')!
  const report = await dumpAndWait(w)
  const pid = report.tasks[0].pid
  const trace = SigbusTrace.open(TRACE)
  let daemon: DaemonRun | undefined
  try {
    daemon = await startDaemon(w.images, ['--fill-delay', String(FILL_DELAY_MS)])
    t.is(await startLazyRestore(w.images).done, 0, restoreLogTail(w.images))
    await settleSignalStack(t, pid)
    const abortedAt = Date.now()
    daemon.child.kill('SIGTERM')
    const exit = await exitWithin(daemon, 10_000)
    t.is(exit.code, 1, daemon.stderr())
    t.true(exit.at - abortedAt < 3000, `exited ${exit.at - abortedAt} ms after SIGTERM`)
    t.regex(daemon.stderr(), /Error: SIGTERM: aborting; pages not yet served are poisoned: a restored process that touches one gets SIGBUS\n/)
    // The session joins its engine on the error path too, so the abort reports the count.
    assertPoisonedLine(t, daemon.stderr().replace(/^.*Error: SIGTERM: aborting.*\n/m, ''), report, /^lazy-pages: aborted; /)
    t.log(daemon.stderr().trim().split('\n').slice(-2).join('\n'))
    assertDiedBySigbus(t, w, pid, await askToVerify(w, pid), before, trace)
  } finally {
    daemon?.child.kill('SIGKILL')
    trace?.close()
    await killAndWait(w, report)
  }
})
