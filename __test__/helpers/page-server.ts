// Our `lazy-pages page-server`, run as a user runs it.
import { spawn } from 'node:child_process'

import { CLI } from './paths'
import { waitFor } from './proc'

/**
 * `lazy-pages page-server`, resolving with its port once it listens. `prefix` runs it
 * under another command (e.g. `ip netns exec NS`), listening on `address`.
 */
export async function startPageServer(images: string, extra: string[] = [], { address = '127.0.0.1', prefix = [] as string[] } = {}) {
  // A later --port in `extra` wins over the default ephemeral one.
  const argv = [...prefix, process.execPath, CLI, 'page-server', '-D', images, '--address', address, '--port', '0', '-v3', ...extra]
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (out += d))
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
  const port = await waitFor('page server port', () => Number(/Using (\d+) port/.exec(out)?.[1] ?? 0), 30_000)
  return { child, port, exit, output: () => out }
}
