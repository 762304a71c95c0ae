// A workload to dump once and restore many times: start it, note its checksum, dump
// it, and after each restore check every byte against that checksum (SIGUSR1).
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { CRIU, SCRATCH } from './paths'
import { run, waitFor, waitGone } from './proc'

export class Dumped {
  private constructor(
    readonly dir: string,
    readonly pid: number,
    readonly fnv: string,
  ) {}

  get images(): string {
    return join(this.dir, 'images')
  }

  get state(): string {
    return join(this.dir, 'state')
  }

  /** Start `argv --state DIR`, checksum it, `criu dump` it, wait until its pid is free. */
  static async create(name: string, argv: string[]): Promise<Dumped> {
    const dir = join(SCRATCH, name)
    rmSync(dir, { recursive: true, force: true })
    mkdirSync(join(dir, 'images'), { recursive: true })
    const state = join(dir, 'state')
    // detached = setsid: its own group, so the group signal reaches it and nothing else.
    spawn(argv[0], [...argv.slice(1), '--state', state], { stdio: 'ignore', detached: true }).unref()
    const ready = join(state, 'ready-main.json')
    await waitFor(`${name} ready`, () => existsSync(ready), 120_000)
    const pid = JSON.parse(readFileSync(ready, 'utf8')).pid as number
    const before = await verify(state, pid)
    const r = await run(CRIU, ['dump', '-t', String(pid), '-D', join(dir, 'images'), '-o', 'dump.log'])
    if (r.code !== 0) throw new Error(`criu dump of ${name} failed (${r.code}): see ${dir}/images/dump.log`)
    await waitGone(pid)
    return new Dumped(dir, pid, fnvOf(before))
  }

  /** After a restore: the restored process verifies every byte; must match the dump. */
  async check(): Promise<string> {
    const line = await verify(this.state, this.pid)
    if (!line.startsWith('ok ') || fnvOf(line) !== this.fnv) throw new Error(`restored process failed verification: ${line} (want fnv=${this.fnv})`)
    return line
  }

  /** Like check(), for a copy restored elsewhere: its pid and state directory as seen from here. */
  async checkCopy(state: string, pid: number): Promise<string> {
    const line = await verify(state, pid)
    if (!line.startsWith('ok ') || fnvOf(line) !== this.fnv) throw new Error(`restored copy (pid ${pid}) failed verification: ${line} (want fnv=${this.fnv})`)
    return line
  }

  /** End the restored process and wait until its pid can be restored again. */
  async kill(): Promise<void> {
    try {
      process.kill(-this.pid, 'SIGKILL')
    } catch {
      /* already gone */
    }
    await waitGone(this.pid)
  }
}

/** The checksum in a workload's result line. */
export const fnvOf = (line: string) => /fnv=([0-9a-f]+)/.exec(line)?.[1] ?? '?'

/** SIGUSR1 to the workload's group; its result line once it has checked every byte. */
export async function verify(state: string, pid: number): Promise<string> {
  const file = join(state, 'result-main.txt')
  rmSync(file, { force: true })
  process.kill(-pid, 'SIGUSR1')
  await waitFor('verification result', () => existsSync(file), 300_000, 25)
  return readFileSync(file, 'utf8').trim()
}
