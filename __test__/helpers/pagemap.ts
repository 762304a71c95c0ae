// An independent pagemap decoder (no code shared with the Rust reader): enough
// protobuf to count pages, so tests can check `images --json` against it.
import { readFileSync } from 'node:fs'

export interface Entry {
  vaddr: bigint
  pages: number
  flags: number
}

export const PE_PARENT = 1
export const PE_LAZY = 2
export const PE_PRESENT = 4

function varint(buf: Buffer, pos: number): [bigint, number] {
  let value = 0n
  let shift = 0n
  for (;;) {
    const byte = buf[pos++]
    value |= BigInt(byte & 0x7f) << shift
    if (!(byte & 0x80)) return [value, pos]
    shift += 7n
  }
}

function fields(body: Buffer): Map<number, bigint> {
  const out = new Map<number, bigint>()
  let pos = 0
  while (pos < body.length) {
    const [key, p] = varint(body, pos)
    const [value, q] = varint(body, p)
    if ((key & 7n) !== 0n) throw new Error('pagemap: non-varint field')
    out.set(Number(key >> 3n), value)
    pos = q
  }
  return out
}

export function readPagemap(path: string): { pagesId: number; entries: Entry[] } {
  const buf = readFileSync(path)
  if (buf.readUInt32LE(0) !== 0x54564319 || buf.readUInt32LE(4) !== 0x56084025) throw new Error(`${path}: bad magic`)
  let pos = 8
  const bodies: Buffer[] = []
  while (pos < buf.length) {
    const len = buf.readUInt32LE(pos)
    bodies.push(buf.subarray(pos + 4, pos + 4 + len))
    pos += 4 + len
  }
  const head = fields(bodies[0])
  const entries = bodies.slice(1).map((b) => {
    const f = fields(b)
    const pages = Number(f.get(5) ?? f.get(2) ?? 0n)
    let flags = f.has(4) ? Number(f.get(4)) : PE_PRESENT
    if (f.get(3) === 1n) flags |= PE_PARENT
    return { vaddr: f.get(1) ?? 0n, pages, flags }
  })
  return { pagesId: Number(head.get(1)), entries }
}

export function countPages(entries: Entry[]) {
  const sum = (pred: (e: Entry) => boolean) => entries.filter(pred).reduce((n, e) => n + e.pages, 0)
  return {
    pages: sum(() => true),
    lazy: sum((e) => (e.flags & PE_LAZY) !== 0),
    inParent: sum((e) => (e.flags & PE_PARENT) !== 0),
    present: sum((e) => (e.flags & PE_PRESENT) !== 0),
  }
}
