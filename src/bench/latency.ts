// Scenario 2, fault latency: lpw-touch reads K random pages right after a lazy restore
// and times each first touch (workloads/touch.c). Only touches of pages that were still
// missing count as faults. "idle": ours with --fill-delay, so faults are served alone;
// "fill": no delay, faults compete with the background fill.
import { existsSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { LPW_TOUCH } from './paths'
import { probeFault } from './probe'
import { waitFor } from './proc'
import { lazyRestore, type Server } from './restore'
import { quantiles, type Quantiles } from './stats'
import { readTouches } from './touches'
import { Dumped } from './workload'

export interface LatencyCase extends Quantiles {
  name: string
  /** touches whose page was already present (not faults, left out). */
  present: number
  /** every fault latency in µs, for the CDF plot (not written to JSON). */
  us: number[]
}

export interface LatencyResult {
  mib: number
  touches: number
  fillDelayMs: number
  cases: LatencyCase[]
}

const FILL_DELAY_MS = 3000

const CASES: Array<{ name: string; server: Server }> = [
  { name: 'ours idle (--fill-delay)', server: { kind: 'ours', args: ['--fill-delay', String(FILL_DELAY_MS)] } },
  { name: 'ours during fill', server: { kind: 'ours', args: [] } },
  { name: 'criu during fill', server: { kind: 'criu' } },
]


export async function latencyScenario(mib: number, touches: number, log: (s: string) => void): Promise<LatencyResult> {
  log(`fault latency ${mib} MiB, ${touches} random touches: starting and dumping lpw-touch`)
  const d = await Dumped.create(`latency-${mib}`, [LPW_TOUCH, '--mib', String(mib), '--touches', String(touches)])
  const file = join(d.state, 'touch-main.txt')
  const cases: LatencyCase[] = []
  for (const c of CASES) {
    rmSync(file, { force: true })
    await lazyRestore(c.server, d.images, () => process.kill(-d.pid, 'SIGUSR2'))
    await waitFor('touch latencies', () => existsSync(file), 120_000)
    await d.check()
    await d.kill()
    const { us, present } = readTouches(file)
    const q = quantiles(us)
    cases.push({ name: c.name, ...q, present, us })
    log(`  ${c.name}: ${q.samples} faults (${present} already present) p50 ${q.p50Us.toFixed(1)} us, p99 ${q.p99Us.toFixed(1)} us, max ${q.maxUs.toFixed(1)} us`)
  }
  const raw = await probeFault(join(d.images, 'pages-1.img'), touches)
  const rawUs = raw.lat_ns.map((n) => n / 1000)
  cases.unshift({ name: 'raw uffd round trip (probe)', ...quantiles(rawUs), present: 0, us: rawUs })
  log(`  raw probe: p50 ${raw.p50_us} us, p99 ${raw.p99_us} us, max ${raw.max_us} us`)
  return { mib, touches, fillDelayMs: FILL_DELAY_MS, cases }
}
