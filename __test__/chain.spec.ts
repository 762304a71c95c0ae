// A parent (pre-dump) chain: pages unchanged since the earlier dump live only in the
// parent images (PE_PARENT). This kernel lacks soft-dirty tracking, so `criu pre-dump`
// cannot run here; `lazy-pages rebase` makes the same chain from two real CRIU dumps
// (the first with -R), and real `criu restore` consumes it.
import test from 'ava'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'

import { native } from '../dist/native'
import { assertCleanSummary, fnv } from './helpers/check'
import { imagesJson, lazyPages } from './helpers/cli'
import { dump } from './helpers/criu'
import { lazyRestore } from './helpers/daemon'
import { dumpAndWait } from './helpers/dumped'
import { countPages, PE_PARENT, readPagemap } from './helpers/pagemap'
import { expectedPage } from './helpers/pattern'
import { Workload } from './helpers/workload'

test('dump -R, change memory, dump, rebase: images, page bytes through the chain, lazy restore', async (t) => {
  const w = await Workload.start('chain', ['churn', '--mib', '64'])
  const ready = w.ready()
  const region = ready.regions[0]
  const pre = join(w.dir, 'pre')
  mkdirSync(pre)
  await dump(w.pid, pre, ['-R'])
  const [churned] = await w.verify(['main'], 'SIGUSR2') // moves, drops and unmaps parts of the region
  t.true(churned.ok, churned.line)
  await dumpAndWait(w)

  const rebased = await lazyPages(['rebase', '-D', w.images, '--parent', pre, '--json'])
  t.is(rebased.code, 0, rebased.stderr)
  const report = await imagesJson(w.images)
  const task = report.tasks[0]
  const pm = readPagemap(join(w.images, `pagemap-${ready.pid}.img`))
  t.like(task, countPages(pm.entries), 'images --json equals an independent count')
  t.true(task.inParent > region.pages / 2, `most pages are in the parent (${task.inParent})`)
  t.true(task.lazy > 0, 'changed pages stay lazy')
  t.is(pm.entries.filter((e) => e.flags & PE_PARENT).every((e) => e.flags === PE_PARENT), true, 'PE_PARENT never with PE_LAZY')

  // The churn leaves eighths 0, 2, 4, 6, 7 of the region in place and unchanged: read
  // them through the chain and compare with the pattern.
  const eighth = region.pages / 8
  let checked = 0
  for (const part of [0, 2, 4, 6, 7]) {
    for (const index of [part * eighth, part * eighth + eighth / 2, (part + 1) * eighth - 1]) {
      const addr = BigInt(region.addr) + BigInt(index) * 4096n
      const entry = pm.entries.find((e) => addr >= e.vaddr && addr < e.vaddr + BigInt(e.pages) * 4096n)
      t.is(entry?.flags, PE_PARENT, `page ${index} lives in the parent`)
      const got = await native.readPages(w.images, ready.pid, addr, 1)
      t.true(got.equals(expectedPage(region, index)), `page ${index} bytes through the chain`)
      checked++
    }
  }
  t.is(checked, 15)

  // criu restore fills PE_PARENT pages itself; lazy-pages serves the rest.
  const { exit, stderr, stats } = await lazyRestore(w.images)
  assertCleanSummary(t, exit, stderr, stats)
  t.is(stats!.total.lazy, task.lazy, 'only the changed lazy pages were served')
  const [after] = await w.verify(['main'])
  t.true(after.ok, after.line)
  t.is(fnv(after), fnv(churned), 'memory as at the second dump')
  w.kill()
})
