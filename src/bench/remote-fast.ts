// Scenario: remote fill with no bandwidth limit (`--only remote-fast`). How fast a client
// daemon drains a page server when the network is not the limit: 1 GiB `lpw dense`, over
// loopback and over an unshaped veth between two network namespaces (no tbf), from two
// page servers: ours (`page-server --keep-serving` on the full dump) and CRIU's own
// (`criu dump --lazy-pages`, one session per dump, so the workload is dumped afresh for
// each of its cases). Clients: `criu lazy-pages --page-server` and ours. Our local fill
// of the same dump runs in the same rounds: the "local rate" the remote rate is held to.
// Interleaved rounds, page cache warmed, every restore verified by the restored process.
import { spawn } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { f1, f2, f3, pct, row, verdict } from './format'
import { ShapedLink } from './netns'
import { PageServer } from './page-server'
import { CLI, CRIU, LPW, SCRATCH } from './paths'
import { killAndReap, killQuietly, run, waitFor, within } from './proc'
import { lazyRestore, type Server } from './restore'
import { spread, type Spread } from './stats'
import { childOf } from './usage'
import { Dumped, fnvOf, verify } from './workload'

export interface FastCase {
  link: string
  server: string
  client: string
  /** restore start → client exit (s): best, median, worst round. */
  secs: Spread
  /** the client daemon's CPU after ready (ms): best, median, worst round. */
  cpuMs: Spread
  anonMiB: number
}

export interface FastResult {
  mib: number
  lazyBytes: number
  rounds: number
  /** ours, local fill of the same dump (no page server), same rounds. */
  local: FastCase
  cases: FastCase[]
}

const PAGE = 4096
const LINKS = ['loopback', 'veth'] as const
type LinkName = (typeof LINKS)[number]
const SERVERS = ['ours page-server --keep-serving', 'criu dump --lazy-pages'] as const
const CLIENTS: Array<{ name: string; server: (a: string, p: number) => Server; ourServerOnly?: boolean }> = [
  { name: 'criu lazy-pages --page-server', server: (a, p) => ({ kind: 'criu', args: ['--page-server', '--address', a, '--port', String(p)] }) },
  { name: 'ours --page-server', server: (a, p) => ({ kind: 'ours', args: ['--page-server', '--address', a, '--port', String(p)] }) },
  {
    name: 'ours --page-server --jobs 2',
    server: (a, p) => ({ kind: 'ours', args: ['--page-server', '--address', a, '--port', String(p), '--jobs', '2'] }),
  },
]
/** Targets of issue 12 item 5. */
const VS_CRIU = 1.5
const OF_LOCAL = 0.6

async function cli(args: string[]): Promise<string> {
  const r = await run(process.execPath, [CLI, ...args], 300_000)
  if (r.code !== 0) throw new Error(`lazy-pages ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`)
  return r.stdout
}

interface Where {
  addr: string
  /** command prefixes: run on host A, on host B, and criu dump's on host A. */
  a: string[]
  b: string[]
  dumpA: string[]
}

interface Sample {
  secs: number
  cpuMs: number
  anonMiB: number
}

