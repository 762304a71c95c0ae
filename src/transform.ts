// `lazy-pages rebase` and `lazy-pages split`: offline rewrites of a dump done
// by the Rust core (core::transform); here we only print what happened.
import { native } from './native'
import { oneLine, UserError } from './errors'
import type { RebaseReport, SplitReport } from '../index'

export interface RebaseOptions {
  imagesDir: string
  parent: string
  json?: boolean
}

export interface SplitOptions {
  imagesDir: string
  out: string
  json?: boolean
}

const PAGE = 4096
const mib = (bytes: number) => `${(bytes / (1024 * 1024)).toFixed(1)} MiB`

// Every native failure here is about a named image file the user can fix
// (or a path they typed), so it is reported as one line, without a stack.
async function userErrors<T>(what: string, work: Promise<T>): Promise<T> {
  try {
    return await work
  } catch (err) {
    throw new UserError(`${what}: ${oneLine(err)}`)
  }
}

export async function runRebase(opts: RebaseOptions): Promise<void> {
  const report = await userErrors('rebase', native.rebaseDump(opts.imagesDir, opts.parent))
  process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : formatRebase(report) + '\n')
}

export async function runSplit(opts: SplitOptions): Promise<void> {
  const report = await userErrors('split', native.splitDump(opts.imagesDir, opts.out))
  process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : formatSplit(report) + '\n')
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells: string[]) => cells.map((c, i) => c.padStart(widths[i])).join('  ')
  return [line(header), ...rows.map(line)]
}

export function formatRebase(r: RebaseReport): string {
  // The note column only when needed: a process born between the two dumps.
  const note = r.tasks.some((t) => !t.inParentDump)
  const header = ['PID', 'PAGES', 'TO-PARENT', 'KEPT', ...(note ? ['NOTE'] : [])]
  const rows = r.tasks.map((t) => {
    const cells = [t.pid, t.presentBefore, t.movedToParent, t.presentAfter].map(String)
    return note ? [...cells, t.inParentDump ? '' : 'not in parent'] : cells
  })
  const before = r.tasks.reduce((n, t) => n + t.presentBefore, 0)
  const pct = before ? ((100 * r.bytesSaved) / (before * PAGE)).toFixed(1) : '0.0'
  return [
    `rebase: ${r.dir} on top of ${r.parent} (parent -> ${r.link})`,
    ...table(header, rows),
    `saved ${mib(r.bytesSaved)} (${pct}% of the pages now come from the parent)`,
  ].join('\n')
}

export function formatSplit(r: SplitReport): string {
  const rows = r.tasks.map((t) => [t.pid, t.lazyPages, t.presentPages].map(String))
  const lazy = r.tasks.reduce((n, t) => n + t.lazyBytes, 0)
  return [
    `split: ${r.dir} -> ${r.out} (${r.files} files)`,
    ...table(['PID', 'LAZY-PAGES', 'PRESENT'], rows),
    `bytes in ${mib(r.bytesIn)}, out ${mib(r.bytesOut)}; ${mib(lazy)} of lazy pages must come from a page server`,
  ].join('\n')
}
