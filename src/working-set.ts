// Working-set files: `--record-ws FILE` writes, per dump task, the lazy pages it
// faulted on in the order it first needed them; `--prefetch-ws FILE` reads one back
// so the next restore of the same dump fetches those pages first.
//
// Format (JSON, one object):
//   { "format": "lazy-pages-working-set", "version": 1, "pageSize": 4096,
//     "tasks": [ { "pid": 42, "pages": 3, "runs": [["0x7f3a2c000000", 2], ["0x55e0c1a3f000", 1]] } ] }
// `runs` are [run-time address, page count] in first-fault order; adjacent pages are
// merged into one run. Addresses are hex strings, exact beyond 2^53. `pages` (the runs'
// total) is informational: readers go by `runs`.
import { z } from 'zod'

import type { WorkingSetTask } from '../index'
import { UserError } from './errors'
import { OptionFileError, readOptionFile } from './option-file'
import { replaceFile } from './out-file'

const FORMAT = 'lazy-pages-working-set'
const PAGE_SIZE = 4096
/** A user address on x86-64 or arm64 (57-bit at most); keeps addr + pages exact. */
const ADDR_LIMIT = 2n ** 57n
/** Far beyond any real working set; stops a hostile file from exhausting memory. */
const MAX_RUNS = 4 << 20
/** MAX_RUNS runs at their widest ("0x" + 15 digits, a count, the line's blanks: ~40 bytes) fit. */
const MAX_FILE_BYTES = 192 << 20

const hexAddr = z
  .string()
  .regex(/^0x[0-9a-f]{1,15}$/i, 'an address is a hex string like "0x7f0000000000"')
  .transform((s) => BigInt(s))
  .refine((a) => a < ADDR_LIMIT && a % BigInt(PAGE_SIZE) === 0n, 'an address must be a page-aligned user address')

const fileSchema = z.object({
  format: z.literal(FORMAT),
  version: z.literal(1),
  pageSize: z.literal(PAGE_SIZE),
  tasks: z.array(
    z.object({
      pid: z.number().int().positive().max(2 ** 31 - 1),
      pages: z.number().int().nonnegative().optional(),
      runs: z.array(z.tuple([hexAddr, z.number().int().positive().max(2 ** 32 - 1)])).max(MAX_RUNS),
    }),
  ),
})

export type WorkingSetFile = z.output<typeof fileSchema>

/** Reads and checks a working-set file; errors name the file and the bad field. */
export async function readWorkingSet(path: string): Promise<WorkingSetTask[]> {
  let text: string
  try {
    text = readOptionFile(path, MAX_FILE_BYTES)
  } catch (err) {
    const bad = err as OptionFileError
    throw new UserError(bad.code ? `${path}: cannot read working set: ${bad.code}` : `${path}: working set ${bad.message}`)
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new UserError(`${path}: not a working-set file: ${(err as Error).message}`)
  }
  const parsed = fileSchema.safeParse(json)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new UserError(`${path}: not a ${FORMAT} v1 file: ${issue.path.join('.') || 'top level'}: ${issue.message}`)
  }
  const seen = new Set<number>()
  for (const t of parsed.data.tasks) {
    if (seen.has(t.pid)) throw new UserError(`${path}: pid ${t.pid} is listed twice`)
    seen.add(t.pid)
  }
  return parsed.data.tasks.map((t) => ({
    pid: t.pid,
    addrs: t.runs.map(([addr]) => Number(addr)),
    pages: t.runs.map(([, pages]) => pages),
  }))
}

/** Writes what the daemon recorded (tasks without faults are left out); errors are one line naming the file (out-file.ts). */
export function writeWorkingSet(path: string, sets: WorkingSetTask[]): { tasks: number; pages: number } {
  const tasks = sets
    .filter((t) => t.addrs.length > 0)
    .map((t) => {
      const pages = t.pages.reduce((a, b) => a + b, 0)
      const runs = t.addrs.map((addr, i) => [`0x${addr.toString(16)}`, t.pages[i]] as const)
      return { pid: t.pid, pages, runs }
    })
  const file = { format: FORMAT, version: 1, pageSize: PAGE_SIZE, tasks }
  // One run per line: diffable, and still small (a 200 MiB working set of scattered
  // pages is ~1.5 MB).
  const body = JSON.stringify(file, null, 1).replace(/\[\n\s+("0x[0-9a-f]+"),\n\s+(\d+)\n\s+\]/g, '[$1, $2]')
  replaceFile(path, '--record-ws', body + '\n')
  return { tasks: tasks.length, pages: tasks.reduce((a, t) => a + t.pages, 0) }
}

/** Pages in a working set. */
export const workingSetPages = (sets: WorkingSetTask[]) => sets.reduce((a, t) => a + t.pages.reduce((x, y) => x + y, 0), 0)
