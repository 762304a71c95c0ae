// Post-copy over TCP on CRIU's page-server wire protocol (CRIU 4.1.1 here), every
// byte verified: against a real `criu dump --lazy-pages`, a real `criu lazy-pages`,
// and ourselves, several restores from one page server.
import test from 'ava'
import { spawn } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'

import { assertCleanSummary, assertMemoryAsDumped, checksums } from './helpers/check'
import { lazyPages } from './helpers/cli'
import { restoreLogTail, startLazyRestore } from './helpers/criu'
import { lazyRestore, readStats, startDaemon } from './helpers/daemon'
import { dumpAndWait, killAndWait } from './helpers/dumped'
import { startPageServer } from './helpers/page-server'
import { CRIU } from './helpers/paths'
import { run, sleep, waitFor } from './helpers/proc'
import { CpuThrottle } from './helpers/throttle'
import { Workload } from './helpers/workload'

function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0)
}

test('(a) criu dump --lazy-pages --port -> lazy-pages --page-server -> criu restore --lazy-pages', async (t) => {
  // A pid namespace of its own: restore on this same machine recreates it while the
  // source is still frozen, waiting to serve its pages.
  const outer = await Workload.start('remote-a', ['tree', '--mib', '64', '--children', '2'], { wrap: ['unshare', '--pid', '--fork', 'setsid'] })
  const hostPid = Number((await run('pgrep', ['-P', String(outer.pid)])).stdout.trim())
  const w = outer.withPid(hostPid)
  const before = await checksums(w)
  const src = join(w.dir, 'src')
  const port = 27000 + (process.pid % 1000)
  rmSync(src, { recursive: true, force: true })
  mkdirSync(src)
  const dumper = spawn(CRIU, ['dump', '-t', String(hostPid), '-D', src, '--lazy-pages', '--address', '127.0.0.1', '--port', String(port), '-o', 'dump.log', '-v4'], {
    stdio: 'ignore',
  })
  const dumped = new Promise<number | null>((resolve) => dumper.on('close', (code) => resolve(code)))
  await waitFor('criu dump to serve its pages', () => existsSync(join(src, 'dump.log')) && /Starting page server/.test(readFileSync(join(src, 'dump.log'), 'utf8')), 60_000)
  // Only metadata and eager pages travel before the restore.
  const dst = join(w.dir, 'dst')
  cpSync(src, dst, { recursive: true })
  t.true(dirBytes(dst) < 4 * 1024 * 1024, `images without lazy data: ${dirBytes(dst)} bytes`)

  const { exit, stderr, stats } = await lazyRestore(dst, ['--page-server', '--address', '127.0.0.1', '--port', String(port)], ['--pidfile', join(w.dir, 'restored.pid')])
  assertCleanSummary(t, exit, stderr, stats)
  t.is(await dumped, 0, 'criu dump finished cleanly after our CLOSE')
  const restored = w.withPid(Number(readFileSync(join(w.dir, 'restored.pid'), 'utf8')))
  await assertMemoryAsDumped(t, restored, before)
  restored.kill()
})

test('(b) lazy-pages page-server over a split dump -> criu lazy-pages --page-server -> criu restore', async (t) => {
  const w = await Workload.start('remote-b', ['tree', '--mib', '64', '--children', '2', '--zombie'])
  const before = await checksums(w)
  await dumpAndWait(w)
  const out = join(w.dir, 'split')
  const split = await lazyPages(['split', '-D', w.images, '-o', out])
  t.is(split.code, 0, split.stderr)
  t.true(dirBytes(out) * 20 < dirBytes(w.images), `split ${dirBytes(out)} bytes of ${dirBytes(w.images)}`)

  const server = await startPageServer(w.images)
  const criuDaemon = spawn(CRIU, ['lazy-pages', '--page-server', '--address', '127.0.0.1', '--port', String(server.port), '-D', out, '-o', 'lazy-pages.log', '-v4'], { stdio: 'ignore' })
  const criuExit = new Promise<number | null>((resolve) => criuDaemon.on('close', (code) => resolve(code)))
  await waitFor('criu lazy-pages socket', () => existsSync(join(out, 'lazy-pages.socket')))
  t.is(await startLazyRestore(out).done, 0, restoreLogTail(out))
  t.is(await criuExit, 0, 'criu lazy-pages exited 0')
  t.is(await server.exit, 0, server.output())
  t.regex(server.output(), /1 sessions \(0 failed\)/)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
})

