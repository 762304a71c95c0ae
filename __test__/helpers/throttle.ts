// A CPU quota for one process (a cgroup of its own: v1 `cpu` or v2 `cpu.max`), so that
// a fill that takes 70 ms at full speed takes seconds and a test can land a kill in the
// middle of it every time, not only when the scheduler happens to allow it.
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { sleep } from './proc'

export class CpuThrottle {
  private constructor(private readonly dir: string) {}

  /** A cgroup named `name` limited to `percent` of one CPU; undefined where cgroups can't be made. */
  static open(name: string, percent: number): CpuThrottle | undefined {
    const period = 100_000
    const quota = Math.max(1000, Math.round((period * percent) / 100))
    const v1 = '/sys/fs/cgroup/cpu'
    const v2 = '/sys/fs/cgroup'
    try {
      if (existsSync(join(v1, 'cpu.cfs_quota_us')) || existsSync(join(v1, 'cgroup.procs'))) {
        const dir = join(v1, name)
        if (!existsSync(dir)) mkdirSync(dir)
        writeFileSync(join(dir, 'cpu.cfs_period_us'), String(period))
        writeFileSync(join(dir, 'cpu.cfs_quota_us'), String(quota))
        return new CpuThrottle(dir)
      }
      if (existsSync(join(v2, 'cgroup.controllers')) && /\bcpu\b/.test(readFileSync(join(v2, 'cgroup.subtree_control'), 'utf8'))) {
        const dir = join(v2, name)
        if (!existsSync(dir)) mkdirSync(dir)
        writeFileSync(join(dir, 'cpu.max'), `${quota} ${period}`)
        return new CpuThrottle(dir)
      }
    } catch {
      /* no cgroup for us here */
    }
    return undefined
  }

  /** Move every thread of `pid` in. */
  add(pid: number): void {
    writeFileSync(join(this.dir, 'cgroup.procs'), String(pid))
  }

  /** The cgroup goes once its processes have (they are killed by then; wait a little for the kernel to let go). */
  async close(): Promise<void> {
    for (let i = 0; i < 40; i++) {
      try {
        rmdirSync(this.dir)
        return
      } catch {
        await sleep(50)
      }
    }
  }
}
