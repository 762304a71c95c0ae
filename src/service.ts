// What the daemon and the page server share as long-running services, with CRIU's
// semantics: -d detaches once ready (pidfile written by the parent), --status-fd
// gets one zero byte when ready, -o/--pidfile are relative to the work dir, and a
// failure is one line (also in the log file, and told to a waiting parent).
import { isAbsolute, join, resolve } from 'node:path'

import { detach, isDetachedChild, notifyParent, signalStatusFd, writePidfile } from './detach'
import { oneLine, UserError } from './errors'
import type { Note } from './criu-config'
import { Logger } from './log'

export interface ServiceOptions {
  imagesDir: string
  workDir?: string
  daemon?: boolean
  pidfile?: string
  statusFd?: number
  logFile?: string
  verbosity: number
  /** Lines from reading the options (criu-argv.ts), logged once the log is open. */
  notes?: Note[]
}

/** Run before anything in the work dir is opened (the log is truncated on open). */
export type WorkDirGuard = (workDir: string) => Promise<void>

export interface ServiceContext {
  imagesDir: string
  workDir: string
  inWorkDir: (path: string) => string
  log: Logger
  /** Call once listening: releases --status-fd and a waiting -d parent. */
  ready: () => void
}

export async function runService(
  opts: ServiceOptions,
  rawArgs: string[],
  body: (ctx: ServiceContext) => Promise<number>,
  guard?: WorkDirGuard,
): Promise<number> {
  const imagesDir = resolve(opts.imagesDir)
  const workDir = resolve(opts.workDir ?? imagesDir)
  const inWorkDir = (p: string) => (isAbsolute(p) ? p : join(workDir, p))

  if (opts.daemon && !isDetachedChild()) {
    // The child does everything; we only wait until it listens.
    const pid = await detach(rawArgs)
    if (opts.pidfile) writePidfile(inWorkDir(opts.pidfile), pid)
    if (opts.statusFd !== undefined) signalStatusFd(opts.statusFd)
    return 0
  }

  const log = new Logger(opts.verbosity)
  let logging = false
  const ready = () => {
    if (!isDetachedChild() && opts.statusFd !== undefined) signalStatusFd(opts.statusFd)
    notifyParent()
  }
  try {
    await guard?.(workDir)
    if (opts.logFile) log.toFile(opts.logFile === '-' ? '-' : inWorkDir(opts.logFile))
    logging = true
    for (const note of opts.notes ?? []) (note.level === 'warn' ? log.warn : log.debug).call(log, note.message)
    return await body({ imagesDir, workDir, inWorkDir, log, ready })
  } catch (err) {
    const message = oneLine(err)
    // On stderr the CLI prints it once; a log file gets it too.
    if (opts.logFile && logging) log.error(message)
    notifyParent(message)
    throw err instanceof UserError ? err : new UserError(message)
  } finally {
    await log.close()
  }
}
