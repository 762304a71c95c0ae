// Our `lazy-pages page-server`, run as a user runs it.
import { spawn } from 'node:child_process'

import { CLI } from './paths'
import { waitFor } from './proc'

/** `lazy-pages page-server`, resolving with its port once it listens. */
export async function startPageServer(images: string, extra: string[] = []) {
  // A later --port in `extra` wins over the default ephemeral one.
  const child = spawn(process.execPath, [CLI, 'page-server', '-D', images, '--address', '127.0.0.1', '--port', '0', '-v3', ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (out += d))
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
  const port = await waitFor('page server port', () => Number(/Using (\d+) port/.exec(out)?.[1] ?? 0), 30_000)
  return { child, port, exit, output: () => out }
}
