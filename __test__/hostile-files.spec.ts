// Files we write or read on a root daemon's behalf, when another user can plant names
// in its work dir (-W /tmp, or any 1777 or group-writable dir) or hands it odd option
// files (issue 20): a symlink, someone else's file, a FIFO, a device or a full disk
// never makes us write through it, hang, or end a healthy restore. The attacker's
// steps run as uid 65534 (setpriv).
import test, { type ExecutionContext } from 'ava'
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { assertMemoryAsDumped, checksums } from './helpers/check'
import { lazyPages } from './helpers/cli'
import { CLI } from './helpers/paths'
import { restoreLogTail, startLazyRestore } from './helpers/criu'
import { startDaemon, type Stats } from './helpers/daemon'
import { dumpAndWait } from './helpers/dumped'
import { ROOT } from './helpers/paths'
import { run, waitFor } from './helpers/proc'
import { Workload } from './helpers/workload'

const NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']

/** Runs `argv` as uid/gid 65534; a failure fails the test (a missing prerequisite is not a pass). */
async function asNobody(argv: string[]): Promise<void> {
  const r = await run(NOBODY[0], [...NOBODY.slice(1), ...argv])
  if (r.code !== 0) throw new Error(`as uid 65534: ${argv.join(' ')}: exit ${r.code}: ${r.stderr.trim()}`)
}

/** A dumped small workload, a work dir anyone may write to (1777, as /tmp), and root-only files an attacker would like us to overwrite. */
async function sharedWorkDir(name: string) {
  const w = await Workload.start(name, ['dense', '--mib', '4'])
  const before = await checksums(w)
  await dumpAndWait(w)
  const work = join(w.dir, 'shared')
  mkdirSync(work)
  chmodSync(work, 0o1777)
  chmodSync(w.dir, 0o755)
  const vault = join(w.dir, 'vault')
  mkdirSync(vault, { mode: 0o700 })
  const victim = (file: string) => {
    const path = join(vault, file)
    writeFileSync(path, `root's ${file}\n`, { mode: 0o600 })
    return path
  }
  return { w, before, work, victim }
}

test('-o: a symlink or another user\'s file planted in the work dir is refused with one line, and nothing behind it is written', async (t) => {
  const { w, work, victim } = await sharedWorkDir('hostile-log')
  t.teardown(() => w.kill())
  const secret = victim('secret')
  await asNobody(['ln', '-s', secret, join(work, 'lazy.log')])
  const linked = await lazyPages(['-D', w.images, '-W', work, '-o', 'lazy.log', '--connect-timeout', '2'])
  t.is(linked.code, 1)
  t.regex(linked.stderr, /^lazy-pages: -o \S*lazy\.log: is a symbolic link: refused.*\n$/)
  t.is(readFileSync(secret, 'utf8'), "root's secret\n", 'the file behind the link is untouched')

  await asNobody(['touch', join(work, 'mine.log')])
  const foreign = await lazyPages(['-D', w.images, '-W', work, '-o', 'mine.log', '--connect-timeout', '2'])
  t.is(foreign.code, 1)
  t.regex(foreign.stderr, /^lazy-pages: -o \S*mine\.log: belongs to uid 65534, not to us \(uid 0\): refused\n$/)
  t.is(readFileSync(join(work, 'mine.log'), 'utf8'), '', 'nothing of ours went into a file its owner can read')

  const early = await lazyPages(['-D', w.images, '-W', work, '--stats-json', 'lazy.log', '--connect-timeout', '2'])
  t.is(early.code, 1)
  t.regex(early.stderr, /^lazy-pages: --stats-json \S*lazy\.log: is a symbolic link, not a regular file: refused\n$/, 'a report name planted before the start is refused before listening')
})

