// latest.png: top, local fault-latency CDFs and fill-throughput bars; bottom, remote
// fault-latency CDFs and working-set time to first loop.
import { Canvas, textWidth, type Rgb } from './canvas'
import type { BenchResult } from './report'

const W = 1400
const H = 1180
const COLORS: Rgb[] = [
  [120, 120, 120], // raw / criu: grey family is "reference"
  [31, 119, 180],
  [44, 160, 44],
  [214, 39, 40],
  [148, 103, 189],
]
const GRID: Rgb = [225, 225, 225]

interface Box {
  x: number
  y: number
  w: number
  h: number
}

function axes(c: Canvas, b: Box, title: string, xLabel: string, yLabel: string): void {
  c.text(b.x, b.y - 44, title, [0, 0, 0], 2)
  c.line(b.x, b.y + b.h, b.x + b.w, b.y + b.h, [0, 0, 0], 2)
  c.line(b.x, b.y, b.x, b.y + b.h, [0, 0, 0], 2)
  c.text(b.x + b.w / 2 - textWidth(xLabel) / 2, b.y + b.h + 34, xLabel)
  c.text(b.x, b.y - 18, yLabel, [60, 60, 60], 2)
}

function legend(c: Canvas, x: number, y: number, items: Array<[string, Rgb]>): void {
  for (const [k, [label, color]] of items.entries()) {
    c.rect(x, y + k * 22 + 2, 16, 12, color)
    c.text(x + 24, y + k * 22, label)
  }
}

interface CdfCase {
  name: string
  us: number[]
  samples: number
  p99Us: number
}

function cdf(c: Canvas, title: string, l: { cases: CdfCase[] } | undefined, b: Box): void {
  axes(c, b, l ? title : `${title}: NOT RUN`, 'FIRST-TOUCH LATENCY, US (LOG)', 'FRACTION OF FAULTS')
  if (!l) return
  const all = l.cases.flatMap((k) => k.us).filter((v) => v > 0)
  if (!all.length) return
  const lo = Math.floor(Math.log10(Math.max(0.1, Math.min(...all))))
  const hi = Math.ceil(Math.log10(Math.max(...all)))
  const X = (us: number) => b.x + ((Math.log10(Math.max(us, 10 ** lo)) - lo) / (hi - lo)) * b.w
  const Y = (f: number) => b.y + b.h - f * b.h
  for (let d = lo; d <= hi; d++) {
    c.line(X(10 ** d), b.y, X(10 ** d), b.y + b.h - 2, GRID, 1)
    const label = String(10 ** d)
    c.text(X(10 ** d) - textWidth(label) / 2, b.y + b.h + 8, label)
  }
  // 1.0 gets a grid line but no label: it would sit on top of P99.
  for (const [f, label] of [[0.5, 'P50'], [0.99, 'P99'], [1, '']] as const) {
    c.line(b.x + 2, Y(f), b.x + b.w, Y(f), GRID, 1)
    c.text(b.x - textWidth(label) - 6, Y(f) - 7, label)
  }
  c.text(b.x - 16, Y(0) - 7, '0')
  for (const [k, cs] of l.cases.entries()) {
    const s = [...cs.us].sort((a, z) => a - z)
    if (!s.length) continue
    const step = Math.max(1, Math.floor(s.length / 800))
    let px = X(s[0])
    let py = Y(0)
    for (let i = 0; i < s.length; i += step) {
      const nx = X(s[i])
      const ny = Y((i + 1) / s.length)
      c.line(px, py, nx, ny, COLORS[k % COLORS.length], 2)
      ;[px, py] = [nx, ny]
    }
    c.line(px, py, X(s[s.length - 1]), Y(1), COLORS[k % COLORS.length], 2)
  }
  legend(
    c,
    b.x + b.w - 420,
    b.y + b.h - 22 * l.cases.length - 10,
    l.cases.map((k, i) => [k.samples ? `${k.name} P99 ${k.p99Us.toFixed(0)}` : `${k.name}: NO FAULTS`, COLORS[i % COLORS.length]]),
  )
}

