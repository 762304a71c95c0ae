// Scenario "remote-wan": post-copy over an emulated wide-area path. This kernel has no
// netem, so every client reaches its page server through the bench's own relay
// (relay.ts): each direction delayed by rtt/2 plus 0..J ms of jitter, order kept, at an
// unlimited rate or 1 Gbit/s. The dump is a tree of four processes (lpw-touch --procs 4);
// right after `criu restore -d` returns, all four touch random pages of their own at the
// same moment while the background fill runs, each fault timed. Page servers: ours
// (`page-server --keep-serving` on the full dump, clients restore from `lazy-pages split`)
// and CRIU's own (`criu dump --lazy-pages`, one session, so a fresh tree is dumped for each
// of its cases). Clients: ours and `criu lazy-pages --page-server`. Next to them, in the
// same rounds and through a relay with the same settings: a plain bulk TCP transfer of as
// many bytes (the most the path gives, the reference for link utilisation) and a ping
// (the path's round trip as a TCP application sees it). See bench/README.md.
import { spawn } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { f1, f2, f3, pct, row, verdict } from './format'
import { PageServer } from './page-server'
import { CLI, CRIU, LPW_TOUCH, SCRATCH } from './paths'
import { killAndReap, killQuietly, run, waitFor, waitGone, within } from './proc'
import { listening } from './remote-fast'
import { bulkThroughRelay, gbitToBytes, pingThroughRelay, RelayThread, type RelayOptions, type RelayStats } from './relay'
import { lazyRestore, type Server, type Timing } from './restore'
import { pairedWins, quantile, quantiles, spread, type Quantiles, type Spread } from './stats'
import { readTouches } from './touches'
import { childOf } from './usage'
import { fnvOf } from './workload'

const PAGE = 4096
const PROCS = 4
/** Targets of issue 19. */
const MAX_RTT_MS = 50
const OF_BULK = 0.7
const PINGS = 20
/** The relays' nice value in the cases (RelayOptions.nice): the emulated network keeps its timing while client and server take both CPUs. */
const RELAY_NICE = -10

export const WAN_SERVERS = ['ours', 'criu-dump'] as const
export const WAN_CLIENTS = ['ours', 'criu', 'ours-urgent'] as const
type ServerKey = (typeof WAN_SERVERS)[number]
type ClientKey = (typeof WAN_CLIENTS)[number]

const SERVER_NAMES: Record<ServerKey, string> = { ours: 'ours page-server --keep-serving', 'criu-dump': 'criu dump --lazy-pages' }
const CLIENTS: Record<ClientKey, { name: string; server: (port: number) => Server; ourServerOnly?: boolean }> = {
  criu: { name: 'criu lazy-pages --page-server', server: (p) => ({ kind: 'criu', args: ['--page-server', '--address', '127.0.0.1', '--port', String(p)] }) },
  ours: { name: 'ours --page-server', server: (p) => ({ kind: 'ours', args: ['--page-server', '--address', '127.0.0.1', '--port', String(p)] }) },
  // Two connections; CRIU's page server serves one session.
  'ours-urgent': {
    name: 'ours --page-server --urgent-connection',
    server: (p) => ({ kind: 'ours', args: ['--page-server', '--address', '127.0.0.1', '--port', String(p), '--urgent-connection'] }),
    ourServerOnly: true,
  },
}

export interface WanConfig {
  /** round trips (ms); each direction is delayed by half. */
  rtts: number[]
  /** jitter per direction (ms). */
  jitters: number[]
  /** Gbit/s per direction; 0 = unlimited. */
  rates: number[]
  servers: ServerKey[]
  clients: ClientKey[]
  /** the whole tree's memory (MiB), split evenly over its four processes. */
  mib: number
  /** random first touches per process. */
  touches: number
  rounds: number
}

function list<T extends string | number>(argv: string[], flag: string, parse: (s: string) => T, fallback: T[]): T[] {
  const i = argv.indexOf(flag)
  if (i < 0) return fallback
  const raw = argv[i + 1] ?? ''
  const out = raw.split(',').map(parse)
  if (!raw || out.some((x) => typeof x === 'number' && !(x >= 0))) throw new Error(`${flag} takes a comma-separated list; got ${JSON.stringify(raw)}`)
  return out
}

function oneOf<T extends string>(allowed: readonly T[], flag: string) {
  return (s: string): T => {
    if (!(allowed as readonly string[]).includes(s)) throw new Error(`${flag}: ${JSON.stringify(s)} is none of ${allowed.join(', ')}`)
    return s as T
  }
}