test('(c) one page server, three restores of one dump', async (t) => {
  const w = await Workload.start('remote-c', ['tree', '--mib', '32', '--children', '1'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  const out = join(w.dir, 'split')
  t.is((await lazyPages(['split', '-D', w.images, '-o', out])).code, 0)
  const server = await startPageServer(w.images, ['--keep-serving'])
  for (const round of [1, 2, 3]) {
    const { exit, stderr, stats } = await lazyRestore(out, ['--page-server', '--address', '127.0.0.1', '--port', String(server.port)])
    assertCleanSummary(t, exit, stderr, stats)
    t.is(stats!.total.faulted + stats!.total.background, report.total.lazy, `round ${round}: every lazy page once, over the wire`)
    await assertMemoryAsDumped(t, w, before)
    await killAndWait(w, report)
  }
  server.child.kill('SIGTERM')
  t.is(await server.exit, 0)
  t.regex(server.output(), /3 sessions \(0 failed\)/)
})

test('(f) an urgent connection for faults', async (t) => {
  const w = await Workload.start('remote-f', ['tree', '--mib', '32', '--children', '1'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  const out = join(w.dir, 'split')
  t.is((await lazyPages(['split', '-D', w.images, '-o', out])).code, 0)
  // One client, two connections: a server without --keep-serving takes both and exits after.
  const server = await startPageServer(w.images)
  const { exit, stderr, stats } = await lazyRestore(out, ['--page-server', '--address', '127.0.0.1', '--port', String(server.port), '--urgent-connection'])
  assertCleanSummary(t, exit, stderr, stats)
  t.is(stats!.total.faulted + stats!.total.background, report.total.lazy, 'every lazy page once, over the wire')
  await assertMemoryAsDumped(t, w, before)
  w.kill()
  t.is(await server.exit, 0, server.output())
  t.regex(server.output(), /2 sessions \(0 failed\)/, 'a bulk and an urgent session, both closed cleanly')
})

test('(e) the page server killed and restarted mid-transfer', async (t) => {
  const w = await Workload.start('remote-e', ['tree', '--mib', '64', '--children', '1'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  const out = join(w.dir, 'split')
  t.is((await lazyPages(['split', '-D', w.images, '-o', out])).code, 0)
  // A fixed port: the restarted server must be where the daemon reconnects.
  const port = 28000 + (process.pid % 1000)
  const fixed = ['--port', String(port), '--keep-serving']
  let server = await startPageServer(w.images, fixed)
  const daemon = await startDaemon(out, ['--page-server', '--address', '127.0.0.1', '--port', String(port), '--reconnect', '20', '--fill-delay', '1500'])
  t.is(await startLazyRestore(out).done, 0, restoreLogTail(out))
  // Within the fill delay: the background fill has not started yet.
  server.child.kill('SIGKILL')
  await server.exit
  await sleep(1000)
  server = await startPageServer(w.images, fixed)
  const exit = await daemon.exit
  const stats = readStats(out)
  assertCleanSummary(t, exit, daemon.stderr(), stats)
  t.is(stats.total.faulted + stats.total.background, report.total.lazy, 'every lazy page once, over the wire')
  await assertMemoryAsDumped(t, w, before)
  w.kill()
  server.child.kill('SIGTERM')
  t.is(await server.exit, 0, server.output())
  t.regex(server.output(), /1 sessions \(0 failed\)/, 'the daemon resumed on the restarted server and closed cleanly')
})

test('(g) faults, fork, MADV_DONTNEED, munmap and mremap while read-ahead is on the wire', async (t) => {
  // churn's ops run on SIGUSR2 right after the restore, while background fill and its
  // read-ahead are still fetching: the page server is held to a small CPU share so the
  // transfer lasts seconds, not tens of milliseconds. The fill starts 30 ms after the
  // restore finished (not while it runs, as it does by default) and the region is large,
  // so the eighths churn drops are still lazy when it drops them: with 64 MiB and the
  // fill from the moment the uffd arrived, one CI run had them all filled first.
  const w = await Workload.start('remote-g', ['churn', '--mib', '256'])
  await w.verify(['main'])
  const report = await dumpAndWait(w)
  const out = join(w.dir, 'split')
  t.is((await lazyPages(['split', '-D', w.images, '-o', out])).code, 0)
  const server = await startPageServer(w.images)
  t.teardown(() => void server.child.kill('SIGKILL'))
  const throttle = CpuThrottle.open(`lazy-pages-test-${process.pid}-remote-g`, 10)
  t.teardown(async () => throttle?.close())
  if (throttle) throttle.add(server.child.pid!)
  else t.log('no cgroup to throttle the page server: the ops race a fast transfer')
  const daemon = await startDaemon(out, ['--page-server', '--address', '127.0.0.1', '--port', String(server.port), '--fill-delay', '30'])
  t.is(await startLazyRestore(out).done, 0, restoreLogTail(out))
  const [main, child] = await w.verify(['main', 'churnchild'], 'SIGUSR2')
  t.true(main.ok, main.line)
  t.true(child.ok, child.line)
  const exit = await daemon.exit
  const stats = readStats(out)
  assertCleanSummary(t, exit, daemon.stderr(), stats)
  t.log(`faulted ${stats!.total.faulted}, background ${stats!.total.background}, dropped ${stats!.total.dropped}`)
  t.true(stats!.total.faulted > 0 && stats!.total.background > 0, 'both faults and background fill brought pages')
  t.true(stats!.total.dropped > 0, 'spans dropped while lazy were not copied')
  t.is(stats!.tasks.filter((x) => x.parent === null || x.parent === undefined).reduce((n, x) => n + x.total, 0), report.total.lazy)
  const [again] = await w.verify(['main'], 'SIGUSR2')
  t.true(again.ok, again.line)
  w.kill()
  t.is(await server.exit, 0, server.output())
  t.regex(server.output(), /1 sessions \(0 failed\)/)
})
