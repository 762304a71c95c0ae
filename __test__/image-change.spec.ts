// A pages image that changes while it is served (issue 20, item 4): truncated and
// regrown, it reads as zeros, not as an error. The daemon must notice, fail with one
// line naming the file, and poison what it had not served: the restored process's
// memory, read from outside, is the dumped data or EIO, never zeros.
import test from 'ava'
import { spawn } from 'node:child_process'
import { readFileSync, readdirSync, rmSync, statSync, truncateSync } from 'node:fs'
import { join } from 'node:path'

import { restoreLogTail, startLazyRestore } from './helpers/criu'
import { startDaemon, type DaemonRun } from './helpers/daemon'
import { dumpAndWait, killAndWait } from './helpers/dumped'
import { viewRegion, type MemRegion } from './helpers/memview'
import { alive, sleep } from './helpers/proc'
import { Workload } from './helpers/workload'

/** A read lease on inode `ino` that the kernel is breaking (someone waits to write). */
function leaseBreaking(ino: number): boolean {
  return readFileSync('/proc/locks', 'utf8')
    .split('\n')
    .some((l) => /\bLEASE\s+BREAKING\b/.test(l) && new RegExp(`:${ino} `).test(l))
}

/** Back to its size: the truncated part now reads as zeros (a hole). */
function regrow(path: string, size: number) {
  truncateSync(path, size)
}

test('local: a pages image truncated and regrown mid-restore: the daemon fails naming it, unserved pages are poisoned, the process never reads zeros', async (t) => {
  const w = await Workload.start('image-change', ['dense', '--mib', '64'])
  const report = await dumpAndWait(w)
  const ready = JSON.parse(readFileSync(join(w.state, 'ready-main.json'), 'utf8')) as { pid: number; regions: MemRegion[] }
  const region = ready.regions.find((r) => r.shape === 'dense')
  if (!region) throw new Error(`no dense region in ${JSON.stringify(ready)}`)
  // The biggest pages image is the one holding the region.
  const images = readdirSync(w.images)
    .filter((f) => /^pages-\d+\.img$/.test(f))
    .map((f) => join(w.images, f))
    .sort((a, b) => statSync(b).size - statSync(a).size)
  if (!images.length) throw new Error(`no pages image in ${w.images}`)
  const pages = images[0]
  const { size, ino } = statSync(pages)
  let daemon: DaemonRun | undefined
  try {
    // --fill-delay keeps background fill off: every page of the region is still
    // unserved when the image changes, and the reads below are what asks for them.
    daemon = await startDaemon(w.images, ['--fill-delay', '3600000'])
    t.is(await startLazyRestore(w.images).done, 0, restoreLogTail(w.images))

    let truncated = false
    // truncate(2) by path, as a writer would: coreutils' truncate opens O_NONBLOCK and
    // so gives up at once on a lease (EAGAIN) instead of waiting.
    const truncate = spawn(process.execPath, ['-e', 'require("fs").truncateSync(process.argv[1], 0)', pages], { stdio: 'ignore' })
    const truncateDone = new Promise<number | null>((resolve) => truncate.on('close', (code) => ((truncated = true), resolve(code))))
    // Either the truncate went through (nothing held it off), or it waits on the
    // daemon's lease; a condition either way, polled.
    while (!truncated && !leaseBreaking(ino)) await sleep(20)
    if (truncated) {
      t.is(await truncateDone, 0)
      regrow(pages, size)
    }

    // The process checks its own memory (SIGUSR1): its faults are what make the
    // daemon read the changed image. (A read of /proc/PID/mem does not reach the
    // daemon: an unserved page reads as EIO there.) It must die on a poisoned page,
    // never report a checksum of zeros.
    rmSync(join(w.state, 'result-main.txt'), { force: true })
    process.kill(-ready.pid, 'SIGUSR1')
    const exit = await daemon.exit
    const stderr = daemon.stderr()
    t.not(exit.code, 0, stderr)
    t.true(stderr.includes(`${pages}: pages image changed while being served`), `names the file: ${stderr}`)
    t.regex(stderr.trim().split('\n').pop() ?? '', /never served: (all poisoned|\d+ poisoned \(SIGBUS on touch\))/, 'what was not served is poisoned (the process, dying on its first poisoned page, may leave one or two unpoisoned)')
    const verdict = w.verdict('main')
    t.is(verdict, undefined, `a verdict from a changed image: ${verdict?.line}`)
    // It died on its first poisoned page (SIGBUS); any page still readable from
    // outside is the dumped data or EIO, never the zeros the regrown image holds.
    await truncateDone
    regrow(pages, size)
    if (alive(ready.pid) && !/^\d+ \(.*\) [ZX] /.test(readFileSync(`/proc/${ready.pid}/stat`, 'utf8'))) {
      const after = await viewRegion('main', ready.pid, region)
      t.is(after.zero, 0, `zero pages at ${after.first.zero}`)
      t.is(after.wrong, 0)
    }
  } finally {
    daemon?.child.kill('SIGKILL')
    await killAndWait(w, report)
  }
})
