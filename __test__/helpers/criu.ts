// Real CRIU (the 4.1.1 that set-up installs), driven as a user would.
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { CRIU } from './paths'
import { run } from './proc'

function logTail(dir: string, log: string): string {
  try {
    return readFileSync(join(dir, log), 'utf8').split('\n').filter((l) => /Error|error/.test(l)).slice(-5).join(' | ')
  } catch {
    return '(no log)'
  }
}

/** `criu dump`: the task is killed afterwards unless leaveRunning. */
export async function dump(pid: number, dir: string, extra: string[] = []): Promise<void> {
  const r = await run(CRIU, ['dump', '-t', String(pid), '-D', dir, '-o', 'dump.log', '-v4', ...extra])
  if (r.code !== 0) throw new Error(`criu dump -t ${pid} failed (${r.code}): ${logTail(dir, 'dump.log')}`)
}

/** `criu restore -d`: returns when the restored tree runs detached. */
export async function restoreDetached(dir: string, extra: string[] = []): Promise<void> {
  const r = await run(CRIU, ['restore', '-D', dir, '-d', '-o', 'restore.log', '-v4', ...extra])
  if (r.code !== 0) throw new Error(`criu restore failed (${r.code}): ${logTail(dir, 'restore.log')}`)
}

/** Start `criu restore --lazy-pages -d` without waiting: lazy restore needs the daemon to serve it. */
export function startLazyRestore(dir: string, extra: string[] = []): ChildProcess & { done: Promise<number | null> } {
  const child = spawn(CRIU, ['restore', '-D', dir, '--lazy-pages', '-d', '-o', 'restore.log', '-v4', ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
  }) as ChildProcess & { done: Promise<number | null> }
  child.done = new Promise((resolve) => child.on('close', (code) => resolve(code)))
  return child
}

export function restoreLogTail(dir: string): string {
  return logTail(dir, 'restore.log')
}