export async function remoteFastScenario(mib: number, rounds: number, log: (s: string) => void): Promise<FastResult> {
  log(`remote-fast ${mib} MiB, no bandwidth limit (loopback, unshaped veth), ${rounds} interleaved rounds: starting and dumping lpw dense`)
  const argv = [LPW, 'dense', '--mib', String(mib)]
  const d = await Dumped.create(`remote-fast-${mib}`, argv)
  const split = join(d.dir, 'split')
  await cli(['split', '-D', d.images, '-o', split])
  const lazyBytes = JSON.parse(await cli(['images', '-D', d.images, '--json'])).total.lazy * PAGE
  const samples = new Map<string, Sample[]>()
  const add = (key: string, t: Sample) => (samples.get(key) ?? samples.set(key, []).get(key)!).push(t)
  const key = (link: string, server: string, client: string) => `${link}|${server}|${client}`
  let veth: ShapedLink | undefined
  const servers: PageServer[] = []
  let port = 30000 + ((process.pid * 7) % 2000)
  try {
    veth = await ShapedLink.create(0)
    // `dumpA`: only the network namespace (nsenter), not `ip netns exec`'s own mount
    // namespace, which criu dump would have to dump along with the workload.
    const where: Record<LinkName, Where> = {
      loopback: { addr: '127.0.0.1', a: [], b: [], dumpA: [] },
      veth: { addr: veth.addrA, a: veth.exec(veth.a), b: veth.exec(veth.b), dumpA: ['nsenter', `--net=/run/netns/${veth.a}`] },
    }
    const ours: Record<LinkName, PageServer> = {
      loopback: await PageServer.start([], d.images, '127.0.0.1'),
      veth: await PageServer.start(where.veth.a, d.images, veth.addrA),
    }
    servers.push(ours.loopback, ours.veth)
    log(`  our page servers: 127.0.0.1:${ours.loopback.port}, ${veth.addrA}:${ours.veth.port} (netns ${veth.a}; clients in ${veth.b})`)
    for (let round = 1; round <= rounds; round++) {
      const t = await lazyRestore({ kind: 'ours', args: [] }, d.images)
      await d.check()
      await d.kill()
      add('local', sample(t))
      log(`  round ${round} local ours: ${line(t.secs, mib, t)}`)
      for (const link of LINKS) {
        const w = where[link]
        for (const c of CLIENTS) {
          ours[link].assertAlive()
          const r = await lazyRestore(c.server(w.addr, ours[link].port), split, undefined, { prefix: w.b, timeoutMs: 300_000 })
          await d.check()
          await d.kill()
          add(key(link, SERVERS[0], c.name), sample(r))
          log(`  round ${round} ${link} ${SERVERS[0]} -> ${c.name}: ${line(r.secs, mib, r)}`)
        }
        for (const c of CLIENTS.filter((c) => !c.name.includes('--jobs'))) {
          const p = port++
          const r = await fromCriuDump(argv, w, p, c.server(w.addr, p))
          add(key(link, SERVERS[1], c.name), r)
          log(`  round ${round} ${link} ${SERVERS[1]} -> ${c.name}: ${line(r.secs, mib, r)}`)
        }
      }
    }
  } finally {
    for (const s of servers) await s.stop()
    await veth?.delete()
  }
  const summarize = (k: string, link: string, server: string, client: string): FastCase => {
    const xs = samples.get(k) ?? []
    return { link, server, client, secs: spread(xs.map((x) => x.secs)), cpuMs: spread(xs.map((x) => x.cpuMs)), anonMiB: Math.max(...xs.map((x) => x.anonMiB)) }
  }
  const cases: FastCase[] = []
  for (const link of LINKS)
    for (const server of SERVERS)
      for (const c of CLIENTS) if (samples.has(key(link, server, c.name))) cases.push(summarize(key(link, server, c.name), link, server, c.name))
  return { mib, lazyBytes, rounds, local: summarize('local', 'none', 'local images', 'ours'), cases }
}

function sample(t: { secs: number; usage: { cpuMs: number; startupCpuMs: number; anonMiB: number } }): Sample {
  return { secs: t.secs, cpuMs: t.usage.cpuMs - t.usage.startupCpuMs, anonMiB: t.usage.anonMiB }
}

function line(secs: number, mib: number, s: { usage?: { cpuMs: number; startupCpuMs: number }; cpuMs?: number }): string {
  const cpu = s.usage ? s.usage.cpuMs - s.usage.startupCpuMs : s.cpuMs!
  return `${secs.toFixed(3)} s (${((mib * 2 ** 20) / 1e9 / secs).toFixed(2)} GB/s), CPU ${cpu.toFixed(0)} ms`
}

/**
 * One restore served by `criu dump --lazy-pages` (on host A), which serves one session:
 * a fresh `lpw dense` in a pid namespace of its own (so the restore, on this same
 * machine, can recreate it while the dumped one still waits), dumped with its lazy pages
 * left to the page server; the images it wrote (everything but the lazy pages) are what
 * host B restores from. Verified like every other restore: the restored process checks
 * its memory against the checksum taken before the dump.
 */
async function fromCriuDump(argv: string[], w: Where, port: number, client: Server): Promise<Sample> {
  const dir = join(SCRATCH, 'remote-fast-criu-dump')
  rmSync(dir, { recursive: true, force: true })
  const [src, dst, state] = ['src', 'dst', 'state'].map((n) => join(dir, n))
  mkdirSync(src, { recursive: true })
  const workload = [...w.dumpA, 'unshare', '--pid', '--fork', 'setsid', ...argv, '--state', state]
  // nsenter execs: outer.pid is unshare, the workload its one child.
  const outer = spawn(workload[0], workload.slice(1), { stdio: 'ignore', detached: true })
  outer.unref()
  let restored: number | undefined
  let host: number | undefined
  let dumperPid: number | undefined
  try {
    await waitFor('lpw dense ready (criu dump case)', () => existsSync(join(state, 'ready-main.json')), 120_000)
    host = await waitFor('the workload in its pid namespace', () => childOf(outer.pid!), 10_000)
    const fnv = fnvOf(await verify(state, host))
    const dump = [...w.dumpA, CRIU, 'dump', '-t', String(host), '-D', src, '--lazy-pages', '--address', w.addr, '--port', String(port), '-o', 'dump.log']
    const dumper = spawn(dump[0], dump.slice(1), { stdio: 'ignore' })
    const dumped = new Promise<number | null>((resolve) => dumper.on('close', (code) => resolve(code)))
    dumperPid = dumper.pid
    const log = join(src, 'dump.log')
    // Its page server serves one connection: readiness is its listening socket, never a probe.
    await waitFor('criu dump to serve its pages', () => (dumper.exitCode === null || fail(`criu dump exited ${dumper.exitCode}: see ${log}`)) && listening(dumper.pid!, port), 120_000)
    cpSync(src, dst, { recursive: true })
    const pidfile = join(dir, 'restored.pid')
    const t = await lazyRestore(client, dst, undefined, { prefix: w.b, restoreArgs: ['--pidfile', pidfile], timeoutMs: 300_000 })
    restored = Number(readFileSync(pidfile, 'utf8'))
    const code = await within(dumped, 60_000, 'criu dump to finish after the client closed')
    dumperPid = undefined
    if (code !== 0) throw new Error(`criu dump --lazy-pages exited ${code}: see ${log}`)
    const got = await verify(state, restored)
    if (!got.startsWith('ok ') || fnvOf(got) !== fnv) throw new Error(`restored process (criu dump case) failed verification: ${got} (want fnv=${fnv})`)
    return sample(t)
  } finally {
    await killAndReap([restored, host, dumperPid])
    killQuietly(outer.pid)
  }
}

