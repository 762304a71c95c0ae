// Who the daemon trusts on resume (issue 20). A root daemon restores with a work dir
// that another user can write (a fresh 1777 dir, as `-W /tmp` is), and the other user
// (uid 65534, through setpriv) plays the attacker:
// * item 1: a fake guardian bound at `lazy-pages.guardian` before the daemon starts,
//   answering as an empty guardian (or as a busy one) must never be adopted, handed a
//   uffd, nor stop the daemon or make it name the attacker's chosen pid;
// * item 2: a resume with another dump (other pids) is refused with one line and leaves
//   the guardian holding the uffds, so that the right dump still resumes;
// * item 9: a daemon killed right after criu restore connected: the re-run says at once
//   that the previous restore died instead of waiting out --connect-timeout silently.
import test, { type ExecutionContext } from 'ava'
import { spawn, type ChildProcess } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { assertCleanSummary, assertMemoryAsDumped, checksums } from './helpers/check'
import { restoreLogTail, startLazyRestore } from './helpers/criu'
import { readStats } from './helpers/daemon'
import { dumpAndWait, killAndWait } from './helpers/dumped'
import { DaemonCommand, exitWithin, killGuardian, socketHolders, type DaemonProc } from './helpers/guardian'
import { SCRATCH } from './helpers/paths'
import { alive, waitFor } from './helpers/proc'
import { Workload } from './helpers/workload'

const TREE = ['tree', '--mib', '8', '--children', '1']
const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups']

/** A work dir anyone may write, as /tmp is (sticky, 1777), reachable by uid 65534. */
function openWorkDir(name: string): string {
  const dir = join(SCRATCH, `${name}-wd`)
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  chmodSync(dir, 0o1777)
  return dir
}

// The attacker's guardian: binds the socket, answers every connection as an empty
// guardian (Hello with no tasks, EndOfState) or as a busy one naming pid 4242, and notes
// each datagram it gets (with "fd" when a descriptor came along) in its log.
const FAKE_GUARDIAN = `
import os, socket, struct, sys
path, mode, log = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(path)
os.chmod(path, 0o777)
s.listen(8)
print('listening', os.getpid(), flush=True)
while True:
    c, _ = s.accept()
    if mode == 'busy':
        c.send(b'B' + struct.pack('<I', 4242))
        c.close()
        continue
    c.send(b'H' + struct.pack('<I', os.getpid()) + b'\\0' + struct.pack('<IIII', 0, 0, 0, 0))
    c.send(b'S')
    while True:
        msg, anc, _, _ = c.recvmsg(65536, socket.CMSG_SPACE(64))
        if not msg:
            break
        with open(log, 'a') as f:
            f.write(chr(msg[0]) + (' fd' if anc else '') + '\\n')
`

interface Fake {
  child: ChildProcess
  pid: number
  log: string
}

/** Starts the fake guardian as uid 65534 at `<dir>/lazy-pages.guardian`. */
async function startFakeGuardian(t: ExecutionContext, dir: string, mode: 'empty' | 'busy'): Promise<Fake> {
  const log = join(dir, 'fake-guardian.log')
  const child = spawn('setpriv', [...NOBODY, '/usr/bin/python3', '-c', FAKE_GUARDIAN, join(dir, 'lazy-pages.guardian'), mode, log], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => child.kill('SIGKILL'))
  let out = ''
  child.stdout!.on('data', (d: Buffer) => (out += d))
  child.stderr!.on('data', (d: Buffer) => (out += d))
  const pid = await waitFor(`the fake guardian to listen (${out})`, () => Number(/listening (\d+)/.exec(out)?.[1]) || undefined, 10_000)
  t.is(readFileSync(`/proc/${pid}/status`, 'utf8').match(/^Uid:\s+(\d+)/m)?.[1], '65534', 'the attacker runs as uid 65534')
  return { child, pid, log }
}

interface Restore {
  w: Workload
  before: Map<string, string>
  report: Awaited<ReturnType<typeof dumpAndWait>>
  started: DaemonProc[]
}

async function dumped(t: ExecutionContext, name: string, started: DaemonProc[] = []): Promise<Restore> {
  const w = await Workload.start(name, TREE)
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  t.teardown(async () => {
    for (const d of started) d.child.kill('SIGKILL')
    await killAndWait(w, report)
  })
  return { w, before, report, started }
}

