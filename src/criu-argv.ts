// Reads the daemon's and the page server's options as `criu` does (getopt over its
// table, config files first, the command line last) and hands commander one plain
// argv of the options this command acts on. So every spelling criu takes is taken
// here: `-dv4`, `--images-dir=D`, unique prefixes (`--images D`), `--no-daemon`,
// `--restore-detached`, options anywhere on the line, CRIU's config files. A CRIU
// option the command has no use for is dropped with a debug line; values of the
// options it acts on are checked by commander (config values here, to name the line).
import type { Command, Option } from 'commander'

import { normalizeVerbosity, DEFAULT_VERBOSITY } from './argv'
import { configSources, readConfig, type Note } from './criu-config'
import { CONFIG_OPTIONS, CRIU_OPTIONS, criuOption, criuShort, criuSpellings, REFUSED, type Arity } from './criu-options'
import { UserError } from './errors'

export type { Note }

/** Our commands that are not CRIU's: their options are ours alone, read by commander. */
const OWN_COMMANDS = new Set(['images', 'rebase', 'split'])

export interface Resolved {
  /** For commander: `[page-server] --opt value ...`. */
  args: string[]
  /** Lines to log once the log is open (ignored options, config files read). */
  notes: Note[]
}

/** One option occurrence, its name resolved to a full long name. */
interface Item {
  name: string
  /** undefined: given without a value (a flag, or an optional value left out). */
  value?: string
  /** The spelling the user wrote, for messages. */
  spelled: string
  /** "FILE:LINE" for config files; undefined on the command line. */
  origin?: string
}

export function resolveArgv(argv: readonly string[], program: Command, env: NodeJS.ProcessEnv = process.env): Resolved {
  const command = findCommand(argv, program)
  if (command && OWN_COMMANDS.has(command)) return { args: normalizeVerbosity(argv), notes: [] }
  if (command && command !== 'page-server' && command !== 'help') throw new UserError(`unexpected argument '${command}'`)
  const cmd = command === 'page-server' ? program.commands.find((c) => c.name() === 'page-server')! : program
  const label = command ? `lazy-pages ${command}` : 'lazy-pages'
  const notes: Note[] = []
  const other = cmd === program ? program.commands.find((c) => c.name() === 'page-server')! : program
  const cli = scan(argv.map((word) => ({ word })), [cmd], command)

  const help = cli.some((i) => i.name === 'help')
  const config = [...cli].reverse().find((i) => i.name === 'config')?.value
  const noDefault = cli.some((i) => i.name === 'no-default-config')
  const fromFiles: Item[] = []
  // As criu: asking for help reads no config file (a broken one must not hide it).
  if (!help) {
    for (const source of configSources(config, noDefault, env, notes)) {
      // A file may hold options of our other command too (one file for both): dropped below.
      fromFiles.push(...scan(readConfig(source, notes), [cmd, other], undefined, true))
    }
  }

  const state = new Map<string, { value: string | boolean; origin?: string }>()
  let verbosity: { level: number; origin?: string; bad?: string } | undefined
  for (const item of [...fromFiles, ...cli]) {
    const where = item.origin ? ` (${item.origin})` : ''
    const shown = item.value === undefined ? item.spelled : `${item.spelled} ${item.value}`
    if (CONFIG_OPTIONS.has(item.name)) {
      if (item.origin) notes.push({ level: 'debug', message: `${item.origin}: --${item.name} is only read from the command line; ignored` })
      continue
    }
    if (REFUSED[item.name]) throw new UserError(`${item.spelled}${where}: ${REFUSED[item.name]}`)
    if (item.name === 'verbosity') {
      verbosity = foldVerbosity(verbosity?.bad ? undefined : verbosity?.level, item)
      continue
    }
    const criu = criuOption(item.name)
    const negated = !criu && item.name.startsWith('no-') && criuOption(item.name.slice(3))?.negatable
    const base = negated ? criuOption(item.name.slice(3))! : criu
    const name = base?.sameAs ?? base?.name ?? item.name
    if (name === 'help' || name === 'version' || ownOption(cmd, name) || ownOption(cmd, `no-${name}`)) {
      state.set(name, { value: negated ? false : (item.value ?? true), origin: item.origin })
    } else if (base) {
      notes.push({ level: 'debug', message: `${shown}${where}: a criu option with no meaning for ${label}; ignored` })
    } else {
      // Ours but another command's (only a config file gets here: `scan` refused it on the command line).
      notes.push({ level: 'debug', message: `${shown}${where}: not an option of ${label}; ignored` })
    }
  }

  const args: string[] = []
  if (state.get('version')?.value === true) args.push('--version')
  if (command) args.push(command)
  for (const [name, { value, origin }] of state) {
    if (name === 'version') continue
    if (value === false) {
      if (ownOption(cmd, `no-${name}`)) args.push(`--no-${name}`)
      else state.delete(name) // off is the default
      continue
    }
    const opt = ownOption(cmd, name)
    if (value === true) {
      if (opt?.required) throw new UserError(`--${name}${origin ? ` (${origin})` : ''} needs a value`)
      args.push(`--${name}`)
      continue
    }
    if (opt && !opt.required && !opt.optional) {
      // criu drops a value written after a flag in a config file; say so.
      notes.push({ level: 'warn', message: `${origin}: --${name} takes no value; "${value}" ignored` })
      args.push(`--${name}`)
      continue
    }
    if (origin && opt) checkValue(opt, value, origin)
    args.push(`--${name}`, value)
  }
  if (verbosity) {
    if (verbosity.bad !== undefined) {
      if (verbosity.origin) throw new UserError(`${verbosity.origin}: --verbosity ${verbosity.bad}: must be a non-negative integer`)
      args.push('--verbosity', verbosity.bad) // commander says what is wrong with it
    } else {
      args.push(`--verbosity=${verbosity.level}`)
    }
  }
  return { args, notes }
}

