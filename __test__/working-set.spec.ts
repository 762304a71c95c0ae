// Working sets on real CRIU dumps: `--record-ws` writes the lazy pages a restored
// process faulted on, in first-fault order; `--prefetch-ws` has the next restore of
// the same dump fetch exactly those first (per dump task, in a tree too). A foreign
// pid prefetches nothing and harms nothing; bad files are refused before listening.
import test from 'ava'
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Readable } from 'node:stream'

import { assertCleanSummary, assertMemoryAsDumped, checksums } from './helpers/check'
import { lazyPages } from './helpers/cli'
import { restoreLogTail, startLazyRestore } from './helpers/criu'
import { readStats, startDaemon } from './helpers/daemon'
import { dumpAndWait, killAndWait } from './helpers/dumped'
import { startPageServer } from './helpers/page-server'
import { CLI, LPW_HOT } from './helpers/paths'
import { splitmix64, type Region } from './helpers/pattern'
import { waitFor } from './helpers/proc'
import { Workload } from './helpers/workload'

const MIB = 64
const HOT_PCT = 10
/** lpw-hot's default --seed. */
const HOT_SEED = 0x6c617a7970616765n
/** Recording serves faults only for this long after the restore: the hot pass (~2k faults) needs a fraction of it. */
const RECORD_FILL_DELAY_MS = 3000
const PAGE = 4096

interface WsFile {
  format: string
  version: number
  pageSize: number
  tasks: Array<{ pid: number; pages: number; runs: Array<[string, number]> }>
}

let w: Workload
let before: Map<string, string>
let report: { tasks: Array<{ pid: number }>; zombies: number[]; total: { lazy: number } }
let region: Region

test.before(async () => {
  w = await Workload.start('ws-hot', ['--mib', String(MIB), '--hot-pct', String(HOT_PCT)], { bin: LPW_HOT })
  before = await checksums(w)
  region = w.ready().regions[0]
  report = await dumpAndWait(w)
})

test.after.always(() => w?.kill())

/** The hot pages' indexes in pass order, recomputed as workloads/hot.c picks them (a partial Fisher-Yates shuffle). */
function hotOrder(pages: number, pct: number): number[] {
  const nhot = Math.max(1, Math.floor((pages * pct) / 100))
  const idx = Array.from({ length: pages }, (_, i) => i)
  let x = splitmix64(HOT_SEED ^ 0x686f74n)
  for (let i = 0; i < nhot; i++) {
    x = splitmix64(x)
    const j = i + Number(x % BigInt(pages - i))
    ;[idx[i], idx[j]] = [idx[j], idx[i]]
  }
  return idx.slice(0, nhot)
}

/** A working set's pages of one task, expanded in file order. */
function expand(runs: Array<[string, number]>): bigint[] {
  return runs.flatMap(([addr, n]) => Array.from({ length: n }, (_, i) => BigInt(addr) + BigInt(i * PAGE)))
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms))),
  ])
}

/** Daemon (-v3, stats.json) + `criu restore --lazy-pages -d` from `images` (default: the full dump); `afterRestore` runs the moment the restore returns, while pages still arrive. */
async function restoreWith(daemonArgs: string[], afterRestore?: () => void, images = w.images) {
  rmSync(join(images, 'stats.json'), { force: true })
  const daemon = await startDaemon(images, daemonArgs)
  try {
    const code = await startLazyRestore(images).done
    if (code !== 0) throw new Error(`criu restore --lazy-pages failed (${code}): ${restoreLogTail(images)}; daemon: ${daemon.stderr()}`)
    afterRestore?.()
    const exit = await within(daemon.exit, 60_000, `the daemon to exit: ${daemon.stderr()}`)
    const stats = existsSync(join(images, 'stats.json')) ? readStats(images) : undefined
    return { exit, stderr: daemon.stderr(), stats }
  } finally {
    if (daemon.child.exitCode === null && daemon.child.signalCode === null) daemon.child.kill('SIGKILL')
  }
}

