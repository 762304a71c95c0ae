// The raw-limit probe (crates/probe): userfaultfd with no daemon, same machine, same run.
import { PROBE } from './paths'
import { run } from './proc'

export interface ProbeFill {
  threads: number
  bytes: number
  secs: number
  /** CPU of the copying threads in the best run (all threads together). */
  cpu_secs: number
  gbps: number
}

export interface ProbeFault {
  faults: number
  p50_us: number
  p99_us: number
  max_us: number
  lat_ns: number[]
}

async function probe<T>(args: string[]): Promise<T> {
  const r = await run(PROBE, args)
  if (r.code !== 0) throw new Error(`lazy-pages-probe ${args.join(' ')} failed (${r.code}): ${r.stderr}`)
  return JSON.parse(r.stdout) as T
}

export const probeFill = (file: string, threads: number, chunkPages: number, repeat: number) =>
  probe<ProbeFill>(['fill', '--file', file, '--threads', String(threads), '--chunk-pages', String(chunkPages), '--repeat', String(repeat)])

export const probeFault = (file: string, faults: number) => probe<ProbeFault>(['fault', '--file', file, '--faults', String(faults)])
