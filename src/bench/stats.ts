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