test('record a working set, then prefetch it on the next restore of the same dump', async (t) => {
  const pid = report.tasks[0].pid
  const hot = hotOrder(region.pages, HOT_PCT)
  const passFile = join(w.state, 'hot-main.txt')
  const wsFile = join(w.images, 'ws.json')
  rmSync(passFile, { force: true })
  rmSync(wsFile, { force: true })
  try {
    // (a) Record: faults only for a while, and the hot pass starts as soon as the process runs.
    const rec = await restoreWith(['--record-ws', 'ws.json', '--fill-delay', String(RECORD_FILL_DELAY_MS)], () => process.kill(-w.pid, 'SIGUSR2'))
    assertCleanSummary(t, rec.exit, rec.stderr, rec.stats)
    t.is(rec.stats!.total.lazy, report.total.lazy)
    t.is(rec.stats!.total.faulted + rec.stats!.total.background, report.total.lazy, 'every lazy page copied once')
    t.is(rec.stats!.total.prefetched, 0, 'nothing to prefetch while recording')
    const [passStart, passEnd, hotPages] = readFileSync(await waitFor('the hot pass', () => existsSync(passFile) && passFile, 30_000), 'utf8')
      .trim()
      .split(' ')
      .map(Number)
    t.is(hotPages, hot.length, 'the workload walked as many hot pages as recomputed here')
    t.true(passEnd >= passStart)
    t.true(rec.stats!.total.faulted >= hotPages, `every hot page faulted (${rec.stats!.total.faulted} faults)`)
    await assertMemoryAsDumped(t, w, before)

    const ws: WsFile = JSON.parse(readFileSync(wsFile, 'utf8'))
    t.is(ws.format, 'lazy-pages-working-set')
    t.is(ws.version, 1)
    t.is(ws.pageSize, PAGE)
    t.is(ws.tasks.length, 1, 'one task')
    const task = ws.tasks[0]
    t.is(task.pid, pid, "the dump's pid")
    for (const [addr, n] of task.runs) {
      t.regex(addr, /^0x[0-9a-f]+$/)
      t.is(BigInt(addr) % BigInt(PAGE), 0n, `${addr} page-aligned`)
      t.true(Number.isInteger(n) && n > 0, `run ${addr} +${n}`)
    }
    const pages = expand(task.runs)
    t.is(task.pages, pages.length, 'pages = the runs added up')
    t.is(new Set(pages).size, pages.length, 'no page twice')
    t.regex(rec.stderr, new RegExp(`working set: ${pages.length} faulted pages of 1 tasks written to ws\\.json`))
    t.true(pages.length >= hotPages, `${pages.length} pages hold the ${hotPages} hot ones`)
    t.true(pages.length < hotPages + 1000, `${pages.length} pages: little beyond the ${hotPages} hot ones`)
    // The region's pages in the file are exactly the hot ones, in the order the pass touched them.
    const base = BigInt(region.addr)
    const end = base + BigInt(region.pages * PAGE)
    const inRegion = pages.filter((a) => a >= base && a < end).map((a) => Number((a - base) / BigInt(PAGE)))
    t.deepEqual(inRegion, hot, 'hot pages in first-fault order')
    t.log(`recorded ${pages.length} pages: the ${hotPages} hot ones and ${pages.length - inRegion.length} others; ${rec.stats!.total.faulted} faults`)

    // (b) Prefetch: a fresh restore of the same dump, no fill delay.
    await killAndWait(w, report)
    const pre = await restoreWith(['--prefetch-ws', 'ws.json'])
    assertCleanSummary(t, pre.exit, pre.stderr, pre.stats)
    const total = pre.stats!.total
    t.is(total.lazy, report.total.lazy)
    t.is(total.faulted + total.background, report.total.lazy, 'every lazy page copied exactly once')
    t.is(total.dropped, 0)
    t.is(pre.stats!.tasks[0].prefetched, total.prefetched)
    t.true(total.prefetched > 0.9 * pages.length, `${total.prefetched} of ${pages.length} working-set pages prefetched`)
    t.true(total.prefetched <= pages.length, `${total.prefetched} prefetched, no more than the ${pages.length} in the working set`)
    t.regex(pre.stderr, new RegExp(`working set ws\\.json: ${pages.length} pages of 1 tasks go first`))
    t.regex(pre.stderr, /working set in: \d+ pages, \d+ ms after the restore connected/)
    t.regex(pre.stderr, new RegExp(`total: .* ${total.prefetched} of the background pages from the working set; .*every page accounted for once`))
    t.log(`prefetched ${total.prefetched} of ${pages.length}; ${total.faulted} faults; ${/working set in: .*/.exec(pre.stderr)?.[0]}`)
    await assertMemoryAsDumped(t, w, before)
  } finally {
    await killAndWait(w, report)
  }
})

