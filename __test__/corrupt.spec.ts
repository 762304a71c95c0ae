// Bad images: each gets a one-line error naming the file, exit 1, never a panic.
import test from 'ava'
import { cpSync, readdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { lazyPages } from './helpers/cli'
import { dump } from './helpers/criu'
import { readPagemap } from './helpers/pagemap'
import { SCRATCH } from './helpers/paths'
import { Workload } from './helpers/workload'

let base = ''
let pid = 0

test.before(async () => {
  const w = await Workload.start('corrupt-base', ['sparse', '--mib', '4', '--every', '3'])
  pid = w.ready().pid
  await dump(w.pid, w.images)
  base = w.images
})

/** Byte ranges [start, end) of each length-prefixed record after the 8 magic bytes. */
function records(buf: Buffer): Array<[number, number]> {
  const out: Array<[number, number]> = []
  let pos = 8
  while (pos < buf.length) {
    const end = pos + 4 + buf.readUInt32LE(pos)
    out.push([pos, end])
    pos = end
  }
  return out
}

function corruptCopy(name: string, mutate: (dir: string, pagemap: string) => void): string {
  const dir = join(SCRATCH, 'corrupt', name)
  rmSync(dir, { recursive: true, force: true })
  cpSync(base, dir, { recursive: true })
  mutate(dir, join(dir, `pagemap-${pid}.img`))
  return dir
}

async function assertRejected(t: any, dir: string, names: RegExp) {
  const r = await lazyPages(['images', '-D', dir, '--json'])
  t.is(r.code, 1, `exit 1, got ${r.code}: ${r.stderr}`)
  t.is(r.stdout, '')
  const lines = r.stderr.trim().split('\n')
  t.is(lines.length, 1, `one line: ${r.stderr}`)
  t.regex(lines[0], /^lazy-pages: /)
  t.regex(lines[0], names)
  t.notRegex(r.stderr, /panick|RUST_BACKTRACE|at .*\.js:\d+/)
}

test('wrong pagemap magic', async (t) => {
  const dir = corruptCopy('magic', (_d, pm) => {
    const buf = readFileSync(pm)
    buf.writeUInt32LE(0xdeadbeef, 4)
    writeFileSync(pm, buf)
  })
  await assertRejected(t, dir, new RegExp(`pagemap-${pid}\\.img.*magic`, 'i'))
})

test('truncated pagemap entry', async (t) => {
  const dir = corruptCopy('truncated', (_d, pm) => truncateSync(pm, readFileSync(pm).length - 3))
  await assertRejected(t, dir, new RegExp(`pagemap-${pid}\\.img: offset \\d+`))
})

test('entry length past the end of the file', async (t) => {
  const dir = corruptCopy('hostile-length', (_d, pm) => {
    const buf = readFileSync(pm)
    const recs = records(buf)
    buf.writeUInt32LE(0xfffffff0, recs[recs.length - 1][0])
    writeFileSync(pm, buf)
  })
  await assertRejected(t, dir, new RegExp(`pagemap-${pid}\\.img: offset \\d+`))
})

test('unsorted pagemap', async (t) => {
  const dir = corruptCopy('unsorted', (_d, pm) => {
    const buf = readFileSync(pm)
    const recs = records(buf)
    const [a, b] = [recs[1], recs[2]]
    writeFileSync(pm, Buffer.concat([buf.subarray(0, a[0]), buf.subarray(b[0], b[1]), buf.subarray(a[0], a[1]), buf.subarray(b[1])]))
  })
  await assertRejected(t, dir, new RegExp(`pagemap-${pid}\\.img: offset \\d+.*(sort|order)`, 'i'))
})

test('overlapping pagemap entries', async (t) => {
  const dir = corruptCopy('overlap', (_d, pm) => {
    const buf = readFileSync(pm)
    const rec = records(buf)[1]
    writeFileSync(pm, Buffer.concat([buf.subarray(0, rec[1]), buf.subarray(rec[0], rec[1]), buf.subarray(rec[1])]))
  })
  await assertRejected(t, dir, new RegExp(`pagemap-${pid}\\.img: offset \\d+.*overlap`, 'i'))
})

test('page count past the end of the pages file', async (t) => {
  const dir = corruptCopy('short-pages', (d, pm) => {
    const pages = join(d, `pages-${readPagemap(pm).pagesId}.img`)
    truncateSync(pages, readFileSync(pages).length - 8192)
  })
  await assertRejected(t, dir, /pages-\d+\.img/)
})

test('missing pages file', async (t) => {
  const dir = corruptCopy('no-pages', (d) => {
    for (const f of readdirSync(d)) if (/^pages-\d+\.img$/.test(f)) rmSync(join(d, f))
  })
  await assertRejected(t, dir, /pages-\d+\.img/)
})

test('missing parent directory', async (t) => {
  const dir = corruptCopy('no-parent', (d) => symlinkSync('../does-not-exist', join(d, 'parent')))
  await assertRejected(t, dir, /parent/)
})

test('wrong mm magic', async (t) => {
  const dir = corruptCopy('mm-magic', (d) => {
    const mm = join(d, `mm-${pid}.img`)
    const buf = readFileSync(mm)
    buf.writeUInt32LE(0x12345678, 4)
    writeFileSync(mm, buf)
  })
  await assertRejected(t, dir, new RegExp(`mm-${pid}\\.img`))
})

test('missing images dir', async (t) => {
  await assertRejected(t, join(SCRATCH, 'corrupt', 'nowhere'), /nowhere/)
})