/**
 * The grid and size, from the command line: --wan-rtt 0,2,10,50 --wan-jitter 0,1
 * --wan-rate 0,1 (Gbit/s, 0 = unlimited) --wan-servers ours,criu-dump --wan-clients
 * ours,criu[,ours-urgent] --wan-mib N --wan-touches K --wan-rounds R. Defaults: the whole
 * grid of issue 19, 64 MiB (32 with --quick), 300 touches per process.
 */
export function wanConfig(argv: string[], quick: boolean, rounds: number): WanConfig {
  const num = (s: string) => Number(s)
  const [mib] = list(argv, '--wan-mib', num, [quick ? 32 : 64])
  const [touches] = list(argv, '--wan-touches', num, [300])
  const [r] = list(argv, '--wan-rounds', num, [rounds])
  const c: WanConfig = {
    rtts: list(argv, '--wan-rtt', num, [0, 2, 10, 50]),
    jitters: list(argv, '--wan-jitter', num, [0, 1]),
    rates: list(argv, '--wan-rate', num, [0, 1]),
    servers: list(argv, '--wan-servers', oneOf(WAN_SERVERS, '--wan-servers'), ['ours', 'criu-dump']),
    clients: list(argv, '--wan-clients', oneOf(WAN_CLIENTS, '--wan-clients'), ['ours', 'criu']),
    mib,
    touches,
    rounds: r,
  }
  if (!(mib >= PROCS) || !Number.isInteger(mib) || !Number.isInteger(touches) || !(touches >= 1) || !(r >= 1) || !Number.isInteger(r)) throw new Error(`remote-wan: bad --wan-mib/--wan-touches/--wan-rounds: ${JSON.stringify(c)}`)
  return c
}

/** Faults of one process: pooled over the rounds (µs). */
export interface ProcessFaults extends Quantiles {
  role: string
  /** touches whose page had already arrived: not faults, left out. */
  present: number
}

export interface WanCase {
  server: string
  client: string
  /** restore start → client exit (s), and each round's (round order, for paired comparisons). */
  secs: Spread
  runs: number[]
  /** on the wire: the client's first byte reaching the relay → the relay's last byte to the client (s), as the bulk reference is timed. */
  wire: Spread
  /** the relay's p99 lateness against its model (ms, worst round): its own error in this case. */
  relayLateP99Ms: number
  /** restore start → `criu restore -d` returned (s, median round). */
  restoreSecs: number
  /** the client daemon's CPU after ready (ms, median round) and peak resident anon (MiB). */
  cpuMs: number
  anonMiB: number
  /** bytes the relay delivered to the client (median round): page data plus the protocol's headers. */
  toClientBytes: number
  /** per process, faults of every round together. */
  processes: ProcessFaults[]
  /** the last process's first touch − the first one's (ms, worst round): ~0 when they started together. */
  startSpreadMs: number
  /** the longest process's touching, first touch to last (ms, median round). */
  touchingMs: number
  /** SIGUSR2 → the last process set up to touch (ms, median round): its own first faults, a few round trips. */
  setupMs: number
}

export interface WanSetting {
  rttMs: number
  jitterMs: number
  /** Gbit/s; 0 = unlimited. */
  rateGbit: number
  /** the round trip through the relay as a TCP ping sees it, idle: the median of each round's median (ms). */
  pingMs: number
  /** plain bulk TCP transfer of the dump's lazy bytes through the same relay settings (s). */
  bulk: { secs: Spread; runs: number[] }
  cases: WanCase[]
}

export interface WanResult {
  mib: number
  procs: number
  touches: number
  rounds: number
  lazyBytes: number
  settings: WanSetting[]
}

interface Run {
  /** SIGUSR2 → the last process set up to touch (ms). */
  setupMs: number
  secs: number
  wireSecs: number
  restoreSecs: number
  cpuMs: number
  anonMiB: number
  toClientBytes: number
  lateP99Ms: number
  touches: Map<string, { us: number[]; present: number }>
  startSpreadMs: number
  touchingMs: number
}

async function cli(args: string[]): Promise<string> {
  const r = await run(process.execPath, [CLI, ...args], 300_000)
  if (r.code !== 0) throw new Error(`lazy-pages ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`)
  return r.stdout
}

const relayOptions = (s: { rttMs: number; jitterMs: number; rateGbit: number }): Omit<RelayOptions, 'target'> => ({
  delayMs: s.rttMs / 2,
  jitterMs: s.jitterMs,
  rateBytesPerSec: gbitToBytes(s.rateGbit),
})


