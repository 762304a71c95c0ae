// A WAN in userspace, since this kernel has no netem: a TCP relay that forwards every
// connection it accepts to one target and delays each direction by D ms plus 0..J ms of
// jitter, optionally at a limited rate, keeping each direction's byte order as TCP would
// see it. Used by the bench's remote-wan scenario and by __test__/wan.spec.ts.
//
// Model, per direction of each connection: a chunk read at time a leaves the bottleneck at
// d = max(a, V - burst/rate) where V, the link's virtual finish time, advances by
// bytes/rate from max(V, a) (a token bucket of `burst` bytes; d = a without a rate), and
// is delivered at max(previous delivery, d + D + uniform(0..J)): never before the chunk
// sent ahead of it. A FIN (half-close) and a reset travel in the same queue, behind the
// data sent before them. The near side is read as fast as it sends (the relay buffers in
// memory, as the pipe of a long fat network holds its bandwidth-delay product); only the
// far side's back-pressure is respected: nothing more is written to a socket whose buffer
// is full until it drains.
//
// Timers: Node's setTimeout has 1 ms resolution and fires up to a millisecond early or
// late, which on a 1 ms path would be the whole delay. A worker thread sleeps in
// Atomics.wait (a futex with a sub-millisecond timeout, no spinning) until the earliest
// delivery is due and then wakes the relay's thread; together about 0.1 ms late.
import { once } from 'node:events'
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net'
import { join } from 'node:path'
import { Worker } from 'node:worker_threads'

export interface RelayOptions {
  /** host and port every accepted connection is forwarded to. */
  target: { host: string; port: number }
  /** where the relay listens (default 127.0.0.1, an ephemeral port). */
  listen?: { host?: string; port?: number }
  /** one-way delay added to each direction (ms). */
  delayMs: number
  /** uniform extra delay 0..jitterMs per chunk (ms), order kept. */
  jitterMs?: number
  /** per-direction rate (bytes/s); 0 or absent: unlimited. */
  rateBytesPerSec?: number
  /** token bucket depth (bytes): what may leave at once after an idle spell; default 128 KiB, as the bench's tbf. */
  burstBytes?: number
  /**
   * Bytes one direction may hold before the relay stops reading its near side (TCP's own
   * flow control takes over). A bound on memory, far above any bandwidth-delay product
   * the bench uses: default 256 MiB.
   */
  maxQueuedBytes?: number
  /**
   * Nice value of the relay's timer thread (and, with RelayThread, of the thread that moves
   * the bytes). The network does not share a CPU with its endpoints; on a 2-vCPU machine
   * it does, and a client that spins would delay its own packets.
   */
  nice?: number
}

/** Bytes forwarded (delivered to the far side) per direction, and connections. */
export interface RelayStats {
  /** client → target. */
  toTarget: number
  /** target → client. */
  toClient: number
  /** connections accepted so far. */
  accepted: number
  /** connections with a socket still open. */
  open: number
  /** the most bytes one direction held at once (queued, not yet delivered). */
  maxQueued: number
  /**
   * When the first byte from a client reached the relay, and when the relay delivered the
   * last byte to a client (monoMs(); NaN: not yet): a transfer on the wire, from the first
   * byte asked to the last byte received, timed as bulkThroughRelay times its own.
   */
  firstFromClientAt: number
  lastToClientAt: number
}

/** Milliseconds on CLOCK_MONOTONIC, the same clock in every thread (performance.now() is per thread). */
export function monoMs(): number {
  const [s, ns] = process.hrtime()
  return s * 1e3 + ns / 1e6
}

/** The worker wakes this much before the due time: the wake-up and the message to the relay's thread take about that. */
const LEAD_MS = 0.2
/** A chunk this close to its due time is delivered on this wake-up rather than on another. */
const EARLY_MS = 0.05

const ALARM_WORKER = `
const { parentPort, workerData } = require('node:worker_threads')
// Linux: setpriority() of tid 0 is this thread's alone.
if (workerData.nice !== undefined) require('node:os').setPriority(0, workerData.nice)
const gen = new Int32Array(workerData.shared, 0, 1)
const due = new Float64Array(workerData.shared, 8, 1)
const now = () => { const [s, ns] = process.hrtime(); return s * 1e3 + ns / 1e6 }
// Wakes LEAD_MS early once per due time; if the relay finds nothing due yet and arms the
// same time again, the second wait runs to the due time itself (never a ping-pong).
let posted = NaN
for (;;) {
  const g = Atomics.load(gen, 0)
  const d = due[0]
  if (!(d < Infinity)) { Atomics.wait(gen, 0, g); continue }
  const left = d - (d === posted ? 0 : ${LEAD_MS}) - now()
  if (left > 0) { Atomics.wait(gen, 0, g, left); continue }
  posted = d
  parentPort.postMessage(d)
  Atomics.wait(gen, 0, g)
}
`

