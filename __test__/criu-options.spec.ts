// Reading options as criu does: every spelling in its table, config files and their
// order. No CRIU run here: what these argvs then do is in daemon-cli.spec.ts.
import test from 'ava'
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { buildProgram } from '../dist/cli'
import { resolveArgv } from '../dist/criu-argv'
import { parseConfig } from '../dist/criu-config'
import { CRIU_OPTIONS, REFUSED } from '../dist/criu-options'

/** Resolves `argv` with only the config files `env` names (no $HOME unless given). */
function resolve(argv: string[], env: NodeJS.ProcessEnv = {}) {
  return resolveArgv(argv, buildProgram(argv), env)
}

const debugLines = (r: { notes: Array<{ level: string; message: string }> }) => r.notes.filter((n) => n.level === 'debug' && /ignored/.test(n.message))

test('every option criu 4.1/4.2 takes is accepted by lazy-pages and lazy-pages page-server', (t) => {
  t.true(CRIU_OPTIONS.length >= 85, 'the whole table')
  for (const command of [[], ['page-server']]) {
    for (const o of CRIU_OPTIONS) {
      if (REFUSED[o.name] || o.name === 'config') continue
      const spellings = [`--${o.name}`, ...(o.negatable ? [`--no-${o.name}`] : []), ...(o.short ? [`-${o.short}`] : [])]
      for (const spelled of spellings) {
        const value = o.arity === 'required' && !spelled.startsWith('--no-') ? [o.name === 'port' ? '27000' : o.name === 'status-fd' ? '3' : 'x'] : []
        const argv = [...command, '--no-default-config', spelled, ...value]
        t.notThrows(() => resolve(argv), argv.join(' '))
      }
    }
  }
})

test('a criu option without meaning here is dropped with one debug line', (t) => {
  const r = resolve(['--no-default-config', '--tcp-established', '-j', '--manage-cgroups=soft', '-t', '42', '--external', 'mnt[]:m', '-x', '--cpu-cap'])
  t.deepEqual(r.args, [])
  t.is(debugLines(r).length, 7)
  t.regex(debugLines(r)[0].message, /--tcp-established: a criu option with no meaning for lazy-pages; ignored/)
  // The page server has no use for --page-server, the daemon none for --lazy-pages.
  t.deepEqual(resolve(['page-server', '--page-server', '--lazy-pages']).args, ['page-server', '--lazy-pages'])
  t.deepEqual(resolve(['--page-server', '--lazy-pages', '--address', 'h', '--port', '1']).args, ['--page-server', '--address', 'h', '--port', '1'])
  // A criu option is acted on as soon as the command defines it: the --tls options.
  t.deepEqual(resolve(['page-server', '--no-default-config', '--tls', '--tls-cacert', 'ca.pem', '--tls-no-cn-verify']).args, ['page-server', '--tls', '--tls-cacert', 'ca.pem', '--tls-no-cn-verify'])
  t.deepEqual(resolve(['--no-default-config', '--tls', '--no-tls']).args, [], '--no-tls, as criu')
})

test("criu's spellings of the options we act on keep their meaning", (t) => {
  t.deepEqual(resolve(['-D', '/d', '-dv4', '--pidfile', 'p']).args, ['--images-dir', '/d', '--daemon', '--pidfile', 'p', '--verbosity=4'])
  t.deepEqual(resolve(['--images-dir=/d', '--work-dir', '/w', '--log-file=l', '--status-fd', '3']).args, ['--images-dir', '/d', '--work-dir', '/w', '--log-file', 'l', '--status-fd', '3'])
  t.deepEqual(resolve(['-D/d', '-W/w', '-ol']).args, ['--images-dir', '/d', '--work-dir', '/w', '--log-file', 'l'])
  t.deepEqual(resolve(['--restore-detached']).args, ['--daemon'], '--restore-detached is --daemon in criu')
  t.deepEqual(resolve(['-d', '--no-daemon']).args, [], 'the last one wins')
  t.deepEqual(resolve(['--no-restore-detached', '-d']).args, ['--daemon'])
  t.deepEqual(resolve(['--images', '/d', '--pid', 'p']).args, ['--images-dir', '/d', '--pidfile', 'p'], 'unique prefixes, as getopt takes them')
  t.deepEqual(resolve(['-v', '-vv']).args, ['--verbosity=5'], 'counted from criu\'s default 2')
  t.deepEqual(resolve(['-v4', '-v']).args, ['--verbosity=5'])
  t.deepEqual(resolve(['--verbosity', '1']).args, ['--verbosity=1'])
  // Options on either side of the command word, as getopt permutes them.
  t.deepEqual(resolve(['-v4', 'page-server', '-D', '/d', '--lazy-pages', '--port', '0']).args, ['page-server', '--images-dir', '/d', '--lazy-pages', '--port', '0', '--verbosity=4'])
  t.deepEqual(resolve(['page-server', '-V']).args, ['--version', 'page-server'])
  t.deepEqual(resolve(['-h']).args, ['--help'])
  // Our own options are untouched; our own commands are left to commander.
  t.deepEqual(resolve(['--jobs', '3', '--chunk', '8', '--no-progress']).args, ['--jobs', '3', '--chunk-pages', '8', '--no-progress'])
  t.deepEqual(resolve(['split', '-D', 'x', '-o', 'y']).args, ['split', '-D', 'x', '-o', 'y'])
})