for (const mode of ['empty', 'busy'] as const) {
  test.serial(`item 1: a fake guardian (${mode}) bound by uid 65534 in a 1777 work dir is refused with one line; the daemon starts its own and the restore is right`, async (t) => {
    const r = await dumped(t, `trust-fake-${mode}`)
    const wd = openWorkDir(`trust-fake-${mode}`)
    const fake = await startFakeGuardian(t, wd, mode)
    const cmd = new DaemonCommand(r.w.images, ['-W', wd])
    t.teardown(() => killGuardian(cmd))
    const d = cmd.start()
    r.started.push(d)
    const ready = await Promise.race([d.ready, d.exited.then(() => false)])
    t.true(ready, `the daemon starts: ${d.output()}`)
    if (!ready) return
    const restore = startLazyRestore(r.w.images, ['-W', wd])
    const exit = await exitWithin(d, 60_000)
    const out = d.output()
    t.is(await restore.done, 0, `criu restore: ${restoreLogTail(wd)}`)
    assertCleanSummary(t, exit, out, readStats(wd))
    await assertMemoryAsDumped(t, r.w, r.before)
    const got = existsSync(fake.log) ? readFileSync(fake.log, 'utf8') : ''
    t.false(/fd/.test(got), `the fake guardian was handed descriptors: ${got}`)
    const said = out.split('\n').filter((l) => l.includes('not our guardian'))
    t.is(said.length, 1, `one line about the stranger's socket: ${out}`)
    t.regex(said[0] ?? '', new RegExp(`lazy-pages\\.guardian: not our guardian .*uid 65534.*pid ${fake.pid}|pid ${fake.pid}.*uid 65534`))
    t.false(/4242/.test(out), 'the pid the attacker chose is never named')
    t.log(said[0])
  })
}

/** The guardian holding `<wd>/lazy-pages.guardian`, once there is exactly one. */
async function guardianIn(wd: string): Promise<number> {
  const path = join(wd, 'lazy-pages.guardian')
  return waitFor(`a guardian on ${path}`, () => {
    const pids = socketHolders(path)
    return pids.length === 1 ? pids[0] : undefined
  })
}

test.serial('item 2: a resume with another dump is refused with one line, the guardian keeps holding, and the right dump then resumes', async (t) => {
  const started: DaemonProc[] = []
  const x = await dumped(t, 'trust-dump-x', started)
  const y = await dumped(t, 'trust-dump-y', started)
  const wd = openWorkDir('trust-dump')
  // Served through faults only, so nearly every page is still missing at the kill.
  const first = new DaemonCommand(x.w.images, ['-W', wd, '--fill-delay', '5000']).start()
  started.push(first)
  t.true(await first.ready, first.output())
  const restore = startLazyRestore(x.w.images, ['-W', wd])
  t.is(await restore.done, 0, `criu restore: ${restoreLogTail(wd)}`)
  const guardian = await guardianIn(wd)
  t.teardown(() => {
    try {
      process.kill(guardian, 'SIGKILL')
    } catch {
      /* gone */
    }
  })
  first.child.kill('SIGKILL')
  await first.exited

  const wrong = new DaemonCommand(y.w.images, ['-W', wd]).start()
  started.push(wrong)
  const refused = await exitWithin(wrong, 30_000)
  const out = wrong.output()
  t.is(refused.code, 1, out)
  t.false(/\bresumed\b|resuming \d+ tasks/.test(out), `it must not resume: ${out}`)
  const said = out.split('\n').filter((l) => /another dump/.test(l))
  t.is(said.length, 1, `one line: ${out}`)
  t.true(said[0]?.includes(`guardian pid ${guardian}`) && said[0]?.includes(y.w.images), said[0])
  t.log(said[0])
  t.true(alive(guardian), 'the guardian still holds the restore')

  const right = new DaemonCommand(x.w.images, ['-W', wd]).start()
  started.push(right)
  const exit = await exitWithin(right, 60_000)
  t.regex(right.output(), /resumed/)
  assertCleanSummary(t, exit, right.output(), readStats(wd))
  await assertMemoryAsDumped(t, x.w, x.before)
})

// criu restore as far as "connected": a peer on lazy-pages.socket that says nothing more.
const SILENT_RESTORE = `
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
print('connected', flush=True)
time.sleep(600)
`

test.serial('item 9: a daemon killed right after criu restore connected: the re-run says at once that that restore died', async (t) => {
  const r = await dumped(t, 'trust-connected')
  const wd = openWorkDir('trust-connected')
  const cmd = new DaemonCommand(r.w.images, ['-W', wd, '--connect-timeout', '60'])
  t.teardown(() => killGuardian(cmd))
  const first = cmd.start()
  r.started.push(first)
  t.true(await first.ready, first.output())
  const criu = spawn('/usr/bin/python3', ['-c', SILENT_RESTORE, join(wd, 'lazy-pages.socket')], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => criu.kill('SIGKILL'))
  await waitFor('criu restore connected', () => /criu restore connected/.test(first.output()), 10_000)
  first.child.kill('SIGKILL')
  await first.exited
  criu.kill('SIGKILL')
  await waitFor('the guardian of the first daemon to exit', () => socketHolders(join(wd, 'lazy-pages.guardian')).length === 0, 10_000)

  const again = cmd.start()
  r.started.push(again)
  const startedAt = Date.now()
  const line = await waitFor('a line saying the previous restore died', () => again.output().split('\n').find((l) => /previous daemon .* died after criu restore/.test(l)), 10_000).catch(() => undefined)
  t.truthy(line, `said within 10 s of a 60 s --connect-timeout: ${again.output()}`)
  t.true(line?.includes(`pid ${first.pid}`) && line?.includes(`pid ${criu.pid}`), line)
  t.log(`${Date.now() - startedAt} ms after the re-run started: ${line}`)
  again.child.kill('SIGTERM')
  await exitWithin(again, 10_000)
})
