// `criu lazy-pages` spellings work unchanged: -d/--pidfile/-W/-o/-vN, CRIU's config files, socket mode and peer checks.
import test from 'ava'
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { checksums, assertMemoryAsDumped } from './helpers/check'
import { lazyPages } from './helpers/cli'
import { restoreLogTail, startLazyRestore } from './helpers/criu'
import { startDaemon } from './helpers/daemon'
import { dumpAndWait } from './helpers/dumped'
import { CLI } from './helpers/paths'
import { alive, run, waitFor } from './helpers/proc'
import { Workload } from './helpers/workload'

test('-d --pidfile -W -o -v4: detaches when ready, serves a restore run with the same -W', async (t) => {
  const w = await Workload.start('cli-daemon', ['tree', '--mib', '32', '--children', '1', '--zombie'])
  const before = await checksums(w)
  await dumpAndWait(w)
  const work = join(w.dir, 'work')
  mkdirSync(work)
  const started = await lazyPages(['--images-dir', w.images, '-W', work, '-d', '--pidfile', 'lazy.pid', '-o', 'lazy.log', '-v4', '--stats-json', 'stats.json'])
  t.is(started.code, 0, started.stderr)
  t.is(started.stderr, '')
  const pidText = readFileSync(join(work, 'lazy.pid'), 'utf8')
  t.regex(pidText, /^\d+$/, 'decimal pid, no newline')
  t.is(statSync(join(work, 'lazy.pid')).mode & 0o777, 0o600)
  const sock = join(work, 'lazy-pages.socket')
  t.true(statSync(sock).isSocket())
  t.is(statSync(sock).mode & 0o777, 0o600)
  const daemonPid = Number(pidText)
  t.true(alive(daemonPid))

  const restore = startLazyRestore(w.images, ['-W', work])
  t.is(await restore.done, 0, restoreLogTail(work))
  await waitFor('the daemon to exit', () => !alive(daemonPid), 60_000)
  const log = readFileSync(join(work, 'lazy.log'), 'utf8')
  t.regex(log, /^\(\d\d\.\d{6}\) /m, 'CRIU-style timestamps')
  t.regex(log, /fault: task/, '-v4 logs each fault')
  t.regex(log, /total: 2 tasks \(1 zombies, 0 exited\).*every page accounted for once/)
  t.true(JSON.parse(readFileSync(join(work, 'stats.json'), 'utf8')).reconciles)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
})

test('--pidfile that exists is refused (created exclusively, like CRIU)', async (t) => {
  const w = await Workload.start('cli-pidfile', ['dense', '--mib', '4'])
  await dumpAndWait(w)
  const first = await lazyPages(['-D', w.images, '-d', '--pidfile', 'p.pid', '--connect-timeout', '2'])
  t.is(first.code, 0, first.stderr)
  // Another work dir: the same one would be refused earlier, by its lock.
  const other = join(w.dir, 'other-work')
  mkdirSync(other, { recursive: true })
  const again = await lazyPages(['-D', w.images, '-W', other, '-d', '--pidfile', join(w.images, 'p.pid'), '--connect-timeout', '2'])
  t.is(again.code, 1)
  t.regex(again.stderr, /p\.pid: cannot create pidfile/)
})

test('a second daemon on the same work dir refuses, naming the first, and leaves it serving', async (t) => {
  const w = await Workload.start('cli-second', ['tree', '--mib', '8', '--children', '1'])
  const before = await checksums(w)
  await dumpAndWait(w)
  const first = await startDaemon(w.images, ['-o', 'first.log', '--connect-timeout', '60'])
  const sock = join(w.images, 'lazy-pages.socket')
  const inode = statSync(sock).ino
  const firstLog = () => readFileSync(join(w.images, 'first.log'), 'utf8')
  // The log stream is written asynchronously: wait for the ready line, then keep what is there.
  const log = await waitFor('the first log', () => /listening on/.test(firstLog()) && firstLog())
  const lockLine = new RegExp(`^lazy-pages: another lazy-pages \\(pid ${first.child.pid}\\) is serving work dir ${w.images}: it holds lazy-pages\\.lock$`)
  for (const args of [[], ['-d', '--pidfile', 'second.pid']]) {
    const second = await lazyPages(['-D', w.images, '-o', 'first.log', '--connect-timeout', '2', ...args], 20_000)
    t.is(second.code, 1, args.join(' '))
    t.regex(second.stderr.trim(), lockLine, args.join(' '))
    t.is(second.stderr.trim().split('\n').length, 1, second.stderr)
  }
  t.is(statSync(sock).ino, inode, "the first's socket is untouched")
  t.true(firstLog().startsWith(log), "the first's log is not truncated")
  t.notRegex(firstLog(), /another lazy-pages/, "nor written to")
  t.false(existsSync(join(w.images, 'second.pid')))
  // The first still serves a real restore.
  t.is(await startLazyRestore(w.images).done, 0, restoreLogTail(w.images))
  t.is((await first.exit).code, 0, first.stderr())
  await assertMemoryAsDumped(t, w, before)
  w.kill()
})

test('a daemon killed by SIGKILL leaves its work dir lock free for the next one', async (t) => {
  const w = await Workload.start('cli-lock-kill9', ['dense', '--mib', '4'])
  await dumpAndWait(w)
  const first = await startDaemon(w.images, ['--connect-timeout', '60'])
  first.child.kill('SIGKILL')
  await first.exit
  t.true(existsSync(join(w.images, 'lazy-pages.lock')), 'the lock file stays (never unlinked)')
  const next = await startDaemon(w.images, ['--connect-timeout', '1'])
  t.regex(readFileSync(join(w.images, 'lazy-pages.lock'), 'utf8'), new RegExp(`^${next.child.pid}$`), 'the holder pid inside')
  const exit = await next.exit
  t.is(exit.code, 1)
  t.regex(next.stderr(), /timed out waiting for criu restore to connect/)
})

