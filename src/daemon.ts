// `lazy-pages [options]`: serve one `criu restore --lazy-pages`, as `criu lazy-pages`
// does. The Rust session does all socket, uffd and page I/O on its own threads; this
// file wires options, readiness signals, policy, logs and the final report.
import { constants, existsSync } from 'node:fs'
import { access } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'

import type { DaemonEvent, LazyDaemon } from '../index'
import { oneLine, UserError } from './errors'
import { Level, Logger } from './log'
import { native } from './native'
import { checkReplaceable, replaceFile } from './out-file'
import { strategyByName } from './policy'
import { tlsOptions, type TlsCliOptions } from './tls'
import { runService, type ServiceContext, type ServiceOptions } from './service'
import { ProgressBar } from './progress'
import { releaseDeadTerminal, takeSignals } from './signals'
import { buildSummary, formatSummary, type Summary } from './summary'
import { TaskTracker } from './tracker'
import { readWorkingSet, workingSetPages, writeWorkingSet } from './working-set'

export interface DaemonCliOptions extends ServiceOptions, TlsCliOptions {
  connectTimeout: number
  fillDelay: number
  jobs: number
  pageServer?: boolean
  address?: string
  port?: number
  criuVersion?: string
  reconnect: number
  stallTimeout: number
  urgentConnection?: boolean
  /** Absent: the engine's default for the page source (local or --page-server). */
  chunkPages?: number
  prefetch: string
  statsJson?: string
  recordWs?: string
  prefetchWs?: string
  progress: boolean
  resumeTimeout: number
}

/** The guardian binary shipped next to the addon (LAZY_PAGES_GUARDIAN overrides). */
export function guardianProgram(): string {
  const path = process.env.LAZY_PAGES_GUARDIAN || join(__dirname, '..', 'lazy-pages-guardian')
  if (!existsSync(path)) throw new UserError(`the guardian ${path} is missing (npm run build:native builds it); without it a daemon that dies leaves zeros behind, so none starts`)
  return path
}

export function runDaemon(opts: DaemonCliOptions, rawArgs: string[]): Promise<number> {
  return runService(opts, rawArgs, (ctx) => serve(opts, ctx), lockWorkDir)
}

/** What the work dir's last daemon left: it died mid-restore (a line), or null. */
let interruptedRestore: string | null = null

/** One daemon per work dir: a second one is refused before it touches the first's
 * socket, log or pidfile (a kernel lock, so a daemon that died holds nothing). */
async function lockWorkDir(workDir: string): Promise<void> {
  try {
    interruptedRestore = await native.lockWorkDirForLife(workDir)
  } catch (err) {
    throw new UserError(oneLine(err))
  }
}

