// A restored process's memory seen from outside, page by page, through /proc/PID/mem:
// each page of a workload region is classed as `eio` (the read fails with EIO: the
// page is poisoned), `zero`, `data` (exactly the workload's pattern, workloads/README.md)
// or `wrong` (anything else). This is how a test tells "poisoned" from "zero-filled"
// without asking the process, which would die on the first poisoned page.
//
// The reads run in a child process under a timeout: a page that is neither present nor
// poisoned while some process still holds its uffd blocks its reader in the kernel, and
// that must fail the test, not hang it.
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { patternPage, type Region } from './pattern'
import type { Workload } from './workload'

export interface MemRegion extends Region {
  /** The base address of the pattern (≠ addr for a range moved by mremap). */
  pattern_addr?: string
}

export interface RegionView {
  role: string
  pid: number
  region: MemRegion
  eio: number
  zero: number
  data: number
  wrong: number
  /** Address of the first page in each class, for messages. */
  first: Partial<Record<'eio' | 'zero' | 'data' | 'wrong', string>>
}

const PAGE = 4096

// Reads `pages` pages from `addr` of /proc/PID/mem: per page one tag byte, E (EIO),
// Z (all zero) or D followed by the page's 4096 bytes. Any other error ends it (exit 3).
const READER = `
const fs = require('fs')
const [pid, addr, pages] = process.argv.slice(1).map(Number)
const fd = fs.openSync('/proc/' + pid + '/mem', 'r')
const buf = Buffer.alloc(${PAGE})
const out = []
for (let i = 0; i < pages; i++) {
  let n
  try {
    n = fs.readSync(fd, buf, 0, ${PAGE}, addr + i * ${PAGE})
  } catch (e) {
    if (e.code === 'EIO') { out.push(Buffer.from('E')); continue }
    process.stderr.write('page ' + i + ': ' + e.message + '\\n'); process.exit(3)
  }
  if (n !== ${PAGE}) { process.stderr.write('page ' + i + ': short read ' + n + '\\n'); process.exit(3) }
  if (buf.every((b) => b === 0)) out.push(Buffer.from('Z'))
  else out.push(Buffer.from('D'), Buffer.from(buf))
}
process.stdout.write(Buffer.concat(out))
`

function readPages(pid: number, addr: number, pages: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', READER, String(pid), String(addr), String(pages)], { stdio: ['ignore', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    let err = ''
    child.stdout.on('data', (d: Buffer) => out.push(d))
    child.stderr.on('data', (d) => (err += d))
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, timeoutMs)
    child.on('close', (code) => {
      clearTimeout(timer)
      if (timedOut) reject(new Error(`reading /proc/${pid}/mem at 0x${addr.toString(16)} blocked for ${timeoutMs} ms: a page neither served nor poisoned whose uffd someone still holds`))
      else if (code !== 0) reject(new Error(`reading /proc/${pid}/mem at 0x${addr.toString(16)}: exit ${code}: ${err.trim()}`))
      else resolve(Buffer.concat(out))
    })
  })
}

// splitmix64 on uint32 halves: the BigInt version in pattern.ts costs ~0.5 ms a page,
// too slow for thousands of pages; this one is checked against it below.
function mulhi32(a: number, b: number): number {
  const a0 = a & 0xffff
  const a1 = a >>> 16
  const b0 = b & 0xffff
  const b1 = b >>> 16
  const p01 = a0 * b1
  const p10 = a1 * b0
  const mid = ((a0 * b0) >>> 16) + (p01 & 0xffff) + (p10 & 0xffff)
  return (a1 * b1 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16)) >>> 0
}