test('a peer that is neither root nor our uid is turned away', async (t) => {
  const w = await Workload.start('cli-peer', ['dense', '--mib', '4'])
  await dumpAndWait(w)
  const daemon = lazyPages(['-D', w.images, '--connect-timeout', '3'])
  const sock = join(w.images, 'lazy-pages.socket')
  await waitFor('socket', () => existsSync(sock))
  chmodSync(sock, 0o666) // let the stranger reach SO_PEERCRED at all
  const probe = `const c = require('net').connect(${JSON.stringify(sock)}); c.on('connect', () => setTimeout(() => c.end(), 500))`
  const stranger = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', probe])
  t.is(stranger.code, 0, stranger.stderr)
  const r = await daemon
  t.is(r.code, 1)
  t.regex(r.stderr, /timed out waiting for criu restore to connect.*rejected a connection from pid \d+ uid 65534/)
})

test('CRIU verbosity spellings are accepted', async (t) => {
  for (const v of [['-v'], ['-vvvv'], ['-v0'], ['--verbosity=4'], ['--verbosity', '1']]) {
    const r = await lazyPages([...v, 'images', '--help'])
    t.is(r.code, 0, `${v.join(' ')}: ${r.stderr}`)
  }
})

test('CRIU config files drive a real restore: /etc/criu and ~/.criu default.conf, options criu takes and we ignore', async (t) => {
  const w = await Workload.start('cli-config', ['tree', '--mib', '8', '--children', '1'])
  const before = await checksums(w)
  await dumpAndWait(w)
  const work = join(w.dir, 'work')
  mkdirSync(work)
  // /etc/criu/default.conf for the daemon alone: an overlay on /etc in a mount namespace of
  // its own (criu restore, out here, must not read it, nor may the other tests' criu).
  const etc = join(w.dir, 'etc')
  mkdirSync(join(etc, 'up', 'criu'), { recursive: true })
  mkdirSync(join(etc, 'work'))
  writeFileSync(join(etc, 'up', 'criu', 'default.conf'), `# as criu reads it\nimages-dir "${w.images}"\ntcp-established\nrestore-detached\n`)
  const home = join(w.dir, 'home')
  mkdirSync(join(home, '.criu'), { recursive: true })
  writeFileSync(join(home, '.criu', 'default.conf'), `work-dir ${work}\nlog-file lazy.log   # relative to the work dir\nverbosity 4\nshell-job\nno-link-remap\n`)
  const overlay = `mount -t overlay overlay -o lowerdir=/etc,upperdir=${etc}/up,workdir=${etc}/work /etc && exec "$@"`
  const args = [process.execPath, CLI, '--pidfile', 'lazy.pid', '--stats-json', 'stats.json', '--file-locks', '-S']
  const started = await run('unshare', ['-m', '--propagation', 'private', 'sh', '-c', overlay, 'sh', ...args], { env: { ...process.env, HOME: home }, timeoutMs: 60_000 })
  t.is(started.code, 0, started.stderr)
  t.is(started.stderr, '')
  const pid = Number(readFileSync(join(work, 'lazy.pid'), 'utf8'))
  t.true(alive(pid), 'detached, as restore-detached in /etc/criu/default.conf says')
  t.is(await startLazyRestore(w.images, ['-W', work]).done, 0, restoreLogTail(work))
  await waitFor('the daemon to exit', () => !alive(pid), 60_000)
  const log = readFileSync(join(work, 'lazy.log'), 'utf8')
  t.regex(log, /reading options from \/etc\/criu\/default\.conf/)
  t.regex(log, /reading options from .*\/home\/\.criu\/default\.conf/)
  for (const o of ['--tcp-established', '--shell-job', '--no-link-remap', '--file-locks', '-S']) {
    t.regex(log, new RegExp(`\\) ${o}( \\(.*\\))?: a criu option with no meaning for lazy-pages; ignored`), o)
  }
  t.regex(log, /fault: task/, 'verbosity 4 from ~/.criu/default.conf')
  t.regex(log, /total: 2 tasks .*every page accounted for once/)
  t.true(JSON.parse(readFileSync(join(work, 'stats.json'), 'utf8')).reconciles)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
})

test('a broken default config file is one line naming it; --no-default-config and --config skip it', async (t) => {
  const w = await Workload.start('cli-config-bad', ['dense', '--mib', '4'])
  await dumpAndWait(w)
  const home = join(w.dir, 'home')
  mkdirSync(join(home, '.criu'), { recursive: true })
  writeFileSync(join(home, '.criu', 'default.conf'), 'tcp-established\nwork-dir "unterminated\n')
  const env = { ...process.env, HOME: home }
  const broken = await run(process.execPath, [CLI, '-D', w.images, '--connect-timeout', '1'], { env, timeoutMs: 30_000 })
  t.is(broken.code, 1)
  t.regex(broken.stderr, /^lazy-pages: .*\/home\/\.criu\/default\.conf:2: the quoted value of --work-dir has no closing quote\n$/)
  const conf = join(w.dir, 'mine.conf')
  writeFileSync(conf, 'connect-timeout 1\n')
  for (const skip of [['--no-default-config', '--connect-timeout', '1'], ['--config', conf]]) {
    const r = await run(process.execPath, [CLI, '-D', w.images, ...skip], { env, timeoutMs: 30_000 })
    t.is(r.code, 1, skip.join(' '))
    t.regex(r.stderr, /timed out waiting for criu restore to connect/, skip.join(' '))
  }
})
