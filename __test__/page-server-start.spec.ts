// `lazy-pages page-server` start-up (issue 20 item 9): a stop sent the moment it says
// it listens is handled in order (its signal handlers come first), and its own
// certificate out of its dates is one warning naming the file and the date.
import test from 'ava'
import { spawn } from 'node:child_process'
import { closeSync, constants, openSync, readSync, writeSync } from 'node:fs'
import { join } from 'node:path'

import { dumpAndWait } from './helpers/dumped'
import { startPageServer } from './helpers/page-server'
import { CLI, ROOT } from './helpers/paths'
import { run, waitFor } from './helpers/proc'
import { Workload } from './helpers/workload'

test('a SIGTERM sent as soon as the page server says it listens stops it in order instead of killing it', async (t) => {
  const w = await Workload.start('ps-start-signal', ['dense', '--mib', '1'])
  t.teardown(() => w.kill())
  await dumpAndWait(w)
  // --status-fd on a FIFO the test has filled: the server's ready byte blocks until the
  // test drains it, so the SIGTERM below lands while it is telling us it is ready.
  const fifo = join(w.dir, 'status')
  const made = await run('mkfifo', [fifo])
  if (made.code !== 0) throw new Error(`mkfifo: ${made.stderr}`)
  const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK)
  const filler = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK)
  const chunk = Buffer.alloc(4096)
  for (;;) {
    try {
      writeSync(filler, chunk)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') break
      throw err
    }
  }
  const argv = [process.execPath, CLI, 'page-server', '-D', w.images, '--address', '127.0.0.1', '--port', '0', '--status-fd', '3', '-v3']
  const child = spawn('bash', ['-c', 'exec 3>"$0"; exec "$@"', fifo, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (out += d))
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })))
  t.teardown(() => { child.kill('SIGKILL') })
  await waitFor('the port line', () => /Using \d+ port/.test(out))
  child.kill('SIGTERM')
  // Now let the ready byte through.
  const drain = Buffer.alloc(65536)
  await waitFor('the ready byte to be written', () => {
    try {
      readSync(reader, drain)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err
    }
    return child.exitCode !== null || child.signalCode !== null
  })
  closeSync(filler)
  closeSync(reader)
  const { code, signal } = await exit
  t.is(signal, null, `not killed by the signal: ${out}`)
  t.is(code, 0, out)
  t.regex(out, /Warn: SIGTERM: stopping; sessions in progress end now/)
  t.regex(out, /page server: 0 sessions/)
})

test('a page server with its own expired certificate says so, naming the file and the date', async (t) => {
  const w = await Workload.start('ps-start-expired', ['dense', '--mib', '1'])
  t.teardown(() => w.kill())
  await dumpAndWait(w)
  const pki = join(w.dir, 'pki')
  const made = await run('bash', [join(ROOT, 'scripts', 'make-test-certs.sh'), pki])
  if (made.code !== 0) throw new Error(`make-test-certs.sh: ${made.stderr}`)
  const f = (name: string) => join(pki, name)
  const tls = (cert: string) => ['--tls', '--tls-cacert', f('ca.pem'), '--tls-cert', f(`${cert}.pem`), '--tls-key', f(`${cert}.key`)]
  const expired = await startPageServer(w.images, tls('expired'))
  t.teardown(() => { expired.child.kill('SIGKILL') })
  // The warning comes before the server is ready, so it is there with the port line.
  const line = expired.output().split('\n').find((l) => l.includes('expired.pem'))
  t.regex(line ?? '', /Warn: --tls-cert \S*\/expired\.pem: expired on 2020-02-01T00:00:00\.000Z: clients will refuse it$/, expired.output())
  expired.child.kill('SIGTERM')
  await expired.exit

  const valid = await startPageServer(w.images, tls('server'))
  t.teardown(() => { valid.child.kill('SIGKILL') })
  t.notRegex(valid.output(), /--tls-cert/, 'a valid certificate: no warning')
  valid.child.kill('SIGTERM')
  await valid.exit
})
