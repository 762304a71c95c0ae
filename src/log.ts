// Log lines in CRIU's shape: "(SS.UUUUUU) message", levels 0 msg, 1 error,
// 2 warn (default), 3 info, 4 debug. Writes are synchronous only to stderr/stdout
// (a TTY or pipe); a log file is appended in the background (log-file.ts), and no
// failure to write a line, to either, ever ends the process.
import { LogFile } from './log-file'
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
  private logFile: LogFile | undefined
  private sinkOverride: NodeJS.WritableStream | undefined
  private sinkDropped = 0

  constructor(
    public level: number = Level.Warn,
    private readonly sink: NodeJS.WritableStream = process.stderr,
  ) {}

  /** Send log lines to FILE (truncated, as CRIU does); "-" means stdout. A name we may not write is refused (out-file.ts). */
  toFile(path: string): void {
    if (path === '-') {
      this.sinkOverride = process.stdout
      return
    }
    this.logFile = new LogFile(path, openOwned(path, '-o', false), (line) => this.tell(line))
  }

  /** The log file, if lines go to one ("-" and stderr are not files). */
  get file(): string | undefined {
    return this.logFile?.path
  }

  /** Lines lost so far: a log file or stdout/stderr that could not take them. */
  get dropped(): number {
    return (this.logFile?.dropped ?? 0) + this.sinkDropped
  }

  /** SIGHUP under -d, as daemons do: append to the file at the same path anew (it may have been rotated away). A name we may not write (openOwned) keeps the old file, with a warning. */
  reopen(): void {
    if (!this.logFile) return
    let fd: number
    try {
      fd = openOwned(this.logFile.path, '-o', true)
    } catch (err) {
      this.warn(`${(err as Error).message}; logging on to the file it replaced`)
      return
    }
    this.logFile.replace(fd)
  }

  enabled(level: Level): boolean {
    return level <= this.level
  }

  private write(level: Level, prefix: string, message: string): void {
    if (!this.enabled(level)) return
    const us = Number((process.hrtime.bigint() - this.start) / 1000n)
    const stamp = `(${String(Math.floor(us / 1e6)).padStart(2, '0')}.${String(us % 1e6).padStart(6, '0')})`
    const line = `${stamp} ${prefix}${message}\n`
    if (this.logFile) this.logFile.write(line)
    else if (!this.tryWrite(this.sinkOverride ?? this.sink, line)) this.sinkDropped++
  }

  /** A synchronous stream (a file behind stdout) throws what it cannot write. */
  private tryWrite(out: NodeJS.WritableStream, line: string): boolean {
    try {
      out.write(line)
      return true
    } catch {
      return false
    }
  }

  /** One line straight to stderr, whatever the log goes to. */
  private tell(message: string): void {
    this.tryWrite(this.sink, `lazy-pages: ${message}\n`)
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
    if (this.logFile) this.tell(message)
  }

  async close(): Promise<void> {
    const file = this.logFile
    if (!file) return
    this.logFile = undefined
    await file.close()
  }
}