const rateName = (gbit: number) => (gbit ? `${gbit} Gbit/s` : 'unlimited')
export const settingName = (s: { rttMs: number; jitterMs: number; rateGbit: number }) => `rtt ${s.rttMs} ms, jitter ${s.jitterMs} ms, ${rateName(s.rateGbit)}`
/** The first cells of every report row: which setting, which page server and client. */
const caseCells = (s: WanSetting, c: WanCase) => [s.rttMs, s.jitterMs, rateName(s.rateGbit), f2(s.pingMs), c.server, c.client]

/** A dumped tree of four lpw-touch processes, each one's checksum taken before the dump. */
class TreeDump {
  private constructor(
    readonly dir: string,
    readonly pid: number,
    readonly pids: number[],
    readonly fnv: Map<string, string>,
  ) {}

  get images(): string {
    return join(this.dir, 'images')
  }

  get state(): string {
    return join(this.dir, 'state')
  }

  get roles(): string[] {
    return [...this.fnv.keys()]
  }

  static async create(name: string, argv: string[]): Promise<TreeDump> {
    const dir = join(SCRATCH, name)
    rmSync(dir, { recursive: true, force: true })
    mkdirSync(join(dir, 'images'), { recursive: true })
    const state = join(dir, 'state')
    spawn(argv[0], [...argv.slice(1), '--state', state], { stdio: 'ignore', detached: true }).unref()
    const { pid, pids, roles } = await treeReady(state, name)
    const fnv = await verifyTree(state, pid, roles)
    const r = await run(CRIU, ['dump', '-t', String(pid), '-D', join(dir, 'images'), '-o', 'dump.log'])
    if (r.code !== 0) throw new Error(`criu dump of ${name} failed (${r.code}): see ${dir}/images/dump.log`)
    for (const p of pids) await waitGone(p)
    return new TreeDump(dir, pid, pids, fnv)
  }

  /** After a restore: every process checks every byte of its memory against its checksum from before the dump. */
  check(): Promise<void> {
    return checkTree(this.state, this.pid, this.fnv)
  }

  /** End the restored tree and wait until every pid of it can be restored again. */
  async kill(): Promise<void> {
    try {
      process.kill(-this.pid, 'SIGKILL')
    } catch {
      /* already gone */
    }
    for (const p of this.pids) await waitGone(p)
  }
}

/** Waits for the tree's main to be ready (it is, last of all); its pid, its processes' pids and roles. */
async function treeReady(state: string, what: string): Promise<{ pid: number; pids: number[]; roles: string[] }> {
  const ready = join(state, 'ready-main.json')
  await waitFor(`${what} ready`, () => existsSync(ready), 120_000)
  const main = JSON.parse(readFileSync(ready, 'utf8')) as { pid: number; children?: Array<{ role: string; pid: number }> }
  const kids = main.children ?? []
  return { pid: main.pid, pids: [main.pid, ...kids.map((c) => c.pid)], roles: ['main', ...kids.map((c) => c.role)] }
}

/** SIGUSR1 to the tree's group; every role's checksum, each verdict required to be ok. */
async function verifyTree(state: string, pid: number, roles: string[]): Promise<Map<string, string>> {
  for (const role of roles) rmSync(join(state, `result-${role}.txt`), { force: true })
  process.kill(-pid, 'SIGUSR1')
  const out = new Map<string, string>()
  for (const role of roles) {
    const file = join(state, `result-${role}.txt`)
    await waitFor(`verification result of ${role}`, () => existsSync(file), 300_000, 25)
    const line = readFileSync(file, 'utf8').trim()
    if (!line.startsWith('ok ')) throw new Error(`${role} failed verification: ${line}`)
    out.set(role, fnvOf(line))
  }
  return out
}

async function checkTree(state: string, pid: number, want: Map<string, string>): Promise<void> {
  const got = await verifyTree(state, pid, [...want.keys()])
  for (const [role, fnv] of want) if (got.get(role) !== fnv) throw new Error(`restored ${role} failed verification: fnv=${got.get(role)}, want fnv=${fnv}`)
}

/** Before a restore: no touch files of an earlier one; the touches are to start together (workloads/touch.c). */
function clearTouches(state: string, roles: string[]): void {
  const files = ['touch-at.txt', ...roles.flatMap((role) => [`touch-${role}.txt`, `touchspan-${role}.txt`, `touchready-${role}`])]
  for (const f of files) rmSync(join(state, f), { force: true })
  writeFileSync(join(state, 'touch-sync'), '')
}

