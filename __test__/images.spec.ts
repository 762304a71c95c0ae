// `lazy-pages images` and the binding's page reads, against real CRIU dumps of
// workloads whose memory layout and contents are known.
import test from 'ava'
import { join } from 'node:path'

import { native } from '../dist/native'
import { imagesJson } from './helpers/cli'
import { dump } from './helpers/criu'
import { countPages, PE_LAZY, readPagemap } from './helpers/pagemap'
import { expectedPage, touchedPages, type Region } from './helpers/pattern'
import { Workload } from './helpers/workload'

/** Sampled pages of a region: both ends and a spread in between. */
function samplePages(region: Region, count = 64): number[] {
  const picks = new Set<number>([0, region.pages - 1])
  for (let i = 1; i < count; i++) picks.add(Math.floor((region.pages - 1) * (i / count)))
  return [...picks]
}

async function assertRegionBytes(t: any, dir: string, pid: number, region: Region) {
  for (const index of samplePages(region)) {
    const want = expectedPage(region, index)
    const addr = BigInt(region.addr) + BigInt(index) * 4096n
    if (want.every((b) => b === 0)) continue // untouched: not in the dump at all
    const got = await native.readPages(dir, pid, addr, 1)
    if (!got.equals(want)) return t.fail(`pid ${pid} page 0x${addr.toString(16)} differs from the pattern`)
  }
  t.pass()
}

function pagesInRegion(entries: ReturnType<typeof readPagemap>['entries'], region: Region, flag = 0): number {
  const start = BigInt(region.addr)
  const end = start + BigInt(region.pages) * 4096n
  let n = 0
  for (const e of entries) {
    if (flag && !(e.flags & flag)) continue
    const s = e.vaddr > start ? e.vaddr : start
    const eEnd = e.vaddr + BigInt(e.pages) * 4096n
    const f = eEnd < end ? eEnd : end
    if (f > s) n += Number((f - s) / 4096n)
  }
  return n
}

test('dense: images --json equals an independent pagemap count, region all lazy, bytes match the pattern', async (t) => {
  const w = await Workload.start('images-dense', ['dense', '--mib', '32'])
  const ready = w.ready()
  await dump(w.pid, w.images)
  const report = await imagesJson(w.images)
  t.is(report.tasks.length, 1)
  const task = report.tasks[0]
  t.is(task.pid, ready.pid)
  const pm = readPagemap(join(w.images, `pagemap-${ready.pid}.img`))
  const count = countPages(pm.entries)
  t.like(task, count)
  t.is(task.bytes, count.present * 4096)
  t.true(task.vmas > 5)
  for (const key of ['pid', 'vmas', 'pages', 'lazy', 'inParent', 'present', 'bytes']) t.is(typeof task[key], 'number')
  const region = ready.regions[0]
  t.is(pagesInRegion(pm.entries, region, PE_LAZY), region.pages, 'every page of the region is dumped lazy')
  await assertRegionBytes(t, w.images, ready.pid, region)
})

test('sparse: only touched pages are dumped; holes are absent', async (t) => {
  const w = await Workload.start('images-sparse', ['sparse', '--mib', '16', '--every', '7'])
  const ready = w.ready()
  await dump(w.pid, w.images)
  const pm = readPagemap(join(w.images, `pagemap-${ready.pid}.img`))
  const region = ready.regions[0]
  t.is(pagesInRegion(pm.entries, region), touchedPages(region))
  const report = await imagesJson(w.images)
  t.like(report.tasks[0], countPages(pm.entries))
  await assertRegionBytes(t, w.images, ready.pid, region)
})

test('tree: forked children with COW pages and a zombie', async (t) => {
  const w = await Workload.start('images-tree', ['tree', '--mib', '8', '--children', '2', '--zombie'])
  const roles = w.roles()
  t.deepEqual(roles.sort(), ['child0', 'child1', 'main'])
  const readies = roles.map((r) => w.ready(r))
  await dump(w.pid, w.images)
  const report = await imagesJson(w.images)
  t.is(report.tasks.length, 3, 'main and two live children')
  t.is(report.zombies.length, 1, 'one zombie, listed apart')
  for (const ready of readies) {
    const task = report.tasks.find((x: { pid: number }) => x.pid === ready.pid)
    t.truthy(task, `task ${ready.role} in images`)
    t.like(task, countPages(readPagemap(join(w.images, `pagemap-${ready.pid}.img`)).entries))
    for (const region of ready.regions) await assertRegionBytes(t, w.images, ready.pid, region)
  }
})

test('threads: one task with all its threads', async (t) => {
  const w = await Workload.start('images-threads', ['threads', '--mib', '8', '--threads', '3'])
  const ready = w.ready()
  await dump(w.pid, w.images)
  const report = await imagesJson(w.images)
  t.is(report.tasks.length, 1)
  t.is(report.tasks[0].threads, 4)
  for (const region of ready.regions) await assertRegionBytes(t, w.images, ready.pid, region)
})