/** The first word that is not an option or an option's value: our subcommand, if any. */
function findCommand(argv: readonly string[], program: Command): string | undefined {
  const sub = program.commands.find((c) => c.name() === 'page-server')!
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]
    if (word === '--') return undefined
    if (!word.startsWith('-') || word === '-') return word
    if (word.startsWith('--')) {
      if (word.includes('=')) continue
      const arity = longArity(word.slice(2), program) ?? longArity(word.slice(2), sub)
      if (arity === 'required') i++
      else if (/^--verb/.test(word) && /^\d+$/.test(argv[i + 1] ?? '')) i++
      continue
    }
    // A cluster of short options: the first one that takes a value ends it.
    for (let k = 1; k < word.length; k++) {
      const arity = shortArity(word[k], program)
      if (arity === 'none') continue
      if (arity === 'required' && k === word.length - 1) i++
      break
    }
  }
  return undefined
}

/** Arity of a possibly abbreviated long option; undefined if unknown or ambiguous. */
function longArity(typed: string, cmd: Command): Arity | undefined {
  try {
    return arityOf(resolveLong(typed, [cmd], ''), cmd)
  } catch {
    return undefined
  }
}

/**
 * Reads words as getopt would with CRIU's table plus `cmd`'s own options. On the command
 * line (`command` given) a stray word or unknown option is an error; in a config file
 * an unknown option is an error too, naming the line.
 */
function scan(words: ReadonlyArray<{ word: string; origin?: string }>, cmds: Command[], command: string | undefined, fromFile = false): Item[] {
  const items: Item[] = []
  let commandSeen = false
  for (let i = 0; i < words.length; i++) {
    const { word, origin } = words[i]
    const where = origin ? `${origin}: ` : ''
    const next = () => {
      const w = words[i + 1]
      if (!w || (fromFile && w.origin !== origin)) return undefined
      i++
      return w.word
    }
    if (word === '--' && !fromFile) {
      if (i + 1 < words.length) throw new UserError(`unexpected argument '${words[i + 1].word}'`)
      break
    }
    if (!word.startsWith('-') || word === '-') {
      if (!fromFile && word === command && !commandSeen) {
        commandSeen = true
        continue
      }
      throw new UserError(`${where}unexpected argument '${word}'`)
    }
    if (word.startsWith('--')) {
      const eq = word.indexOf('=')
      const typed = word.slice(2, eq < 0 ? undefined : eq)
      const name = resolveLong(typed, cmds, where)
      const arity = cmds.map((c) => arityOf(name, c)).find((a) => a !== undefined)!
      let value = eq < 0 ? undefined : word.slice(eq + 1)
      if (value !== undefined && arity === 'none') throw new UserError(`${where}option '--${name}' takes no value (got '${word}')`)
      if (value === undefined && arity === 'required') {
        value = next()
        if (value === undefined) throw new UserError(`${where}option '--${name}' needs a value`)
      }
      // `--verbosity 4`: criu's getopt would leave the 4 alone; we and its config files mean 4.
      if (value === undefined && !fromFile && name === 'verbosity' && /^\d+$/.test(words[i + 1]?.word ?? '')) value = next()
      // In a config file the rest of the line is the value ("manage-cgroups soft"), kept for a
      // flag only to warn about it; criu's getopt quietly drops such a word.
      if (value === undefined && arity !== 'required' && fromFile && words[i + 1]?.origin === origin) value = next()
      items.push({ name, value, spelled: `--${typed}`, origin })
      continue
    }
    for (let k = 1; k < word.length; k++) {
      const letter = word[k]
      const arity = shortArity(letter, cmds[0])
      if (arity === undefined) throw new UserError(`${where}unknown option '-${letter}'`)
      const name = criuShort(letter)?.name ?? ownShort(cmds[0], letter)!
      const spelled = `-${letter}`
      if (arity === 'none') {
        items.push({ name, spelled, origin })
        continue
      }
      let value: string | undefined = word.slice(k + 1)
      if (value === '') value = arity === 'required' ? next() : undefined
      if (value === undefined && arity === 'required') throw new UserError(`${where}option '-${letter}' needs a value`)
      items.push({ name, value, spelled, origin })
      break
    }
  }
  return items
}