/**
 * One wake-up at a time, at a CLOCK_MONOTONIC instant (monoMs()), from a worker thread
 * blocked in Atomics.wait; re-arming moves it. The worker does not keep the process alive.
 */
class Alarm {
  private readonly worker: Worker
  private readonly gen: Int32Array
  private readonly due: Float64Array
  private armed = Infinity

  constructor(onFire: () => void, nice?: number) {
    const shared = new SharedArrayBuffer(16)
    this.gen = new Int32Array(shared, 0, 1)
    this.due = new Float64Array(shared, 8, 1)
    this.due[0] = Infinity
    this.worker = new Worker(ALARM_WORKER, { eval: true, workerData: { shared, nice } })
    this.worker.on('message', () => {
      this.armed = Infinity
      onFire()
    })
    this.worker.unref()
  }

  /** Wake at `at` (Infinity: not at all); the earlier of two arms is not kept, the last one is. */
  arm(at: number): void {
    if (at === this.armed) return
    this.armed = at
    this.due[0] = at
    Atomics.add(this.gen, 0, 1)
    Atomics.notify(this.gen, 0)
  }

  get armedAt(): number {
    return this.armed
  }

  close(): Promise<number> {
    return this.worker.terminate()
  }
}

type Item = { due: number; data: Buffer } | { due: number; data?: undefined; kind: 'end' | 'reset' }

/** One direction of one connection: from `from` to `to`, through the delay line. */
class Direction {
  private readonly items: Item[] = []
  private head = 0
  private lastDue = 0
  /** virtual finish time of the rate limiter (ms). */
  private linkFree = 0
  /** waiting for 'drain' on `to`. */
  private blocked = false
  private pausedFrom = false
  /** a FIN or reset has been queued: nothing follows it. */
  closed = false
  queued = 0

  constructor(
    private readonly relay: Relay,
    readonly from: Socket,
    readonly to: Socket,
    /** a chunk arrived from `from` / was delivered to `to`. */
    private readonly arrived: () => void,
    private readonly delivered: (bytes: number, at: number) => void,
  ) {}

  private schedule(bytes: number): number {
    const o = this.relay.options
    const now = monoMs()
    let leave = now
    if (o.rateBytesPerSec) {
      this.linkFree = Math.max(this.linkFree, now) + (bytes / o.rateBytesPerSec) * 1000
      leave = Math.max(now, this.linkFree - ((o.burstBytes ?? 128 * 1024) / o.rateBytesPerSec) * 1000)
    }
    const due = Math.max(this.lastDue, leave + o.delayMs + Math.random() * (o.jitterMs ?? 0))
    this.lastDue = due
    return due
  }

  push(data: Buffer): void {
    if (this.closed) return
    this.arrived()
    this.items.push({ due: this.schedule(data.length), data })
    this.queued += data.length
    this.relay.noteQueued(this.queued)
    if (this.queued > this.relay.maxQueued && !this.pausedFrom) {
      this.pausedFrom = true
      this.from.pause()
    }
    this.relay.wake(this.nextDue())
  }

  /** A FIN ('end') or a reset, behind everything sent before it. */
  mark(kind: 'end' | 'reset'): void {
    if (this.closed) return
    this.closed = true
    this.items.push({ due: this.schedule(0), kind })
    this.relay.wake(this.nextDue())
  }

  /** The far side is gone: what is queued for it can never be delivered. */
  drop(): void {
    this.closed = true
    this.items.length = 0
    this.head = 0
    this.queued = 0
  }

  /** When this direction next wants to deliver (Infinity: nothing due, or waiting for a drain). */
  nextDue(): number {
    return this.blocked || this.head >= this.items.length ? Infinity : this.items[this.head].due
  }

