// --tls on the page-server connection, end to end with real CRIU 4.1.1 (GnuTLS) and
// certificates made here with openssl (scripts/make-test-certs.sh): CRIU's dump-side
// page server to our client, our page server to CRIU's client, ours to ours with an
// urgent connection and --reconnect, several restores from one --keep-serving server;
// every restored byte checked. Bad peers: one line naming the peer, the client exits
// 1 with its unserved pages poisoned, the server serves on.
import test from 'ava'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { assertCleanSummary, assertMemoryAsDumped, checksums } from './helpers/check'
import { lazyPages } from './helpers/cli'
import { restoreLogTail, startLazyRestore } from './helpers/criu'
import { lazyRestore, startDaemon } from './helpers/daemon'
import { dumpAndWait, killAndWait } from './helpers/dumped'
import { startPageServer } from './helpers/page-server'
import { CRIU, ROOT, SCRATCH } from './helpers/paths'
import { run, sleep, waitFor } from './helpers/proc'
import { Workload } from './helpers/workload'

const PKI = join(SCRATCH, `tls-pki-${process.pid}`)

/** CRIU's --tls options with one of the test PKI's certificates. */
function tls(name: string, extra: string[] = []): string[] {
  const f = (file: string) => join(PKI, file)
  return ['--tls', '--tls-cacert', f('ca.pem'), '--tls-cacrl', f('crl.pem'), '--tls-cert', f(`${name}.pem`), '--tls-key', f(`${name}.key`), ...extra]
}

test.before(async () => {
  rmSync(PKI, { recursive: true, force: true })
  mkdirSync(PKI, { recursive: true })
  const r = await run('bash', [join(ROOT, 'scripts', 'make-test-certs.sh'), PKI])
  if (r.code !== 0) throw new Error(`make-test-certs.sh: ${r.stderr}`)
})

test.after.always(() => rmSync(PKI, { recursive: true, force: true }))

