// Our `lazy-pages page-server --keep-serving` on one host, for every remote case: one
// process serves CRIU's and our clients in turn. Its port is the one it logs, as CRIU's.
import { spawn } from 'node:child_process'

import { CLI } from './paths'
import { waitFor, within } from './proc'

export class PageServer {
  private out = ''
  private readonly exit: Promise<number | null>
  /** Set once it listens. */
  port = 0

  private constructor(private readonly child: ReturnType<typeof spawn>) {
    child.stdout!.on('data', (d) => (this.out += d))
    child.stderr!.on('data', (d) => (this.out += d))
    this.exit = new Promise((resolve) => child.on('close', (code) => resolve(code)))
  }

  static async start(prefix: string[], images: string, address: string, extra: string[] = []): Promise<PageServer> {
    const argv = [...prefix, process.execPath, CLI, 'page-server', '-D', images, '--address', address, '--port', '0', '--keep-serving', ...extra]
    const s = new PageServer(spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] }))
    try {
      s.port = await waitFor('page server port', () => (s.assertAlive(), Number(/Using (\d+) port/.exec(s.out)?.[1] ?? 0)), 30_000)
      return s
    } catch (e) {
      await s.stop()
      throw new Error(`page server (${argv.join(' ')}) did not start: ${e instanceof Error ? e.message : e}; output: ${s.out.trim()}`)
    }
  }

  /** `ip netns exec` execs the server: this pid lives in the server's namespace. */
  get pid(): number {
    return this.child.pid!
  }

  alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null
  }

  died(): string {
    return `page server exited (${this.child.exitCode ?? this.child.signalCode}): ${this.out.slice(-2000).trim()}`
  }

  /** A dead server fails the next client anyway; this names the cause first. */
  assertAlive(): void {
    if (!this.alive()) throw new Error(this.died())
  }

  /** SIGTERM (it closes its listener and exits), SIGKILL if it does not within 10 s. */
  async stop(): Promise<void> {
    if (!this.alive()) return
    this.child.kill('SIGTERM')
    try {
      await within(this.exit, 10_000, 'page server to exit on SIGTERM')
    } catch {
      this.child.kill('SIGKILL')
      await within(this.exit, 10_000, 'page server to die on SIGKILL')
    }
  }
}