/** Exact name, else a prefix of exactly one option: CRIU's spellings first, then ours. */
function resolveLong(typed: string, cmds: Command[], where: string): string {
  const criu = criuSpellings()
  const own = [...new Set(cmds.flatMap(ownLongs))]
  if (criu.includes(typed) || own.includes(typed)) return typed
  for (const names of [criu, own]) {
    const hits = names.filter((n) => n.startsWith(typed))
    if (hits.length === 1) return hits[0]
    if (hits.length > 1) throw new UserError(`${where}option '--${typed}' is ambiguous: ${hits.map((h) => `--${h}`).join(', ')}`)
  }
  throw new UserError(`${where}unknown option '--${typed}'`)
}

function arityOf(name: string, cmd: Command): Arity | undefined {
  const criu = criuOption(name) ?? (name.startsWith('no-') ? criuOption(name.slice(3)) : undefined)
  if (criu) return name === criu.name ? criu.arity : 'none'
  const own = ownOption(cmd, name)
  if (own) return own.required ? 'required' : own.optional ? 'optional' : 'none'
  return undefined
}

function shortArity(letter: string, cmd: Command): Arity | undefined {
  const criu = criuShort(letter)
  if (criu) return criu.arity
  const own = cmd.options.find((o) => o.short === `-${letter}`)
  return own ? (own.required ? 'required' : own.optional ? 'optional' : 'none') : undefined
}

function ownShort(cmd: Command, letter: string): string | undefined {
  return cmd.options.find((o) => o.short === `-${letter}`)?.long?.slice(2)
}

function ownLongs(cmd: Command): string[] {
  return cmd.options.flatMap((o) => (o.long ? [o.long.slice(2)] : []))
}

function ownOption(cmd: Command, name: string): Option | undefined {
  return cmd.options.find((o) => o.long === `--${name}`)
}

/** CRIU's rules: `-v` adds one, `-vvv` three, `-v4`/`--verbosity=4` set 4; from warnings up. */
function foldVerbosity(level: number | undefined, item: Item): { level: number; origin?: string; bad?: string } {
  const v = item.value
  if (v === undefined) return { level: (level ?? DEFAULT_VERBOSITY) + 1, origin: item.origin }
  if (/^v+$/.test(v) && item.spelled === '-v') return { level: (level ?? DEFAULT_VERBOSITY) + v.length + 1, origin: item.origin }
  if (/^\d+$/.test(v)) return { level: Number(v), origin: item.origin }
  return { level: level ?? DEFAULT_VERBOSITY, origin: item.origin, bad: v }
}

/** A value from a config file, checked by the option's own parser so the error names the line. */
function checkValue(opt: Option, value: string, origin: string): void {
  try {
    if (opt.argChoices && !opt.argChoices.includes(value)) throw new Error(`allowed: ${opt.argChoices.join(', ')}`)
    opt.parseArg?.(value, undefined)
  } catch (err) {
    throw new UserError(`${origin}: ${opt.long} ${value}: ${(err as Error).message}`)
  }
}

/** The --help section on CRIU compatibility, from what `cmd` defines. */
export function compatibilityHelp(cmd: Command, label: string): string {
  const skip = new Set(['help', 'version', 'restore-detached', ...CONFIG_OPTIONS])
  const honoured = CRIU_OPTIONS.filter((o) => !skip.has(o.name) && ownOption(cmd, o.name)).map((o) => (o.short ? `-${o.short}|--${o.name}` : `--${o.name}`))
  const acted = [...honoured.map((h) => (h === '-d|--daemon' ? '-d|--daemon|--restore-detached' : h)), '--config', '--no-default-config', '-h', '-V']
  return [
    '',
    `CRIU options: ${label} takes every option criu 4.1/4.2 takes, spelled as criu takes them`,
    '(-dv4, --images-dir=DIR, unique prefixes, --no-NAME, anywhere on the line).',
    ...wrap(`Acted on: ${acted.join(' ')}.`, 100),
    `Refused (not supported): ${Object.keys(REFUSED).map((n) => `--${n}`).join(' ')}.`,
    'Every other criu option is accepted and ignored, with one debug line (-v4).',
    '',
    'Config files, as criu reads them (later wins, the command line last): /etc/criu/default.conf and',
    '~/.criu/default.conf (not with --config or --no-default-config), $CRIU_CONFIG_FILE, --config FILE.',
    'One option per line without its dashes, then its value ("quoted" if it has blanks); # starts a comment.',
  ].join('\n')
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = []
  let line = ''
  for (const word of text.split(' ')) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line)
      line = word
    } else {
      line = line ? `${line} ${word}` : word
    }
  }
  return line ? [...lines, line] : lines
}
