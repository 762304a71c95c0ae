// Post-copy between two hosts: network namespaces joined by a veth pair whose
// sending side is shaped to 1 Gbit/s with tbf. Our page server runs on host A, our
// daemon on host B; `criu restore` reaches the daemon through its unix socket.
import test from 'ava'
import { join } from 'node:path'

import { tbfShaping } from '../dist/bench/netns'
import { assertCleanSummary, assertMemoryAsDumped, checksums } from './helpers/check'
import { lazyPages } from './helpers/cli'
import { lazyRestore } from './helpers/daemon'
import { dumpAndWait } from './helpers/dumped'
import { startPageServer } from './helpers/page-server'
import { run } from './helpers/proc'
import { Workload } from './helpers/workload'

const A = `lpA${process.pid}`
const B = `lpB${process.pid}`
const ADDR_A = '10.77.0.1'

async function sh(cmd: string) {
  const r = await run('sh', ['-c', cmd])
  if (r.code !== 0) throw new Error(`${cmd}: ${r.stderr}`)
}

test.before(async () => {
  await sh(`ip netns add ${A} && ip netns add ${B}`)
  await sh(`ip link add vA netns ${A} type veth peer name vB netns ${B}`)
  await sh(`ip -n ${A} addr add ${ADDR_A}/24 dev vA && ip -n ${B} addr add 10.77.0.2/24 dev vB`)
  await sh(`ip -n ${A} link set vA up && ip -n ${B} link set vB up && ip -n ${A} link set lo up && ip -n ${B} link set lo up`)
  // Pages flow A -> B: shape A's egress, as the bench does.
  await sh(`ip netns exec ${A} tc qdisc add dev vA root tbf ${tbfShaping(1).join(' ')}`)
})

test.after.always(async () => {
  await run('ip', ['netns', 'del', A])
  await run('ip', ['netns', 'del', B])
})

test('(d) two hosts over a 1 Gbit/s veth: every byte, at link speed', async (t) => {
  const w = await Workload.start('netns', ['tree', '--mib', '128', '--children', '1'])
  const before = await checksums(w)
  const report = await dumpAndWait(w)
  const out = join(w.dir, 'split')
  t.is((await lazyPages(['split', '-D', w.images, '-o', out])).code, 0)

  const server = await startPageServer(w.images, [], { address: ADDR_A, prefix: ['ip', 'netns', 'exec', A] })
  const port = server.port

  const started = Date.now()
  const { exit, stderr, stats } = await lazyRestore(out, ['--page-server', '--address', ADDR_A, '--port', String(port)], [], ['ip', 'netns', 'exec', B])
  const seconds = (Date.now() - started) / 1000
  assertCleanSummary(t, exit, stderr, stats)
  t.is(stats!.total.faulted + stats!.total.background, report.total.lazy)
  const bytes = report.total.lazy * 4096
  // 1 Gbit/s caps the transfer: it cannot be faster than the link allows.
  t.true(bytes * 8 / seconds <= 1.1e9, `${(bytes / 1e6).toFixed(0)} MB in ${seconds.toFixed(2)} s`)
  t.log(`${(bytes / 1e6).toFixed(0)} MB over 1 Gbit/s in ${seconds.toFixed(2)} s (${((bytes * 8) / seconds / 1e9).toFixed(2)} Gbit/s); fault p99 ${/p99 (\d+) us/.exec(stderr)?.[1]} us`)
  t.is(await server.exit, 0, server.output())
  await assertMemoryAsDumped(t, w, before)
  w.kill()
})
