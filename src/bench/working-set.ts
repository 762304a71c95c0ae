// Scenario 3, working set: lpw-hot (workloads/hot.c), a process whose pass over a
// random hot 10 % of its memory stands for the work it does right after migration.
// One restore records its working set (`--record-ws`, with a fill delay so every hot
// page faults); then each server restores the same dump and the process makes one
// pass, triggered the moment `criu restore -d` returns. Measured: restore start → end
// of that first pass ("time to first loop"), with and without `--prefetch-ws`.
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { f2, f3, row, verdict } from './format'
import { LPW_HOT } from './paths'
import { waitFor } from './proc'
import { lazyRestore, serverName, type Server } from './restore'
import { Dumped } from './workload'

export interface WorkingSetCase {
  name: string
  /** restore start → end of the first pass, per run (seconds). */
  firstLoop: number[]
  /** the pass alone (seconds), per run. */
  pass: number[]
  /** restore start → `criu restore -d` returned, per run. */
  restore: number[]
  /** restore start → every page in (server exit), per run. */
  fill: number[]
  best: number
}

export interface WorkingSetResult {
  mib: number
  hotPct: number
  hotPages: number
  /** pages in the recorded working set, and how long the recording pass took. */
  recorded: { pages: number; passSecs: number; fillDelayMs: number }
  cases: WorkingSetCase[]
}

const HOT_PCT = 10
/** Recording: serve faults only, long enough for the whole pass to fault. */
const RECORD_FILL_DELAY_MS = 8000

function readPass(file: string): { start: number; end: number; pages: number } {
  const [start, end, pages] = readFileSync(file, 'utf8').trim().split(' ').map(Number)
  return { start: start / 1e6, end: end / 1e6, pages }
}

export async function workingSetScenario(mib: number, reps: number, log: (s: string) => void): Promise<WorkingSetResult> {
  log(`working set ${mib} MiB, hot ${HOT_PCT} %: starting and dumping lpw-hot`)
  const d = await Dumped.create(`ws-${mib}`, [LPW_HOT, '--mib', String(mib), '--hot-pct', String(HOT_PCT)])
  const passFile = join(d.state, 'hot-main.txt')
  const wsFile = join(d.dir, 'ws.json')
  const trigger = () => process.kill(-d.pid, 'SIGUSR2')

  const onePass = async (server: Server) => {
    rmSync(passFile, { force: true })
    const t = await lazyRestore(server, d.images, trigger)
    const pass = readPass(await waitFor('the hot pass', () => existsSync(passFile) && passFile, 120_000))
    await d.check()
    await d.kill()
    return { t, pass }
  }

  rmSync(wsFile, { force: true })
  const rec = await onePass({ kind: 'ours', args: ['--fill-delay', String(RECORD_FILL_DELAY_MS), '--record-ws', wsFile] })
  const ws = JSON.parse(readFileSync(wsFile, 'utf8')) as { tasks: Array<{ pages: number }> }
  const recordedPages = ws.tasks.reduce((a, t) => a + t.pages, 0)
  const recPassSecs = (rec.pass.end - rec.pass.start) / 1000
  log(`  recorded ${recordedPages} pages (the pass took ${recPassSecs.toFixed(2)} s, faults only)`)
  if ((rec.pass.end - rec.t.startEpochMs) / 1000 > rec.t.restoreSecs + RECORD_FILL_DELAY_MS / 1000) {
    log(`  warning: the recording pass outlasted the ${RECORD_FILL_DELAY_MS} ms fill delay; the working set may lack pages`)
  }

  const servers: Array<{ name: string; server: Server }> = [
    { name: 'criu lazy-pages', server: { kind: 'criu' } },
    { name: 'ours --jobs 1', server: { kind: 'ours', args: ['--jobs', '1'] } },
    { name: 'ours --jobs 1 --prefetch-ws', server: { kind: 'ours', args: ['--jobs', '1', '--prefetch-ws', wsFile] } },
    { name: 'ours --jobs 2', server: { kind: 'ours', args: ['--jobs', '2'] } },
    { name: 'ours --jobs 2 --prefetch-ws', server: { kind: 'ours', args: ['--jobs', '2', '--prefetch-ws', wsFile] } },
  ]
  const cases: WorkingSetCase[] = servers.map(({ name }) => ({ name, firstLoop: [], pass: [], restore: [], fill: [], best: Infinity }))
  let hotPages = 0
  for (let rep = 0; rep < reps; rep++) {
    for (const [i, { server }] of servers.entries()) {
      const { t, pass } = await onePass(server)
      hotPages = pass.pages
      const c = cases[i]
      c.firstLoop.push((pass.end - t.startEpochMs) / 1000)
      c.pass.push((pass.end - pass.start) / 1000)
      c.restore.push(t.restoreSecs)
      c.fill.push(t.secs)
      log(
        `  ${serverName(server)}: first loop done ${c.firstLoop.at(-1)!.toFixed(3)} s after restore start ` +
          `(restore ${t.restoreSecs.toFixed(3)} s, pass ${c.pass.at(-1)!.toFixed(3)} s, all pages in ${t.secs.toFixed(3)} s)`,
      )
    }
  }
  for (const c of cases) c.best = Math.min(...c.firstLoop)
  return { mib, hotPct: HOT_PCT, hotPages, recorded: { pages: recordedPages, passSecs: recPassSecs, fillDelayMs: RECORD_FILL_DELAY_MS }, cases }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]

