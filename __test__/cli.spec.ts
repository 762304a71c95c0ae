import test from 'ava'

import { normalizeVerbosity } from '../dist/argv'
import { lazyPages } from './helpers/cli'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const pkg = require('../package.json')

test('--version prints the package version', async (t) => {
  const r = await lazyPages(['--version'])
  t.is(r.code, 0)
  t.is(r.stdout.trim(), pkg.version)
})

test('--help lists the CRIU spellings and the images command', async (t) => {
  const r = await lazyPages(['--help'])
  t.is(r.code, 0)
  for (const s of ['--images-dir', '--work-dir', '--daemon', '--pidfile', '--status-fd', '--log-file', '--verbosity', 'images']) {
    t.true(r.stdout.includes(s), s)
  }
})

test('CRIU verbosity spellings fold into one level', (t) => {
  t.deepEqual(normalizeVerbosity(['-v']), ['--verbosity=3'])
  t.deepEqual(normalizeVerbosity(['-vvv', '-D', 'x']), ['--verbosity=5', '-D', 'x'])
  t.deepEqual(normalizeVerbosity(['images', '-D', 'x', '-v4']), ['images', '-D', 'x', '--verbosity=4'])
  t.deepEqual(normalizeVerbosity(['-D', 'x', '-v', '-v']), ['-D', 'x', '--verbosity=4'])
  t.deepEqual(normalizeVerbosity(['-v4']), ['--verbosity=4'])
  t.deepEqual(normalizeVerbosity(['--verbosity=1']), ['--verbosity=1'])
  t.deepEqual(normalizeVerbosity(['--verbosity', '0']), ['--verbosity=0'])
  t.deepEqual(normalizeVerbosity(['-D', 'd']), ['-D', 'd'])
})

test('an unknown option is an error with a non-zero exit', async (t) => {
  const r = await lazyPages(['--no-such-option'])
  t.not(r.code, 0)
  t.regex(r.stderr, /unknown option/)
})
