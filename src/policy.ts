// Background fill order. The engine fills in address order on its own; a strategy
// sees fault notices (after the fact, off the fault path) and may push ranges to
// the front. Pluggable: anything implementing PrefetchStrategy.
import type { DaemonEvent } from '../index'

export interface Prioritizer {
  prioritize(pid: number, addr: number, pages: number): void
}

export interface PrefetchStrategy {
  readonly name: string
  onEvent(event: DaemonEvent, daemon: Prioritizer): void
}

const PAGE = 4096

/** Address order only: no hints. */
export class AddressOrder implements PrefetchStrategy {
  readonly name = 'address'
  onEvent(): void {}
}

/**
 * A fault predicts its neighbours: pull the window around each fault ahead of the
 * address-order fill. Faults inside the last window of a task are skipped, so a
 * sequential scan costs one hint per window, not one per page.
 */
export class Neighbourhood implements PrefetchStrategy {
  readonly name = 'neighbourhood'
  private readonly last = new Map<number, { start: number; end: number }>()

  constructor(
    private readonly before = 16 * PAGE,
    private readonly after = 240 * PAGE,
  ) {}

  onEvent(event: DaemonEvent, daemon: Prioritizer): void {
    if (event.kind !== 'fault' || event.addr === undefined || event.pid === undefined) return
    const addr = event.addr - (event.addr % PAGE)
    const key = event.task ?? event.pid
    const prev = this.last.get(key)
    if (prev && addr >= prev.start && addr < prev.end) return
    const start = Math.max(0, addr - this.before)
    const end = addr + this.after
    this.last.set(key, { start, end })
    daemon.prioritize(event.pid, start, (end - start) / PAGE)
  }
}

export function strategyByName(name: string): PrefetchStrategy {
  switch (name) {
    case 'address':
      return new AddressOrder()
    case 'neighbourhood':
      return new Neighbourhood()
    default:
      throw new Error(`unknown prefetch strategy ${name}`)
  }
}
