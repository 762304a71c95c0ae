// `lazy-pages page-server`: stands in for `criu page-server --lazy-pages`. The Rust
// server does all socket and page I/O; this wires options, readiness and logs.
import { isAbsolute, join, resolve } from 'node:path'

import type { PageServerEvent } from '../index'
import { detach, isDetachedChild, notifyParent, signalStatusFd, writePidfile } from './detach'
import { oneLine, UserError } from './errors'
import { Logger } from './log'
import { native } from './native'

export interface PageServerCliOptions {
  imagesDir: string
  address?: string
  port: number
  keepServing?: boolean
  criuVersion?: string
  workDir?: string
  daemon?: boolean
  pidfile?: string
  statusFd?: number
  logFile?: string
  verbosity: number
}

export async function runPageServer(opts: PageServerCliOptions, rawArgs: string[]): Promise<number> {
  const imagesDir = resolve(opts.imagesDir)
  const workDir = resolve(opts.workDir ?? imagesDir)
  const inWorkDir = (p: string) => (isAbsolute(p) ? p : join(workDir, p))
  if (opts.daemon && !isDetachedChild()) {
    const pid = await detach(rawArgs)
    if (opts.pidfile) writePidfile(inWorkDir(opts.pidfile), pid)
    if (opts.statusFd !== undefined) signalStatusFd(opts.statusFd)
    return 0
  }
  const log = new Logger(opts.verbosity)
  if (opts.logFile) log.toFile(opts.logFile === '-' ? '-' : inWorkDir(opts.logFile))
  try {
    const server = await native.preparePageServer({
      imagesDir,
      address: opts.address,
      port: opts.port,
      keepServing: !!opts.keepServing,
      criuVersion: opts.criuVersion,
    })
    // CRIU logs the port it got; scripts read it from here.
    log.msg(`Using ${server.port} port (${server.address}, CRIU ${server.criuVersion} wire format${opts.keepServing ? ', serving any number of restores' : ''})`)
    if (!isDetachedChild() && opts.statusFd !== undefined) signalStatusFd(opts.statusFd)
    notifyParent()
    const stop = () => server.stop()
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
    const summary = await server.serve((e: PageServerEvent) => {
      if (e.kind === 'session-started') log.info(`session from ${e.peer}`)
      else if (e.kind === 'refused') log.warn(`refused ${e.peer}: ${e.error}`)
      else if (e.error) log.error(`session from ${e.peer} failed after ${e.requests} requests: ${e.error}`)
      else log.info(`session from ${e.peer} done: ${e.requests} requests, ${e.pages} pages`)
    })
    process.off('SIGINT', stop)
    process.off('SIGTERM', stop)
    log.msg(`page server: ${summary.sessions} sessions (${summary.failedSessions} failed), ${summary.requests} requests, ${summary.pages} pages served`)
    return summary.failedSessions > 0 && !opts.keepServing ? 1 : 0
  } catch (err) {
    const message = oneLine(err)
    if (opts.logFile) log.error(message)
    notifyParent(message)
    throw new UserError(message)
  } finally {
    await log.close()
  }
}
