// One lazy restore of a dump: a page server (ours or `criu lazy-pages`) started with
// --status-fd 3, then `criu restore --lazy-pages -d`; timed from the restore's start
// to the page server's exit, which both servers do once every page is in.
import { spawn } from 'node:child_process'
import { createReadStream, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { performance } from 'node:perf_hooks'
import { Writable, type Readable } from 'node:stream'

import { CLI, CRIU } from './paths'
import { run, within } from './proc'

export type Server = { kind: 'criu'; args?: string[] } | { kind: 'ours'; args: string[] }

export interface RestoreOptions {
  /** Runs the page server and `criu restore` under this command, e.g. `['ip', 'netns', 'exec', NS]`. */
  prefix?: string[]
  /** Extra `criu restore` arguments. */
  restoreArgs?: string[]
  /** Each wait (server ready, restore, server exit) gives up after this; the server is killed. */
  timeoutMs?: number
}

export interface Timing {
  /** restore start → server exit: every page present. */
  secs: number
  /** restore start → `criu restore -d` returned (the tree runs). */
  restoreSecs: number
  /** when the restore started, as epoch ms (to compare with a workload's CLOCK_REALTIME). */
  startEpochMs: number
}

export const serverName = (s: Server) => (s.kind === 'criu' ? `criu lazy-pages ${(s.args ?? []).join(' ')}` : `ours ${s.args.join(' ')}`).trim()

function startServer(server: Server, images: string, prefix: string[]) {
  const argv = [
    ...prefix,
    ...(server.kind === 'criu'
      ? [CRIU, 'lazy-pages', '-D', images, '--status-fd', '3', '-o', 'lazy-criu.log', ...(server.args ?? [])]
      : [process.execPath, CLI, '-D', images, '--status-fd', '3', '-o', 'lazy-ours.log', '--no-progress', ...server.args]),
  ]
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] })
  let out = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (out += d))
  const exit = new Promise<{ code: number | null; at: number }>((resolve) => child.on('exit', (code) => resolve({ code, at: performance.now() })))
  // Readiness is the one byte on fd 3, exactly as `criu lazy-pages` signals it.
  const ready = new Promise<void>((resolve, reject) => {
    ;(child.stdio[3] as Readable).once('data', () => resolve())
    exit.then(({ code }) => reject(new Error(`${serverName(server)} exited (${code}) before ready: ${out}`)))
  })
  return { child, ready, exit, output: () => out }
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
  const { prefix = [], restoreArgs = [], timeoutMs = 600_000 } = opts
  await warmPages(images)
  const s = startServer(server, images, prefix)
  const name = serverName(server)
  try {
    await within(s.ready, timeoutMs, `${name} to get ready`)
    const start = performance.now()
    const argv = [...prefix, CRIU, 'restore', '-D', images, '--lazy-pages', '-d', '-o', 'restore.log', ...restoreArgs]
    const r = await run(argv[0], argv.slice(1), timeoutMs)
    const restored = performance.now()
    if (r.code !== 0) throw new Error(`criu restore --lazy-pages with ${name} failed (${r.code}): see ${images}/restore.log`)
    afterRestore?.()
    const exit = await within(s.exit, timeoutMs, `${name} to bring every page in and exit`)
    if (exit.code !== 0) throw new Error(`${name} exited ${exit.code}: ${s.output().slice(-2000)}`)
    return { secs: (exit.at - start) / 1000, restoreSecs: (restored - start) / 1000, startEpochMs: performance.timeOrigin + start }
  } finally {
    // Only does anything on a failure: a server left behind would hold the restored tree's uffds.
    if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL')
  }
}