async function serve(opts: DaemonCliOptions, { imagesDir, workDir, inWorkDir, log, ready }: ServiceContext): Promise<number> {
  if (opts.pageServer && (!opts.address || !opts.port)) throw new UserError('--page-server needs --address and --port')
  // As `criu lazy-pages`: without --page-server they mean nothing (a config file may set them for dumps).
  if (!opts.pageServer && (opts.address || opts.port)) log.warn('--address/--port without --page-server: serving the pages images in the images dir')
  if (!opts.pageServer && opts.reconnect) throw new UserError('--reconnect needs --page-server')
  if (!opts.pageServer && opts.urgentConnection) throw new UserError('--urgent-connection needs --page-server')
  if (!opts.pageServer && opts.tls) throw new UserError('--tls needs --page-server')
  if (opts.recordWs && opts.prefetchWs && resolve(inWorkDir(opts.recordWs)) === resolve(inWorkDir(opts.prefetchWs))) {
    throw new UserError(`--record-ws and --prefetch-ws both name ${opts.recordWs}: a prefetched restore faults on little, so it would overwrite the working set with a near-empty one`)
  }
  // Found out now, not after the whole restore, when the recording would be lost.
  if (opts.recordWs) await checkWritableDir(inWorkDir(opts.recordWs), '--record-ws')
  // A symlink or someone else's file there is refused again when the report is written.
  if (opts.statsJson) checkReplaceable(inWorkDir(opts.statsJson), '--stats-json')
  if (opts.recordWs) checkReplaceable(inWorkDir(opts.recordWs), '--record-ws')
  const prefetch = opts.prefetchWs ? await readWorkingSet(inWorkDir(opts.prefetchWs)) : undefined
  const guardian = guardianProgram()

  // From here on no signal ends us by its default action (which would close the uffds
  // with pages unserved): see signals.ts.
  let daemon: LazyDaemon | undefined
  let aborting = false
  let terminalGone = false
  const signals = takeSignals({
    stop: (signal) => {
      aborting = true
      log.error(`${signal}: aborting; pages not yet served are poisoned: a restored process that touches one gets SIGBUS`)
      daemon?.abort()
    },
    again: (signal) => log.warn(`${signal}: already aborting; the unserved pages are poisoned before the daemon exits`),
    hangUp: () => {
      log.reopen()
      // A closed terminal: nothing can be shown there any more (the progress bar stops).
      terminalGone = releaseDeadTerminal() || terminalGone
      log.info(`SIGHUP: ignored, the restore goes on${log.file ? `; log ${log.file} reopened` : ''}`)
    },
  })
  try {
    daemon = await native.prepareDaemon({
      imagesDir,
      workDir,
      connectTimeoutMs: opts.connectTimeout * 1000,
      // The whole handshake (connect to "restore finished") gets as long as the connect.
      handshakeTimeoutMs: opts.connectTimeout * 1000,
      fillDelayMs: opts.fillDelay,
      jobs: opts.jobs,
      chunkPages: opts.chunkPages,
      pageServer: opts.pageServer ? hostPort(opts.address!, opts.port!) : undefined,
      criuVersion: opts.criuVersion,
      reconnectMs: opts.reconnect * 1000,
      stallTimeoutMs: opts.stallTimeout * 1000,
      urgentConnection: !!opts.urgentConnection,
      tls: opts.pageServer ? tlsOptions(opts) : undefined,
      recordWorkingSet: !!opts.recordWs,
      prefetchWorkingSet: prefetch,
      guardianProgram: guardian,
      resumeTimeoutMs: opts.resumeTimeout * 1000,
      logFile: log.file,
    })
  } catch (err) {
    throw new UserError(oneLine(err))
  }
  // A stop asked for while we prepared: the session sees it before serving anything.
  if (aborting) daemon.abort()
  for (const line of daemon.warnings) log.warn(line)
  const resumed = daemon.resumed ?? undefined
  if (resumed) log.info(`images ${imagesDir}: resuming ${resumed.tasks} tasks from guardian pid ${resumed.guardianPid} (daemon pid ${resumed.lostDaemon} died)`)
  else log.info(`images ${imagesDir}: ${daemon.expectedTasks} processes; listening on ${daemon.socketPath}; guardian pid ${daemon.guardianPid}`)
  // Said now, not after --connect-timeout: that restore will never connect again.
  if (!resumed && interruptedRestore) log.warn(`${interruptedRestore}; waiting for a new criu restore on ${daemon.socketPath}`)
  if (prefetch) log.info(`working set ${opts.prefetchWs}: ${workingSetPages(prefetch)} pages of ${prefetch.length} tasks go first`)
  ready()

  const tracker = new TaskTracker()
  const strategy = strategyByName(opts.prefetch)
  const bar = ProgressBar.enabledFor(process.stderr, opts.progress && !opts.logFile) ? new ProgressBar() : undefined
  const served = daemon
  const servingSince = Date.now()
  let guardianLost: Summary['guardianLost']
  const onEvent = (event: DaemonEvent) => {
    if (event.kind === 'guardian-lost') guardianLost ??= { afterMs: Date.now() - servingSince, message: event.message ?? 'lost the guardian' }
    tracker.on(event)
    strategy.onEvent(event, served)
    logEvent(log, event)
    if (event.kind === 'progress' && bar && !terminalGone) bar.update(event.donePages ?? 0, event.totalPages ?? 0)
  }

  let stats
  try {
    stats = await daemon.serve(onEvent)
  } catch (err) {
    throw new UserError(oneLine(err))
  } finally {
    if (!terminalGone) bar?.clear()
    // Served or poisoned, and the guardian let go: what is left is the report.
    signals.done((signal) => log.warn(`${signal}: ignored, the restore is over; finishing the report`))
  }

  const summary = buildSummary(imagesDir, stats, tracker, log.dropped, resumed, guardianLost)
  for (const line of formatSummary(summary)) log.msg(line)
  // The restore is over either way: a report that cannot be written is one line and
  // exit 2 (REPORT_LOST), never a reason to skip the other one.
  let reportLost = false
  const report = (write: () => void) => {
    try {
      write()
    } catch (err) {
      reportLost = true
      log.alert(oneLine(err))
    }
  }
  if (opts.statsJson) report(() => replaceFile(inWorkDir(opts.statsJson!), '--stats-json', JSON.stringify(summary, null, 2) + '\n'))
  if (opts.recordWs) {
    report(() => {
      const ws = writeWorkingSet(inWorkDir(opts.recordWs!), daemon.recordedWorkingSet() ?? [])
      log.msg(`working set: ${ws.pages} faulted pages of ${ws.tasks} tasks written to ${opts.recordWs}`)
    })
  }
  if (!summary.reconciles) {
    log.error('page accounting does not reconcile: some lazy page was neither served nor dropped')
    return 1
  }
  return reportLost ? REPORT_LOST : 0
}

