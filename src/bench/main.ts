// `npm run bench [-- --quick] [-- --only fill,latency,remote,remote-fast,ws,scale,tls,remote-wan]`: ours vs `criu lazy-pages`
// (and the raw userfaultfd probe where it applies), on the same dumps in the same run.
// See bench/README.md (remote-wan takes --wan-* flags for its grid and size: src/bench/wan.ts).
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, release } from 'node:os'
import { join } from 'node:path'

import { fillScenario } from './fill'
import { latencyScenario } from './latency'
import { drawPng } from './png'
import { remoteScenario } from './remote'
import { remoteFastScenario } from './remote-fast'
import { tlsScenario } from './remote-tls'
import { json, markdown, type BenchResult } from './report'
import { RESULTS } from './paths'
import { scaleScenario } from './scale'
import { roundsFor } from './stats'
import { wanConfig, wanScenario } from './wan'
import { workingSetScenario } from './working-set'

const SCENARIOS = ['fill', 'latency', 'remote', 'remote-fast', 'ws', 'scale', 'tls', 'remote-wan'] as const

function chosen(): Set<string> {
  const i = process.argv.indexOf('--only')
  if (i < 0) return new Set(SCENARIOS)
  const names = (process.argv[i + 1] ?? '').split(',')
  const bad = names.filter((n) => !(SCENARIOS as readonly string[]).includes(n))
  if (bad.length || !names.length) throw new Error(`--only takes a comma-separated list of ${SCENARIOS.join(', ')}; got ${process.argv[i + 1]}`)
  return new Set(names)
}

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick')
  const only = chosen()
  const log = (s: string) => process.stderr.write(`bench: ${s}\n`)
  const sizes = quick ? [256, 1024] : [1024, 4096]
  const rounds = roundsFor(quick)
  // Parsed first: a bad flag fails before an hour of other scenarios, not after.
  const wan = only.has('remote-wan') ? wanConfig(process.argv, quick, rounds) : undefined
  const result: BenchResult = { date: new Date().toISOString(), quick, host: { cpus: cpus().length, kernel: release() }, fill: [] }
  if (only.has('fill')) for (const mib of sizes) result.fill.push(await fillScenario(mib, rounds, log))
  // The latency process is large so that our fill is still running while it touches.
  if (only.has('latency')) result.latency = await latencyScenario(quick ? 1024 : 4096, quick ? 2000 : 4000, rounds, log)
  // 1 GiB at 1 Gbit/s is ~9 s per client: long enough for the touches to meet a full link.
  if (only.has('remote')) result.remote = await remoteScenario(quick ? 512 : 1024, quick ? 1000 : 2000, rounds, log)
  // 1 GiB both ways: the target is about throughput once the pipeline is full.
  if (only.has('remote-fast')) result.remoteFast = await remoteFastScenario(1024, rounds, log)
  if (only.has('ws')) result.workingSet = await workingSetScenario(quick ? 1024 : 2048, rounds, log)
  if (only.has('tls')) result.tls = await tlsScenario(quick ? 512 : 1024, quick ? 1000 : 2000, rounds, log)
  if (only.has('scale')) result.scale = await scaleScenario(quick ? 128 : 256, quick ? 300 : 500, quick ? [1, 2, 4] : [1, 2, 4, 8], rounds, log)
  if (wan) result.remoteWan = await wanScenario(wan, log)
  const md = markdown(result)
  process.stdout.write(md)
  mkdirSync(RESULTS, { recursive: true })
  writeFileSync(join(RESULTS, 'latest.md'), md)
  writeFileSync(join(RESULTS, 'latest.json'), json(result))
  writeFileSync(join(RESULTS, 'latest.png'), drawPng(result))
  log(`wrote ${RESULTS}/latest.{md,json,png}`)
}

main().catch((e) => {
  process.stderr.write(`bench: ${e instanceof Error ? e.stack : e}\n`)
  process.exit(1)
})
