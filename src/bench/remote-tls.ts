// Scenario "tls": what --tls costs on the remote path, ours and `criu lazy-pages` alike.
// The remote scenario's set-up (host A: our page server on the full dump; host B: the
// split dump, each client daemon and `criu restore`), run on the 1 Gbit/s link and on an
// unshaped veth, each client with and without --tls against a plaintext and a --tls page
// server (both ours, both --keep-serving). Certificates: scripts/make-test-certs.sh; both
// ends pass --tls-no-cn-verify because the certificates name 127.0.0.1, not the hosts.
// Per case: transfer time, fault p50/p99, link Gbit/s, the client's CPU and the page
// server's CPU during that case.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { f1, f2, f3, pct, row, verdict } from './format'
import { ShapedLink } from './netns'
import { PageServer } from './page-server'
import { CLI, LPW_TOUCH, ROOT } from './paths'
import { run } from './proc'
import { oneCase, summarize, type RemoteCase, type RemoteRun } from './remote'
import type { Server } from './restore'
import { spread } from './stats'
import { Dumped } from './workload'

export interface TlsCase extends RemoteCase {
  /** the page server's CPU during the case (median round, ms). */
  serverCpuMs: number
}

export interface TlsLink {
  /** 'tbf …' or 'unshaped'. */
  link: string
  rateGbit: number
  cases: TlsCase[]
}

export interface TlsResult {
  mib: number
  touches: number
  rounds: number
  lazyBytes: number
  links: TlsLink[]
}

const PAGE = 4096
const MAX_TLS_COST = 0.15

type Case = { name: string; tls: boolean; client: (addr: string, port: number, tls: string[]) => Server }

const CASES: Case[] = [
  { name: 'criu lazy-pages --page-server', tls: false, client: (a, p) => ({ kind: 'criu', args: ['--page-server', '--address', a, '--port', String(p)] }) },
  { name: 'criu lazy-pages --page-server --tls', tls: true, client: (a, p, t) => ({ kind: 'criu', args: ['--page-server', '--address', a, '--port', String(p), ...t] }) },
  { name: 'ours --page-server', tls: false, client: (a, p) => ({ kind: 'ours', args: ['--page-server', '--address', a, '--port', String(p)] }) },
  { name: 'ours --page-server --tls', tls: true, client: (a, p, t) => ({ kind: 'ours', args: ['--page-server', '--address', a, '--port', String(p), ...t] }) },
]

/**
 * A process's user + system CPU so far, in ms, threads that ended included (each
 * session runs on a thread of its own that is gone by the time the case ends, so a
 * sum over live threads would miss it). /proc/PID/stat counts in 10 ms ticks.
 */
function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // After the comm: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
  return (Number(fields[11]) + Number(fields[12])) * 10
}

function tlsArgs(pki: string, who: 'server' | 'client'): string[] {
  const f = (n: string) => join(pki, n)
  return ['--tls', '--tls-cacert', f('ca.pem'), '--tls-cert', f(`${who}.pem`), '--tls-key', f(`${who}.key`), '--tls-no-cn-verify']
}

export async function tlsScenario(mib: number, touches: number, rounds: number, log: (s: string) => void): Promise<TlsResult> {
  log(`tls ${mib} MiB, ${touches} random touches, ${rounds} interleaved rounds, 1 Gbit/s and unshaped: starting and dumping lpw-touch`)
  const d = await Dumped.create(`tls-${mib}`, [LPW_TOUCH, '--mib', String(mib), '--touches', String(touches)])
  const split = join(d.dir, 'split')
  const pki = join(d.dir, 'pki')
  const made = await run('bash', [join(ROOT, 'scripts', 'make-test-certs.sh'), pki], 120_000)
  if (made.code !== 0) throw new Error(`make-test-certs.sh failed: ${made.stderr.trim()}`)
  const cli = async (args: string[]) => {
    const r = await run(process.execPath, [CLI, ...args], 300_000)
    if (r.code !== 0) throw new Error(`lazy-pages ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`)
    return r.stdout
  }
  await cli(['split', '-D', d.images, '-o', split])
  const lazyBytes = JSON.parse(await cli(['images', '-D', d.images, '--json'])).total.lazy * PAGE
  const file = join(d.state, 'touch-main.txt')
  const links: TlsLink[] = []
  try {
    for (const rate of [1, 0]) {
      const link = await ShapedLink.create(rate)
      const servers: PageServer[] = []
      try {
        const plain = await PageServer.start(link.exec(link.a), d.images, link.addrA)
        servers.push(plain)
        const sealed = await PageServer.start(link.exec(link.a), d.images, link.addrA, tlsArgs(pki, 'server'))
        servers.push(sealed)
        const label = rate ? `tbf ${link.shaping.join(' ')}` : 'unshaped'
        log(`  ${label}: page servers on ${link.addrA}:${plain.port} (plain) and :${sealed.port} (--tls)`)
        const runs: Array<Array<RemoteRun & { serverCpuMs: number }>> = CASES.map(() => [])
        for (let round = 0; round < rounds; round++) {
          for (const [i, c] of CASES.entries()) {
            const server = c.tls ? sealed : plain
            const cpu0 = processCpuMs(server.pid)
            const r = await oneCase(`${c.name} (${rate ? `${rate} Gbit/s` : 'unshaped'})`, c.client(link.addrA, server.port, tlsArgs(pki, 'client')), { d, split, file, link, server, lazyBytes }, log)
            runs[i].push({ ...r, serverCpuMs: processCpuMs(server.pid) - cpu0 })
          }
        }
        links.push({
          link: label,
          rateGbit: rate,
          cases: CASES.map((c, i) => ({ ...summarize(c.name, runs[i]), serverCpuMs: spread(runs[i].map((r) => r.serverCpuMs)).median })),
        })
      } finally {
        for (const s of servers) await s.stop()
        await link.delete()
      }
    }
  } catch (e) {
    await d.kill().catch(() => undefined)
    throw e
  }
  return { mib, touches, rounds, lazyBytes, links }
}

