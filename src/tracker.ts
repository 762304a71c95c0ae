// Per-task bookkeeping on the policy side (CRIU's "lpi"): one entry per uffd,
// forked children included, fed by daemon events. The engine's final stats are
// authoritative; this gives live state for logs, progress and the summary.
import type { DaemonEvent, TaskReport } from '../index'

export type TaskPhase = 'serving' | 'done' | 'exited'

export interface TrackedTask {
  task: number
  pid: number
  parent?: number
  phase: TaskPhase
  lazyPages: number
  faults: number
  report?: TaskReport
}

export class TaskTracker {
  readonly tasks = new Map<number, TrackedTask>()
  readonly zombies: number[] = []
  restoreFinished = false

  on(event: DaemonEvent): void {
    switch (event.kind) {
      case 'task':
        this.tasks.set(event.task!, { task: event.task!, pid: event.pid!, phase: 'serving', lazyPages: event.pages ?? 0, faults: 0 })
        break
      case 'zombie':
        this.zombies.push(event.pid!)
        break
      case 'forked':
        this.tasks.set(event.task!, { task: event.task!, pid: event.pid!, parent: event.parent, phase: 'serving', lazyPages: 0, faults: 0 })
        break
      case 'fault': {
        const t = this.tasks.get(event.task!)
        if (t) t.faults += 1
        break
      }
      case 'exited': {
        const t = this.tasks.get(event.task!)
        if (t) t.phase = 'exited'
        break
      }
      case 'task-done': {
        const t = this.tasks.get(event.task!)
        if (t) {
          t.report = event.stats
          if (t.phase !== 'exited') t.phase = event.stats?.exited ? 'exited' : 'done'
        }
        break
      }
      case 'restore-finished':
        this.restoreFinished = true
        break
    }
  }
}

/** Every lazy page accounted for exactly once. */
export function reconciles(r: TaskReport): boolean {
  return r.total === r.faulted + r.background + r.dropped + r.exists + r.pending + r.inFlight && r.pending === 0 && r.inFlight === 0
}
