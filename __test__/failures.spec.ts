// Things going wrong around a lazy restore: clear errors, fast non-zero exits, no hangs,
// and the survivors of a partial failure still get every byte.
import test from 'ava'
import { cpSync, existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { assertCleanSummary, checksums, fnv } from './helpers/check'
import { lazyPages } from './helpers/cli'
import { restoreLogTail, startLazyRestore } from './helpers/criu'
import { readStats, startDaemon } from './helpers/daemon'
import { dumpAndWait } from './helpers/dumped'
import { SCRATCH } from './helpers/paths'
import { alive, run, waitFor } from './helpers/proc'
import { Workload } from './helpers/workload'

test('criu restore killed mid-protocol: the daemon exits non-zero within a second, saying so', async (t) => {
  const w = await Workload.start('fail-restore-killed', ['tree', '--mib', '16', '--children', '2'])
  const report = await dumpAndWait(w)
  // A post-restore action script holds criu after every uffd was sent and before
  // RESTORE_FINISHED, so the kill lands mid-protocol every time.
  const marker = join(w.dir, 'post-restore')
  const script = join(w.dir, 'hold.sh')
  writeFileSync(script, `#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = post-restore ] || exit 0\ntouch ${marker}\nexec sleep 30.123\n`, { mode: 0o755 })
  const daemon = await startDaemon(w.images)
  const restore = startLazyRestore(w.images, ['--action-script', script])
  await waitFor('criu restore to reach post-restore', () => existsSync(marker), 30_000)
  t.regex(daemon.stderr(), /criu restore connected/)
  const killedAt = Date.now()
  restore.kill('SIGKILL')
  const exit = await daemon.exit
  t.not(exit.code, 0)
  t.regex(daemon.stderr(), /lazy-pages: criu restore closed the connection before restore finished/)
  t.true(exit.at - killedAt < 1500, `exited ${exit.at - killedAt} ms after the kill`)
  // criu's half-restored tasks die with it; make sure before the next test reuses pids.
  for (const task of report.tasks) if (alive(task.pid)) process.kill(task.pid, 'SIGKILL')
  await run('pkill', ['-f', `sleep 30.123`])
})

test('corrupt images: the daemon refuses before listening, naming the file', async (t) => {
  const w = await Workload.start('fail-corrupt', ['dense', '--mib', '4'])
  const report = await dumpAndWait(w)
  const dir = join(SCRATCH, 'fail-corrupt-images')
  rmSync(dir, { recursive: true, force: true })
  cpSync(w.images, dir, { recursive: true })
  const pagemap = join(dir, `pagemap-${report.tasks[0].pid}.img`)
  const buf = readFileSync(pagemap)
  writeFileSync(pagemap, buf.subarray(0, buf.length - 5))
  const r = await lazyPages(['-D', dir, '--connect-timeout', '5'])
  t.is(r.code, 1)
  t.regex(r.stderr, new RegExp(`lazy-pages: .*pagemap-${report.tasks[0].pid}\\.img: offset \\d+`))
  t.false(existsSync(join(dir, 'lazy-pages.socket')), 'never listened')
})

test('no restore connects: the daemon gives up after --connect-timeout', async (t) => {
  const w = await Workload.start('fail-timeout', ['dense', '--mib', '4'])
  await dumpAndWait(w)
  const started = Date.now()
  const r = await lazyPages(['-D', w.images, '--connect-timeout', '1'])
  t.is(r.code, 1)
  t.regex(r.stderr, /timed out waiting for criu restore to connect/)
  t.true(Date.now() - started < 10_000)
})

test('a restored task killed mid-transfer: the others finish, exit 0, the task is marked exited', async (t) => {
  const w = await Workload.start('fail-task-killed', ['tree', '--mib', '64', '--children', '2'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  const victim = w.ready('child1').pid
  const daemon = await startDaemon(w.images, ['--fill-delay', '2000'])
  t.is(await startLazyRestore(w.images).done, 0, restoreLogTail(w.images))
  process.kill(victim, 'SIGKILL')
  const exit = await daemon.exit
  const stats = readStats(w.images)
  assertCleanSummary(t, exit, daemon.stderr(), stats)
  const dead = stats.tasks.find((x) => x.pid === victim)
  t.truthy(dead)
  t.true(dead!.exited, 'marked exited')
  t.true(dead!.dropped > 0, 'its unserved pages dropped')
  const verdicts = await w.verify(['main', 'child0'])
  for (const v of verdicts) {
    t.true(v.ok, v.line)
    t.is(fnv(v), before.get(v.role))
  }
  t.is(report.tasks.length, 3)
  w.kill()
})
