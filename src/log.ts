// Log lines in CRIU's shape: "(SS.UUUUUU) message", levels 0 msg, 1 error,
// 2 warn (default), 3 info, 4 debug. Writes are synchronous only to stderr/stdout
// (a TTY or pipe); a log file is appended through a stream.
import { createWriteStream, type WriteStream } from 'node:fs'

import { openOwned } from './out-file'

export enum Level {
  Msg = 0,
  Error = 1,
  Warn = 2,
  Info = 3,
  Debug = 4,
}

export class Logger {
  private readonly start = process.hrtime.bigint()
  private stream: WriteStream | undefined

  constructor(
    public level: number = Level.Warn,
    private readonly sink: NodeJS.WritableStream = process.stderr,
  ) {}

  /** Send log lines to FILE (truncated, as CRIU does); "-" means stdout. */
  toFile(path: string): void {
    if (path === '-') {
      this.stream = undefined
      this.sinkOverride = process.stdout
      return
    }
    this.stream = createWriteStream('', { fd: openOwned(path, '-o', false) })
    this.path = path
  }

  private path: string | undefined

  /** The log file, if lines go to one ("-" and stderr are not files). */
  get file(): string | undefined {
    return this.path
  }

  /** SIGHUP under -d, as daemons do: append to the file at the same path anew (it may have been rotated away). A name we may not write (openOwned) keeps the old file, with a warning. */
  reopen(): void {
    if (!this.path || !this.stream) return
    let fd: number
    try {
      fd = openOwned(this.path, '-o', true)
    } catch (err) {
      this.warn(`${(err as Error).message}; logging on to the file it replaced`)
      return
    }
    const old = this.stream
    this.stream = createWriteStream('', { fd })
    old.end()
  }

  private sinkOverride: NodeJS.WritableStream | undefined

  enabled(level: Level): boolean {
    return level <= this.level
  }

  private write(level: Level, prefix: string, message: string): void {
    if (!this.enabled(level)) return
    const us = Number((process.hrtime.bigint() - this.start) / 1000n)
    const stamp = `(${String(Math.floor(us / 1e6)).padStart(2, '0')}.${String(us % 1e6).padStart(6, '0')})`
    const line = `${stamp} ${prefix}${message}\n`
    ;(this.stream ?? this.sinkOverride ?? this.sink).write(line)
  }

  error(message: string): void {
    this.write(Level.Error, 'Error: ', message)
  }
  warn(message: string): void {
    this.write(Level.Warn, 'Warn: ', message)
  }
  info(message: string): void {
    this.write(Level.Info, '', message)
  }
  debug(message: string): void {
    this.write(Level.Debug, '', message)
  }
  msg(message: string): void {
    this.write(Level.Msg, '', message)
  }
  /** An error the user must see even when the log goes to a file: logged, and on stderr too. */
  alert(message: string): void {
    this.error(message)
    if (this.stream) this.sink.write(`lazy-pages: ${message}\n`)
  }

  async close(): Promise<void> {
    const stream = this.stream
    if (!stream) return
    this.stream = undefined
    await new Promise<void>((resolve) => stream.end(resolve))
  }
}
