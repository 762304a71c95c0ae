// --daemon: Node cannot fork, so the foreground process re-runs itself detached and
// waits on a pipe until the child has its socket listening (or reports why not).
import { spawn } from 'node:child_process'
import { closeSync, openSync, writeSync } from 'node:fs'

import { UserError } from './errors'

export const READY_FD_ENV = 'LAZY_PAGES_READY_FD'

/** In the detached child: tell the parent we listen (a zero byte) or why we failed. */
export function notifyParent(error?: string): void {
  const fd = Number(process.env[READY_FD_ENV])
  if (!Number.isInteger(fd)) return
  delete process.env[READY_FD_ENV]
  try {
    writeSync(fd, error === undefined ? Buffer.from([0]) : Buffer.from(error, 'utf8'))
    closeSync(fd)
  } catch {
    /* the parent is gone: nobody to tell */
  }
}

export function isDetachedChild(): boolean {
  return process.env[READY_FD_ENV] !== undefined
}

/** Starts the detached child; resolves with its pid once it listens. */
export function detach(args: string[]): Promise<number> {
  const child = spawn(process.execPath, [...process.execArgv, require.main?.filename ?? process.argv[1], ...args], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, [READY_FD_ENV]: '3' },
  })
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    const pipe = child.stdio[3] as NodeJS.ReadableStream
    pipe.on('data', (d: Buffer) => chunks.push(d))
    pipe.on('end', () => {
      const got = Buffer.concat(chunks)
      if (got.length === 1 && got[0] === 0) {
        child.unref()
        resolve(child.pid!)
      } else {
        reject(new UserError(got.length ? got.toString('utf8') : 'the daemon exited before its socket was ready'))
      }
    })
    child.on('error', reject)
  })
}

/** CRIU's pidfile: decimal pid, no newline, created exclusively, mode 0600. */
export function writePidfile(path: string, pid: number): void {
  let fd: number
  try {
    fd = openSync(path, 'wx', 0o600)
  } catch (err) {
    throw new UserError(`${path}: cannot create pidfile: ${(err as Error).message}`)
  }
  writeSync(fd, String(pid))
  closeSync(fd)
}

/** --status-fd: one zero byte, then close. */
export function signalStatusFd(fd: number): void {
  try {
    writeSync(fd, Buffer.from([0]))
    closeSync(fd)
  } catch (err) {
    throw new UserError(`--status-fd ${fd}: ${(err as Error).message}`)
  }
}
