// The workloads' memory pattern, recomputed independently of the C code:
// the u64 at address A of a region with seed S is splitmix64(S ^ A).
const M = (1n << 64n) - 1n

export function splitmix64(x: bigint): bigint {
  x = (x + 0x9e3779b97f4a7c15n) & M
  let z = x
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M
  return z ^ (z >> 31n)
}

export function patternPage(seed: bigint, pageAddr: bigint): Buffer {
  const page = Buffer.alloc(4096)
  for (let off = 0; off < 4096; off += 8) page.writeBigUInt64LE(splitmix64(seed ^ (pageAddr + BigInt(off))), off)
  return page
}

export interface Region {
  addr: string
  pages: number
  seed: string
  shape: string
  every?: number
  own_mod?: number
  own_rem?: number
  own_seed?: string
}

/** Expected bytes of page `index` of a region; all zero for a page the workload never touched. */
export function expectedPage(region: Region, index: number): Buffer {
  const addr = BigInt(region.addr) + BigInt(index) * 4096n
  if (region.shape === 'sparse' && index % (region.every ?? 1) !== 0) return Buffer.alloc(4096)
  if (region.shape === 'cow' && region.own_mod !== undefined && index % region.own_mod === region.own_rem) {
    return patternPage(BigInt(region.own_seed ?? '0'), addr)
  }
  return patternPage(BigInt(region.seed), addr)
}

/** Pages of a region that hold data (the rest were never touched). */
export function touchedPages(region: Region): number {
  if (region.shape === 'sparse') return Math.ceil(region.pages / (region.every ?? 1))
  return region.pages
}
