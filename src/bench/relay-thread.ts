// The body of a RelayThread (relay.ts): a Relay at the nice value it was given, answering
// 'stats' and 'close' from the thread that started it.
import { setPriority } from 'node:os'
import { parentPort, workerData } from 'node:worker_threads'

import { Relay, type RelayOptions } from './relay'

const options = workerData as RelayOptions
const port = parentPort!

async function main(): Promise<void> {
  // Linux: setpriority() of tid 0 is this thread's alone.
  if (options.nice !== undefined) setPriority(0, options.nice)
  const relay = await Relay.start(options)
  port.postMessage({ port: relay.port })
  port.on('message', async (what: string) => {
    if (what === 'stats') port.postMessage({ ...relay.stats, lateP99Ms: relay.late.quantile(0.99) })
    if (what === 'close') {
      await relay.close()
      port.postMessage('closed')
    }
  })
}

main().catch((e) => port.postMessage({ error: e instanceof Error ? e.message : String(e) }))