/** The pattern page at `pageAddr` (page-aligned) for `seed`, as patternPage() computes it. */
export function fastPatternPage(seed: bigint, pageAddr: bigint): Buffer {
  const u = new Uint32Array(PAGE / 4)
  const sh = Number(seed >> 32n) >>> 0
  const sl = Number(seed & 0xffffffffn) >>> 0
  const ah = Number(pageAddr >> 32n) >>> 0
  const al = Number(pageAddr & 0xffffffffn) >>> 0
  for (let w = 0; w < PAGE / 8; w++) {
    // x = seed ^ (pageAddr + 8w): page-aligned, so no carry into the high half
    let xl = (sl ^ (al + 8 * w)) >>> 0
    let xh = (sh ^ ah) >>> 0
    const l = xl + 0x7f4a7c15
    xh = (xh + 0x9e3779b9 + (l > 0xffffffff ? 1 : 0)) >>> 0
    xl = l >>> 0
    let zl = (xl ^ ((xl >>> 30) | (xh << 2))) >>> 0
    let zh = (xh ^ (xh >>> 30)) >>> 0
    let hi = (mulhi32(zl, 0x1ce4e5b9) + Math.imul(zh, 0x1ce4e5b9) + Math.imul(zl, 0xbf58476d)) >>> 0
    zl = Math.imul(zl, 0x1ce4e5b9) >>> 0
    zh = hi
    zl = (zl ^ ((zl >>> 27) | (zh << 5))) >>> 0
    zh = (zh ^ (zh >>> 27)) >>> 0
    hi = (mulhi32(zl, 0x133111eb) + Math.imul(zh, 0x133111eb) + Math.imul(zl, 0x94d049bb)) >>> 0
    zl = Math.imul(zl, 0x133111eb) >>> 0
    zh = hi
    u[2 * w] = (zl ^ ((zl >>> 31) | (zh << 1))) >>> 0
    u[2 * w + 1] = (zh ^ (zh >>> 31)) >>> 0
  }
  return Buffer.from(u.buffer)
}

for (const [seed, addr] of [
  [0x6c617a7970616765n, 0x7f334ca00000n],
  [0xffffffffffffffffn, 0x7ffffffff000n],
  [0x9034ffa26a830c00n, 0x55d0c0de0000n],
]) {
  if (!fastPatternPage(seed, addr).equals(patternPage(seed, addr))) throw new Error('memview: fastPatternPage disagrees with pattern.ts')
}

/** Expected bytes of page `index` of a region, or undefined where it must read zero. */
export function expectedBytes(region: MemRegion, index: number): Buffer | undefined {
  if (region.shape === 'zero') return undefined
  if (region.shape === 'sparse' && index % (region.every ?? 1) !== 0) return undefined
  const addr = BigInt(region.pattern_addr ?? region.addr) + BigInt(index * PAGE)
  const own = region.shape === 'cow' && region.own_mod !== undefined && index % region.own_mod === region.own_rem
  return fastPatternPage(BigInt(own ? region.own_seed! : region.seed), addr)
}

/** Read every page of `region` of process `pid` from outside and class it. */
export async function viewRegion(role: string, pid: number, region: MemRegion, timeoutMs = 20_000): Promise<RegionView> {
  const raw = await readPages(pid, Number(BigInt(region.addr)), region.pages, timeoutMs)
  const view: RegionView = { role, pid, region, eio: 0, zero: 0, data: 0, wrong: 0, first: {} }
  let pos = 0
  for (let i = 0; i < region.pages; i++) {
    const tag = String.fromCharCode(raw[pos++])
    const want = expectedBytes(region, i)
    let cls: 'eio' | 'zero' | 'data' | 'wrong'
    if (tag === 'E') cls = 'eio'
    else if (tag === 'Z') cls = want ? 'zero' : 'data'
    else {
      const got = raw.subarray(pos, pos + PAGE)
      pos += PAGE
      cls = want && got.equals(want) ? 'data' : 'wrong'
    }
    view[cls]++
    view.first[cls] ??= '0x' + (BigInt(region.addr) + BigInt(i * PAGE)).toString(16)
  }
  if (pos !== raw.length) throw new Error(`memview: ${raw.length - pos} stray bytes reading pid ${pid}`)
  return view
}

/**
 * Every region of every live role of a workload, from its ready file (or another file of
 * that format, e.g. churn's `churned-main.json`). `pid` maps a role's recorded pid to the
 * host pid to read (the same pid outside a pid namespace).
 */
export async function viewWorkload(w: Workload, roles: string[], file = (role: string) => `ready-${role}.json`): Promise<RegionView[]> {
  const out: RegionView[] = []
  for (const role of roles) {
    const ready = JSON.parse(readFileSync(join(w.state, file(role)), 'utf8')) as { pid: number; regions: MemRegion[] }
    for (const region of ready.regions) out.push(await viewRegion(role, ready.pid, region))
  }
  return out
}

/** One line per region: role, shape, address and the count of each class. */
export function describeViews(views: RegionView[]): string {
  return views
    .map((v) => `${v.role} ${v.region.shape}@${v.region.addr} (${v.region.pages} pages): eio=${v.eio} zero=${v.zero} data=${v.data} wrong=${v.wrong}`)
    .join('; ')
}