/** Exit status of a restore that served every page but could not write --stats-json or --record-ws. */
export const REPORT_LOST = 2

function logEvent(log: Logger, e: DaemonEvent): void {
  switch (e.kind) {
    case 'connected':
      log.info(e.message ?? 'criu restore connected')
      break
    case 'task':
      log.info(`task ${e.task}: pid ${e.pid}, ${e.pages} lazy pages`)
      break
    case 'rejected':
      log.warn(e.message ?? 'rejected a connection')
      break
    case 'guarded':
      log.debug(`guardian pid ${e.pid} holds every uffd from the moment it arrives`)
      break
    case 'resumed':
      log.info(e.message ?? 'resumed')
      break
    case 'warning':
      log.warn(e.message ?? 'engine warning')
      break
    case 'guardian-lost':
      log.warn(e.message ?? 'lost the guardian')
      break
    case 'zombie':
      log.info(`pid ${e.pid} is a zombie: nothing to serve`)
      break
    case 'restore-finished':
      log.info('restore finished: background fill starts')
      break
    case 'forked':
      log.info(`task ${e.parent} (pid ${e.pid}) forked: new task ${e.task}`)
      break
    case 'exited':
      log.warn(`task ${e.task} (pid ${e.pid}) exited; its remaining pages are dropped`)
      break
    case 'task-done':
      log.debug(`task ${e.task} (pid ${e.pid}) done: ${JSON.stringify(e.stats)}`)
      break
    case 'fault':
      if (log.enabled(Level.Debug)) log.debug(`fault: task ${e.task} pid ${e.pid} at 0x${(e.addr ?? 0).toString(16)} (${e.pages} pages)`)
      break
    case 'working-set-fetched':
      log.info(`working set in: ${e.pages} pages, ${(e.elapsedMs ?? 0).toFixed(0)} ms after the restore connected`)
      break
    case 'error':
      log.error(e.message ?? 'engine error')
      break
  }
}

async function checkWritableDir(file: string, option: string): Promise<void> {
  try {
    await access(dirname(file), constants.W_OK)
  } catch (err) {
    throw new UserError(`${option} ${file}: cannot write there: ${(err as NodeJS.ErrnoException).code ?? err}`)
  }
}

function hostPort(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`
}
