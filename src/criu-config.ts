// CRIU's configuration files: which are read, in what order, and their line syntax.
//
// Order (later wins, the command line last): /etc/criu/default.conf, then
// $HOME/.criu/default.conf (neither with --no-default-config or --config), then the file
// named by $CRIU_CONFIG_FILE, then --config FILE. A line holds one option without its
// dashes and, after blanks, its value; a value with blanks goes in double quotes (\" for
// a quote inside); '#' starts a comment. Missing default files are skipped, as CRIU
// does; a missing --config file is an error, a missing $CRIU_CONFIG_FILE a warning.
// A file there that is no regular file (a FIFO would hang us) or more than 1 MiB is an
// error naming it, wherever it comes from (option-file.ts).
import { join } from 'node:path'

import { UserError } from './errors'
import { MAX_CONFIG_BYTES, OptionFileError, readOptionFile } from './option-file'

export const GLOBAL_CONFIG = '/etc/criu/default.conf'
export const USER_CONFIG = join('.criu', 'default.conf')

export interface Note {
  level: 'debug' | 'warn'
  message: string
}

/** One command-line word taken from a config file, and where it came from. */
export interface ConfigWord {
  word: string
  /** "FILE:LINE" */
  origin: string
}

interface Source {
  path: string
  /** What a missing or unreadable file means. */
  missing: 'skip' | 'warn' | 'error'
}

/** The files to read, in order, given the command line's --config/--no-default-config. */
export function configSources(config: string | undefined, noDefaultConfig: boolean, env: NodeJS.ProcessEnv, notes: Note[]): Source[] {
  const sources: Source[] = []
  if (!noDefaultConfig && config === undefined) {
    sources.push({ path: GLOBAL_CONFIG, missing: 'skip' })
    if (env.HOME) sources.push({ path: join(env.HOME, USER_CONFIG), missing: 'skip' })
    else notes.push({ level: 'debug', message: `no $HOME: ~/${USER_CONFIG} not read` })
  }
  if (env.CRIU_CONFIG_FILE) sources.push({ path: env.CRIU_CONFIG_FILE, missing: 'warn' })
  if (config !== undefined) sources.push({ path: config, missing: 'error' })
  return sources
}

/** Reads one config file into command-line words. */
export function readConfig(source: Source, notes: Note[]): ConfigWord[] {
  let text: string
  try {
    text = readOptionFile(source.path, MAX_CONFIG_BYTES)
  } catch (err) {
    const bad = err as OptionFileError
    if (!bad.code) throw new UserError(`${source.missing === 'error' ? '--config ' : ''}${source.path}: ${bad.message}`)
    const why = bad.code
    if (source.missing === 'error') throw new UserError(`--config ${source.path}: cannot read it: ${why}`)
    if (source.missing === 'warn') notes.push({ level: 'warn', message: `CRIU_CONFIG_FILE ${source.path}: cannot read it (${why}); going on without it` })
    else if (why !== 'ENOENT') notes.push({ level: 'debug', message: `${source.path}: cannot read it (${why}); skipped` })
    return []
  }
  notes.push({ level: 'debug', message: `reading options from ${source.path}` })
  return parseConfig(text, source.path)
}

/** The words of a config file's text (file name for messages only). */
export function parseConfig(text: string, file: string): ConfigWord[] {
  const words: ConfigWord[] = []
  text.split('\n').forEach((line, i) => {
    const origin = `${file}:${i + 1}`
    for (const word of parseLine(line, origin)) words.push({ word, origin })
  })
  return words
}

function parseLine(line: string, origin: string): string[] {
  const text = line.replace(/^\s+/, '')
  if (text === '' || text.startsWith('#')) return []
  const split = /^([^\s#]+)(.*)$/s.exec(text)
  if (!split) throw new UserError(`${origin}: expected an option name, got "${text.trim()}"`)
  const name = `--${split[1]}`
  const rest = split[2].replace(/^\s+/, '')
  if (rest === '' || rest.startsWith('#')) return [name]
  if (!rest.startsWith('"')) {
    // As in CRIU, '#' ends an unquoted value even without a blank before it.
    const value = rest.split('#')[0].trimEnd()
    if (/\s/.test(value)) throw new UserError(`${origin}: more than one value for ${name}; put a value with blanks in double quotes`)
    return [name, value]
  }
  let value = ''
  let i = 1
  for (; i < rest.length && rest[i] !== '"'; i++) {
    if (rest[i] === '\\' && rest[i + 1] === '"') i++
    value += rest[i]
  }
  if (i >= rest.length) throw new UserError(`${origin}: the quoted value of ${name} has no closing quote`)
  const after = rest.slice(i + 1).trim()
  if (after !== '' && !after.startsWith('#')) throw new UserError(`${origin}: unexpected "${after}" after the quoted value of ${name}`)
  return [name, value]
}