test('prefetch a working set over TCP: split dump, pages from our page server', async (t) => {
  // A working set of its own (recorded locally, as in the first test), so this test stands alone.
  const wsFile = join(w.images, 'ws-remote.json')
  rmSync(wsFile, { force: true })
  const out = join(w.dir, 'split-ws')
  rmSync(out, { recursive: true, force: true })
  let server: Awaited<ReturnType<typeof startPageServer>> | undefined
  try {
    const rec = await restoreWith(['--record-ws', wsFile, '--fill-delay', String(RECORD_FILL_DELAY_MS)], () => process.kill(-w.pid, 'SIGUSR2'))
    assertCleanSummary(t, rec.exit, rec.stderr, rec.stats)
    await killAndWait(w, report)
    const task = (JSON.parse(readFileSync(wsFile, 'utf8')) as WsFile).tasks[0]
    const wsPages = expand(task.runs).length
    t.true(wsPages >= hotOrder(region.pages, HOT_PCT).length, `${wsPages} recorded pages hold the hot pass`)

    // Only metadata and eager pages on this side; the lazy ones come from the page server.
    const split = await lazyPages(['split', '-D', w.images, '-o', out])
    t.is(split.code, 0, split.stderr)
    server = await startPageServer(w.images, ['--keep-serving'])
    const started = Date.now()
    const pre = await restoreWith(['--page-server', '--address', '127.0.0.1', '--port', String(server.port), '--prefetch-ws', wsFile], undefined, out)
    const ms = Date.now() - started
    assertCleanSummary(t, pre.exit, pre.stderr, pre.stats)
    const total = pre.stats!.total
    t.is(total.lazy, report.total.lazy)
    t.is(total.faulted + total.background, report.total.lazy, 'every lazy page copied exactly once, over the wire')
    t.is(total.dropped, 0)
    t.true(total.prefetched > 0.9 * wsPages, `${total.prefetched} of ${wsPages} working-set pages prefetched`)
    t.true(total.prefetched <= wsPages, `${total.prefetched} prefetched, no more than the ${wsPages} in the working set`)
    t.true(pre.stderr.includes(`working set ${wsFile}: ${wsPages} pages of 1 tasks go first`), pre.stderr)
    t.regex(pre.stderr, /working set in: \d+ pages, \d+ ms after the restore connected/)
    await assertMemoryAsDumped(t, w, before)

    server.child.kill('SIGTERM')
    t.is(await within(server.exit, 10_000, 'the page server to exit'), 0, server.output())
    const served = Number(/1 sessions \(0 failed\), \d+ requests, (\d+) pages served/.exec(server.output())?.[1])
    // Every lazy page crossed the wire, the working set not twice. A few pages do cross twice: an early
    // prefetch probe (one page, before the restorer has registered the VMA) that meets ENOENT drops the
    // bytes it fetched, and the page is fetched again when retried or faulted.
    t.true(served >= report.total.lazy && served - report.total.lazy <= 8, `${served} pages served for ${report.total.lazy} lazy ones: ${server.output()}`)
    t.log(`prefetched ${total.prefetched} of ${wsPages}; ${total.faulted} faults; ${/working set in: .*/.exec(pre.stderr)?.[0]}; restore + fill ${ms} ms; ${served - report.total.lazy} pages served twice`)
  } finally {
    if (server && server.child.exitCode === null && server.child.signalCode === null) server.child.kill('SIGKILL')
    await killAndWait(w, report)
  }
})

test('a working set of a pid the dump does not have: prefetches nothing, the restore is unharmed', async (t) => {
  // Real addresses of the region, under a pid that is not in the dump.
  const foreign = report.tasks[0].pid === 4_000_000 ? 4_000_001 : 4_000_000
  const hot = hotOrder(region.pages, HOT_PCT).slice(0, 200)
  const runs = hot.map((i) => [`0x${(BigInt(region.addr) + BigInt(i * PAGE)).toString(16)}`, 1])
  writeFileSync(join(w.images, 'foreign.json'), JSON.stringify({ format: 'lazy-pages-working-set', version: 1, pageSize: PAGE, tasks: [{ pid: foreign, pages: runs.length, runs }] }))
  try {
    const r = await restoreWith(['--prefetch-ws', 'foreign.json'])
    assertCleanSummary(t, r.exit, r.stderr, r.stats)
    t.is(r.stats!.total.lazy, report.total.lazy)
    t.is(r.stats!.total.faulted + r.stats!.total.background, report.total.lazy, 'every lazy page copied exactly once')
    t.is(r.stats!.total.dropped, 0)
    t.is(r.stats!.total.prefetched, 0, 'nothing prefetched')
    t.notRegex(r.stderr, /of the background pages from the working set/)
    await assertMemoryAsDumped(t, w, before)
  } finally {
    await killAndWait(w, report)
  }
})

