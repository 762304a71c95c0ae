// The end-of-restore report: one line per task and a total, plus the same as JSON.
import type { DaemonStats, TaskReport } from '../index'
import { reconciles, type TaskTracker } from './tracker'

export interface Summary {
  imagesDir: string
  elapsedMs: number
  tasks: Array<TaskReport & { reconciles: boolean }>
  zombies: number[]
  total: { tasks: number; lazy: number; faulted: number; background: number; prefetched: number; zero: number; exists: number; dropped: number; exited: number }
  faults: { count: number; p50Us: number; p99Us: number; maxUs: number }
  droppedFaultEvents: number
  /** Log lines that could not be written (a full disk under -o): the log is incomplete. */
  logLinesDropped: number
  reconciles: boolean
  /** Set when this daemon took the restore over from a guardian whose daemon died. */
  resumed?: { guardianPid: number; lostDaemon: number; tasks: number; doneTasks: number }
  /** Set when the guardian died or stopped reading while this daemon served: crash safety ended then. */
  guardianLost?: { afterMs: number; message: string }
}

export function buildSummary(
  imagesDir: string,
  stats: DaemonStats,
  tracker: TaskTracker,
  logLinesDropped: number,
  resumed?: Summary['resumed'],
  guardianLost?: Summary['guardianLost'],
): Summary {
  const tasks = stats.tasks.map((t) => ({ ...t, reconciles: reconciles(t) }))
  const total = { tasks: tasks.length, lazy: 0, faulted: 0, background: 0, prefetched: 0, zero: 0, exists: 0, dropped: 0, exited: 0 }
  for (const t of tasks) {
    total.lazy += t.total
    total.faulted += t.faulted
    total.background += t.background
    total.prefetched += t.prefetched
    total.zero += t.zero
    total.exists += t.exists
    total.dropped += t.dropped
    total.exited += t.exited ? 1 : 0
  }
  return {
    imagesDir,
    elapsedMs: stats.elapsedMs,
    tasks,
    zombies: tracker.zombies,
    total,
    faults: { count: stats.faults, p50Us: stats.faultP50Us, p99Us: stats.faultP99Us, maxUs: stats.faultMaxUs },
    droppedFaultEvents: stats.droppedFaultEvents,
    logLinesDropped,
    reconciles: tasks.every((t) => t.reconciles),
    ...(resumed ? { resumed } : {}),
    ...(guardianLost ? { guardianLost } : {}),
  }
}

const mib = (pages: number) => `${((pages * 4096) / (1024 * 1024)).toFixed(1)} MiB`

export function formatSummary(s: Summary): string[] {
  const lines = s.tasks.map((t) => {
    const who = t.parent === undefined || t.parent === null ? `pid ${t.pid}` : `pid ${t.pid} (fork of task ${t.parent})`
    const state = t.exited ? 'exited' : 'done'
    return (
      `task ${t.task} ${who}: ${t.total} lazy pages = ${t.faulted} faulted + ${t.background} background + ` +
      `${t.dropped} dropped + ${t.exists} already present; ${t.zero} zero pages; ${state}${t.reconciles ? '' : ' (COUNTS DO NOT RECONCILE)'}`
    )
  })
  const secs = (s.elapsedMs / 1000).toFixed(2)
  const rate = s.elapsedMs > 0 ? ((s.total.faulted + s.total.background) * 4096) / 1e9 / (s.elapsedMs / 1000) : 0
  if (s.resumed) {
    lines.push(
      `resumed: took over ${s.resumed.tasks} tasks from guardian pid ${s.resumed.guardianPid} after daemon pid ${s.resumed.lostDaemon} died` +
        `${s.resumed.doneTasks ? ` (${s.resumed.doneTasks} more had every page already: not counted below)` : ''}; ` +
        `the ${s.total.exists} pages it had already copied count as already present`,
    )
  }
  if (s.logLinesDropped > 0) lines.push(`log: ${s.logLinesDropped} lines could not be written (see the first one on stderr); the restore was not affected`)
  if (s.guardianLost) {
    lines.push(
      `crash safety: ended ${(s.guardianLost.afterMs / 1000).toFixed(2)} s into serving, when the guardian was lost; ` +
        'a death of this daemon after that would have left the unserved pages to read as zeros',
    )
  }
  lines.push(
    `total: ${s.total.tasks} tasks (${s.zombies.length} zombies, ${s.total.exited} exited), ${s.total.lazy} lazy pages (${mib(s.total.lazy)}) = ` +
      `${s.total.faulted} faulted + ${s.total.background} background + ${s.total.dropped} dropped + ${s.total.exists} already present; ` +
      `${s.total.zero} zero pages; ${s.total.prefetched ? `${s.total.prefetched} of the background pages from the working set; ` : ''}${secs} s, ${rate.toFixed(2)} GB/s; faults p50 ${s.faults.p50Us} us, p99 ${s.faults.p99Us} us, max ${s.faults.maxUs} us; ` +
      (s.reconciles ? 'every page accounted for once' : 'COUNTS DO NOT RECONCILE'),
  )
  return lines
}
