// Two "hosts" for the remote scenario: network namespaces joined by a veth pair, the
// sending side (A -> B, where page data flows) shaped with tbf to a 1 Gbit/s link.
// Names carry our pid so a concurrent test run or bench never collides with them.
import { readFileSync } from 'node:fs'

import { run } from './proc'

async function ip(args: string[]): Promise<string> {
  const r = await run('ip', args, 30_000)
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`)
  return r.stdout
}

/**
 * tbf past the rate: how much may leave faster than the rate after an idle spell
 * (burst) and how long a queue may grow (latency). A real port sends at line rate,
 * so the burst is kept to what tbf needs without cutting veth's 64 KB GSO packets
 * into MTU segments in software: 128 KB, 1 ms at 1 Gbit/s (256 KB let 2 ms out at
 * once and hid a sender's gaps). The queue may hold 5 ms, a shallow switch port or
 * an AQM's target; 50 ms would be bufferbloat that no real link is tuned for.
 * Exported so the netns test shapes its link the same way.
 */
export function tbfShaping(rateGbit: number): string[] {
  return ['rate', `${rateGbit}gbit`, 'burst', '128kb', 'latency', '5ms']
}

export class ShapedLink {
  readonly a = `lpbenchA${process.pid}`
  readonly b = `lpbenchB${process.pid}`
  readonly addrA = '10.78.0.1'
  readonly addrB = '10.78.0.2'

  /** `rateGbit` 0: no shaping (the veth's own speed). */
  private constructor(readonly rateGbit: number) {}

  get shaping(): string[] {
    return this.rateGbit ? tbfShaping(this.rateGbit) : []
  }

  /** Both namespaces, or none: a failed setup deletes what it made before throwing. */
  static async create(rateGbit: number): Promise<ShapedLink> {
    const l = new ShapedLink(rateGbit)
    try {
      await ip(['netns', 'add', l.a])
      await ip(['netns', 'add', l.b])
      await ip(['link', 'add', 'vA', 'netns', l.a, 'type', 'veth', 'peer', 'name', 'vB', 'netns', l.b])
      await ip(['-n', l.a, 'addr', 'add', `${l.addrA}/24`, 'dev', 'vA'])
      await ip(['-n', l.b, 'addr', 'add', `${l.addrB}/24`, 'dev', 'vB'])
      for (const [ns, dev] of [[l.a, 'vA'], [l.b, 'vB'], [l.a, 'lo'], [l.b, 'lo']]) await ip(['-n', ns, 'link', 'set', dev, 'up'])
      if (rateGbit) await ip(['netns', 'exec', l.a, 'tc', 'qdisc', 'add', 'dev', 'vA', 'root', 'tbf', ...l.shaping])
    } catch (e) {
      await l.delete()
      throw e
    }
    return l
  }

  /** Command prefix that runs a command on host A or B. */
  exec(ns: string): string[] {
    return ['ip', 'netns', 'exec', ns]
  }

  /**
   * Bytes A has sent on the shaped interface (vA's tx_bytes), read through any process
   * living in netns A: synchronous and cheap, so it can be sampled at the instants a
   * case cares about (SIGUSR2 sent, touches done) without spawning `ip`.
   */
  txBytesA(pidInA: number): number {
    const file = `/proc/${pidInA}/net/dev`
    const line = readFileSync(file, 'utf8')
      .split('\n')
      .find((l) => l.trim().startsWith('vA:'))
    // After "vA:": 8 receive counters, then transmit bytes.
    const bytes = Number(line?.split(':')[1].trim().split(/\s+/)[8])
    if (!Number.isFinite(bytes)) throw new Error(`no vA tx byte counter in ${file} (is pid ${pidInA} in netns ${this.a}?)`)
    return bytes
  }

  /** Deleting a namespace also removes its end of the veth pair, and with it the other end. */
  async delete(): Promise<void> {
    for (const ns of [this.a, this.b]) await run('ip', ['netns', 'del', ns], 30_000)
  }
}
