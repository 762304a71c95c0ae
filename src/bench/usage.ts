// What a page server process costs: its CPU time (user + system, every thread, also the
// ones that ended) split into start-up (until it said it is ready) and the rest, and the
// peak of its resident anonymous and file-backed memory.
//
// CPU: the server runs under `bash -c '"$@"; times'`, whose `times` prints the CPU its
// waited-for child used (getrusage(RUSAGE_CHILDREN), microseconds). Start-up: the
// server's threads' run time (/proc/PID/task/*/schedstat, ns) the moment it signals ready.
// Memory: RssAnon / RssFile of /proc/PID/status, sampled every 20 ms; the maximum.
import { existsSync, readFileSync, readdirSync } from 'node:fs'

export interface Usage {
  /** user + system CPU of the whole run, start-up included (ms). */
  cpuMs: number
  /** CPU used until the server signalled ready (ms): process start, image parsing, listening. */
  startupCpuMs: number
  /** peak RssAnon (MiB): memory the server itself allocated. */
  anonMiB: number
  /** peak RssFile (MiB): page-cache pages it has mapped (e.g. the pages images), not its own. */
  fileMiB: number
}

/** argv run under bash, which writes the child's CPU times to `timesFile` once it exits. */
export function underTimes(argv: string[], timesFile: string): string[] {
  return ['bash', '-c', '"$@"; rc=$?; times > "$0"; exit $rc', timesFile, ...argv]
}

/** Children's user + system CPU from bash's `times` output (second line), in ms. */
export function parseTimes(text: string): number {
  const line = text.trim().split('\n')[1] ?? ''
  const secs = [...line.matchAll(/(\d+)m([\d.]+)s/g)].map((m) => Number(m[1]) * 60 + Number(m[2]))
  if (secs.length !== 2) throw new Error(`cannot read CPU times from bash's times output: ${JSON.stringify(text)}`)
  return (secs[0] + secs[1]) * 1000
}

/** The pid bash forked for the command (its only child), once there is one. */
export function childOf(pid: number): number | undefined {
  try {
    const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim()
    return kids ? Number(kids.split(' ')[0]) : undefined
  } catch {
    return undefined
  }
}

/** Run time so far of every live thread of `pid`, in ms. */
export function threadsCpuMs(pid: number): number {
  let ns = 0
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0])
      } catch {
        /* thread ended meanwhile */
      }
    }
  } catch {
    /* process gone */
  }
  return ns / 1e6
}

/** Samples RssAnon/RssFile of a pid until stopped; keeps the maxima (MiB). */
export class MemorySampler {
  anonMiB = 0
  fileMiB = 0
  private readonly timer: NodeJS.Timeout

  constructor(private readonly pid: () => number | undefined) {
    this.timer = setInterval(() => this.sample(), 20)
    this.timer.unref()
  }

  sample(): void {
    const pid = this.pid()
    if (!pid || !existsSync(`/proc/${pid}/status`)) return
    try {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8')
      const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0)
      this.anonMiB = Math.max(this.anonMiB, kib('RssAnon') / 1024)
      this.fileMiB = Math.max(this.fileMiB, kib('RssFile') / 1024)
    } catch {
      /* exited between the check and the read */
    }
  }

  stop(): void {
    clearInterval(this.timer)
  }
}
