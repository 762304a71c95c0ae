// Scenario 5, scale-out: N restores of one dump at the same time, all served by one
// `lazy-pages page-server --keep-serving` over loopback (the serverless case: one dump,
// many instances started from it). Each copy is restored by its own client daemon into
// its own pid and mount namespace (`unshare`), so N copies of one process can all have
// its pid, and a bind mount gives each copy its own state directory (touch timings and
// verification results). Every copy's first touches are timed and every copy verified.
import { spawn } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { f1, f2, f3, row } from './format'
import { PageServer } from './page-server'
import { CLI, LPW_TOUCH } from './paths'
import { killQuietly, run, waitFor } from './proc'
import { lazyRestore, type Server } from './restore'
import { quantiles, spread, type Quantiles, type Spread } from './stats'
import { readTouches } from './touches'
import { childOf, MemorySampler } from './usage'
import { Dumped } from './workload'

export interface ScaleCase {
  /** restores at once. */
  n: number
  /** first restore start → last client exit, per round (s): best, median, worst. */
  secs: Spread
  /** N × lazy bytes / secs, GB/s, from the best and the median round. */
  gbpsBest: number
  gbpsMedian: number
  /** each restore's own restore start → client exit (s), over all restores of all rounds. */
  perRestoreSecs: Spread
  /** each restore's fault p99 (µs), over all restores of all rounds. */
  p99: Spread
  /** every fault of every restore together. */
  pooled: Quantiles
  /** client daemon CPU after ready (median ms) and peak resident anon (MiB). */
  cpuMs: number
  anonMiB: number
}

export interface ScaleResult {
  mib: number
  touches: number
  lazyBytes: number
  rounds: number
  /** the page server's peak resident anon / file over the scenario (MiB). */
  server: { anonMiB: number; fileMiB: number }
  cases: ScaleCase[]
}

const PAGE = 4096

/** One copy's place: its images (a copy of the split dump), state dir, and processes. */
interface Slot {
  images: string
  state: string
  rcFile: string
  unshare?: number
  init?: number
  restored?: number
}

interface CopyRun {
  startMs: number
  endMs: number
  secs: number
  q: Quantiles
  us: number[]
  cpuMs: number
  anonMiB: number
}

async function cli(args: string[]): Promise<string> {
  const r = await run(process.execPath, [CLI, ...args], 300_000)
  if (r.code !== 0) throw new Error(`lazy-pages ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`)
  return r.stdout
}

export async function scaleScenario(mib: number, touches: number, counts: number[], rounds: number, log: (s: string) => void): Promise<ScaleResult> {
  log(`scale-out: ${counts.join(', ')} restores at once of one ${mib} MiB dump from one page server, ${rounds} interleaved rounds: starting and dumping lpw-touch`)
  const d = await Dumped.create(`scale-${mib}`, [LPW_TOUCH, '--mib', String(mib), '--touches', String(touches)])
  const split = join(d.dir, 'split')
  await cli(['split', '-D', d.images, '-o', split])
  const lazyBytes = JSON.parse(await cli(['images', '-D', d.images, '--json'])).total.lazy * PAGE
  const slots: Slot[] = Array.from({ length: Math.max(...counts) }, (_, i) => ({
    images: join(d.dir, `copy-${i}`, 'images'),
    state: join(d.dir, `copy-${i}`, 'state'),
    rcFile: join(d.dir, `copy-${i}`, 'restore.rc'),
  }))
  const runs = counts.map(() => [] as CopyRun[][])
  const server = await PageServer.start([], d.images, '127.0.0.1')
  const memory = new MemorySampler(() => server.pid)
  try {
    for (let round = 0; round < rounds; round++) {
      for (const [i, n] of counts.entries()) {
        const copies = await oneCase(slots.slice(0, n), { d, split, server })
        runs[i].push(copies)
        const start = Math.min(...copies.map((c) => c.startMs))
        const end = Math.max(...copies.map((c) => c.endMs))
        const p99s = copies.map((c) => c.q.p99Us)
        log(
          `  round ${round + 1}, ${n} at once: ${((end - start) / 1000).toFixed(3)} s, ${((n * lazyBytes) / 1e6 / (end - start)).toFixed(2)} GB/s together; ` +
            `fault p99 per restore ${p99s.map((p) => p.toFixed(0)).join(' ')} µs`,
        )
      }
    }
  } finally {
    memory.stop()
    await server.stop()
  }
  const cases = counts.map((n, i): ScaleCase => {
    const rs = runs[i]
    const secs = spread(rs.map((copies) => (Math.max(...copies.map((c) => c.endMs)) - Math.min(...copies.map((c) => c.startMs))) / 1000))
    const all = rs.flat()
    return {
      n,
      secs,
      gbpsBest: (n * lazyBytes) / 1e9 / secs.best,
      gbpsMedian: (n * lazyBytes) / 1e9 / secs.median,
      perRestoreSecs: spread(all.map((c) => c.secs)),
      p99: spread(all.filter((c) => c.q.samples > 0).map((c) => c.q.p99Us)),
      pooled: quantiles(all.flatMap((c) => c.us)),
      cpuMs: spread(all.map((c) => c.cpuMs)).median,
      anonMiB: Math.max(...all.map((c) => c.anonMiB)),
    }
  })
  return { mib, touches, lazyBytes, rounds, server: { anonMiB: memory.anonMiB, fileMiB: memory.fileMiB }, cases }
}