test('what criu would refuse, and what we cannot honour, is one clear error', (t) => {
  const error = (argv: string[]) => t.throws(() => resolve(['--no-default-config', ...argv]))!.message
  t.regex(error(['--no-such-option']), /unknown option '--no-such-option'/)
  t.regex(error(['-q']), /unknown option '-q'/)
  t.regex(error(['--no-d']), /option '--no-d' is ambiguous: --no-daemon, /)
  t.regex(error(['-D']), /option '-D' needs a value/)
  t.regex(error(['--tcp-close=yes']), /option '--tcp-close' takes no value/)
  t.regex(error(['stray']), /unexpected argument 'stray'/)
  t.regex(error(['--ps-socket', '3']), /--ps-socket: .*not supported/)
  t.regex(error(['page-server', '--stream']), /--stream: .*not supported/)
})

test('config file syntax: one option a line, values after blanks, quotes, comments', (t) => {
  const text = [
    '# a comment',
    'tcp-established',
    '   work-dir "/home/me/my \\"work\\" dir"   # quoted, with quotes inside',
    'verbosity 4',
    'no-restore-sibling   # comment after a flag',
    'log-file lazy.log#comment without a blank',
    '',
    'pidfile ""',
  ].join('\n')
  t.deepEqual(
    parseConfig(text, 'f').map((w: { word: string }) => w.word),
    ['--tcp-established', '--work-dir', '/home/me/my "work" dir', '--verbosity', '4', '--no-restore-sibling', '--log-file', 'lazy.log', '--pidfile', ''],
  )
  t.is(parseConfig(text, 'f')[1].origin, 'f:3')
  t.throws(() => parseConfig('work-dir "open', 'f'), { message: /^f:1: the quoted value of --work-dir has no closing quote/ })
  t.throws(() => parseConfig('\nwork-dir a b', 'f'), { message: /^f:2: more than one value for --work-dir/ })
  t.throws(() => parseConfig('work-dir "a" b', 'f'), { message: /^f:1: unexpected "b" after the quoted value/ })
})

test('config files: criu\'s order, --config and --no-default-config, the command line last', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lp-config-'))
  const file = (name: string, text: string) => {
    writeFileSync(join(dir, name), text)
    return join(dir, name)
  }
  mkdirSync(join(dir, 'home', '.criu'), { recursive: true })
  file('home/.criu/default.conf', 'images-dir /home\nverbosity 4\ntcp-established\ndaemon\nmanage-cgroups soft\n')
  const fromEnv = file('env.conf', 'images-dir /env\njobs 3\n')
  const explicit = file('explicit.conf', 'images-dir /explicit\nkeep-serving # the page server\'s: ignored here\n')
  const HOME = join(dir, 'home')
  const dirOf = (r: { args: string[] }) => r.args[r.args.indexOf('--images-dir') + 1]

  const home = resolve([], { HOME })
  t.deepEqual(home.args, ['--images-dir', '/home', '--daemon', '--verbosity=4'])
  t.regex(home.notes.map((n: { message: string }) => n.message).join('\n'), /reading options from .*home\/\.criu\/default\.conf/)
  t.regex(debugLines(home)[0].message, /--tcp-established \(.*default\.conf:3\): a criu option with no meaning/)
  t.is(dirOf(resolve([], { HOME, CRIU_CONFIG_FILE: fromEnv })), '/env', '$CRIU_CONFIG_FILE after the default files')
  t.true(resolve([], { HOME, CRIU_CONFIG_FILE: fromEnv }).args.includes('--daemon'), 'and on top of them')
  const withConfig = resolve(['--config', explicit], { HOME, CRIU_CONFIG_FILE: fromEnv })
  t.is(dirOf(withConfig), '/explicit', '--config last of the files')
  t.false(withConfig.args.includes('--daemon'), '--config: no default files')
  t.true(withConfig.args.includes('--jobs'), '--config: $CRIU_CONFIG_FILE still read')
  t.is(dirOf(resolve(['-D', '/cli', `--config=${explicit}`], { HOME, CRIU_CONFIG_FILE: fromEnv })), '/cli', 'the command line wins')
  t.deepEqual(resolve(['--no-default-config'], { HOME }).args, [], '--no-default-config')
  t.deepEqual(resolve(['-d', '--no-daemon'], { HOME }).args.includes('--daemon'), false, 'a command-line --no-X beats a file')
  t.deepEqual(resolve(['page-server', '--config', explicit]).args, ['page-server', '--images-dir', '/explicit', '--keep-serving'])

  t.throws(() => resolve(['--config', join(dir, 'missing.conf')]), { message: /--config .*missing\.conf: cannot read it: ENOENT/ })
  const env = resolve(['--no-default-config'], { CRIU_CONFIG_FILE: join(dir, 'missing.conf') })
  t.regex(env.notes.find((n: { level: string }) => n.level === 'warn')!.message, /CRIU_CONFIG_FILE .*missing\.conf: cannot read it/)
  const bad = file('bad.conf', '# fine\nport abc\n')
  t.throws(() => resolve(['--page-server', '--config', bad]), { message: /bad\.conf:2: --port abc: --port must be a/ })
  t.throws(() => resolve(['--config', file('unknown.conf', 'no-such-thing\n')]), { message: /unknown\.conf:1: unknown option '--no-such-thing'/ })
  // As criu: asking for help reads no file, so a broken one cannot hide it.
  t.deepEqual(resolve(['--config', bad, '--help']).args, ['--help'])
})