/** The daemon with a working set, as a user starts it with --status-fd: did it get ready, how did it exit, what did it say. */
function runDaemon(args: string[]): Promise<{ code: number | null; stderr: string; ready: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, '-D', w.images, '--status-fd', '3', '--connect-timeout', '3', ...args], { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] })
    let stderr = ''
    let ready = false
    child.stdout!.on('data', (d) => (stderr += d))
    child.stderr!.on('data', (d) => (stderr += d))
    ;(child.stdio[3] as Readable).on('data', (d: Buffer) => (ready ||= d.includes(0)))
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stderr, ready })
    })
  })
}

const ws = (tasks: unknown, over: object = {}) => JSON.stringify({ format: 'lazy-pages-working-set', version: 1, pageSize: PAGE, tasks, ...over })
const okRun = ['0x7f0000000000', 1]

const badFiles: Array<{ name: string; body?: string; why: RegExp }> = [
  { name: 'missing', why: /cannot read working set: ENOENT/ },
  { name: 'not JSON', body: '{"format": "lazy-pages-working-set", ', why: /not a working-set file/ },
  { name: 'empty', body: '', why: /not a working-set file/ },
  { name: 'wrong format field', body: ws([], { format: 'criu-working-set' }), why: /not a lazy-pages-working-set v1 file: format/ },
  { name: 'wrong version', body: ws([], { version: 2 }), why: /version/ },
  { name: 'wrong page size', body: ws([], { pageSize: 65536 }), why: /pageSize/ },
  { name: 'a misaligned address', body: ws([{ pid: 42, runs: [['0x1001', 1]] }]), why: /tasks\.0\.runs\.0\.0: .*page-aligned/ },
  { name: 'an address beyond user space', body: ws([{ pid: 42, runs: [['0x200000000000000', 1]] }]), why: /tasks\.0\.runs\.0\.0/ },
  { name: 'a decimal address', body: ws([{ pid: 42, runs: [[4096, 1]] }]), why: /tasks\.0\.runs\.0\.0/ },
  { name: 'a zero page count', body: ws([{ pid: 42, runs: [okRun, ['0x7f0000002000', 0]] }]), why: /tasks\.0\.runs\.1\.1/ },
  { name: 'a negative page count', body: ws([{ pid: 42, runs: [['0x7f0000002000', -3]] }]), why: /tasks\.0\.runs\.0\.1/ },
  { name: "a negative task's pages", body: ws([{ pid: 42, pages: -1, runs: [okRun] }]), why: /tasks\.0\.pages/ },
  { name: 'an absurd pid', body: ws([{ pid: 2 ** 40, runs: [okRun] }]), why: /tasks\.0\.pid/ },
  { name: 'pid 0', body: ws([{ pid: 0, runs: [okRun] }]), why: /tasks\.0\.pid/ },
  { name: 'a negative pid', body: ws([{ pid: -7, runs: [okRun] }]), why: /tasks\.0\.pid/ },
  { name: 'a pid listed twice', body: ws([{ pid: 42, runs: [okRun] }, { pid: 42, runs: [okRun] }]), why: /pid 42 is listed twice/ },
]

test('bad working-set files: one line naming the file, exit 1, before listening', async (t) => {
  const dir = join(w.dir, 'bad-ws')
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir)
  for (const [i, bad] of badFiles.entries()) {
    const file = join(dir, `ws-${i}.json`)
    if (bad.body !== undefined) writeFileSync(file, bad.body)
    rmSync(join(w.images, 'lazy-pages.socket'), { force: true })
    const r = await runDaemon(['--prefetch-ws', file])
    t.is(r.code, 1, `${bad.name}: exit 1: ${r.stderr}`)
    t.false(r.ready, `${bad.name}: never ready`)
    t.false(existsSync(join(w.images, 'lazy-pages.socket')), `${bad.name}: never listened`)
    const lines = r.stderr.trim().split('\n')
    t.is(lines.length, 1, `${bad.name}: one line: ${r.stderr}`)
    t.true(lines[0].startsWith(`lazy-pages: ${file}: `), `${bad.name}: names the file: ${lines[0]}`)
    t.regex(lines[0], bad.why, bad.name)
    t.notRegex(r.stderr, /panick|RUST_BACKTRACE|at .*\.js:\d+|ZodError/)
  }
})