/** The case without `--prefetch-ws` that a prefetching case is compared with. */
const baselineOf = (r: WorkingSetResult, c: WorkingSetCase) => r.cases.find((b) => b.name === c.name.replace(' --prefetch-ws', ''))

export function workingSetMarkdown(r: WorkingSetResult): string[] {
  const criu = r.cases.find((c) => c.name === 'criu lazy-pages')
  const out = [
    `## Working set: ${r.mib} MiB process, one pass over a random hot ${r.hotPct} % (${r.hotPages} pages) right after restore`,
    '',
    row(['server', 'first loop s (best)', 'first loop s (median)', 'pass s', 'restore s', 'all pages in s', 'criu / this', 'without prefetch / with']),
    row(Array(8).fill('---')),
  ]
  for (const c of r.cases) {
    const base = c.name.includes('--prefetch-ws') ? baselineOf(r, c) : undefined
    out.push(
      row([
        c.name,
        f3(c.best),
        f3(median(c.firstLoop)),
        f3(median(c.pass)),
        f3(median(c.restore)),
        f3(median(c.fill)),
        criu ? `${f2(criu.best / c.best)}x` : '–',
        base ? `${f2(base.best / c.best)}x` : '–',
      ]),
    )
  }
  out.push(
    '',
    `First loop: \`criu restore\` start → the process finished its first pass over the hot pages (it starts the pass on SIGUSR2, sent the moment \`criu restore -d\` returns). Best of ${r.cases[0]?.firstLoop.length ?? 0} runs; the ratios use the best.`,
    `The working set was recorded on one restore of the same dump with \`--record-ws --fill-delay ${r.recorded.fillDelayMs}\` (faults only, so every hot page faulted): ${r.recorded.pages} pages, the hot pages plus the process's own stack and index array.`,
    '`--prefetch-ws` fetches those pages from the moment the task\'s uffd arrives, ahead of everything else; without it, faults are served one by one while the background fill goes through memory in address order.',
  )
  return out
}

export function workingSetTargets(r: WorkingSetResult): string[] {
  return r.cases
    .filter((c) => c.name.includes('--prefetch-ws'))
    .map((c) => {
      const base = baselineOf(r, c)
      const ratio = base ? base.best / c.best : NaN
      return row([
        `working-set prefetch cuts time to first loop >= 2x: ${c.name}`,
        `${f3(base?.best ?? NaN)} s → ${f3(c.best)} s = ${f2(ratio)}x`,
        verdict(ratio >= 2),
      ])
    })
}
