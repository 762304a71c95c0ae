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

/** Rounds per contender: the full run, and `--quick`. */
export const roundsFor = (quick: boolean) => (quick ? 3 : 5)