test('--record-ws: an unwritable place, or the file --prefetch-ws reads, is refused before listening', async (t) => {
  const cases = [
    { args: ['--record-ws', '/nonexistent-dir/ws.json'], why: /^lazy-pages: --record-ws \/nonexistent-dir\/ws.json: cannot write there: ENOENT$/ },
    { args: ['--record-ws', 'same.json', '--prefetch-ws', './same.json'], why: /^lazy-pages: --record-ws and --prefetch-ws both name same.json: / },
  ]
  for (const c of cases) {
    rmSync(join(w.images, 'lazy-pages.socket'), { force: true })
    const r = await runDaemon(c.args)
    t.is(r.code, 1, r.stderr)
    t.false(r.ready)
    t.false(existsSync(join(w.images, 'lazy-pages.socket')))
    t.regex(r.stderr.trim(), c.why)
  }
})

test('a bad working-set file under -d: the foreground process reports it, no pidfile', async (t) => {
  const work = join(w.dir, 'bad-ws-detached')
  rmSync(work, { recursive: true, force: true })
  mkdirSync(work)
  writeFileSync(join(work, 'ws.json'), ws([{ pid: 42, runs: [['0x1001', 1]] }]))
  const child = spawn(process.execPath, [CLI, '-D', w.images, '-W', work, '-d', '--pidfile', 'lazy.pid', '--prefetch-ws', 'ws.json'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr!.on('data', (d) => (stderr += d))
  const code = await within(new Promise<number | null>((resolve) => child.on('close', resolve)), 30_000, '-d to return')
  t.is(code, 1, stderr)
  t.is(stderr.trim().split('\n').length, 1, stderr)
  t.true(stderr.startsWith(`lazy-pages: ${join(work, 'ws.json')}: `), stderr)
  // lazy-pages.lock stays by design (one daemon per work dir, never unlinked).
  t.deepEqual(readdirSync(work).filter((f) => f !== 'lazy-pages.lock').sort(), ['ws.json'], 'no pidfile, no socket')
})

test('a process tree: each task records its own working set under its dump pid, and gets it back', async (t) => {
  const tree = await Workload.start('ws-tree', ['tree', '--mib', '16', '--children', '2'])
  try {
    const sums = await checksums(tree)
    const dumped = await dumpAndWait(tree)
    const pids = dumped.tasks.map((x: { pid: number }) => x.pid).sort((a: number, b: number) => a - b)
    // Record: every task verifies (reads all its memory) while only faults are served.
    rmSync(join(tree.images, 'stats.json'), { force: true })
    const rec = await startDaemon(tree.images, ['--record-ws', 'ws.json', '--fill-delay', '4000'])
    try {
      t.is(await startLazyRestore(tree.images).done, 0, restoreLogTail(tree.images))
      await assertMemoryAsDumped(t, tree, sums)
      t.is((await within(rec.exit, 60_000, 'the recording daemon')).code, 0, rec.stderr())
    } finally {
      rec.child.kill('SIGKILL')
    }
    const recStats = readStats(tree.images)
    t.true(recStats.reconciles)
    const ws: WsFile = JSON.parse(readFileSync(join(tree.images, 'ws.json'), 'utf8'))
    t.deepEqual(ws.tasks.map((x) => x.pid).sort((a, b) => a - b), pids, 'one working set per dump task, under its dump pid')
    for (const task of ws.tasks) {
      const st = recStats.tasks.find((x) => x.pid === task.pid)!
      t.is(task.pages, st.faulted, `pid ${task.pid}: every fault recorded once`)
    }
    await killAndWait(tree, dumped)

    rmSync(join(tree.images, 'stats.json'), { force: true })
    const pre = await startDaemon(tree.images, ['--prefetch-ws', 'ws.json'])
    try {
      t.is(await startLazyRestore(tree.images).done, 0, restoreLogTail(tree.images))
      const exit = await within(pre.exit, 60_000, 'the prefetching daemon')
      assertCleanSummary(t, exit, pre.stderr(), readStats(tree.images))
    } finally {
      pre.child.kill('SIGKILL')
    }
    const preStats = readStats(tree.images)
    t.is(preStats.total.faulted + preStats.total.background, dumped.total.lazy)
    for (const task of ws.tasks) {
      const st = preStats.tasks.find((x) => x.pid === task.pid)!
      t.log(`pid ${task.pid}: ${task.pages} in the working set, ${st.prefetched} prefetched, ${st.faulted} faulted of ${st.total}`)
      t.true(st.prefetched > 0.9 * task.pages && st.prefetched <= task.pages, `pid ${task.pid}: ${st.prefetched} of ${task.pages} prefetched`)
    }
    await assertMemoryAsDumped(t, tree, sums)
  } finally {
    tree.kill()
  }
})
