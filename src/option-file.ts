// Files named by options and read whole (config files, --prefetch-ws), under the rule
// the images follow (crates/core/src/images/open.rs): a FIFO must not hang start-up,
// a device or a huge (or sparse) file must not fill our memory. So: opened
// O_NONBLOCK|O_NOCTTY, a regular file only (a symlink to one is fine: the name is the
// user's), at most `maxBytes`, read with that bound even if it grows meanwhile.
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs'

import { kindOf } from './out-file'

const { O_RDONLY, O_NONBLOCK, O_NOCTTY } = constants

/** Why a file was not read; `code` is the errno name when opening it failed (ENOENT: missing). */
export class OptionFileError extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message)
  }
}

const MIB = 1 << 20
export const MAX_CONFIG_BYTES = MIB


const size = (n: number) => (n >= MIB ? `${n / MIB} MiB` : `${n} bytes`)

/** The whole text of `path`, or an OptionFileError whose message reads after "FILE: ". */
export function readOptionFile(path: string, maxBytes: number): string {
  let fd: number
  try {
    fd = openSync(path, O_RDONLY | O_NONBLOCK | O_NOCTTY)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new OptionFileError(`cannot read it: ${code ?? err}`, code)
  }
  try {
    const st = fstatSync(fd)
    if (!st.isFile()) throw new OptionFileError(`is ${kindOf(st)}, not a regular file`)
    if (st.size > maxBytes) throw new OptionFileError(`is ${st.size} bytes, more than the ${size(maxBytes)} it may have`)
    const buf = Buffer.alloc(maxBytes + 1)
    let len = 0
    for (let n; len < buf.length && (n = readSync(fd, buf, len, buf.length - len, null)) > 0; ) len += n
    if (len > maxBytes) throw new OptionFileError(`grew past the ${size(maxBytes)} it may have while read`)
    return buf.subarray(0, len).toString('utf8')
  } catch (err) {
    if (err instanceof OptionFileError) throw err
    throw new OptionFileError(`cannot read it: ${(err as NodeJS.ErrnoException).code ?? err}`)
  } finally {
    closeSync(fd)
  }
}
