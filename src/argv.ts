// CRIU spells verbosity several ways (-v, -vvv, -v4, --verbosity=4, --verbosity 4)
// and scripts written for `criu lazy-pages` must run unchanged. Commander cannot
// express "-v counts but -v4 sets", so verbosity flags are folded into one
// --verbosity=N before commander sees argv.

/** CRIU's default log level: 2 = warnings. */
export const DEFAULT_VERBOSITY = 2

export function normalizeVerbosity(argv: readonly string[]): string[] {
  const out: string[] = []
  let level: number | undefined
  // Where the first verbosity flag stood: the folded flag goes there, so it
  // belongs to the same command (program or subcommand) as the original.
  let at = -1
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--') {
      out.push(...argv.slice(i))
      break
    }
    const counted = /^-(v+)$/.exec(arg)
    if (counted) {
      if (at < 0) at = out.length
      level = (level ?? DEFAULT_VERBOSITY) + counted[1].length
      continue
    }
    const numbered = /^-v(\d+)$/.exec(arg)
    if (numbered) {
      if (at < 0) at = out.length
      level = Number(numbered[1])
      continue
    }
    const long = /^--verbosity(?:=(.*))?$/.exec(arg)
    if (long) {
      const value = long[1] ?? argv[++i]
      if (value === undefined || !/^\d+$/.test(value)) {
        out.push('--verbosity', value ?? '') // let commander report the bad value
        continue
      }
      if (at < 0) at = out.length
      level = Number(value)
      continue
    }
    out.push(arg)
  }
  if (level !== undefined) out.splice(at, 0, `--verbosity=${level}`)
  return out
}
