// Scenario 3, remote: pages cross a 1 Gbit/s link between two network namespaces.
// Host A runs our page server on the full dump; host B has only the dump without its lazy
// page data (`lazy-pages split`) and runs each client daemon and `criu restore`. lpw-touch's
// first touches then compete with the background transfer that fills the link.
import { existsSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'

import { ShapedLink } from './netns'
import { f1, f2, f3, row, verdict } from './format'
import { PageServer } from './page-server'
import { CLI, LPW_TOUCH } from './paths'
import { run, waitFor } from './proc'
import { lazyRestore, type Server } from './restore'
import { quantiles, spread, type Quantiles, type Spread } from './stats'
import { MemorySampler } from './usage'
import { readTouches } from './touches'
import { Dumped } from './workload'

/** One client's rounds: latencies pooled over the rounds, times as the median round unless named. */
export interface RemoteCase extends Quantiles {
  name: string
  /** transfer seconds: best, median, worst round. */
  transfer: Spread
  /** fault p99 per round: best, median, worst. */
  p99: Spread
  /** the client daemon's CPU after ready (median ms) and its peak resident anon (MiB). */
  cpuMs: number
  anonMiB: number
  /** touches whose page had already arrived (not faults, left out). */
  present: number
  /** every fault latency in µs, for the CDF plot. */
  us: number[]
  /** `criu restore` start → client daemon exit (every lazy page in). */
  secs: number
  /** `criu restore` start → `criu restore -d` returned. */
  restoreSecs: number
  /** `criu restore` start → touch-main.txt written (±10 ms): the touches ran before this. */
  touchesDoneSecs: number
  /** lazy bytes * 8 / secs / 1e9. */
  gbps: number
  /** bytes host A's shaped interface sent during the case (frames, headers included). */
  linkBytes: number
  /** linkBytes * 8 / secs / 1e9. */
  linkGbps: number
  /** the link's Gbit/s from SIGUSR2 to touches done: is it saturated while the faults run? */
  touchLinkGbps: number
}

export interface RemoteResult {
  mib: number
  touches: number
  rateGbit: number
  /** lazy pages of the dump * 4096: what every client fetches over the link. */
  lazyBytes: number
  /** tbf parameters of the link. */
  shaping: string
  rounds: number
  /** the page server's peak resident anon / file over the whole scenario (MiB). */
  server: { anonMiB: number; fileMiB: number }
  cases: RemoteCase[]
}

const RATE_GBIT = 1
const TARGET_P99_US = 2000
const PAGE = 4096

const CASES: Array<{ name: string; server: (addr: string, port: number) => Server }> = [
  { name: 'criu lazy-pages --page-server', server: (a, p) => ({ kind: 'criu', args: ['--page-server', '--address', a, '--port', String(p)] }) },
  { name: 'ours --page-server', server: (a, p) => ({ kind: 'ours', args: ['--page-server', '--address', a, '--port', String(p)] }) },
  {
    name: 'ours --page-server --urgent-connection',
    server: (a, p) => ({ kind: 'ours', args: ['--page-server', '--address', a, '--port', String(p), '--urgent-connection'] }),
  },
]

async function cli(args: string[]): Promise<string> {
  const r = await run(process.execPath, [CLI, ...args], 300_000)
  if (r.code !== 0) throw new Error(`lazy-pages ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`)
  return r.stdout
}

export async function remoteScenario(mib: number, touches: number, rounds: number, log: (s: string) => void): Promise<RemoteResult> {
  log(`remote ${mib} MiB over ${RATE_GBIT} Gbit/s, ${touches} random touches, ${rounds} interleaved rounds: starting and dumping lpw-touch`)
  const d = await Dumped.create(`remote-${mib}`, [LPW_TOUCH, '--mib', String(mib), '--touches', String(touches)])
  const split = join(d.dir, 'split')
  await cli(['split', '-D', d.images, '-o', split])
  const lazyBytes = JSON.parse(await cli(['images', '-D', d.images, '--json'])).total.lazy * PAGE
  const file = join(d.state, 'touch-main.txt')
  const runs: RemoteRun[][] = CASES.map(() => [])
  let link: ShapedLink | undefined
  let server: PageServer | undefined
  let memory: MemorySampler | undefined
  let shaping = ''
  try {
    link = await ShapedLink.create(RATE_GBIT)
    shaping = link.shaping.join(' ')
    server = await PageServer.start(link.exec(link.a), d.images, link.addrA)
    log(`  page server on ${link.addrA}:${server.port} in netns ${link.a}; clients and criu restore in ${link.b}`)
    const srv = server
    memory = new MemorySampler(() => srv.pid)
    for (let round = 0; round < rounds; round++) {
      for (const [i, c] of CASES.entries()) runs[i].push(await oneCase(c.name, c.server(link.addrA, server.port), { d, split, file, link, server, lazyBytes }, log))
    }
  } catch (e) {
    // Each case kills its restored process once verified; only a failed case leaves one.
    await d.kill().catch(() => undefined)
    throw e
  } finally {
    memory?.stop()
    await server?.stop()
    await link?.delete()
  }
  const cases = CASES.map((c, i) => summarize(c.name, runs[i]))
  return { mib, touches, rateGbit: RATE_GBIT, lazyBytes, shaping, rounds, server: { anonMiB: memory?.anonMiB ?? NaN, fileMiB: memory?.fileMiB ?? NaN }, cases }
}

const med = (xs: number[]) => spread(xs).median

export function summarize(name: string, runs: RemoteRun[]): RemoteCase {
  const us = runs.flatMap((r) => r.us)
  const transfer = spread(runs.map((r) => r.secs))
  return {
    name,
    ...quantiles(us),
    us,
    present: runs.reduce((a, r) => a + r.present, 0),
    transfer,
    p99: spread(runs.filter((r) => r.samples > 0).map((r) => r.p99Us)),
    cpuMs: med(runs.map((r) => r.cpuMs)),
    anonMiB: Math.max(...runs.map((r) => r.anonMiB)),
    secs: transfer.median,
    restoreSecs: med(runs.map((r) => r.restoreSecs)),
    touchesDoneSecs: med(runs.map((r) => r.touchesDoneSecs)),
    gbps: med(runs.map((r) => r.gbps)),
    linkBytes: med(runs.map((r) => r.linkBytes)),
    linkGbps: med(runs.map((r) => r.linkGbps)),
    touchLinkGbps: med(runs.map((r) => r.touchLinkGbps)),
  }
}

export interface Ctx {
  d: Dumped
  split: string
  file: string
  link: ShapedLink
  server: PageServer
  lazyBytes: number
}

/** One client restore: its own quantiles and times. */
export type RemoteRun = Quantiles & Omit<RemoteCase, keyof Quantiles | 'transfer' | 'p99'>

export async function oneCase(name: string, client: Server, x: Ctx, log: (s: string) => void): Promise<RemoteRun> {
  rmSync(x.file, { force: true })
  x.server.assertAlive()
  const tx = () => x.link.txBytesA(x.server.pid)
  const tx0 = tx()
  let touched: Promise<{ at: number; tx: number }> | undefined
  let restored = { at: 0, tx: 0 }
  const t = await lazyRestore(
    client,
    x.split,
    () => {
      restored = { at: performance.now(), tx: tx() }
      process.kill(-x.d.pid, 'SIGUSR2')
      touched = waitFor('touch latencies', () => existsSync(x.file) && { at: performance.now(), tx: tx() }, 120_000)
      // Awaited below; until then a timeout must not surface as an unhandled rejection.
      touched.catch(() => undefined)
    },
    { prefix: x.link.exec(x.link.b), timeoutMs: 300_000 },
  ).catch((e: Error) => Promise.reject(failed(name, e, x.server)))
  const linkBytes = tx() - tx0
  const done = await touched!
  const touchSecs = (done.at - restored.at) / 1000
  const touchesDoneSecs = t.restoreSecs + touchSecs
  await x.d.check().catch((e: Error) => Promise.reject(failed(name, e, x.server)))
  await x.d.kill()
  const { us, present } = readTouches(x.file)
  const q = quantiles(us)
  const r: RemoteRun = {
    name,
    ...q,
    cpuMs: t.usage.cpuMs - t.usage.startupCpuMs,
    anonMiB: t.usage.anonMiB,
    present,
    us,
    secs: t.secs,
    restoreSecs: t.restoreSecs,
    touchesDoneSecs,
    gbps: (x.lazyBytes * 8) / t.secs / 1e9,
    linkBytes,
    linkGbps: (linkBytes * 8) / t.secs / 1e9,
    touchLinkGbps: ((done.tx - restored.tx) * 8) / touchSecs / 1e9,
  }
  log(
    `  ${name}: ${q.samples} faults (${present} present) p50 ${q.p50Us.toFixed(1)} us, p99 ${q.p99Us.toFixed(1)} us, max ${q.maxUs.toFixed(1)} us; ` +
      `${t.secs.toFixed(2)} s, ${r.gbps.toFixed(3)} Gbit/s lazy, ${r.linkGbps.toFixed(3)} Gbit/s on the link; touches done at ${touchesDoneSecs.toFixed(2)} s, link ${r.touchLinkGbps.toFixed(3)} Gbit/s meanwhile`,
  )
  return r
}

/** A client's error, and the page server's own if it died: that is usually the cause. */
function failed(name: string, e: Error, server: PageServer): Error {
  return new Error(`remote case "${name}": ${e.message}${server.alive() ? '' : `; ${server.died()}`}`)
}

export function remoteMarkdown(r: RemoteResult): string[] {
  const out = [
    `## Remote: ${r.mib} MiB restored over a ${r.rateGbit} Gbit/s link (veth + tbf between two netns), ${r.touches} random first touches during the transfer`,
    '',
    row(['client (on host B)', 'faults', 'present', 'p50 µs', 'p99 µs', 'max µs', 'p99 best / median / worst round', 'link Gbit/s while touching', 'touches done at s', 'transfer s best / median / worst', 'lazy Gbit/s', 'link Gbit/s', 'CPU ms', 'anon MiB']),
    row(Array(14).fill('---')),
  ]
  for (const c of r.cases) {
    out.push(
      row([
        c.name,
        c.samples,
        c.present,
        f1(c.p50Us),
        f1(c.p99Us),
        f1(c.maxUs),
        `${f1(c.p99.best)} / ${f1(c.p99.median)} / ${f1(c.p99.worst)}`,
        f3(c.touchLinkGbps),
        f2(c.touchesDoneSecs),
        `${f2(c.transfer.best)} / ${f2(c.transfer.median)} / ${f2(c.transfer.worst)}`,
        f3(c.gbps),
        f3(c.linkGbps),
        f1(c.cpuMs),
        f1(c.anonMiB),
      ]),
    )
  }
  const mb = (r.lazyBytes / 1e6).toFixed(0)
  out.push(
    '',
    `Link: a veth pair, host A's side shaped by \`tbf ${r.shaping}\` (why these values: src/bench/netns.ts).`,
    `${r.rounds} interleaved rounds; latencies pooled over them, other columns the median round unless named. CPU: the client daemon's after it was ready; anon: its peak resident anonymous memory. The page server's peak resident memory over the whole scenario: anon ${f1(r.server.anonMiB)} MiB, file ${f1(r.server.fileMiB)} MiB.`,
    `Host A: \`lazy-pages page-server --keep-serving\` on the full dump, one server for every client. Host B: the dump without its lazy pages (\`lazy-pages split\`), the client daemon and \`criu restore --lazy-pages -d\`.`,
    `Transfer: \`criu restore\` start → client exit, all ${mb} MB of lazy pages in. Lazy Gbit/s = ${mb} MB × 8 / transfer s; link Gbit/s = bytes host A's shaped interface counted as sent (vA tx_bytes: page data plus TCP/IP headers) × 8 / transfer s.`,
    'Faults: touches of pages still missing (mincore just before) while the background transfer fills the link; "present" touches found their page already in and are left out. "Link Gbit/s while touching": what host A sent from SIGUSR2 to the touches\' end (at "touches done", counted from `criu restore` start): how full the link was while the faults were timed.',
    '`--urgent-connection`: faults go over a second TCP connection of their own (only against our page server); without it a fault\'s page queues behind background pages on the wire.',
    'Every restore verified by the restored process (checksum = before the dump); every client daemon exited 0.',
  )
  return out
}

export function remoteTargets(r: RemoteResult): string[] {
  return r.cases
    .filter((c) => c.name.startsWith('ours'))
    .map((c) =>
      row([
        `remote fault p99 during saturation <= 2 ms (median round): ${c.name}`,
        c.samples ? `${f1(c.p99.median)} µs (${c.samples} faults)` : 'no faults measured',
        verdict(c.samples > 0 && c.p99.median <= TARGET_P99_US),
      ]),
    )
}
