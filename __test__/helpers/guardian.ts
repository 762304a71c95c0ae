// A daemon whose death a test causes, and its guardian (issue 9). One command line is
// run twice, as a user would after a crash: the same `lazy-pages -D .. ` again resumes.
// The daemon's own end (`exited`) is told apart from the end of everything that holds
// its output pipes (`closed`): the guardian inherits them, so it writes its one line
// into the same output, and a killed daemon's pipes stay open while its guardian waits.
import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { join } from 'node:path'
import type { Readable } from 'node:stream'

import { CLI } from './paths'
import { sleep, waitFor } from './proc'

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
  at: number
}

export interface DaemonProc {
  child: ChildProcess
  pid: number
  startedAt: number
  /** stdout and stderr so far, with the guardian's lines when it writes to them. */
  output(): string
  /** Each output line with the time it arrived. */
  lines(): Array<{ at: number; text: string }>
  /** The daemon process itself ended. */
  exited: Promise<Exit>
  /** The status-fd byte came: true; the fd closed without it: false. */
  ready: Promise<boolean>
}

export class DaemonCommand {
  /** `images` is also the work dir (no -W): lazy-pages.guardian lives there. */
  constructor(
    readonly images: string,
    readonly args: string[],
  ) {}

  get argv(): string[] {
    return [CLI, '-D', this.images, '--status-fd', '3', '--stats-json', 'stats.json', '-v3', ...this.args]
  }

  get guardianSocket(): string {
    return join(this.images, 'lazy-pages.guardian')
  }

  start(): DaemonProc {
    const child = spawn(process.execPath, this.argv, { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] })
    const startedAt = Date.now()
    let out = ''
    let partial = ''
    const lines: Array<{ at: number; text: string }> = []
    const take = (d: Buffer) => {
      out += d
      const parts = (partial + d).split('\n')
      partial = parts.pop() ?? ''
      for (const text of parts) lines.push({ at: Date.now(), text })
    }
    child.stdout!.on('data', take)
    child.stderr!.on('data', take)
    const exited = new Promise<Exit>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, at: Date.now() })))
    const ready = new Promise<boolean>((resolve) => {
      const fd3 = child.stdio[3] as Readable
      fd3.on('data', (d: Buffer) => d.length && d[0] === 0 && resolve(true))
      fd3.on('end', () => resolve(false))
      fd3.on('error', () => resolve(false))
    })
    return { child, pid: child.pid!, startedAt, output: () => out, lines: () => lines, exited, ready }
  }

  /** Start it and wait for the ready byte (the restore socket listens). */
  async startReady(): Promise<DaemonProc> {
    const d = this.start()
    if (!(await Promise.race([d.ready, sleep(30_000).then(() => false)]))) {
      d.child.kill('SIGKILL')
      throw new Error(`daemon not ready: ${d.output()}`)
    }
    return d
  }
}

/** The daemon's own end, or a failure with what it printed if it is still running `ms` later. */
export async function exitWithin(d: DaemonProc, ms: number): Promise<Exit> {
  const exit = await Promise.race([d.exited, sleep(ms).then(() => undefined)])
  if (!exit) throw new Error(`daemon pid ${d.pid} still running ${ms} ms later: ${d.output()}`)
  return exit
}

/**
 * The pids holding a unix socket bound at `path` (the guardian: its listener and the
 * connections it accepted carry the path), found through /proc/net/unix inodes.
 */
export function socketHolders(path: string): number[] {
  const inodes = new Set<string>()
  for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/)
    if (f.length >= 8 && f.slice(7).join(' ') === path) inodes.add(`socket:[${f[6]}]`)
  }
  if (!inodes.size) return []
  const pids: number[] = []
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue
    try {
      for (const fd of readdirSync(`/proc/${p}/fd`)) {
        if (inodes.has(readlinkSync(`/proc/${p}/fd/${fd}`))) {
          pids.push(Number(p))
          break
        }
      }
    } catch {
      /* gone, or not ours to look at */
    }
  }
  return pids
}

/**
 * The guardians of `cmd`'s work dir: processes holding its socket, or started as
 * `lazy-pages-guardian --socket <that path>` (a socket bound through /proc/self/fd/N, for
 * a path too long for sockaddr_un, does not show its path in /proc/net/unix).
 */
export function guardianPids(cmd: DaemonCommand): number[] {
  const pids = new Set(socketHolders(cmd.guardianSocket))
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue
    try {
      const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0')
      const at = argv.indexOf('--socket')
      if (/lazy-pages-guardian$/.test(argv[0]) && at > 0 && argv[at + 1] === cmd.guardianSocket) pids.add(Number(p))
    } catch {
      /* gone */
    }
  }
  // A zombie (exited, not yet reaped by init) is gone for our purposes.
  return [...pids].filter((pid) => {
    try {
      return !/^\d+ \(.*\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
    } catch {
      return false
    }
  })
}

/** The guardian serving `cmd`'s work dir, once it is up. */
export async function guardianOf(cmd: DaemonCommand, timeoutMs = 10_000): Promise<number> {
  return waitFor(
    `a guardian for ${cmd.guardianSocket}`,
    () => {
      const pids = guardianPids(cmd)
      return pids.length === 1 ? pids[0] : undefined
    },
    timeoutMs,
  )
}

/** Wait until the guardian has exited. */
export async function guardianGone(cmd: DaemonCommand, timeoutMs = 10_000): Promise<void> {
  await waitFor(`the guardian of ${cmd.images} to exit`, () => guardianPids(cmd).length === 0, timeoutMs)
}

/** Clean-up: SIGKILL whatever still holds this command's guardian socket (only ours: the path is in our scratch dir). */
export function killGuardian(cmd: DaemonCommand): void {
  for (const pid of guardianPids(cmd)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      /* already gone */
    }
  }
}

