// After a lazy restore, the process forks, MADV_DONTNEEDs, munmaps and mremaps memory
// whose pages have not arrived yet (the background fill is held back so they can't have).
import test from 'ava'

import { assertCleanSummary } from './helpers/check'
import { startDaemon, readStats } from './helpers/daemon'
import { startLazyRestore, restoreLogTail } from './helpers/criu'
import { dumpAndWait } from './helpers/dumped'
import { Workload } from './helpers/workload'

test('fork, MADV_DONTNEED, munmap and mremap of lazy memory', async (t) => {
  const w = await Workload.start('churn', ['churn', '--mib', '128'])
  await w.verify(['main'])
  await dumpAndWait(w)
  const daemon = await startDaemon(w.images, ['--fill-delay', '3000'])
  const code = await startLazyRestore(w.images).done
  t.is(code, 0, restoreLogTail(w.images))
  // Within the fill delay: only faults are served, so every op below hits lazy pages.
  const [main, child] = await w.verify(['main', 'churnchild'], 'SIGUSR2')
  t.true(main.ok, main.line)
  t.true(child.ok, child.line)
  const exit = await daemon.exit
  const stats = readStats(w.images)
  assertCleanSummary(t, exit, daemon.stderr(), stats)
  t.true(stats.total.dropped >= (16 * 1024 * 1024) / 4096, 'the DONTNEED and munmap spans were dropped, not copied')
  t.true(stats.tasks.some((x) => x.parent !== null && x.parent !== undefined), 'the fork got a task of its own')
  // And memory stays right after the fill completed.
  const [again] = await w.verify(['main'], 'SIGUSR2')
  t.true(again.ok, again.line)
  w.kill()
})