/** Start at most this long after the last process said it is ready: they poll for the start every millisecond. */
const START_MARGIN_MS = 5

/**
 * Right after `criu restore -d` returned: SIGUSR2 to the tree; once every process has set
 * up (its own first faults) and said so, name the instant all of them start touching,
 * CLOCK_REALTIME (the restored tree's monotonic clock may be offset: workloads/touch.c).
 * `signalled`: when the signal went (epoch ms); `started`: settles once the start is named.
 */
function startTouches(state: string, pid: number, roles: string[]): { signalled: number; started: Promise<void> } {
  const signalled = Date.now()
  process.kill(-pid, 'SIGUSR2')
  const started = waitFor('every process set up to touch', () => roles.every((role) => existsSync(join(state, `touchready-${role}`))), 300_000, 1).then(() => {
    const tmp = join(state, '.touch-at.txt')
    writeFileSync(tmp, `${BigInt(Date.now() + START_MARGIN_MS) * 1_000_000n}\n`)
    renameSync(tmp, join(state, 'touch-at.txt'))
  })
  // Awaited after the restore; until then a timeout must not surface as an unhandled rejection.
  started.catch(() => undefined)
  return { signalled, started }
}

/** After the client exited: every process's touches, and how close together they started. */
async function collectTouches(state: string, roles: string[], touch: { signalled: number; started: Promise<void> }): Promise<Pick<Run, 'touches' | 'startSpreadMs' | 'touchingMs' | 'setupMs'>> {
  await touch.started
  const touches = new Map<string, { us: number[]; present: number }>()
  const spans: Array<[number, number]> = []
  let setupMs = 0
  for (const role of roles) {
    const file = join(state, `touch-${role}.txt`)
    await waitFor(`${role}'s touch latencies`, () => existsSync(file), 300_000)
    touches.set(role, readTouches(file))
    const [ready, start, end] = readFileSync(join(state, `touchspan-${role}.txt`), 'utf8').trim().split(' ').map((x) => Number(x) / 1e6)
    spans.push([start, end])
    setupMs = Math.max(setupMs, ready - touch.signalled)
  }
  const starts = spans.map((s) => s[0])
  return { touches, startSpreadMs: Math.max(...starts) - Math.min(...starts), touchingMs: Math.max(...spans.map((s) => s[1] - s[0])), setupMs }
}

function describe(r: Run): string {
  const faults = [...r.touches.entries()].map(([role, t]) => {
    const q = quantiles(t.us)
    return `${role} ${q.samples} (${t.present} present) p50 ${f2(q.p50Us / 1000)} p99 ${f2(q.p99Us / 1000)} max ${f2(q.maxUs / 1000)} ms`
  })
  return (
    `${r.secs.toFixed(3)} s (restore ${r.restoreSecs.toFixed(2)} s, on the wire ${r.wireSecs.toFixed(3)} s, relay late p99 ${r.lateP99Ms.toFixed(2)} ms), client CPU ${r.cpuMs.toFixed(0)} ms; faults: ${faults.join('; ')}; ` +
    `all four set up ${r.setupMs.toFixed(0)} ms after SIGUSR2, started within ${r.startSpreadMs.toFixed(2)} ms, the longest touching ${r.touchingMs.toFixed(0)} ms`
  )
}