const fail = (message: string): never => {
  throw new Error(message)
}

/** A TCP socket listening on `port` in the network namespace of `pid`. */
export function listening(pid: number, port: number): boolean {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`
  return ['tcp', 'tcp6'].some((f) => {
    try {
      return readFileSync(`/proc/${pid}/net/${f}`, 'utf8')
        .split('\n')
        .some((l) => {
          const cols = l.trim().split(/\s+/)
          return cols[1]?.endsWith(hex) && cols[3] === '0A'
        })
    } catch {
      return false
    }
  })
}

const criuCase = (r: FastResult, c: FastCase) => r.cases.find((x) => x.link === c.link && x.server === c.server && x.client.startsWith('criu'))

export function remoteFastMarkdown(r: FastResult): string[] {
  const gb = r.lazyBytes / 1e9
  const out = [
    `## Remote without a bandwidth limit: ${r.mib} MiB over loopback and an unshaped veth, ${r.rounds} interleaved rounds`,
    '',
    row(['link', 'page server', 'client', 'best s', 'median s', 'worst s', 'GB/s best', 'GB/s median', 'vs criu client (best)', 'vs criu client (median)', '% of our local rate (best)', '% of local (median)', 'client CPU ms (median)', 'anon MiB']),
    row(Array(14).fill('---')),
  ]
  const cells = (c: FastCase) => {
    const criu = criuCase(r, c)
    return [f3(c.secs.best), f3(c.secs.median), f3(c.secs.worst), f2(gb / c.secs.best), f2(gb / c.secs.median)].concat(
      criu ? [`${f2(criu.secs.best / c.secs.best)}x`, `${f2(criu.secs.median / c.secs.median)}x`] : ['–', '–'],
      [pct(r.local.secs.best / c.secs.best), pct(r.local.secs.median / c.secs.median), f1(c.cpuMs.median), f1(c.anonMiB)],
    )
  }
  out.push(row(['–', 'none (local images)', 'ours', ...cells(r.local)]))
  for (const c of r.cases) out.push(row([c.link, c.server, c.client, ...cells(c)]))
  out.push(
    '',
    `Transfer: \`criu restore\` start → client daemon exit, all ${(r.lazyBytes / 1e6).toFixed(0)} MB of lazy pages in; GB/s = that / transfer s. Ratios use the same statistic on both sides.`,
    'Host A serves, host B restores: loopback = both on 127.0.0.1; veth = two network namespaces joined by a veth pair with no qdisc shaping. Our page server: `lazy-pages page-server --keep-serving` on the full dump, clients restore from `lazy-pages split` (the dump without its lazy pages). `criu dump --lazy-pages` serves one session, so each of its cases dumps a fresh copy of the workload (in a pid namespace of its own) and restores from the images that dump wrote.',
    'Local: our daemon on the full dump (no page server, default --jobs), in the same rounds: the rate remote fill is held to. Client CPU: the daemon\'s after it was ready. Every restore verified by the restored process (checksum = before the dump).',
  )
  return out
}

export function remoteFastTargets(r: FastResult): string[] {
  const out: string[] = []
  for (const c of r.cases.filter((c) => c.client === 'ours --page-server')) {
    const criu = criuCase(r, c)!
    const what = `remote-fast ${c.link}, ${c.server}: ours`
    const best = criu.secs.best / c.secs.best
    const median = criu.secs.median / c.secs.median
    out.push(row([`${what} >= ${VS_CRIU}x criu lazy-pages (best, median)`, `${f2(best)}x, ${f2(median)}x`, verdict(best >= VS_CRIU && median >= VS_CRIU)]))
    const lb = r.local.secs.best / c.secs.best
    const lm = r.local.secs.median / c.secs.median
    out.push(row([`${what} >= ${pct(OF_LOCAL)} of our local fill rate (best, median)`, `${pct(lb)}, ${pct(lm)}`, verdict(lb >= OF_LOCAL && lm >= OF_LOCAL)]))
  }
  return out
}
