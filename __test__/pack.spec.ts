// The npm tarball is what users install: it must carry the prebuilt addon and
// work with no Rust toolchain on PATH.
import test from 'ava'
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'

import { dump } from './helpers/criu'
import { ROOT, SCRATCH } from './helpers/paths'
import { run } from './helpers/proc'
import { Workload } from './helpers/workload'

test('npm pack tarball installs and runs without Rust', async (t) => {
  const out = join(SCRATCH, 'pack')
  rmSync(out, { recursive: true, force: true })
  mkdirSync(join(out, 'app'), { recursive: true })
  const npm = join(dirname(process.execPath), 'npm')
  const packed = await run(npm, ['pack', '--pack-destination', out, '--silent'], { cwd: ROOT })
  t.is(packed.code, 0, packed.stderr)
  const tarball = readdirSync(out).find((f) => f.endsWith('.tgz'))
  t.truthy(tarball)
  const listing = await run('tar', ['tzf', join(out, tarball!)])
  t.regex(listing.stdout, /package\/lazy-pages\.linux-x64-gnu\.node/)
  t.regex(listing.stdout, /package\/dist\/cli\.js/)
  t.notRegex(listing.stdout, /package\/(crates|target|src\/|__test__)/)

  // No cargo, rustc or compilers reachable: only node and npm's own directory.
  const env = { ...process.env, PATH: `${dirname(process.execPath)}:/usr/bin:/bin` }
  delete env.CARGO_HOME
  delete env.RUSTUP_HOME
  const cargo = await run('sh', ['-c', 'command -v cargo || echo none'], { env })
  t.is(cargo.stdout.trim(), 'none')
  writeFileSync(join(out, 'app', 'package.json'), '{"name":"app","version":"1.0.0","private":true}\n')
  const installed = await run(npm, ['install', '--no-audit', '--no-fund', join(out, tarball!)], { cwd: join(out, 'app'), env, timeoutMs: 300_000 })
  t.is(installed.code, 0, installed.stderr)

  const npx = join(dirname(process.execPath), 'npx')
  const version = await run(npx, ['lazy-pages', '--version'], { cwd: join(out, 'app'), env })
  t.is(version.code, 0, version.stderr)
  t.regex(version.stdout, /^\d+\.\d+\.\d+/)

  const w = await Workload.start('pack-dump', ['dense', '--mib', '4'])
  await dump(w.pid, w.images)
  const images = await run(npx, ['lazy-pages', 'images', '-D', w.images, '--json'], { cwd: join(out, 'app'), env })
  t.is(images.code, 0, images.stderr)
  const report = JSON.parse(images.stdout)
  t.is(report.tasks[0].pid, w.ready().pid)
  t.true(report.tasks[0].lazy >= 1024)
})