export async function wanScenario(c: WanConfig, log: (s: string) => void): Promise<WanResult> {
  const grid = c.rtts.flatMap((rttMs) => c.jitters.flatMap((jitterMs) => c.rates.map((rateGbit) => ({ rttMs, jitterMs, rateGbit }))))
  const argv = [LPW_TOUCH, '--mib', String(c.mib), '--touches', String(c.touches), '--procs', String(PROCS)]
  log(
    `remote-wan: ${c.mib} MiB tree of ${PROCS} processes, ${c.touches} touches each; rtt ${c.rtts.join(',')} ms x jitter ${c.jitters.join(',')} ms x rate ${c.rates.map(rateName).join(',')}; ` +
      `servers ${c.servers.join(',')}; clients ${c.clients.join(',')}; ${c.rounds} interleaved rounds: starting and dumping the tree`,
  )
  const d = await TreeDump.create(`remote-wan-${c.mib}`, argv)
  const split = join(d.dir, 'split')
  await cli(['split', '-D', d.images, '-o', split])
  const lazyBytes = JSON.parse(await cli(['images', '-D', d.images, '--json'])).total.lazy * PAGE
  const settings: WanSetting[] = []
  const server = c.servers.includes('ours') ? await PageServer.start([], d.images, '127.0.0.1') : undefined
  try {
    for (const s of grid) {
      const opts = relayOptions(s)
      const pings: number[] = []
      const bulk: number[] = []
      const runs = new Map<string, Run[]>()
      const key = (srv: ServerKey, cl: ClientKey) => `${srv}|${cl}`
      log(` ${settingName(s)}`)
      for (let round = 1; round <= c.rounds; round++) {
        const ping = await pingThroughRelay(opts, PINGS)
        pings.push(quantile(ping, 0.5))
        const b = await bulkThroughRelay(opts, lazyBytes)
        bulk.push(b)
        log(`  round ${round}: ping p50 ${quantile(ping, 0.5).toFixed(2)} ms (min ${ping[0].toFixed(2)}), bulk TCP ${b.toFixed(3)} s (${(lazyBytes / 1e6 / b).toFixed(0)} MB/s)`)
        for (const srv of c.servers) {
          for (const cl of c.clients) {
            if (srv !== 'ours' && CLIENTS[cl].ourServerOnly) continue
            const r =
              srv === 'ours'
                ? await fromOurServer(d, split, server!, CLIENTS[cl].server, opts)
                : await fromCriuDump(argv, d.roles, CLIENTS[cl].server, opts)
            ;(runs.get(key(srv, cl)) ?? runs.set(key(srv, cl), []).get(key(srv, cl))!).push(r)
            log(`  round ${round} ${SERVER_NAMES[srv]} -> ${CLIENTS[cl].name}: ${describe(r)}`)
          }
        }
      }
      const cases: WanCase[] = []
      for (const srv of c.servers)
        for (const cl of c.clients) {
          const rs = runs.get(key(srv, cl))
          if (rs) cases.push(summarize(SERVER_NAMES[srv], CLIENTS[cl].name, rs, d.roles))
        }
      settings.push({ ...s, pingMs: spread(pings).median, bulk: { secs: spread(bulk), runs: bulk }, cases })
    }
  } finally {
    await server?.stop()
  }
  return { mib: c.mib, procs: PROCS, touches: c.touches, rounds: c.rounds, lazyBytes, settings }
}

function summarize(server: string, client: string, rs: Run[], roles: string[]): WanCase {
  const med = (xs: number[]) => spread(xs).median
  return {
    server,
    client,
    secs: spread(rs.map((r) => r.secs)),
    runs: rs.map((r) => r.secs),
    wire: spread(rs.map((r) => r.wireSecs)),
    relayLateP99Ms: Math.max(...rs.map((r) => r.lateP99Ms)),
    restoreSecs: med(rs.map((r) => r.restoreSecs)),
    cpuMs: med(rs.map((r) => r.cpuMs)),
    anonMiB: Math.max(...rs.map((r) => r.anonMiB)),
    toClientBytes: med(rs.map((r) => r.toClientBytes)),
    processes: roles.map((role) => {
      const all = rs.map((r) => r.touches.get(role)!)
      return { role, ...quantiles(all.flatMap((t) => t.us)), present: all.reduce((n, t) => n + t.present, 0) }
    }),
    startSpreadMs: Math.max(...rs.map((r) => r.startSpreadMs)),
    touchingMs: med(rs.map((r) => r.touchingMs)),
    setupMs: med(rs.map((r) => r.setupMs)),
  }
}

const CLIENT_TIMEOUT_MS = 1_800_000
let criuPort = 31000 + ((process.pid * 13) % 2000)

/** Our page server through a relay: the split dump restored, touched right after, checked, killed. */
async function fromOurServer(d: TreeDump, split: string, server: PageServer, client: (port: number) => Server, opts: Omit<RelayOptions, 'target'>): Promise<Run> {
  server.assertAlive()
  clearTouches(d.state, d.roles)
  const relay = await RelayThread.start({ ...opts, nice: RELAY_NICE, target: { host: '127.0.0.1', port: server.port } })
  let t: Timing
  let stats: Awaited<ReturnType<RelayThread['stats']>>
  let touch: ReturnType<typeof startTouches> | undefined
  try {
    t = await lazyRestore(client(relay.port), split, () => (touch = startTouches(d.state, d.pid, d.roles)), { timeoutMs: CLIENT_TIMEOUT_MS })
    stats = await relay.stats()
  } catch (e) {
    await d.kill().catch(() => undefined)
    throw new Error(`${e instanceof Error ? e.message : e}${server.alive() ? '' : `; ${server.died()}`}`)
  } finally {
    await relay.close()
  }
  try {
    const touched = await collectTouches(d.state, d.roles, touch!)
    await d.check()
    return { ...timing(t), ...onTheWire(stats), ...touched }
  } finally {
    await d.kill()
  }
}

