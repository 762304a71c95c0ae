// The results as a Markdown table (stdout and latest.md) and JSON (latest.json),
// with every ratio the targets are stated in.
import type { FillResult } from './fill'
import { f1, f2, pct, row, verdict } from './format'
import type { LatencyResult } from './latency'
import { remoteMarkdown, remoteTargets, type RemoteResult } from './remote'
import { workingSetMarkdown, workingSetTargets, type WorkingSetResult } from './working-set'

export interface BenchResult {
  date: string
  quick: boolean
  host: { cpus: number; kernel: string }
  fill: FillResult[]
  latency?: LatencyResult
  remote?: RemoteResult
  workingSet?: WorkingSetResult
}

function fillTable(fill: FillResult[]): string[] {
  const out = [
    row(['size', 'criu GB/s', 'ours j1 GB/s', 'ours j2 GB/s', 'raw 1T GB/s', 'raw 2T GB/s', 'j1/criu', 'j2/criu', 'j1/raw1T', 'j2/raw1T', 'j2/raw2T', 'verified']),
    row(Array(12).fill('---')),
  ]
  for (const r of fill) {
    const [criu, j1, j2] = r.servers.map((s) => s.gbps)
    const [raw1, raw2] = r.raw.map((p) => p.gbps)
    out.push(row([`${r.mib} MiB`, f2(criu), f2(j1), f2(j2), f2(raw1), f2(raw2), `${f2(j1 / criu)}x`, `${f2(j2 / criu)}x`, pct(j1 / raw1), pct(j2 / raw1), pct(j2 / raw2), r.verified ? 'ok' : 'FAIL']))
  }
  return out
}

function latencyTable(l: LatencyResult): string[] {
  const out = [row(['case', 'faults', 'p50 µs', 'p99 µs', 'max µs', 'p99 / ours idle p99', 'p50 / raw p50']), row(Array(7).fill('---'))]
  const idle = l.cases.find((c) => c.name.startsWith('ours idle'))
  const raw = l.cases[0]
  for (const c of l.cases) out.push(row([c.name, c.samples, f1(c.p50Us), f1(c.p99Us), f1(c.maxUs), f2(c.p99Us / (idle?.p99Us ?? NaN)), f2(c.p50Us / raw.p50Us)]))
  out.push(row(['criu idle (no fill-delay knob)', '–', '–', '–', '–', 'not measurable', '–']))
  return out
}

function targets(r: BenchResult): string[] {
  const out = [row(['target', 'measured', '']), row(['---', '---', '---'])]
  for (const f of r.fill) {
    const [criu, j1, j2] = f.servers.map((s) => s.gbps)
    const raw1 = f.raw[0].gbps
    out.push(row([`fill ${f.mib} MiB: ours >= 4x criu`, `j1 ${f2(j1 / criu)}x, j2 ${f2(j2 / criu)}x`, verdict(Math.max(j1, j2) / criu >= 4)]))
    out.push(row([`fill ${f.mib} MiB: ours j1 >= 85 % of raw 1T`, pct(j1 / raw1), verdict(j1 / raw1 >= 0.85)]))
    out.push(row([`fill ${f.mib} MiB: ours j2 >= 1.3x raw 1T`, `${f2(j2 / raw1)}x`, verdict(j2 / raw1 >= 1.3)]))
  }
  const l = r.latency
  if (l) {
    const idle = l.cases.find((c) => c.name.startsWith('ours idle'))!
    const fill = l.cases.find((c) => c.name === 'ours during fill')!
    out.push(row([`fault p99 during fill <= 2x idle p99`, `${f1(fill.p99Us)} / ${f1(idle.p99Us)} µs = ${f2(fill.p99Us / idle.p99Us)}x`, verdict(fill.p99Us <= 2 * idle.p99Us)]))
  }
  if (r.remote) out.push(...remoteTargets(r.remote))
  if (r.workingSet) out.push(...workingSetTargets(r.workingSet))
  return out
}

export function markdown(r: BenchResult): string {
  const lines = [
    `# lazy-pages bench${r.quick ? ' (--quick)' : ''}`,
    '',
    `${r.date}, ${r.host.cpus} CPUs, Linux ${r.host.kernel}. Every restore verified by the restored process (SIGUSR1, checksum = before the dump).`,
    '',
  ]
  if (r.fill.length) lines.push('## Fill: `criu restore --lazy-pages` start → page server exit (all pages in)', '', ...fillTable(r.fill), '')
  if (r.latency) {
    const l = r.latency
    lines.push(`## Fault latency: ${l.touches} random first touches of a ${l.mib} MiB restored process (only pages still missing count)`, '', ...latencyTable(l), '')
  }
  if (r.remote) lines.push(...remoteMarkdown(r.remote), '')
  if (r.workingSet) lines.push(...workingSetMarkdown(r.workingSet), '')
  lines.push(
    '## Targets',
    '',
    ...targets(r),
    '',
  )
  return lines.join('\n')
}

/** JSON without the raw latency samples (the PNG has the curves). */
export function json(r: BenchResult): string {
  const slim = {
    ...r,
    latency: r.latency && { ...r.latency, cases: r.latency.cases.map(({ us: _us, ...c }) => c) },
    remote: r.remote && { ...r.remote, cases: r.remote.cases.map(({ us: _us, ...c }) => c) },
  }
  return JSON.stringify(slim, null, 2) + '\n'
}