  /** Delivers everything due by `now`, in order, until the far side's buffer is full. */
  deliver(now: number): void {
    while (!this.blocked && this.head < this.items.length && this.items[this.head].due <= now + EARLY_MS) {
      const item = this.items[this.head++]
      this.relay.late.add(now - item.due)
      if (item.data) {
        this.queued -= item.data.length
        if (this.to.destroyed) continue
        this.delivered(item.data.length, now)
        if (!this.to.write(item.data)) {
          this.blocked = true
          this.to.once('drain', () => {
            this.blocked = false
            this.deliver(monoMs())
            this.relay.wake(this.nextDue())
          })
        }
      } else if (!this.to.destroyed) {
        if (item.kind === 'end') this.to.end()
        else this.to.resetAndDestroy()
      }
    }
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items.splice(0, this.head)
      this.head = 0
    }
    if (this.pausedFrom && this.queued < this.relay.maxQueued / 2) {
      this.pausedFrom = false
      this.from.resume()
    }
  }
}

/** One accepted connection and its connection to the target. */
class Link {
  readonly up: Direction
  readonly down: Direction
  private closedSockets = 0

  constructor(
    relay: Relay,
    readonly client: Socket,
    readonly server: Socket,
  ) {
    const st = relay.stats
    const first = () => {
      if (Number.isNaN(st.firstFromClientAt)) st.firstFromClientAt = monoMs()
    }
    this.up = new Direction(relay, client, server, first, (n) => (st.toTarget += n))
    this.down = new Direction(
      relay,
      server,
      client,
      () => undefined,
      (n, at) => {
        st.toClient += n
        st.lastToClientAt = at
      },
    )
    for (const [socket, out, into] of [
      [client, this.up, this.down],
      [server, this.down, this.up],
    ] as const) {
      socket.setNoDelay(true)
      socket.on('data', (d: Buffer) => out.push(d))
      socket.on('end', () => out.mark('end'))
      // A reset (or a refused connect) reaches the other side after the delay, behind
      // the data sent before it; nothing can be delivered to this socket any more.
      socket.on('error', () => {
        out.mark('reset')
        into.drop()
      })
      socket.on('close', () => {
        // Closed without a FIN or an error of its own (destroyed here): a reset for the peer.
        out.mark('reset')
        into.drop()
        if (++this.closedSockets === 2) relay.forget(this)
      })
    }
  }

  directions(): Direction[] {
    return [this.up, this.down]
  }

  /** Both ends reset at once, nothing more delivered: a cut link, not a delayed one. */
  cut(): void {
    this.up.drop()
    this.down.drop()
    for (const s of [this.client, this.server]) if (!s.destroyed) s.resetAndDestroy()
  }
}

/** Milliseconds late (or early, below 0) of each delivery against its due time, in 10 µs bins up to 100 ms. */
export class Lateness {
  private readonly bins = new Uint32Array(10_001)
  count = 0
  max = -Infinity

  add(ms: number): void {
    this.count++
    if (ms > this.max) this.max = ms
    this.bins[Math.min(this.bins.length - 1, Math.max(0, Math.round(ms * 100)))]++
  }

  /** The q-quantile (ms, to 10 µs; early deliveries count as 0). */
  quantile(q: number): number {
    if (!this.count) return NaN
    const rank = Math.ceil(q * this.count)
    let seen = 0
    for (let i = 0; i < this.bins.length; i++) if ((seen += this.bins[i]) >= rank) return i / 100
    return this.max
  }
}

export class Relay {
  readonly stats: RelayStats = { toTarget: 0, toClient: 0, accepted: 0, open: 0, maxQueued: 0, firstFromClientAt: NaN, lastToClientAt: NaN }
  /** how late the relay delivered, against the model's due times: its own error. */
  readonly late = new Lateness()
  readonly maxQueued: number
  private readonly links = new Set<Link>()
  private readonly alarm: Alarm
  private readonly server: Server
  private listening = false

  private constructor(readonly options: RelayOptions) {
    if (!(options.delayMs >= 0) || !((options.jitterMs ?? 0) >= 0) || !((options.rateBytesPerSec ?? 0) >= 0)) {
      throw new Error(`relay: bad options ${JSON.stringify(options)}`)
    }
    this.maxQueued = options.maxQueuedBytes ?? 256 * 2 ** 20
    this.alarm = new Alarm(() => this.tick(), options.nice)
    this.server = createServer({ allowHalfOpen: true }, (client) => this.accept(client))
  }