const onTheWire = (stats: RelayStats & { lateP99Ms: number }) => ({
  wireSecs: (stats.lastToClientAt - stats.firstFromClientAt) / 1000,
  toClientBytes: stats.toClient,
  lateP99Ms: stats.lateP99Ms,
})

const timing = (t: Timing) => ({ secs: t.secs, restoreSecs: t.restoreSecs, cpuMs: t.usage.cpuMs - t.usage.startupCpuMs, anonMiB: t.usage.anonMiB })

/**
 * One restore served by `criu dump --lazy-pages` through a relay. It serves one session,
 * so a fresh tree is started in a pid namespace of its own (the restore, on this same
 * machine, recreates its pids while the dumped tree still waits), checksummed, dumped with
 * its lazy pages left to criu's page server, and restored from the images that dump wrote.
 * Readiness is criu's listening socket, never a probe connection, which would take its one
 * session; the relay connects only when the client does.
 */
async function fromCriuDump(argv: string[], roles: string[], client: (port: number) => Server, opts: Omit<RelayOptions, 'target'>): Promise<Run> {
  const dir = join(SCRATCH, 'remote-wan-criu-dump')
  rmSync(dir, { recursive: true, force: true })
  const [src, dst, state] = ['src', 'dst', 'state'].map((n) => join(dir, n))
  mkdirSync(src, { recursive: true })
  // A new port each time: the last dump's connections may linger in TIME_WAIT on the old one.
  const port = criuPort++
  const outer = spawn('unshare', ['--pid', '--fork', 'setsid', ...argv, '--state', state], { stdio: 'ignore', detached: true })
  outer.unref()
  let restored: number | undefined
  let host: number | undefined
  let dumperPid: number | undefined
  let relay: RelayThread | undefined
  try {
    await treeReady(state, 'the tree (criu dump case)')
    host = await waitFor('the tree in its pid namespace', () => childOf(outer.pid!), 10_000)
    const fnv = await verifyTree(state, host, roles)
    const dump = [CRIU, 'dump', '-t', String(host), '-D', src, '--lazy-pages', '--address', '127.0.0.1', '--port', String(port), '-o', 'dump.log']
    const dumper = spawn(dump[0], dump.slice(1), { stdio: 'ignore' })
    const dumped = new Promise<number | null>((resolve) => dumper.on('close', (code) => resolve(code)))
    dumperPid = dumper.pid
    const log = join(src, 'dump.log')
    await waitFor('criu dump to serve its pages', () => {
      if (dumper.exitCode !== null) throw new Error(`criu dump exited ${dumper.exitCode}: see ${log}`)
      return listening(dumper.pid!, port)
    }, 120_000)
    cpSync(src, dst, { recursive: true })
    clearTouches(state, roles)
    relay = await RelayThread.start({ ...opts, nice: RELAY_NICE, target: { host: '127.0.0.1', port } })
    const pidfile = join(dir, 'restored.pid')
    let touch: ReturnType<typeof startTouches> | undefined
    const t = await lazyRestore(client(relay.port), dst, () => (touch = startTouches(state, Number(readFileSync(pidfile, 'utf8')), roles)), {
      restoreArgs: ['--pidfile', pidfile],
      timeoutMs: CLIENT_TIMEOUT_MS,
    })
    restored = Number(readFileSync(pidfile, 'utf8'))
    const code = await within(dumped, 60_000, 'criu dump to finish after the client closed')
    dumperPid = undefined
    if (code !== 0) throw new Error(`criu dump --lazy-pages exited ${code}: see ${log}`)
    const stats = await relay.stats()
    await relay.close()
    relay = undefined
    const touched = await collectTouches(state, roles, touch!)
    await checkTree(state, restored, fnv)
    return { ...timing(t), ...onTheWire(stats), ...touched }
  } finally {
    await relay?.close()
    // The namespace's init (the tree's main) takes its whole pid namespace with it.
    await killAndReap([restored, host, dumperPid])
    killQuietly(outer.pid)
  }
}

