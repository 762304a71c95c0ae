import { CLI } from './paths'
import { run, type RunResult } from './proc'

/** Run the installed-style CLI (bin/lazy-pages.js) as a user would. */
export function lazyPages(args: string[], timeoutMs = 120_000): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], { timeoutMs })
}

export async function imagesJson(dir: string) {
  const r = await lazyPages(['images', '-D', dir, '--json'])
  if (r.code !== 0) throw new Error(`lazy-pages images failed (${r.code}): ${r.stderr}`)
  return JSON.parse(r.stdout)
}