interface Ctx {
  d: Dumped
  split: string
  server: PageServer
}

/** N copies restored at once; each touched right after its restore, then verified. */
async function oneCase(slots: Slot[], x: Ctx): Promise<CopyRun[]> {
  for (const s of slots) {
    rmSync(join(s.images, '..'), { recursive: true, force: true })
    cpSync(x.split, s.images, { recursive: true })
    for (const f of readdirSync(s.images).filter((f) => /^lazy-|\.log$|^restore|\.socket$/.test(f))) rmSync(join(s.images, f), { force: true })
    mkdirSync(s.state, { recursive: true })
  }
  const client: Server = { kind: 'ours', args: ['--page-server', '--address', '127.0.0.1', '--port', String(x.server.port)] }
  try {
    const timings = await Promise.all(
      slots.map((s) =>
        lazyRestore(client, s.images, () => process.kill(-s.restored!, 'SIGUSR2'), { runRestore: inNamespaces(s, x.d.state), timeoutMs: 300_000 }),
      ),
    )
    const out: CopyRun[] = []
    for (const [i, s] of slots.entries()) {
      const file = join(s.state, 'touch-main.txt')
      await waitFor(`copy ${i}'s touch latencies`, () => existsSync(file), 120_000)
      await x.d.checkCopy(s.state, s.restored!)
      const { us } = readTouches(file)
      const t = timings[i]
      out.push({
        startMs: t.startEpochMs,
        endMs: t.startEpochMs + t.secs * 1000,
        secs: t.secs,
        q: quantiles(us),
        us,
        cpuMs: t.usage.cpuMs - t.usage.startupCpuMs,
        anonMiB: t.usage.anonMiB,
      })
    }
    return out
  } catch (e) {
    x.server.assertAlive()
    throw e
  } finally {
    for (const s of slots) endCopy(s)
  }
}

/**
 * Runs `criu restore -d` in a new pid and mount namespace whose init stays (a `sleep`)
 * so the restored copy lives on after criu returns; the copy's state dir is bind-mounted
 * over the workload's. Resolves once criu returned, with the copy's pid seen from here.
 */
function inNamespaces(slot: Slot, workloadState: string) {
  return async (argv: string[], timeoutMs: number): Promise<{ code: number | null }> => {
    rmSync(slot.rcFile, { force: true })
    const script = 'src=$1 dst=$2 rc=$3; shift 3; mount --bind "$src" "$dst" || { echo 99 > "$rc"; exit 1; }; "$@"; echo $? > "$rc"; exec sleep 1000000'
    const child = spawn('unshare', ['--pid', '--fork', '--mount-proc', 'sh', '-c', script, 'lpbench-ns', slot.state, workloadState, slot.rcFile, ...argv], {
      stdio: 'ignore',
    })
    slot.unshare = child.pid
    const text = await waitFor('criu restore in its namespaces', () => existsSync(slot.rcFile) && readFileSync(slot.rcFile, 'utf8').trim(), timeoutMs)
    const code = Number(text)
    if (code !== 0) return { code }
    slot.init = await waitFor('the namespace init', () => childOf(slot.unshare!), 10_000)
    // criu has exited: the restored copy is the init's one child.
    slot.restored = await waitFor('the restored copy', () => childOf(slot.init!), 10_000)
    return { code }
  }
}

function endCopy(s: Slot): void {
  for (const pid of [s.restored, s.init, s.unshare]) killQuietly(pid)
  s.restored = s.init = s.unshare = undefined
}

export function scaleMarkdown(r: ScaleResult): string[] {
  const out = [
    `## Scale-out: N restores of one ${r.mib} MiB dump at once from one page server (loopback), ${r.touches} random first touches each, ${r.rounds} interleaved rounds`,
    '',
    row(['restores at once', 'together s best / median / worst', 'GB/s together (best)', 'GB/s together (median)', 'one restore s best / median / worst', 'fault p99 per restore µs best / median / worst', 'all faults p50 / p99 / max µs', 'client CPU ms', 'client anon MiB']),
    row(Array(9).fill('---')),
  ]
  const three = (s: Spread, f: (x: number) => string) => `${f(s.best)} / ${f(s.median)} / ${f(s.worst)}`
  for (const c of r.cases) {
    out.push(
      row([
        c.n,
        three(c.secs, f3),
        f2(c.gbpsBest),
        f2(c.gbpsMedian),
        three(c.perRestoreSecs, f3),
        three(c.p99, f1),
        `${f1(c.pooled.p50Us)} / ${f1(c.pooled.p99Us)} / ${f1(c.pooled.maxUs)}`,
        f1(c.cpuMs),
        f1(c.anonMiB),
      ]),
    )
  }
  out.push(
    '',
    `One \`lazy-pages page-server --keep-serving\` on the full dump on 127.0.0.1; each copy has its own client daemon (\`lazy-pages --page-server\`, default --jobs), a copy of the dump without its lazy pages, and \`criu restore --lazy-pages -d\` in its own pid and mount namespace. "Together": first restore start → last client exit; GB/s together = N × ${(r.lazyBytes / 1e6).toFixed(0)} MB of lazy pages / that time. The page server's peak resident memory: anon ${f1(r.server.anonMiB)} MiB, file ${f1(r.server.fileMiB)} MiB.`,
  )
  return out
}
