// Latency summaries: quantiles over microsecond samples.
export interface Quantiles {
  samples: number
  p50Us: number
  p99Us: number
  maxUs: number
}

export function quantile(sorted: number[], q: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.round((sorted.length - 1) * q))] : NaN
}

export function quantiles(us: number[]): Quantiles {
  const s = [...us].sort((a, b) => a - b)
  return { samples: s.length, p50Us: quantile(s, 0.5), p99Us: quantile(s, 0.99), maxUs: s.length ? s[s.length - 1] : NaN }
}

/** Best (lowest), median and worst (highest) of a contender's rounds. */
export interface Spread {
  best: number
  median: number
  worst: number
}

export function spread(xs: number[]): Spread {
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
  return { best: s[0] ?? NaN, median: s.length ? mid : NaN, worst: s.at(-1) ?? NaN }
}

/**
 * Paired rounds: how many of the rounds both contenders ran in had `ours` at or below
 * `theirs` (same index = same round; NaN, a round that measured nothing, is left out).
 * Interleaving puts both in the same minute of the VM's drift, so k of n says whether a
 * difference of medians is more than that drift.
 */
export function pairedWins(ours: number[], theirs: number[]): { wins: number; of: number } {
  let wins = 0
  let of = 0
  for (let i = 0; i < Math.min(ours.length, theirs.length); i++) {
    if (Number.isNaN(ours[i]) || Number.isNaN(theirs[i])) continue
    of++
    if (ours[i] <= theirs[i]) wins++
  }
  return { wins, of }
}

/** Rounds per contender: the full run, and `--quick`. */
export const roundsFor = (quick: boolean) => (quick ? 3 : 5)
