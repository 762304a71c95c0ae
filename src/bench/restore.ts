// One lazy restore of a dump: a page server (ours or `criu lazy-pages`) started with
// --status-fd 3, then `criu restore --lazy-pages -d`; timed from the restore's start
// to the page server's exit, which both servers do once every page is in. The server's
// CPU time and memory are measured alike for both (usage.ts).
import { spawn } from 'node:child_process'
import { createReadStream, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { performance } from 'node:perf_hooks'
import { Writable, type Readable } from 'node:stream'

import { CLI, CRIU } from './paths'
import { run, within } from './proc'
import { childOf, MemorySampler, parseTimes, threadsCpuMs, underTimes, type Usage } from './usage'

export type Server = { kind: 'criu'; args?: string[] } | { kind: 'ours'; args: string[] }

export interface RestoreOptions {
  /** Runs the page server and `criu restore` under this command, e.g. `['ip', 'netns', 'exec', NS]`. */
  prefix?: string[]
  /** Extra `criu restore` arguments. */
  restoreArgs?: string[]
  /** Each wait (server ready, restore, server exit) gives up after this; the server is killed. */
  timeoutMs?: number
  /** Runs the `criu restore` command (default: `run`), e.g. inside its own namespaces. */
  runRestore?: (argv: string[], timeoutMs: number) => Promise<{ code: number | null }>
}

export interface Timing {
  /** restore start → server exit: every page present. */
  secs: number
  /** restore start → `criu restore -d` returned (the tree runs). */
  restoreSecs: number
  /** when the restore started, as epoch ms (to compare with a workload's CLOCK_REALTIME). */
  startEpochMs: number
  /** the page server's CPU time and peak memory. */
  usage: Usage
}

let timesFiles = 0

export const serverName = (s: Server) => (s.kind === 'criu' ? `criu lazy-pages ${(s.args ?? []).join(' ')}` : `ours ${s.args.join(' ')}`).trim()

function startServer(server: Server, images: string, prefix: string[]) {
  const times = join(tmpdir(), `lazy-pages-bench-times-${process.pid}-${timesFiles++}`)
  rmSync(times, { force: true })
  const argv = [
    ...prefix,
    ...underTimes(
      server.kind === 'criu'
        ? [CRIU, 'lazy-pages', '-D', images, '--status-fd', '3', '-o', 'lazy-criu.log', ...(server.args ?? [])]
        : [process.execPath, CLI, '-D', images, '--status-fd', '3', '-o', 'lazy-ours.log', '--no-progress', ...server.args],
      times,
    ),
  ]
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] })
  // `ip netns exec` execs: child.pid is bash, the server is its one child.
  let pid: number | undefined
  const serverPid = () => (pid ??= childOf(child.pid!))
  const memory = new MemorySampler(serverPid)
  let out = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (out += d))
  const exit = new Promise<{ code: number | null; at: number }>((resolve) => child.on('exit', (code) => resolve({ code, at: performance.now() })))
  // Readiness is the one byte on fd 3, exactly as `criu lazy-pages` signals it.
  let startupCpuMs = NaN
  const ready = new Promise<void>((resolve, reject) => {
    ;(child.stdio[3] as Readable).once('data', () => {
      const p = serverPid()
      if (p) startupCpuMs = threadsCpuMs(p)
      resolve()
    })
    exit.then(({ code }) => reject(new Error(`${serverName(server)} exited (${code}) before ready: ${out}`)))
  })
  const usage = (): Usage => {
    memory.stop()
    try {
      return { cpuMs: parseTimes(readFileSync(times, 'utf8')), startupCpuMs, anonMiB: memory.anonMiB, fileMiB: memory.fileMiB }
    } finally {
      rmSync(times, { force: true })
    }
  }
  /** On a failure: the server (bash's child) must not outlive the bench holding the tree's uffds. */
  const kill = () => {
    memory.stop()
    // bash exits only after its child did: once it is gone, so is the server (and its pid may be reused).
    if (child.exitCode !== null || child.signalCode !== null) return
    const p = serverPid()
    if (p) {
      try {
        process.kill(p, 'SIGKILL')
      } catch {
        /* gone */
      }
    }
    child.kill('SIGKILL')
  }
  return { child, ready, exit, output: () => out, usage, kill }
}

/**
 * Reads the dump's pages images once, so every server starts from a warm page cache.
 * This machine runs DAMON with a pageout scheme that reclaims page cache left alone
 * for about a minute; without this, whichever server runs first after a pause reads
 * from disk and looks slower than it is.
 */
async function warmPages(images: string): Promise<void> {
  for (const name of readdirSync(images).filter((n) => /^pages-\d+\.img$/.test(n))) {
    await pipeline(createReadStream(join(images, name), { highWaterMark: 1 << 20 }), new Writable({ write: (_c, _e, done) => done() }))
  }
}

/** `afterRestore` runs as soon as `criu restore -d` returns, while pages may still be arriving. */
export async function lazyRestore(server: Server, images: string, afterRestore?: () => void, opts: RestoreOptions = {}): Promise<Timing> {
  const { prefix = [], restoreArgs = [], timeoutMs = 600_000, runRestore = (a: string[], ms: number) => run(a[0], a.slice(1), ms) } = opts
  await warmPages(images)
  const s = startServer(server, images, prefix)
  const name = serverName(server)
  try {
    await within(s.ready, timeoutMs, `${name} to get ready`)
    const start = performance.now()
    const argv = [...prefix, CRIU, 'restore', '-D', images, '--lazy-pages', '-d', '-o', 'restore.log', ...restoreArgs]
    const r = await runRestore(argv, timeoutMs)
    const restored = performance.now()
    if (r.code !== 0) throw new Error(`criu restore --lazy-pages with ${name} failed (${r.code}): see ${images}/restore.log`)
    afterRestore?.()
    const exit = await within(s.exit, timeoutMs, `${name} to bring every page in and exit`)
    if (exit.code !== 0) throw new Error(`${name} exited ${exit.code}: ${s.output().slice(-2000)}`)
    return { secs: (exit.at - start) / 1000, restoreSecs: (restored - start) / 1000, startEpochMs: performance.timeOrigin + start, usage: s.usage() }
  } finally {
    // Only does anything on a failure: a server left behind would hold the restored tree's uffds.
    s.kill()
  }
}
