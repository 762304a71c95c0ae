// Errors the user can act on: printed as one line, exit status 1, no stack.
export class UserError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message)
    this.name = 'UserError'
  }
}

export function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err)
  return text.replace(/\s*\n\s*/g, ' ').trim()
}
