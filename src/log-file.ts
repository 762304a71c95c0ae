// The -o log file, written in the background, that can never end the process.
//
// A log line is worth less than the restore it describes: a write that fails (ENOSPC,
// EDQUOT, EIO, EFBIG) drops the lines it carried and counts them; the first failure
// is said once on stderr, the count at the end. Lines written later go in again if the
// disk has room by then. At most MAX_QUEUED bytes wait for a slow disk; past that,
// lines are dropped too, so a stuck disk cannot grow our memory.
import { close, write } from 'node:fs'

const MAX_QUEUED = 16 << 20

export class LogFile {
  private queue: string[] = []
  private queued = 0
  private writing = false
  private retired: number[] = []
  private drained: Array<() => void> = []
  /** Lines that never reached the file. */
  dropped = 0
  private told = false

  constructor(
    readonly path: string,
    private fd: number,
    private readonly stderr: (line: string) => void,
  ) {}

  write(line: string): void {
    if (this.queued + line.length > MAX_QUEUED) return this.drop(1, 'too many lines waiting for a slow disk')
    this.queue.push(line)
    this.queued += line.length
    this.pump()
  }

  /** Goes on in `fd` (SIGHUP's reopen); the old one is closed once what was sent to it is written. */
  replace(fd: number): void {
    this.retired.push(this.fd)
    this.fd = fd
    if (!this.writing) this.closeRetired()
  }

  /** Resolves once every queued line is written (or dropped) and the file closed. */
  close(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.drained.push(resolve)
      this.pump()
    }).then(() => {
      this.retired.push(this.fd)
      this.closeRetired()
      if (this.dropped > 0) this.stderr(`log ${this.path}: ${this.dropped} lines could not be written and are missing from it`)
    })
  }

  private pump(): void {
    if (this.writing) return
    if (this.queue.length === 0) {
      this.closeRetired()
      for (const done of this.drained.splice(0)) done()
      return
    }
    const buf = Buffer.from(this.queue.join(''), 'utf8')
    this.queue = []
    this.queued = 0
    this.writing = true
    this.send(this.fd, buf, 0)
  }

  private send(fd: number, buf: Buffer, off: number): void {
    write(fd, buf, off, buf.length - off, null, (err, n) => {
      if (!err && off + n < buf.length) return this.send(fd, buf, off + n)
      if (err) this.drop(lines(buf.subarray(off)), err.code ?? err.message)
      this.writing = false
      this.pump()
    })
  }

  private drop(count: number, why: string): void {
    this.dropped += count
    if (this.told) return
    this.told = true
    this.stderr(`log ${this.path}: cannot write (${why}): dropping log lines until it can; the restore goes on`)
  }

  private closeRetired(): void {
    for (const fd of this.retired.splice(0)) close(fd, () => undefined)
  }
}

/** Lines in `buf`, a partly written one included. */
function lines(buf: Buffer): number {
  let n = 0
  for (const byte of buf) if (byte === 0x0a) n++
  return Math.max(n, 1)
}
