// placeholder until the daemon lands
export async function runDaemon(_opts: unknown): Promise<number> {
  throw new Error('daemon not implemented yet')
}