const isOurs = (c: WanCase) => c.client === CLIENTS.ours.name
const criuOf = (s: WanSetting, c: WanCase) => s.cases.find((x) => x.server === c.server && x.client === CLIENTS.criu.name)
const ms = (us: number) => f2(us / 1000)
/** The round trip the fault targets are held to: the path's as a ping measured it (never below the nominal one). */
const pathRtt = (s: WanSetting) => Math.max(s.rttMs, s.pingMs)

export function wanMarkdown(r: WanResult): string[] {
  const mb = r.lazyBytes / 1e6
  const two = (a: number, b: number, f: (x: number) => string) => `${f(a)} / ${f(b)}`
  const out = [
    `## Remote over an emulated WAN: a ${r.mib} MiB tree of ${r.procs} processes through a delaying relay, ${r.rounds} interleaved rounds`,
    '',
    row([
      'rtt ms',
      'jitter ms',
      'rate',
      'ping ms',
      'page server',
      'client',
      'transfer s best / median / worst',
      'MB/s median',
      'vs criu best / median',
      'on the wire s best / median',
      'bulk TCP s best / median',
      '% of bulk on the wire, best / median',
      '% of bulk end to end, best / median',
      'restore s',
      'relay late p99 ms',
      'client CPU ms',
      'anon MiB',
    ]),
    row(Array(17).fill('---')),
  ]
  for (const s of r.settings) {
    for (const c of s.cases) {
      const criu = criuOf(s, c)
      out.push(
        row([
          ...caseCells(s, c),
          `${f3(c.secs.best)} / ${f3(c.secs.median)} / ${f3(c.secs.worst)}`,
          f1(mb / c.secs.median),
          criu ? two(criu.secs.best / c.secs.best, criu.secs.median / c.secs.median, (x) => `${f2(x)}x`) : '–',
          two(c.wire.best, c.wire.median, f3),
          two(s.bulk.secs.best, s.bulk.secs.median, f3),
          two(s.bulk.secs.best / c.wire.best, s.bulk.secs.median / c.wire.median, pct),
          two(s.bulk.secs.best / c.secs.best, s.bulk.secs.median / c.secs.median, pct),
          f2(c.restoreSecs),
          f2(c.relayLateP99Ms),
          f1(c.cpuMs),
          f1(c.anonMiB),
        ]),
      )
    }
  }
  out.push(
    '',
    `### Faults of ${r.procs} processes touching at once during the fill (${r.touches} random first touches each, per process: faults, p50 / p99 / max ms, every round's faults together)`,
    '',
    row(['rtt ms', 'jitter ms', 'rate', 'ping ms', 'page server', 'client', ...Array.from({ length: r.procs }, (_, i) => (i ? `child${i - 1}` : 'main')), 'set up ms', 'starts within ms', 'touching ms']),
    row(Array(6 + r.procs + 3).fill('---')),
  )
  for (const s of r.settings) {
    for (const c of s.cases) {
      out.push(
        row([
          ...caseCells(s, c),
          ...c.processes.map((p) => (p.samples ? `${p.samples}: ${ms(p.p50Us)} / ${ms(p.p99Us)} / ${ms(p.maxUs)}` : `0 (${p.present} present)`)),
          f1(c.setupMs),
          f2(c.startSpreadMs),
          f1(c.touchingMs),
        ]),
      )
    }
  }
  out.push(
    '',
    `Relay (src/bench/relay.ts): each direction delayed by rtt/2 plus uniform(0..jitter), a chunk never delivered before the one sent ahead of it; rate: a token bucket per direction (128 KiB deep); everything on 127.0.0.1. Ping: the round trip of a 1-byte TCP message through a relay with the same settings (median of each round's median of ${PINGS}): the relay's own cost comes on top of the nominal rtt (two more loopback hops per direction and its timer). Relay late: how late it delivered against its own model, p99 over the case's deliveries, worst round (CPU contention on this VM shows here).`,
    `Transfer: \`criu restore\` start → client daemon exit, all ${mb.toFixed(0)} MB of lazy pages in; MB/s = that / transfer s; vs criu: \`criu lazy-pages --page-server\`'s transfer s / this one's, same page server, same link, same statistic. On the wire: the client's first byte reaching the relay → the relay's last byte to the client. Bulk TCP: a plain TCP transfer of the same ${mb.toFixed(0)} MB through a relay with the same settings, in the same rounds, from the sink's one-byte request to its last byte. % of bulk on the wire = bulk s / on-the-wire s (link utilisation, what the target holds to); end to end = bulk s / transfer s, which also counts CRIU's own restore work before the first page is asked for.`,
    `Our page server: \`lazy-pages page-server --keep-serving\` on the full dump, clients restore from \`lazy-pages split\`. \`criu dump --lazy-pages\` serves one session: each of its cases dumps a fresh tree (in a pid namespace of its own) and restores from the images that dump wrote.`,
    `Faults: right after \`criu restore -d\` returns, SIGUSR2 to the tree; each process sets up (faults of its own: signal frame, globals, libc's; "set up": signal → the last of them ready, median round) and, once all four are, all start at the same instant ("starts within": the spread of their first touches, worst round) and read one word of each of ${r.touches} random pages of its own region, timing each ("touching": the longest process's, first touch to last, median round); a touch counts as a fault if \`mincore\` said the page was missing just before it. With a fast fill of a small dump few touches still find their page missing: the counts say how many faults there were.`,
    'Every restored process verified (checksum = before the dump); every client daemon exited 0.',
  )
  return out
}

