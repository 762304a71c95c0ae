// Scenario 2, fault latency: lpw-touch reads K random pages right after a lazy restore
// and times each first touch (workloads/touch.c). Only touches of pages that were still
// missing count as faults. "idle": ours with --fill-delay, so faults are served alone;
// "fill": no delay, faults compete with the background fill. The cases run interleaved,
// round after round; each round's quantiles are kept, since one bad round is the point.
import { existsSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { LPW_TOUCH } from './paths'
import { probeFault } from './probe'
import { waitFor } from './proc'
import { lazyRestore, type Server } from './restore'
import { quantiles, spread, type Quantiles, type Spread } from './stats'
import { readTouches } from './touches'
import { Dumped } from './workload'

export interface LatencyCase extends Quantiles {
  name: string
  /** touches whose page was already present (not faults, left out); summed over rounds. */
  present: number
  /** every fault latency in µs of every round, for the CDF plot (not written to JSON). */
  us: number[]
  /** each round's own quantiles; the pooled ones above are over all rounds' faults. */
  rounds: Quantiles[]
  /** p99 and max over rounds: best, median, worst round. */
  p99: Spread
  max: Spread
  /** the server's peak resident anon memory over the rounds (MiB). */
  anonMiB: number
}

export interface LatencyResult {
  mib: number
  touches: number
  rounds: number
  fillDelayMs: number
  cases: LatencyCase[]
}

const FILL_DELAY_MS = 3000

const CASES: Array<{ name: string; server: Server }> = [
  { name: 'ours idle (--fill-delay)', server: { kind: 'ours', args: ['--fill-delay', String(FILL_DELAY_MS)] } },
  { name: 'ours during fill', server: { kind: 'ours', args: [] } },
  { name: 'ours during fill, --jobs 2', server: { kind: 'ours', args: ['--jobs', '2'] } },
  { name: 'criu during fill', server: { kind: 'criu' } },
]


export async function latencyScenario(mib: number, touches: number, rounds: number, log: (s: string) => void): Promise<LatencyResult> {
  log(`fault latency ${mib} MiB, ${touches} random touches, ${rounds} interleaved rounds: starting and dumping lpw-touch`)
  const d = await Dumped.create(`latency-${mib}`, [LPW_TOUCH, '--mib', String(mib), '--touches', String(touches)])
  const file = join(d.state, 'touch-main.txt')
  const acc = CASES.map(() => ({ us: [] as number[], present: 0, rounds: [] as Quantiles[], anon: 0 }))
  // The bare uffd round trip (no daemon, no fill) runs in every round too: its worst
  // stalls are what this VM does to any fault handler, the floor under every max.
  const raw = { us: [] as number[], rounds: [] as Quantiles[] }
  for (let round = 0; round < rounds; round++) {
    for (const [i, c] of CASES.entries()) {
      rmSync(file, { force: true })
      const t = await lazyRestore(c.server, d.images, () => process.kill(-d.pid, 'SIGUSR2'))
      await waitFor('touch latencies', () => existsSync(file), 120_000)
      await d.check()
      await d.kill()
      const { us, present } = readTouches(file)
      const q = quantiles(us)
      const a = acc[i]
      a.us.push(...us)
      a.present += present
      a.rounds.push(q)
      a.anon = Math.max(a.anon, t.usage.anonMiB)
      log(`  round ${round + 1} ${c.name}: ${q.samples} faults (${present} already present) p50 ${q.p50Us.toFixed(1)} us, p99 ${q.p99Us.toFixed(1)} us, max ${q.maxUs.toFixed(1)} us`)
    }
    const probe = await probeFault(join(d.images, 'pages-1.img'), touches)
    const us = probe.lat_ns.map((n) => n / 1000)
    const q = quantiles(us)
    raw.us.push(...us)
    raw.rounds.push(q)
    log(`  round ${round + 1} raw probe: p50 ${q.p50Us.toFixed(1)} us, p99 ${q.p99Us.toFixed(1)} us, max ${q.maxUs.toFixed(1)} us`)
  }
  const cases: LatencyCase[] = CASES.map((c, i) => {
    const a = acc[i]
    return { name: c.name, ...quantiles(a.us), present: a.present, us: a.us, rounds: a.rounds, p99: spreadOf(a.rounds, 'p99Us'), max: spreadOf(a.rounds, 'maxUs'), anonMiB: a.anon }
  })
  cases.unshift({ name: 'raw uffd round trip (probe)', ...quantiles(raw.us), present: 0, us: raw.us, rounds: raw.rounds, p99: spreadOf(raw.rounds, 'p99Us'), max: spreadOf(raw.rounds, 'maxUs'), anonMiB: NaN })
  return { mib, touches, rounds, fillDelayMs: FILL_DELAY_MS, cases }
}

/** A quantile across rounds; rounds without faults (the fill won the race) are left out. */
const spreadOf = (rounds: Quantiles[], key: 'p99Us' | 'maxUs') => spread(rounds.filter((q) => q.samples > 0).map((q) => q[key]))
