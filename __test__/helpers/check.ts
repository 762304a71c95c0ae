import type { ExecutionContext } from 'ava'

import type { Stats } from './daemon'
import type { Verdict, Workload } from './workload'

/** Each process's checksum, taken before the dump, to compare after restore. */
export async function checksums(w: Workload, roles = w.roles()): Promise<Map<string, string>> {
  const verdicts = await w.verify(roles)
  return new Map(verdicts.map((v) => [v.role, fnv(v)]))
}

export function fnv(v: Verdict): string {
  return /fnv=([0-9a-f]+)/.exec(v.line)?.[1] ?? ''
}

/** Every role says ok and its memory hashes exactly as before the dump. */
export async function assertMemoryAsDumped(t: ExecutionContext, w: Workload, before: Map<string, string>, roles = [...before.keys()]) {
  const after = await w.verify(roles)
  for (const v of after) {
    t.true(v.ok, v.line)
    t.is(fnv(v), before.get(v.role), `${v.role}: memory checksum as dumped`)
  }
}

/** The daemon exited 0 with a summary whose counts reconcile: every lazy page served once, or dropped. */
export function assertCleanSummary(t: ExecutionContext, exit: { code: number | null }, stderr: string, stats: Stats | undefined) {
  t.is(exit.code, 0, stderr)
  t.regex(stderr, /total: \d+ tasks .* every page accounted for once/)
  t.truthy(stats)
  t.true(stats!.reconciles)
  for (const task of stats!.tasks) {
    t.is(task.pending, 0)
    t.is(task.faulted + task.background + task.dropped + task.exists, task.total, `task ${task.task}: pages reconcile`)
  }
}