test('--stats-json and --record-ws: symlinks planted while the restore runs are refused at the end (exit 2), the restore itself is served', async (t) => {
  const { w, before, work, victim } = await sharedWorkDir('hostile-reports')
  t.teardown(() => w.kill())
  const stats = victim('stats')
  const ws = victim('ws')
  const daemon = await startDaemon(w.images, ['-W', work, '-o', 'lazy.log', '--stats-json', 'stats.json', '--record-ws', 'ws.json'])
  t.true(lstatSync(join(work, 'lazy.log')).isFile())
  await asNobody(['ln', '-s', stats, join(work, 'stats.json')])
  await asNobody(['ln', '-s', ws, join(work, 'ws.json')])
  const restore = startLazyRestore(w.images, ['-W', work])
  t.is(await restore.done, 0, restoreLogTail(work))
  const exit = await daemon.exit
  t.is(exit.code, 2, daemon.stderr())
  t.regex(daemon.stderr(), /^lazy-pages: --stats-json \S*stats\.json: is a symbolic link, not a regular file: refused$/m)
  t.regex(daemon.stderr(), /^lazy-pages: --record-ws \S*ws\.json: is a symbolic link, not a regular file: refused$/m)
  t.is(readFileSync(stats, 'utf8'), "root's stats\n")
  t.is(readFileSync(ws, 'utf8'), "root's ws\n")
  t.regex(readFileSync(join(work, 'lazy.log'), 'utf8'), /every page accounted for once/)
  t.false(existsSync(join(work, '.stats.json')), 'no temporary file left behind')
  await assertMemoryAsDumped(t, w, before)
})

