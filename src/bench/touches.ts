// lpw-touch's touch-main.txt (workloads/touch.c): one line per touch,
// `<start ns> <latency ns> <1 if the page was missing>`. Only missing pages are faults;
// pages the background transfer already brought in are counted apart.
import { readFileSync } from 'node:fs'

export function readTouches(file: string): { us: number[]; present: number } {
  const us: number[] = []
  let present = 0
  for (const line of readFileSync(file, 'utf8').trim().split('\n')) {
    const [, lat, missing] = line.split(' ').map(Number)
    if (!Number.isFinite(lat)) throw new Error(`${file}: bad touch line ${JSON.stringify(line)}`)
    if (missing) us.push(lat / 1000)
    else present++
  }
  return { us, present }
}