/** transfer-time cost of --tls for a client family (median rounds). */
function cost(l: TlsLink, family: string): number {
  const plain = l.cases.find((c) => c.name === `${family} --page-server`)!
  const tls = l.cases.find((c) => c.name === `${family} --page-server --tls`)!
  return tls.transfer.median / plain.transfer.median - 1
}

export function tlsMarkdown(r: TlsResult): string[] {
  const out = [`## TLS: ${r.mib} MiB restored over the remote set-up with and without --tls, ${r.touches} random first touches during the transfer`, '']
  for (const l of r.links) {
    out.push(
      `### ${l.rateGbit ? `${l.rateGbit} Gbit/s link (${l.link})` : 'unshaped veth'}`,
      '',
      row(['client (on host B)', 'faults', 'p50 µs', 'p99 µs', 'p99 best / median / worst round', 'transfer s best / median / worst', 'link Gbit/s', 'client CPU ms', 'page server CPU ms']),
      row(Array(9).fill('---')),
    )
    for (const c of l.cases) {
      out.push(
        row([c.name, c.samples, f1(c.p50Us), f1(c.p99Us), `${f1(c.p99.best)} / ${f1(c.p99.median)} / ${f1(c.p99.worst)}`, `${f2(c.transfer.best)} / ${f2(c.transfer.median)} / ${f2(c.transfer.worst)}`, f3(c.linkGbps), f1(c.cpuMs), f1(c.serverCpuMs)]),
      )
    }
    out.push('', `--tls costs in transfer time (median rounds): ours ${pct(cost(l, 'ours'))}, criu lazy-pages ${pct(cost(l, 'criu lazy-pages'))}.`, '')
  }
  out.push(
    `${r.rounds} interleaved rounds; latencies pooled over them, other columns the median round unless named. Both page servers are ours (\`lazy-pages page-server --keep-serving\`, one plain, one --tls) on host A; client CPU: the client daemon's after it was ready; page server CPU: its user + system time during the case (10 ms ticks).`,
    'TLS: rustls (ring) at both ends of ours, GnuTLS at criu lazy-pages; TLS 1.3 with AES-GCM; no kernel TLS on this kernel (CONFIG_TLS off), so the page server reads pages into a buffer and seals them in userspace instead of sendfile.',
  )
  return out
}

export function tlsTargets(r: TlsResult): string[] {
  const shaped = r.links.find((l) => l.rateGbit === 1)
  if (!shaped) return []
  const ours = shaped.cases.find((c) => c.name === 'ours --page-server --tls')!
  const criu = shaped.cases.find((c) => c.name === 'criu lazy-pages --page-server --tls')!
  return [
    row([`--tls costs ours < 15 % of transfer time on the 1 Gbit/s link (median rounds)`, pct(cost(shaped, 'ours')), verdict(cost(shaped, 'ours') < MAX_TLS_COST)]),
    row([`ours --tls fault p99 < criu lazy-pages --tls (1 Gbit/s, median round)`, `${f1(ours.p99.median)} vs ${f1(criu.p99.median)} µs`, verdict(ours.samples > 0 && ours.p99.median < criu.p99.median)]),
  ]
}
