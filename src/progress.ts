// A one-line progress bar on a TTY; nothing at all elsewhere.
const MiB = 1024 * 1024

export class ProgressBar {
  private shown = false

  constructor(private readonly out: NodeJS.WriteStream = process.stderr) {}

  static enabledFor(out: NodeJS.WriteStream, wanted: boolean): boolean {
    return wanted && out.isTTY === true
  }

  update(done: number, total: number): void {
    if (total <= 0) return
    const width = 30
    const frac = Math.min(1, done / total)
    const fill = Math.round(frac * width)
    const mib = (pages: number) => ((pages * 4096) / MiB).toFixed(1)
    this.out.write(`\r[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${mib(done)}/${mib(total)} MiB`)
    this.shown = true
  }

  clear(): void {
    if (this.shown) this.out.write('\r\x1b[K')
    this.shown = false
  }
}
