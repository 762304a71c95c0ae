// Real `criu restore --lazy-pages` served by lazy-pages: every byte verified, the
// daemon exits 0 by itself with a summary whose counts reconcile.
import test from 'ava'

import { assertCleanSummary, assertMemoryAsDumped, checksums } from './helpers/check'
import { lazyRestore } from './helpers/daemon'
import { dumpAndWait, killAndWait } from './helpers/dumped'
import { Workload } from './helpers/workload'

test('a single 256 MiB process', async (t) => {
  const w = await Workload.start('restore-dense', ['dense', '--mib', '256'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  const { exit, stderr, stats } = await lazyRestore(w.images)
  assertCleanSummary(t, exit, stderr, stats)
  t.is(stats!.total.lazy, report.total.lazy, 'every lazy page of the dump was in play')
  t.is(stats!.total.faulted + stats!.total.background, report.total.lazy, 'and each was copied exactly once')
  await assertMemoryAsDumped(t, w, before)
  w.kill()
})

test('a process tree: forked children sharing COW pages and a zombie', async (t) => {
  const w = await Workload.start('restore-tree', ['tree', '--mib', '64', '--children', '3', '--zombie'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  t.is(report.zombies.length, 1)
  const { exit, stderr, stats } = await lazyRestore(w.images)
  assertCleanSummary(t, exit, stderr, stats)
  t.is(stats!.tasks.length, 4, 'main and three children served')
  t.deepEqual(stats!.zombies, report.zombies)
  t.is(stats!.total.lazy, report.total.lazy)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
})

test('a multithreaded process', async (t) => {
  const w = await Workload.start('restore-threads', ['threads', '--mib', '64', '--threads', '4'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  const { exit, stderr, stats } = await lazyRestore(w.images)
  assertCleanSummary(t, exit, stderr, stats)
  t.is(stats!.total.lazy, report.total.lazy)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
})

test('a sparse process: holes stay zero, only dumped pages are copied', async (t) => {
  const w = await Workload.start('restore-sparse', ['sparse', '--mib', '64', '--every', '5'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  const { exit, stderr, stats } = await lazyRestore(w.images)
  assertCleanSummary(t, exit, stderr, stats)
  t.is(stats!.total.faulted + stats!.total.background, report.total.lazy)
  await assertMemoryAsDumped(t, w, before)
  w.kill()
})

test('the same images restored twice in a row', async (t) => {
  const w = await Workload.start('restore-twice', ['tree', '--mib', '32', '--children', '1'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  for (const round of [1, 2]) {
    const { exit, stderr, stats } = await lazyRestore(w.images)
    assertCleanSummary(t, exit, stderr, stats)
    t.is(stats!.total.faulted + stats!.total.background, report.total.lazy, `round ${round}: every page once`)
    await assertMemoryAsDumped(t, w, before)
    await killAndWait(w, report)
  }
})