export function wanTargets(r: WanResult): string[] {
  const out: string[] = []
  const judged = r.settings.filter((s) => s.rttMs <= MAX_RTT_MS)
  const ours = judged.flatMap((s) => s.cases.filter(isOurs).map((c) => ({ s, c })))
  if (!ours.length) return out
  // Compact: a full grid can name dozens; the tables above have the detail.
  const where = (x: { s: WanSetting; c: WanCase }) => `${x.s.rttMs}/${x.s.jitterMs}/${x.s.rateGbit ? `${x.s.rateGbit}G` : '∞'} ${x.c.server === SERVER_NAMES.ours ? 'our server' : 'criu dump'}`
  const summary = (fails: string[], n: number) =>
    fails.length ? `not met in ${fails.length} of ${n} (rtt/jitter ms/rate, page server): ${fails.join('; ')}` : `met in all ${n} (settings × page servers)`

  const vsCriu = ours.filter((x) => criuOf(x.s, x.c))
  const slower = vsCriu.flatMap((x) => {
    const criu = criuOf(x.s, x.c)!
    const ok = x.c.secs.best <= criu.secs.best && x.c.secs.median <= criu.secs.median
    const w = pairedWins(x.c.runs, criu.runs)
    return ok ? [] : [`${where(x)} ${f3(x.c.secs.best)} / ${f3(x.c.secs.median)} vs ${f3(criu.secs.best)} / ${f3(criu.secs.median)} s (${w.wins} of ${w.of} rounds at or below)`]
  })
  if (vsCriu.length)
    out.push(row([`remote-wan, rtt <= ${MAX_RTT_MS} ms: ours transfer <= criu lazy-pages's, best and median, every setting and page server`, summary(slower, vsCriu.length), verdict(!slower.length)]))

  const underBulk = ours.flatMap((x) => {
    const b = x.s.bulk.secs.best / x.c.wire.best
    const m = x.s.bulk.secs.median / x.c.wire.median
    return b >= OF_BULK && m >= OF_BULK ? [] : [`${where(x)}: ${pct(b)} / ${pct(m)}`]
  })
  out.push(
    row([`remote-wan, rtt <= ${MAX_RTT_MS} ms: ours on the wire >= ${pct(OF_BULK)} of a bulk TCP transfer's rate through the same relay, best and median (shown best / median)`, summary(underBulk, ours.length), verdict(!underBulk.length)]),
  )

  const faultTarget = (what: string, limit: (rtt: number) => number, key: 'p50Us' | 'p99Us') => {
    const fails = ours.flatMap((x) => {
      const rtt = pathRtt(x.s)
      const bad = x.c.processes.filter((p) => !p.samples || p[key] / 1000 > limit(rtt))
      return bad.length ? [`${where(x)}, limit ${f2(limit(rtt))} ms: ${bad.map((p) => (p.samples ? `${p.role} ${ms(p[key])}` : `${p.role} no faults`)).join(', ')}`] : []
    })
    out.push(row([`remote-wan, rtt <= ${MAX_RTT_MS} ms, ${r.procs} processes faulting at once during the fill: ${what} in every process (rtt: the path's, as pinged)`, summary(fails, ours.length), verdict(!fails.length)]))
  }
  faultTarget('fault p50 <= rtt + 1 ms', (rtt) => rtt + 1, 'p50Us')
  faultTarget('fault p99 <= 2 x rtt + 2 ms', (rtt) => 2 * rtt + 2, 'p99Us')
  return out
}
