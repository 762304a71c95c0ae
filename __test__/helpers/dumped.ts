import { imagesJson } from './cli'
import { dump } from './criu'
import { waitGone } from './proc'
import type { Workload } from './workload'

/** criu dump the workload (killing it), then wait until every dumped pid is reaped so restore can reuse them. */
export async function dumpAndWait(w: Workload, extra: string[] = []) {
  await dump(w.pid, w.images, extra)
  const report = await imagesJson(w.images)
  for (const pid of [...report.tasks.map((t: { pid: number }) => t.pid), ...report.zombies]) await waitGone(pid)
  return report
}

/** Kill a restored tree and wait for its pids to be free again. */
export async function killAndWait(w: Workload, report: { tasks: Array<{ pid: number }>; zombies: number[] }) {
  w.kill()
  for (const pid of [...report.tasks.map((t) => t.pid), ...report.zombies]) await waitGone(pid)
}
