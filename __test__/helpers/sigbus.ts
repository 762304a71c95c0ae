// A kernel-side witness of how a restored process died: a private tracefs instance
// recording the SIGBUS and SIGSEGV signals the kernel generates and delivers. The
// restored tree is not our child (`criu restore -d` leaves it to init), so its wait
// status is not ours to read.
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

const TRACEFS = '/sys/kernel/tracing'
const EVENTS = ['signal_generate', 'signal_deliver']
export const SIGBUS = 7
export const SIGSEGV = 11
/** si_code of the SIGBUS for a touch of a poisoned page: with CONFIG_MEMORY_FAILURE... */
export const BUS_MCEERR_AR = 4
/** ...and without it (VM_FAULT_HWPOISON then ends in the generic SIGBUS). */
export const BUS_ADRERR = 2

export interface SignalEvent {
  event: 'signal_generate' | 'signal_deliver'
  sig: number
  code: number
  /** signal_generate: the target; signal_deliver: the task that took it. */
  pid: number
  /** signal_deliver: the handler; 0 = SIG_DFL (for SIGBUS and SIGSEGV: death). */
  handler?: string
  /** signal_generate: 0 = queued for delivery. */
  result?: number
  line: string
}

export class SigbusTrace {
  private constructor(private readonly dir: string) {}

  /** undefined when there is no tracefs to use. */
  static open(name: string): SigbusTrace | undefined {
    if (!existsSync(join(TRACEFS, 'instances'))) return undefined
    const dir = join(TRACEFS, 'instances', name)
    try {
      if (existsSync(dir)) rmdirSync(dir)
      mkdirSync(dir)
      for (const ev of EVENTS) {
        writeFileSync(join(dir, 'events', 'signal', ev, 'filter'), `sig == ${SIGBUS} || sig == ${SIGSEGV}`)
        writeFileSync(join(dir, 'events', 'signal', ev, 'enable'), '1')
      }
      return new SigbusTrace(dir)
    } catch {
      try {
        rmdirSync(dir)
      } catch {
        /* never made */
      }
      return undefined
    }
  }

  /** Every recorded signal of `pid`. */
  events(pid: number): SignalEvent[] {
    const out: SignalEvent[] = []
    for (const line of readFileSync(join(this.dir, 'trace'), 'utf8').split('\n')) {
      // "<comm>-<tid> [cpu] flags ts: signal_generate: sig=7 errno=0 code=4 comm=lpw pid=123 grp=0 res=0"
      const gen = /signal_generate: sig=(\d+) errno=-?\d+ code=(-?\d+) comm=.* pid=(\d+) grp=\d+ res=(\d+)/.exec(line)
      if (gen) out.push({ event: 'signal_generate', sig: +gen[1], code: +gen[2], pid: +gen[3], result: +gen[4], line: line.trim() })
      // "<comm>-<tid> [cpu] flags ts: signal_deliver: sig=7 errno=0 code=4 sa_handler=0 sa_flags=0"
      const del = /-(\d+)\s+\[\d+\].*signal_deliver: sig=(\d+) errno=-?\d+ code=(-?\d+) sa_handler=([0-9a-f]+)/.exec(line)
      if (del) out.push({ event: 'signal_deliver', sig: +del[2], code: +del[3], pid: +del[1], handler: del[4], line: line.trim() })
    }
    return out.filter((e) => e.pid === pid)
  }

  close(): void {
    try {
      for (const ev of EVENTS) writeFileSync(join(this.dir, 'events', 'signal', ev, 'enable'), '0')
    } finally {
      rmdirSync(this.dir)
    }
  }
}