/** A 64 KiB tmpfs mounted for this test, filled up but for `freePages` pages; unmounted at its end. */
async function smallDisk(t: ExecutionContext, dir: string, freePages: number): Promise<string> {
  mkdirSync(dir, { recursive: true })
  const mounted = await run('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir])
  if (mounted.code !== 0) throw new Error(`mount -t tmpfs ${dir}: ${mounted.stderr.trim()}`)
  t.teardown(() => run('umount', [dir]).then(() => undefined))
  // dd stops at ENOSPC; then the fill gives back what the test wants free.
  await run('dd', ['if=/dev/zero', `of=${join(dir, 'fill')}`, 'bs=4096'])
  const size = readFileSync(join(dir, 'fill')).length
  if (size === 0 || size > 64 * 1024) throw new Error(`filling ${dir}: ${size} bytes`)
  if (freePages > 0) {
    const shrunk = await run('truncate', ['-s', String(size - freePages * 4096), join(dir, 'fill')])
    if (shrunk.code !== 0) throw new Error(`truncate: ${shrunk.stderr}`)
  }
  return dir
}

test('-o on a disk that fills up mid-restore at -v4: lines are dropped and counted, said once, and the restore is served', async (t) => {
  const w = await Workload.start('hostile-full-log', ['dense', '--mib', '4'])
  t.teardown(() => w.kill())
  const before = await checksums(w)
  await dumpAndWait(w)
  // One page free: the first lines fit, the fault lines of the check below do not.
  const disk = await smallDisk(t, join(w.dir, 'disk'), 1)
  const stats = join(w.dir, 'stats.json')
  const daemon = await startDaemon(w.images, ['-o', join(disk, 'lazy.log'), '-v4', '--stats-json', stats, '--fill-delay', '3000'])
  const restore = startLazyRestore(w.images)
  t.is(await restore.done, 0, restoreLogTail(w.images))
  // Touched before the fill starts: every page comes by a fault, each logged at -v4.
  await assertMemoryAsDumped(t, w, before)
  const exit = await daemon.exit
  t.is(exit.code, 0, daemon.stderr())
  const said = daemon.stderr().split('\n').filter((l) => l.includes('lazy.log'))
  t.is(said.length, 2, daemon.stderr())
  t.regex(said[0], /^lazy-pages: log \S*lazy\.log: cannot write \(ENOSPC\): dropping log lines until it can; the restore goes on$/)
  t.regex(said[1], /^lazy-pages: log \S*lazy\.log: \d+ lines could not be written and are missing from it$/)
  const report = JSON.parse(readFileSync(stats, 'utf8')) as Stats & { logLinesDropped: number }
  t.true(report.reconciles)
  t.true(report.logLinesDropped > 0)
  t.regex(readFileSync(join(disk, 'lazy.log'), 'utf8'), /listening on/, 'the lines that fitted are there')
})

test('--stats-json and --record-ws on a full disk: one line naming each file, exit 2, the restore served and nothing left behind', async (t) => {
  const w = await Workload.start('hostile-full-reports', ['dense', '--mib', '4'])
  t.teardown(() => w.kill())
  const before = await checksums(w)
  await dumpAndWait(w)
  const disk = await smallDisk(t, join(w.dir, 'disk'), 0)
  const daemon = await startDaemon(w.images, ['--stats-json', join(disk, 'stats.json'), '--record-ws', join(disk, 'ws.json')])
  const restore = startLazyRestore(w.images)
  t.is(await restore.done, 0, restoreLogTail(w.images))
  const exit = await daemon.exit
  t.is(exit.code, 2, daemon.stderr())
  t.regex(daemon.stderr(), /every page accounted for once/)
  for (const [option, file] of [['--stats-json', 'stats.json'], ['--record-ws', 'ws.json']]) {
    const said = daemon.stderr().split('\n').filter((l) => l.includes(file))
    t.is(said.length, 1, daemon.stderr())
    t.true(said[0]?.endsWith(`Error: ${option} ${join(disk, file)}: cannot write: ENOSPC`), said[0])
  }
  t.deepEqual(readdirSync(disk), ['fill'], 'no partial report or temporary file')
  await assertMemoryAsDumped(t, w, before)
})

/** FIFOs, devices and a 3 GB sparse file, made in `dir`. */
async function oddFiles(dir: string) {
  mkdirSync(dir, { recursive: true })
  const fifo = join(dir, 'fifo')
  const made = await run('mkfifo', [fifo])
  if (made.code !== 0) throw new Error(`mkfifo: ${made.stderr}`)
  const sparse = join(dir, 'sparse')
  const grown = await run('truncate', ['-s', '3G', sparse])
  if (grown.code !== 0) throw new Error(`truncate: ${grown.stderr}`)
  return { fifo, sparse }
}

/** One run that must end by itself: an old hang shows as the timeout's SIGKILL. */
const quick = (args: string[], env: NodeJS.ProcessEnv = process.env) => run(process.execPath, [CLI, ...args], { env, timeoutMs: 20_000 })

test('config files and --prefetch-ws that are FIFOs, devices or huge: one line naming the file, at once', async (t) => {
  const dir = join(Workload.scratch('hostile-options'), 'odd')
  const { fifo, sparse } = await oddFiles(dir)
  const images = join(dir, '..', 'images')
  const home = join(dir, 'home')
  mkdirSync(join(home, '.criu'), { recursive: true })
  const cases: Array<{ what: string; args: string[]; env?: NodeJS.ProcessEnv; line: RegExp }> = [
    { what: '--config FIFO', args: ['--config', fifo], line: /^lazy-pages: --config \S*\/fifo: is a FIFO, not a regular file\n$/ },
    { what: 'CRIU_CONFIG_FILE=/dev/zero', args: [], env: { CRIU_CONFIG_FILE: '/dev/zero' }, line: /^lazy-pages: \/dev\/zero: is a character device, not a regular file\n$/ },
    { what: 'CRIU_CONFIG_FILE FIFO', args: [], env: { CRIU_CONFIG_FILE: fifo }, line: /^lazy-pages: \S*\/fifo: is a FIFO, not a regular file\n$/ },
    { what: '--config /dev/urandom', args: ['--config', '/dev/urandom'], line: /^lazy-pages: --config \/dev\/urandom: is a character device, not a regular file\n$/ },
    { what: '~/.criu/default.conf 3 GB sparse', args: [], env: { HOME: home }, line: /^lazy-pages: \S*\/home\/\.criu\/default\.conf: is 3221225472 bytes, more than the 1 MiB it may have\n$/ },
    { what: '--prefetch-ws FIFO', args: ['--prefetch-ws', fifo], line: /^lazy-pages: \S*\/fifo: working set is a FIFO, not a regular file\n$/ },
    { what: '--prefetch-ws /dev/zero', args: ['--prefetch-ws', '/dev/zero'], line: /^lazy-pages: \/dev\/zero: working set is a character device, not a regular file\n$/ },
  ]
  for (const c of cases) {
    if (c.env?.HOME) {
      const made = await run('ln', ['-sf', sparse, join(home, '.criu', 'default.conf')])
      if (made.code !== 0) throw new Error(made.stderr)
    }
    const started = Date.now()
    const r = await quick(['-D', images, '-W', dir, '--connect-timeout', '1', ...c.args], { ...process.env, HOME: join(dir, 'nohome'), ...c.env })
    t.is(r.code, 1, `${c.what}: ${r.stderr}`)
    t.regex(r.stderr, c.line, c.what)
    t.true(Date.now() - started < 10_000, `${c.what}: refused at once`)
  }
  // The same on page-server, whose options come from the same files.
  const r = await quick(['page-server', '-D', images, '--config', fifo])
  t.regex(r.stderr, /^lazy-pages: --config \S*\/fifo: is a FIFO, not a regular file\n$/)
})

test('--tls-cert/-key/-cacert/-cacrl that are FIFOs, devices or huge: one line naming the file, at once, page server and client', async (t) => {
  const w = await Workload.start('hostile-tls', ['dense', '--mib', '1'])
  t.teardown(() => w.kill())
  await dumpAndWait(w)
  const pki = join(w.dir, 'pki')
  const made = await run('bash', [join(ROOT, 'scripts', 'make-test-certs.sh'), pki])
  if (made.code !== 0) throw new Error(`make-test-certs.sh: ${made.stderr}`)
  const { fifo, sparse } = await oddFiles(join(w.dir, 'odd'))
  const good: Record<string, string> = { cacert: join(pki, 'ca.pem'), cacrl: join(pki, 'crl.pem'), cert: join(pki, 'server.pem'), key: join(pki, 'server.key') }
  const bad: Array<[string, string, RegExp]> = [
    ['cert', fifo, /is a FIFO, not a regular file/],
    ['key', fifo, /is a FIFO, not a regular file/],
    ['cacert', fifo, /is a FIFO, not a regular file/],
    ['cacrl', fifo, /is a FIFO, not a regular file/],
    ['cert', '/dev/zero', /is a character device, not a regular file/],
    ['key', '/dev/urandom', /is a character device, not a regular file/],
    ['cacert', sparse, /is 3221225472 bytes, more than the 16777216 it may have/],
    ['key', sparse, /is 3221225472 bytes, more than the 1048576 it may have/],
  ]
  for (const [option, file, why] of bad) {
    const files = { ...good, [option]: file }
    const tls = ['--tls', ...Object.entries(files).flatMap(([o, f]) => [`--tls-${o}`, f])]
    for (const argv of [
      ['page-server', '-D', w.images, '--address', '127.0.0.1', '--port', '0', ...tls],
      ['-D', w.images, '-W', join(w.dir, 'odd'), '--page-server', '--address', '127.0.0.1', '--port', '1', '--connect-timeout', '1', ...tls],
    ]) {
      const started = Date.now()
      const r = await quick(argv)
      const what = `${argv[0] === 'page-server' ? 'page-server' : 'client'} --tls-${option} ${file}`
      t.is(r.code, 1, `${what}: ${r.stderr}`)
      t.is(r.stderr.split('\n').length, 2, `${what}: one line: ${r.stderr}`)
      t.true(r.stderr.includes(`--tls-${option} ${file}: `), `${what}: names the file: ${r.stderr}`)
      t.regex(r.stderr, why, what)
      t.true(Date.now() - started < 10_000, `${what}: refused at once`)
    }
  }
})
