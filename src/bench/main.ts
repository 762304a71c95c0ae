// `npm run bench [-- --quick]`: fill and fault-latency scenarios, ours vs `criu lazy-pages`
// vs the raw userfaultfd probe, all on the same dumps in the same run. See bench/README.md.
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, release } from 'node:os'
import { join } from 'node:path'

import { fillScenario } from './fill'
import { latencyScenario } from './latency'
import { drawPng } from './png'
import { json, markdown, type BenchResult } from './report'
import { RESULTS } from './paths'

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick')
  const log = (s: string) => process.stderr.write(`bench: ${s}\n`)
  const sizes = quick ? [256, 1024] : [1024, 4096]
  const reps = quick ? 1 : 2
  const result: BenchResult = { date: new Date().toISOString(), quick, host: { cpus: cpus().length, kernel: release() }, fill: [] }
  for (const mib of sizes) result.fill.push(await fillScenario(mib, reps, log))
  // The latency process is large so that our fill is still running while it touches.
  if (!process.argv.includes('--fill-only')) result.latency = await latencyScenario(quick ? 1024 : 4096, quick ? 2000 : 4000, log)
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
