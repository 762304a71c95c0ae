// Bad images: each gets a one-line error naming the file, exit 1, never a panic.
import test from 'ava'
import { cpSync, existsSync, readdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { lazyPages } from './helpers/cli'
import { dump } from './helpers/criu'
import { readPagemap } from './helpers/pagemap'
import { SCRATCH } from './helpers/paths'
import { run } from './helpers/proc'
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

/** The images command and the daemon on `dir`: each must refuse at once with one line matching `names`. */
async function assertRefusedQuickly(t: any, dir: string, names: RegExp) {
  for (const args of [['images', '-D', dir], ['-D', dir, '--connect-timeout', '5']]) {
    const started = Date.now()
    // Killed after 10 s: a reader blocked on a FIFO fails the test instead of hanging it.
    const r = await lazyPages(args, 10_000)
    const what = `${args[0]}: exit ${r.code} ${r.signal ?? ''} after ${Date.now() - started} ms: ${r.stderr}`
    t.is(r.code, 1, what)
    const lines = r.stderr.trim().split('\n')
    t.is(lines.length, 1, what)
    t.regex(lines[0], names, what)
    t.false(existsSync(join(dir, 'lazy-pages.socket')), 'never listened')
  }
}

const imageNames = () => ['inventory.img', 'pstree.img', `core-${pid}.img`, `mm-${pid}.img`, `pagemap-${pid}.img`, readdirSync(base).find((f) => /^pages-\d+\.img$/.test(f))!]

test('a FIFO in place of any image file: refused at once, naming it, by images and the daemon', async (t) => {
  for (const name of imageNames()) {
    const dir = corruptCopy(`fifo-${name}`, (d) => rmSync(join(d, name)))
    const made = await run('mkfifo', [join(dir, name)])
    t.is(made.code, 0, made.stderr)
    await assertRefusedQuickly(t, dir, new RegExp(`^lazy-pages: ${dir}/${name.replace('.', '\\.')}: .*is a FIFO, not a regular file$`))
  }
})

test('a symlink to a device in place of an image: refused, naming it', async (t) => {
  const name = `core-${pid}.img`
  const dir = corruptCopy('chardev', (d) => {
    rmSync(join(d, name))
    symlinkSync('/dev/null', join(d, name))
  })
  await assertRefusedQuickly(t, dir, new RegExp(`^lazy-pages: ${dir}/core-${pid}\\.img: .*is a character device, not a regular file$`))
})

test('a metadata image past the size bound is refused before it is read', async (t) => {
  const name = `mm-${pid}.img`
  // Sparse: 300 MiB that take no disk.
  const dir = corruptCopy('huge-mm', (d) => truncateSync(join(d, name), 300 << 20))
  await assertRefusedQuickly(t, dir, new RegExp(`^lazy-pages: ${dir}/mm-${pid}\\.img: image is 314572800 bytes, more than the 268435456 a metadata image may have$`))
})

test('a symlink to a regular image file is still read', async (t) => {
  const dir = corruptCopy('symlinked', (d) => {
    for (const name of imageNames()) {
      cpSync(join(d, name), join(d, `${name}.real`))
      rmSync(join(d, name))
      symlinkSync(`${name}.real`, join(d, name))
    }
  })
  const r = await lazyPages(['images', '-D', dir, '--json'])
  t.is(r.code, 0, r.stderr)
})
