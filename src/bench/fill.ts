// Scenario 1, fill: an idle `lpw dense` of N MiB, dumped once, restored lazily by each
// server in turn, interleaved round by round (criu, j1, j2, criu, j1, j2, ...) so that
// drift in the machine hits every server alike; every restore verified.
import { join } from 'node:path'

import { LPW } from './paths'
import { probeFill, type ProbeFill } from './probe'
import { lazyRestore, serverName, type Server } from './restore'
import { spread, type Spread } from './stats'
import { Dumped } from './workload'

export interface FillServer {
  name: string
  /** restore start → all pages in (server exit), seconds: best, median, worst round. */
  secs: Spread
  /** every round, in order. */
  runs: number[]
  restoreSecs: number[]
  /** the server's CPU after it was ready (ms per round): the restore's own cost. */
  cpuMs: Spread
  /** the same, every round in order. */
  cpuRuns: number[]
  /** CPU until ready (median ms): process start, reading the images. */
  startupCpuMs: number
  /** median of cpuMs per GiB restored. */
  cpuMsPerGiB: number
  /** peak resident anon / file over all rounds (MiB). */
  anonMiB: number
  fileMiB: number
}

export interface FillResult {
  mib: number
  bytes: number
  rounds: number
  servers: FillServer[]
  raw: ProbeFill[]
  verified: boolean
}

const SERVERS: Server[] = [{ kind: 'criu' }, { kind: 'ours', args: ['--jobs', '1'] }, { kind: 'ours', args: ['--jobs', '2'] }]

export async function fillScenario(mib: number, rounds: number, log: (s: string) => void): Promise<FillResult> {
  log(`fill ${mib} MiB, ${rounds} interleaved rounds: starting and dumping lpw dense`)
  const d = await Dumped.create(`fill-${mib}`, [LPW, 'dense', '--mib', String(mib)])
  const bytes = mib * 1024 * 1024
  const runs = SERVERS.map(() => ({ secs: [] as number[], restoreSecs: [] as number[], cpu: [] as number[], startup: [] as number[], anon: 0, file: 0 }))
  for (let round = 0; round < rounds; round++) {
    for (const [i, server] of SERVERS.entries()) {
      const t = await lazyRestore(server, d.images)
      const line = await d.check()
      await d.kill()
      const r = runs[i]
      const u = t.usage
      r.secs.push(t.secs)
      r.restoreSecs.push(t.restoreSecs)
      r.cpu.push(u.cpuMs - u.startupCpuMs)
      r.startup.push(u.startupCpuMs)
      r.anon = Math.max(r.anon, u.anonMiB)
      r.file = Math.max(r.file, u.fileMiB)
      log(
        `  round ${round + 1} ${serverName(server)}: ${t.secs.toFixed(3)} s (${(bytes / 1e9 / t.secs).toFixed(2)} GB/s), ` +
          `CPU ${(u.cpuMs - u.startupCpuMs).toFixed(0)} ms + ${u.startupCpuMs.toFixed(0)} ms start-up, anon ${u.anonMiB.toFixed(0)} MiB, ${line.split(' ').slice(0, 2).join(' ')}`,
      )
    }
  }
  // The probe reads the same pages image, right after the restores read it: same page cache.
  const pages = join(d.images, 'pages-1.img')
  const raw = [await probeFill(pages, 1, 64, rounds), await probeFill(pages, 2, 64, rounds)]
  log(`  raw probe (best of ${rounds}): 1 thread ${raw[0].gbps.toFixed(2)} GB/s, 2 threads ${raw[1].gbps.toFixed(2)} GB/s`)
  const servers = SERVERS.map((s, i): FillServer => {
    const r = runs[i]
    const cpuMs = spread(r.cpu)
    return {
      name: serverName(s),
      secs: spread(r.secs),
      runs: r.secs,
      restoreSecs: r.restoreSecs,
      cpuMs,
      cpuRuns: r.cpu,
      startupCpuMs: spread(r.startup).median,
      cpuMsPerGiB: cpuMs.median / (mib / 1024),
      anonMiB: r.anon,
      fileMiB: r.file,
    }
  })
  return { mib, bytes, rounds, servers, raw, verified: true }
}