  /** A relay listening (default 127.0.0.1, ephemeral port); `port` says where. */
  static async start(options: RelayOptions): Promise<Relay> {
    const r = new Relay(options)
    r.server.listen(options.listen?.port ?? 0, options.listen?.host ?? '127.0.0.1')
    try {
      await once(r.server, 'listening')
    } catch (e) {
      await r.alarm.close()
      throw e
    }
    r.listening = true
    return r
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port
  }

  get host(): string {
    return (this.server.address() as AddressInfo).address
  }

  /** What these options emulate, in one phrase. */
  describe(): string {
    return describeLink(this.options)
  }

  private accept(client: Socket): void {
    this.stats.accepted++
    this.stats.open++
    const server = connect({ host: this.options.target.host, port: this.options.target.port, allowHalfOpen: true })
    this.links.add(new Link(this, client, server))
  }

  forget(link: Link): void {
    if (this.links.delete(link)) this.stats.open--
  }

  noteQueued(bytes: number): void {
    if (bytes > this.stats.maxQueued) this.stats.maxQueued = bytes
  }

  /** A direction has something due at `at`: wake by then. */
  wake(at: number): void {
    if (at < this.alarm.armedAt) this.alarm.arm(at)
  }

  private tick(): void {
    // Writing takes time: what fell due meanwhile goes now, not after another wake-up.
    for (;;) {
      const now = monoMs()
      let next = Infinity
      for (const link of this.links) {
        for (const d of link.directions()) {
          d.deliver(now)
          next = Math.min(next, d.nextDue())
        }
      }
      if (next > monoMs() + EARLY_MS) return this.alarm.arm(next)
    }
  }

  /** Resets every connection now, both ends (the reconnect test's cut cable); the relay keeps accepting. */
  cutAll(): number {
    const n = this.links.size
    for (const link of [...this.links]) link.cut()
    return n
  }

  /** Stops listening, cuts what is still open, stops the timer thread. Once is enough; again does nothing. */
  async close(): Promise<void> {
    this.cutAll()
    if (!this.listening) return
    this.listening = false
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
    await this.alarm.close()
  }
}

/** "10 ms rtt ± 1 ms jitter, 1 Gbit/s" and the like. */
export function describeLink(o: Pick<RelayOptions, 'delayMs' | 'jitterMs' | 'rateBytesPerSec'>): string {
  const rate = o.rateBytesPerSec ? `${fmtRate(o.rateBytesPerSec)}` : 'unlimited'
  return `${+(2 * o.delayMs).toFixed(3)} ms rtt, jitter ${o.jitterMs ?? 0} ms per direction, ${rate}`
}

function fmtRate(bytesPerSec: number): string {
  const bits = bytesPerSec * 8
  return bits >= 1e9 ? `${+(bits / 1e9).toFixed(3)} Gbit/s` : `${+(bits / 1e6).toFixed(3)} Mbit/s`
}

/** Bytes per second of a rate in Gbit/s. */
export const gbitToBytes = (gbit: number) => (gbit * 1e9) / 8

/**
 * Round trips of a 1-byte message through a relay with these options to an echo server:
 * what the emulated path's round trip is, as a TCP application sees it (ms, sorted).
 */
export async function pingThroughRelay(options: Omit<RelayOptions, 'target'>, count: number): Promise<number[]> {
  const echo = createServer((s) => {
    s.setNoDelay(true)
    s.on('data', (d) => s.write(d))
    s.on('error', () => undefined)
  })
  echo.listen(0, '127.0.0.1')
  await once(echo, 'listening')
  const relay = await Relay.start({ ...options, target: { host: '127.0.0.1', port: (echo.address() as AddressInfo).port } })
  const sock = connect({ host: '127.0.0.1', port: relay.port })
  sock.setNoDelay(true)
  try {
    await once(sock, 'connect')
    const rtts: number[] = []
    for (let i = 0; i < count; i++) {
      const t0 = monoMs()
      const reply = once(sock, 'data')
      sock.write('p')
      await reply
      rtts.push(monoMs() - t0)
    }
    return rtts.sort((a, b) => a - b)
  } finally {
    sock.destroy()
    await relay.close()
    echo.close()
  }
}

