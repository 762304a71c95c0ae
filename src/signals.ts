// Signals a long-running service takes instead of dying by their default action.
//
// Node installs no handler for most signals, so SIGQUIT, SIGUSR2, SIGALRM and the like
// end the process on the spot: for the daemon that means uffds closed with pages
// unserved, which the kernel then zero-fills. Every signal whose default action ends
// the process is taken here instead: SIGHUP is a hang-up (a closed terminal, or
// "reopen your log" under -d), every other one a request to stop, handled once (a
// second one while stopping only says so). Not taken: SIGKILL and SIGSTOP (they cannot
// be), and the synchronous crash signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT: a
// handler that returns would fault again); a daemon dying of those is covered by its
// guardian. Real-time signals cannot be listened to from Node; they still kill.
import { constants } from 'node:os'

import { native } from './native'

/** Signals that end a process by default, asynchronous ones only; SIGHUP apart. */
export const STOP_SIGNALS: NodeJS.Signals[] = (
  ['SIGINT', 'SIGTERM', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGALRM', 'SIGVTALRM', 'SIGPROF', 'SIGXCPU', 'SIGXFSZ', 'SIGSTKFLT', 'SIGIO', 'SIGPWR', 'SIGTRAP', 'SIGSYS'] as NodeJS.Signals[]
).filter((s) => s in constants.signals)

export interface SignalPolicy {
  /** The first stop request. */
  stop: (signal: NodeJS.Signals) => void
  /** A stop request while already stopping. */
  again?: (signal: NodeJS.Signals) => void
  hangUp: () => void
}

/** Takes every terminating signal for the rest of the process's life; returns a function that makes later ones only say so (the job is over). */
export function takeSignals(policy: SignalPolicy): { done: (late: (signal: NodeJS.Signals) => void) => void } {
  let stopping = false
  let late: ((signal: NodeJS.Signals) => void) | undefined
  const onStop = (signal: NodeJS.Signals) => {
    if (late) late(signal)
    else if (stopping) policy.again?.(signal)
    else {
      stopping = true
      policy.stop(signal)
    }
  }
  // A terminal that went away answers writes with EIO; a log line must not turn that
  // into an unhandled stream error that ends the process.
  for (const out of [process.stdout, process.stderr]) out.on('error', () => undefined)
  // Also when it hung up without a SIGHUP reaching us: Node's exit would abort on it.
  process.on('exit', () => releaseDeadTerminal())
  for (const s of STOP_SIGNALS) process.on(s, onStop)
  process.on('SIGHUP', () => (late ? undefined : policy.hangUp()))
  return { done: (fn) => (late = fn) }
}

/** A terminal on stdin/stdout/stderr that hung up is gone for good: point those at /dev/null (see release_dead_terminal). True if there was one. */
export function releaseDeadTerminal(): boolean {
  try {
    return native.releaseDeadTerminal() > 0
  } catch {
    return false
  }
}