function bars(c: Canvas, title: string, yLabel: string, names: string[], groups: Array<{ label: string; values: number[] }>, b: Box): void {
  axes(c, b, groups.length ? title : `${title}: NOT RUN`, groups.length > 1 ? 'PROCESS SIZE' : '', yLabel)
  if (!groups.length) return
  // Headroom above the tallest bar keeps the legend clear of the bars.
  const max = Math.max(...groups.flatMap((g) => g.values)) * 1.5
  const step = max > 8 ? 2 : max > 2 ? 1 : max > 1 ? 0.25 : 0.1
  const Y = (v: number) => b.y + b.h - (v / max) * b.h
  for (let v = 0; v <= max; v += step) {
    const label = String(Number(v.toFixed(2)))
    c.line(b.x + 2, Y(v), b.x + b.w, Y(v), GRID, 1)
    c.text(b.x - textWidth(label) - 6, Y(v) - 7, label)
  }
  const gw = b.w / groups.length
  const bw = (gw - 40) / names.length
  for (const [g, group] of groups.entries()) {
    const x0 = b.x + g * gw + 20
    for (const [k, v] of group.values.entries()) {
      c.rect(x0 + k * bw + 3, Y(v), bw - 6, b.y + b.h - Y(v), COLORS[k])
      const label = v < 10 ? v.toFixed(2) : v.toFixed(1)
      c.text(x0 + k * bw + bw / 2 - textWidth(label, 1.5) / 2, Y(v) - 14, label, [0, 0, 0], 1.5)
    }
    c.text(x0 + (gw - 40) / 2 - textWidth(group.label) / 2, b.y + b.h + 8, group.label)
  }
  legend(c, b.x + 16, b.y + 8, names.map((n, k) => [n, COLORS[k]]))
}

export function drawPng(r: BenchResult): Buffer {
  const c = new Canvas(W, H)
  c.text(20, 14, `LAZY-PAGES BENCH ${r.quick ? '(QUICK) ' : ''}${r.date.slice(0, 16).replace('T', ' ')} - ${r.host.cpus} CPUS`, [0, 0, 0], 3)
  const l = r.latency
  cdf(c, l ? `FAULT LATENCY CDF (${l.mib} MIB, ${l.touches} RANDOM TOUCHES)` : 'FAULT LATENCY', l, { x: 80, y: 110, w: 560, h: 430 })
  const fillGroups = r.fill.map((f) => ({ label: `${f.mib} MIB`, values: [...f.servers.map((s) => f.bytes / 1e9 / s.secs.best), ...f.raw.map((p) => p.gbps)] }))
  const fillNames = ['CRIU LAZY-PAGES', 'OURS --JOBS 1', 'OURS --JOBS 2', 'RAW PROBE 1 THREAD', 'RAW PROBE 2 THREADS']
  bars(c, 'FILL THROUGHPUT (RESTORE START TO ALL PAGES IN)', 'GB/S', fillNames, fillGroups, { x: 780, y: 110, w: 580, h: 430 })
  const rm = r.remote
  cdf(c, rm ? `REMOTE FAULT LATENCY CDF (${rm.mib} MIB OVER ${rm.rateGbit} GBIT/S)` : 'REMOTE FAULT LATENCY', rm, { x: 80, y: 670, w: 560, h: 430 })
  const ws = r.workingSet
  const wsGroups = ws ? [{ label: `${ws.mib} MIB, HOT ${ws.hotPct} %`, values: ws.cases.map((k) => k.best) }] : []
  const wsNames = ws ? ws.cases.map((k) => k.name.toUpperCase()) : []
  bars(c, 'WORKING SET: RESTORE START TO FIRST LOOP DONE', 'SECONDS (LOWER IS BETTER)', wsNames, wsGroups, { x: 780, y: 670, w: 580, h: 430 })
  return c.encode()
}