async function splitDump(name: string, mib = 32) {
  const w = await Workload.start(name, ['tree', '--mib', String(mib), '--children', '1'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  const out = join(w.dir, 'split')
  const split = await lazyPages(['split', '-D', w.images, '-o', out])
  if (split.code !== 0) throw new Error(split.stderr)
  return { w, before, report, out }
}

test('criu dump --lazy-pages --tls -> lazy-pages --page-server --tls -> criu restore', async (t) => {
  const outer = await Workload.start('tls-a', ['tree', '--mib', '32', '--children', '1'], { wrap: ['unshare', '--pid', '--fork', 'setsid'] })
  const hostPid = Number((await run('pgrep', ['-P', String(outer.pid)])).stdout.trim())
  const w = outer.withPid(hostPid)
  const before = await checksums(w)
  const src = join(w.dir, 'src')
  const port = 29000 + (process.pid % 1000)
  rmSync(src, { recursive: true, force: true })
  mkdirSync(src)
  const dumpArgs = ['dump', '-t', String(hostPid), '-D', src, '--lazy-pages', '--address', '127.0.0.1', '--port', String(port), '-o', 'dump.log', '-v4', ...tls('server')]
  const dumper = spawn(CRIU, dumpArgs, { stdio: 'ignore' })
  const dumped = new Promise<number | null>((resolve) => dumper.on('close', (code) => resolve(code)))
  await waitFor('criu dump to serve its pages', () => existsSync(join(src, 'dump.log')) && /Starting page server/.test(readFileSync(join(src, 'dump.log'), 'utf8')), 60_000)
  const { exit, stderr, stats } = await lazyRestore(src, ['--page-server', '--address', '127.0.0.1', '--port', String(port), ...tls('client')], ['--pidfile', join(w.dir, 'restored.pid')])
  assertCleanSummary(t, exit, stderr, stats)
  t.is(await dumped, 0, `criu dump finished cleanly after our CLOSE: ${readFileSync(join(src, 'dump.log'), 'utf8').split('\n').filter((l) => /tls|TLS|Error/.test(l)).slice(-5).join(' | ')}`)
  t.regex(readFileSync(join(src, 'dump.log'), 'utf8'), /TLS handshake completed/)
  const restored = w.withPid(Number(readFileSync(join(w.dir, 'restored.pid'), 'utf8')))
  await assertMemoryAsDumped(t, restored, before)
  restored.kill()
})

test('lazy-pages page-server --tls -> criu lazy-pages --page-server --tls -> criu restore', async (t) => {
  const { w, before, out } = await splitDump('tls-b')
  const server = await startPageServer(w.images, tls('server'))
  t.teardown(() => { server.child.kill('SIGKILL') }) // a failed test must not leave it running
  const criuArgs = ['lazy-pages', '--page-server', '--address', '127.0.0.1', '--port', String(server.port), '-D', out, '-o', 'lazy-pages.log', '-v4', ...tls('client')]
  const criuDaemon = spawn(CRIU, criuArgs, { stdio: 'ignore' })
  const criuExit = new Promise<number | null>((resolve) => criuDaemon.on('close', (code) => resolve(code)))
  await waitFor('criu lazy-pages socket', () => existsSync(join(out, 'lazy-pages.socket')))
  t.is(await startLazyRestore(out).done, 0, restoreLogTail(out))
  t.is(await criuExit, 0, 'criu lazy-pages exited 0')
  t.regex(readFileSync(join(out, 'lazy-pages.log'), 'utf8'), /TLS handshake completed/)
  t.is(await server.exit, 0, server.output())
  t.regex(server.output(), /1 sessions \(0 failed\)/)
  t.notRegex(server.output(), /without --tls/)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
})

test('ours to ours over --tls: --urgent-connection and --reconnect, two restores from one --keep-serving server', async (t) => {
  const { w, before, report, out } = await splitDump('tls-c')
  const server = await startPageServer(w.images, ['--keep-serving', ...tls('server')])
  t.teardown(() => { server.child.kill('SIGKILL') }) // a failed test must not leave it running
  for (const extra of [['--urgent-connection'], ['--reconnect', '10']]) {
    const { exit, stderr, stats } = await lazyRestore(out, ['--page-server', '--address', '127.0.0.1', '--port', String(server.port), ...extra, ...tls('client')])
    assertCleanSummary(t, exit, stderr, stats)
    t.is(stats!.total.faulted + stats!.total.background, report.total.lazy, `${extra[0]}: every lazy page once, over TLS`)
    await assertMemoryAsDumped(t, w, before)
    await killAndWait(w, report)
  }
  server.child.kill('SIGTERM')
  t.is(await server.exit, 0)
  t.regex(server.output(), /3 sessions \(0 failed\)/, 'a bulk and an urgent session, then one more')
})

test('bad peers: a client certificate from another CA fails that daemon (exit 1, one line naming the server), a server certificate from another CA too; the server serves on', async (t) => {
  const { w, before, report, out } = await splitDump('tls-d', 16)
  const server = await startPageServer(w.images, ['--keep-serving', ...tls('server')])
  t.teardown(() => { server.child.kill('SIGKILL') }) // a failed test must not leave it running
  const target = ['--page-server', '--address', '127.0.0.1', '--port', String(server.port)]
  // TLS 1.3: the client's handshake ends before the server has judged its certificate,
  // so the refusal (an alert) meets the daemon only after it is ready: while criu
  // restore connects, or once pages are asked for (then they are poisoned).
  const daemon = await startDaemon(out, [...target, ...tls('stranger')])
  const restore = startLazyRestore(out)
  const exit = await Promise.race([daemon.exit, sleep(60_000).then(() => undefined)])
  t.truthy(exit, `daemon exits: ${daemon.stderr()}`)
  t.is(exit!.code, 1, daemon.stderr())
  const last = daemon.stderr().trim().split('\n').pop()!
  t.regex(last, new RegExp(`page server 127\\.0\\.0\\.1:${server.port}: .*TLS: received fatal alert: UnknownCA`), daemon.stderr())
  t.is(daemon.stderr().split('\n').filter((l) => /UnknownCA/.test(l)).length, 1, 'told once')
  if (!(await Promise.race([restore.done.then(() => true), sleep(30_000).then(() => false)]))) restore.kill('SIGKILL')
  await waitFor('server logs the refused client', () => /session from 127\.0\.0\.1:\d+ failed .*UnknownIssuer/.test(server.output()) || undefined)
  t.is(server.output().split('\n').filter((l) => /UnknownIssuer/.test(l)).length, 1, server.output())
  await killAndWait(w, report)

  // A server whose certificate the client does not trust: refused before any restore.
  const other = await startPageServer(w.images, ['--keep-serving', ...tls('stranger')])
  t.teardown(() => { other.child.kill('SIGKILL') }) // a failed test must not leave it running
  const refused = await lazyPages(['-D', out, '--page-server', '--address', '127.0.0.1', '--port', String(other.port), ...tls('client')], 30_000)
  t.is(refused.code, 1)
  t.is(refused.stderr.trim().split('\n').length, 1, refused.stderr)
  t.regex(refused.stderr, new RegExp(`page server 127\\.0\\.0\\.1:${other.port}: TLS handshake failed: invalid peer certificate: UnknownIssuer`))
  other.child.kill('SIGTERM')
  await other.exit

  // The first server still serves a good client.
  const { exit: goodExit, stderr, stats } = await lazyRestore(out, [...target, ...tls('client')])
  assertCleanSummary(t, goodExit, stderr, stats)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
  server.child.kill('SIGTERM')
  t.is(await server.exit, 0)
  // The bad peer never authenticated: a rejected connection, not a failed session.
  t.regex(server.output(), /1 sessions \(0 failed\), 1 connections rejected before a session/)
})

test('bad peers: criu lazy-pages --tls with an expired certificate is refused by our page server, which then serves criu lazy-pages with a good one', async (t) => {
  const { w, before, report, out } = await splitDump('tls-f', 8)
  const server = await startPageServer(w.images, ['--keep-serving', ...tls('server')])
  t.teardown(() => { server.child.kill('SIGKILL') }) // a failed test must not leave it running
  const criuLazy = (name: string) => {
    const args = ['lazy-pages', '--page-server', '--address', '127.0.0.1', '--port', String(server.port), '-D', out, '-o', `lazy-pages-${name}.log`, '-v4', ...tls(name)]
    const child = spawn(CRIU, args, { stdio: 'ignore' })
    return new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
  }
  rmSync(join(out, 'lazy-pages.socket'), { force: true })
  const refused = criuLazy('expired')
  // CRIU's client connects to its page server only once a restore arrives.
  await waitFor('criu lazy-pages socket', () => existsSync(join(out, 'lazy-pages.socket')))
  const restore = startLazyRestore(out)
  t.not(await refused, 0, 'criu lazy-pages fails')
  await Promise.race([restore.done, sleep(30_000).then(() => restore.kill('SIGKILL'))])
  await waitFor('the refusal in the page server log', () => /session from 127\.0\.0\.1:\d+ failed .*expired/i.test(server.output()) || undefined)
  t.is(server.output().split('\n').filter((l) => /failed/.test(l)).length, 1, server.output())
  t.regex(server.output(), /client 127\.0\.0\.1:\d+: TLS handshake failed: invalid peer certificate: certificate expired/)
  // The restore may have got as far as starting the tree: it must go before the next one.
  await killAndWait(w, report)

  rmSync(join(out, 'lazy-pages.socket'), { force: true })
  const good = criuLazy('client')
  await waitFor('criu lazy-pages socket', () => existsSync(join(out, 'lazy-pages.socket')))
  t.is(await startLazyRestore(out).done, 0, restoreLogTail(out))
  t.is(await good, 0)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
  server.child.kill('SIGTERM')
  t.is(await server.exit, 0)
  // The bad peer never authenticated: a rejected connection, not a failed session.
  t.regex(server.output(), /1 sessions \(0 failed\), 1 connections rejected before a session/)
})

test('a page server listening beyond loopback without --tls warns once; with --tls or on loopback it does not', async (t) => {
  const { w, out } = await splitDump('tls-e', 4)
  const outputs: Record<string, string> = {}
  for (const [name, address, extra] of [
    ['open', '0.0.0.0', []],
    ['loopback', '127.0.0.1', []],
    ['tls', '0.0.0.0', tls('server')],
  ] as const) {
    const server = await startPageServer(w.images, [...extra], { address })
    t.teardown(() => { server.child.kill('SIGKILL') }) // a failed test must not leave it running
    await sleep(200)
    server.child.kill('SIGTERM')
    await server.exit
    outputs[name] = server.output()
  }
  t.is(outputs.open.split('\n').filter((l) => /without --tls/.test(l)).length, 1, outputs.open)
  t.regex(outputs.open, /listens on 0\.0\.0\.0 without --tls/)
  t.notRegex(outputs.loopback, /without --tls/)
  t.notRegex(outputs.tls, /without --tls/)
  t.truthy(out)
  w.kill()
})