// Source and sink of the bulk reference, in a thread of their own: on the relay's thread
// they would take its CPU, which a page server and a client (other processes) do not. Each
// request is a line with a byte count; the source answers with that many bytes.
const BULK_WORKER = `
const { parentPort } = require('node:worker_threads')
const net = require('node:net')
const now = () => { const [s, ns] = process.hrtime(); return s * 1e3 + ns / 1e6 }
const block = Buffer.alloc(1 << 20, 0x5a)
const source = net.createServer((s) => {
  s.on('error', () => undefined)
  let line = ''
  const onData = (d) => {
    line += d
    if (!line.includes('\\n')) return
    s.off('data', onData)
    let left = Number(line.trim())
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, block.length)
        left -= n
        if (!s.write(n === block.length ? block : block.subarray(0, n))) return void s.once('drain', pump)
      }
      s.end()
    }
    pump()
  }
  s.on('data', onData)
})
source.listen(0, '127.0.0.1', () => parentPort.postMessage({ port: source.address().port }))
parentPort.on('message', ({ relayPort, bytes }) => {
  const sink = net.connect({ host: '127.0.0.1', port: relayPort })
  sink.setNoDelay(true)
  let got = 0
  let t0 = 0
  sink.on('connect', () => {
    t0 = now()
    sink.write(bytes + '\\n')
  })
  sink.on('data', (d) => {
    got += d.length
    if (got >= bytes) {
      sink.destroy()
      parentPort.postMessage({ secs: (now() - t0) / 1000 })
    }
  })
  sink.on('error', (e) => parentPort.postMessage({ error: e.message }))
})
`

/** What a fresh thread, a fresh relay and TCP's first bytes cost the first transfer: moved once, untimed. */
const BULK_WARM_UP = 2 * 2 ** 20

/**
 * A plain bulk TCP transfer of `bytes` through a relay with these options: a source that
 * sends them as fast as TCP takes them once asked, a sink that counts them. Seconds from
 * the sink's request to its last byte: the most a client could get out of this path (one
 * round trip, then the data at the path's rate), the reference for utilisation. A first,
 * untimed transfer through the same relay warms both threads up.
 */
export async function bulkThroughRelay(options: Omit<RelayOptions, 'target'>, bytes: number, timeoutMs = 600_000): Promise<number> {
  const worker = new Worker(BULK_WORKER, { eval: true })
  let relay: Relay | undefined
  let timer: NodeJS.Timeout | undefined
  try {
    const message = () =>
      new Promise<{ port?: number; secs?: number; error?: string }>((resolve, reject) => {
        worker.once('message', resolve)
        worker.once('error', reject)
      })
    const { port } = await message()
    relay = await Relay.start({ ...options, target: { host: '127.0.0.1', port: port! } })
    const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`bulk transfer through the relay took over ${timeoutMs} ms`)), timeoutMs)))
    let secs = NaN
    for (const n of [BULK_WARM_UP, bytes]) {
      const done = message()
      worker.postMessage({ relayPort: relay.port, bytes: n })
      const r = await Promise.race([done, timeout])
      if (r.error) throw new Error(`bulk transfer through the relay: ${r.error}`)
      secs = r.secs!
    }
    return secs
  } finally {
    clearTimeout(timer)
    await relay?.close()
    await worker.terminate()
  }
}

/**
 * A Relay running in a worker thread of its own at `options.nice` (the bench's: the thread
 * that starts it keeps spawning clients and servers, which would inherit a changed nice
 * value). Only from compiled JavaScript (dist/), as the bench runs.
 */
export class RelayThread {
  private constructor(
    private readonly worker: Worker,
    readonly port: number,
  ) {}

  static async start(options: RelayOptions): Promise<RelayThread> {
    const worker = new Worker(join(__dirname, 'relay-thread.js'), { workerData: options })
    const first = await new Promise<{ port?: number; error?: string }>((resolve, reject) => {
      worker.once('message', resolve)
      worker.once('error', reject)
    })
    if (!first.port) {
      await worker.terminate()
      throw new Error(`relay thread: ${first.error}`)
    }
    return new RelayThread(worker, first.port)
  }

  /** One question at a time: the answer is the thread's next message. */
  private ask<T>(what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const fail = (e: Error) => reject(e)
      this.worker.once('error', fail)
      this.worker.once('message', (m: T) => {
        this.worker.off('error', fail)
        resolve(m)
      })
      this.worker.postMessage(what)
    })
  }

  /** Its counters, and its lateness p99 (ms). */
  stats(): Promise<RelayStats & { lateP99Ms: number }> {
    return this.ask('stats')
  }

  async close(): Promise<void> {
    await this.ask('close')
    await this.worker.terminate()
  }
}
