// Our daemon, run as a user runs it: `lazy-pages -D DIR --status-fd 3`, waiting for
// the ready byte before `criu restore --lazy-pages` starts.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Readable } from 'node:stream'

import { CLI } from './paths'
import { startLazyRestore, restoreLogTail } from './criu'

export interface DaemonRun {
  child: ChildProcess
  stderr: () => string
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>
}

/** `wrap` runs the daemon under another command (e.g. `ip netns exec NS`). */
export function startDaemon(images: string, args: string[] = [], wrap: string[] = []): Promise<DaemonRun> {
  const argv = [...wrap, process.execPath, CLI, '-D', images, '--status-fd', '3', '--stats-json', 'stats.json', '-v3', ...args]
  const child = spawn(argv[0], argv.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
  })
  let err = ''
  child.stderr!.on('data', (d) => (err += d))
  child.stdout!.on('data', (d) => (err += d))
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, at: Date.now() })),
  )
  return new Promise((resolve, reject) => {
    const ready = child.stdio[3] as Readable
    let gotByte = false
    ready.on('data', (d: Buffer) => {
      if (d.length && d[0] === 0 && !gotByte) {
        gotByte = true
        resolve({ child, stderr: () => err, exit })
      }
    })
    ready.on('end', () => {
      if (!gotByte) exit.then(({ code }) => reject(new Error(`daemon exited (${code}) before ready: ${err}`)))
    })
  })
}

export interface Stats {
  tasks: Array<{ task: number; pid: number; parent?: number | null; total: number; faulted: number; background: number; prefetched: number; zero: number; exists: number; dropped: number; pending: number; inFlight: number; exited: boolean; reconciles: boolean }>
  zombies: number[]
  total: { tasks: number; lazy: number; faulted: number; background: number; prefetched: number; dropped: number; exists: number; exited: number }
  reconciles: boolean
  resumed?: { guardianPid: number; lostDaemon: number; tasks: number; doneTasks: number }
}

export function readStats(images: string): Stats {
  return JSON.parse(readFileSync(join(images, 'stats.json'), 'utf8'))
}

/** Daemon + real `criu restore --lazy-pages -d`; resolves when both are done. */
export async function lazyRestore(images: string, daemonArgs: string[] = [], restoreArgs: string[] = [], wrap: string[] = []) {
  const daemon = await startDaemon(images, daemonArgs, wrap)
  const restore = startLazyRestore(images, restoreArgs)
  const restoreCode = await restore.done
  if (restoreCode !== 0) {
    daemon.child.kill('SIGKILL')
    throw new Error(`criu restore --lazy-pages failed (${restoreCode}): ${restoreLogTail(images)}; daemon: ${daemon.stderr()}`)
  }
  const exit = await daemon.exit
  const stats = existsSync(join(images, 'stats.json')) ? readStats(images) : undefined
  return { exit, stderr: daemon.stderr(), stats }
}
