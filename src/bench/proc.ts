// Process helpers: run to completion with captured output, and polling waits.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'

export interface RunResult {
  code: number | null
  stdout: string
  stderr: string
}

export function run(cmd: string, args: string[], timeoutMs = 600_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function waitFor<T>(what: string, probe: () => T | undefined | false, timeoutMs = 60_000, stepMs = 10): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = probe()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(stepMs)
  }
}

/** CRIU restores the same pid: this machine's init reaps slowly, so wait until it is gone. */
export function waitGone(pid: number, timeoutMs = 60_000): Promise<boolean> {
  return waitFor(`pid ${pid} to be reaped`, () => !existsSync(`/proc/${pid}`), timeoutMs, 25)
}

/** SIGKILL to `pid` if there is one; one already gone is fine. */
export function killQuietly(pid: number | undefined): void {
  if (!pid) return
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    /* gone */
  }
}

/** SIGKILL to each of `pids` that is set, then waits until each is reaped (CRIU restores the same pids). */
export async function killAndReap(pids: Array<number | undefined>): Promise<void> {
  for (const pid of pids) {
    if (!pid) continue
    killQuietly(pid)
    await waitGone(pid).catch(() => undefined)
  }
}

/** `p`, or an error naming `what` once `ms` have passed. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)))
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}
