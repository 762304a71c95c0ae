// The C test workloads (workloads/README.md): start one, wait until it is set up,
// ask it to verify its memory, read its one-line verdicts.
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'

import { LPW, SCRATCH } from './paths'
import type { Region } from './pattern'
import { waitFor } from './proc'

export interface Ready {
  role: string
  pid: number
  regions: Region[]
}

export interface Verdict {
  ok: boolean
  role: string
  seq: number
  line: string
}

export class Workload {
  private constructor(
    readonly dir: string,
    readonly state: string,
    readonly pid: number,
  ) {}

  /** A fresh scratch dir `name` with state/ and images/ inside. */
  static scratch(name: string): string {
    const dir = join(SCRATCH, name)
    rmSync(dir, { recursive: true, force: true })
    mkdirSync(join(dir, 'state'), { recursive: true })
    mkdirSync(join(dir, 'images'), { recursive: true })
    return dir
  }

  /** `bin`: another workload binary than lpw (e.g. LPW_HOT), taking the same --state. */
  static async start(name: string, args: string[], opts: { wrap?: string[]; bin?: string } = {}): Promise<Workload> {
    const dir = Workload.scratch(name)
    const state = join(dir, 'state')
    const argv = [...(opts.wrap ?? []), opts.bin ?? LPW, ...args, '--state', state]
    // detached: the workload leads its own session and process group, so a
    // group signal reaches its children and CRIU sees no foreign tty.
    const child = spawn(argv[0], argv.slice(1), { stdio: 'ignore', detached: true })
    child.unref()
    const w = new Workload(dir, state, child.pid ?? -1)
    await waitFor(`${name}: ready-main.json`, () => existsSync(join(state, 'ready-main.json')), 60_000)
    return w
  }

  /** The same workload known by another pid (e.g. its host pid inside a pid namespace, or after a restore into a new one). */
  withPid(pid: number): Workload {
    return new Workload(this.dir, this.state, pid)
  }

  get images(): string {
    return join(this.dir, 'images')
  }

  ready(role = 'main'): Ready {
    return JSON.parse(readFileSync(join(this.state, `ready-${role}.json`), 'utf8'))
  }

  roles(): string[] {
    return readdirSync(this.state)
      .map((f) => /^ready-(.+)\.json$/.exec(f)?.[1])
      .filter((r): r is string => !!r)
  }

  verdict(role: string): Verdict | undefined {
    const file = join(this.state, `result-${role}.txt`)
    if (!existsSync(file)) return undefined
    const line = readFileSync(file, 'utf8').trim()
    return { ok: line.startsWith('ok '), role, seq: Number(/seq=(\d+)/.exec(line)?.[1] ?? 0), line }
  }

  /** Signal the group (pgid = pid of the session leader) and wait for every role's fresh verdict. */
  async verify(roles: string[], signal: NodeJS.Signals = 'SIGUSR1', timeoutMs = 120_000): Promise<Verdict[]> {
    // Old verdicts go first: a restored process counts seq from its dumped state,
    // so seq alone cannot tell a fresh verdict from one written before the dump.
    for (const role of roles) rmSync(join(this.state, `result-${role}.txt`), { force: true })
    process.kill(-this.pid, signal)
    const out: Verdict[] = []
    for (const role of roles) out.push(await waitFor(`verdict of ${role}`, () => this.verdict(role), timeoutMs))
    return out
  }

  kill(): void {
    try {
      process.kill(-this.pid, 'SIGKILL')
    } catch {
      /* already gone */
    }
  }
}
