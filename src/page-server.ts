// `lazy-pages page-server`: stands in for `criu page-server --lazy-pages`. The Rust
// server does all socket and page I/O; this wires options, readiness and logs.
import type { PageServerEvent } from '../index'
import { native } from './native'
import { releaseDeadTerminal, takeSignals } from './signals'
import { runService, type ServiceContext, type ServiceOptions } from './service'
import { isLoopback, ownCertificateDates, tlsOptions, type TlsCliOptions } from './tls'

export interface PageServerCliOptions extends ServiceOptions, TlsCliOptions {
  address?: string
  port: number
  keepServing?: boolean
  criuVersion?: string
}

export function runPageServer(opts: PageServerCliOptions, rawArgs: string[]): Promise<number> {
  return runService(opts, rawArgs, (ctx) => serve(opts, ctx))
}

async function serve(opts: PageServerCliOptions, { imagesDir, log, ready }: ServiceContext): Promise<number> {
  const server = await native.preparePageServer({
    imagesDir,
    address: opts.address,
    port: opts.port,
    keepServing: !!opts.keepServing,
    criuVersion: opts.criuVersion,
    tls: tlsOptions(opts),
  })
  // Taken before anyone is told we listen (ready, or the port line scripts wait for),
  // so a stop sent at once is handled, not a kill. A closed terminal must not cut
  // restores off mid-transfer; any other terminating signal ends the sessions in order
  // (their clients see a clean close, not a reset halfway through a reply) instead of
  // killing us outright (signals.ts).
  const signals = takeSignals({
    stop: (signal) => {
      log.warn(`${signal}: stopping; sessions in progress end now`)
      server.stop()
    },
    again: (signal) => log.warn(`${signal}: already stopping`),
    hangUp: () => {
      log.reopen()
      releaseDeadTerminal()
      log.info(`SIGHUP: ignored, serving on${log.file ? `; log ${log.file} reopened` : ''}`)
    },
  })
  const dated = ownCertificateDates(opts)
  if (dated) log.warn(dated)
  // CRIU logs the port it got; scripts read it from here.
  log.msg(`Using ${server.port} port (${server.address}, CRIU ${server.criuVersion} wire format${opts.keepServing ? ', serving any number of restores' : ''})`)
  if (!opts.tls && !isLoopback(server.address)) {
    log.warn(`page server listens on ${server.address} without --tls: anyone who can reach port ${server.port} can read this dump's memory`)
  }
  ready()
  try {
    const summary = await server.serve((e: PageServerEvent) => {
      if (e.kind === 'session-started') log.info(`session from ${e.peer}`)
      else if (e.kind === 'refused') log.warn(`refused ${e.peer}: ${e.error}`)
      else if (e.error) log.error(`session from ${e.peer} failed after ${e.requests} requests: ${e.error}`)
      else log.info(`session from ${e.peer} done: ${e.requests} requests, ${e.pages} pages`)
    })
    const rejected = summary.rejected ? `, ${summary.rejected} connections rejected before a session (TLS handshake)` : ''
    log.msg(`page server: ${summary.sessions} sessions (${summary.failedSessions} failed)${rejected}, ${summary.requests} requests, ${summary.pages} pages served`)
    // A peer that never authenticated is not this server's client: it does not fail a one-shot run.
    return summary.failedSessions > 0 && !opts.keepServing ? 1 : 0
  } finally {
    signals.done((signal) => log.warn(`${signal}: ignored, the page server is exiting`))
  }
}
