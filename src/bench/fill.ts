// Scenario 1, fill: an idle `lpw dense` of N MiB, dumped once, restored lazily by each
// server in turn (interleaved, so drift hits all alike), every restore verified.
import { join } from 'node:path'

import { LPW } from './paths'
import { probeFill, type ProbeFill } from './probe'
import { lazyRestore, serverName, type Server } from './restore'
import { Dumped } from './workload'

export interface FillResult {
  mib: number
  bytes: number
  /** Best (shortest) restore-start → all-pages-in time per server, and every run. */
  servers: Array<{ name: string; best: number; gbps: number; runs: number[]; restoreSecs: number[] }>
  raw: ProbeFill[]
  verified: boolean
}

const SERVERS: Server[] = [{ kind: 'criu' }, { kind: 'ours', args: ['--jobs', '1'] }, { kind: 'ours', args: ['--jobs', '2'] }]

export async function fillScenario(mib: number, reps: number, log: (s: string) => void): Promise<FillResult> {
  log(`fill ${mib} MiB: starting and dumping lpw dense`)
  const d = await Dumped.create(`fill-${mib}`, [LPW, 'dense', '--mib', String(mib)])
  const bytes = mib * 1024 * 1024
  const runs = SERVERS.map(() => ({ secs: [] as number[], restoreSecs: [] as number[] }))
  for (let rep = 0; rep < reps; rep++) {
    for (const [i, server] of SERVERS.entries()) {
      const t = await lazyRestore(server, d.images)
      const line = await d.check()
      await d.kill()
      runs[i].secs.push(t.secs)
      runs[i].restoreSecs.push(t.restoreSecs)
      log(`  ${serverName(server)}: ${t.secs.toFixed(3)} s (${(bytes / 1e9 / t.secs).toFixed(2)} GB/s), ${line.split(' ').slice(0, 2).join(' ')}`)
    }
  }
  // The probe reads the same pages image, right after the restores read it: same page cache.
  const pages = join(d.images, 'pages-1.img')
  const raw = [await probeFill(pages, 1, 64, 3), await probeFill(pages, 2, 64, 3)]
  log(`  raw probe: 1 thread ${raw[0].gbps.toFixed(2)} GB/s, 2 threads ${raw[1].gbps.toFixed(2)} GB/s`)
  const servers = SERVERS.map((s, i) => {
    const best = Math.min(...runs[i].secs)
    return { name: serverName(s), best, gbps: bytes / 1e9 / best, runs: runs[i].secs, restoreSecs: runs[i].restoreSecs }
  })
  return { mib, bytes, servers, raw, verified: true }
}
