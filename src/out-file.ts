// Files this process writes (-o, --stats-json, --record-ws), most often in a work dir
// that other users may write to (/tmp, a 1777 or group-writable dir). A name planted
// there must not turn our write into one on a file we did not mean: a symlink (we run
// as root; fs.protected_symlinks may be off), a hard link to someone's file, a FIFO
// that blocks us, or a file another user owns and can read back.
//
// openOwned: a file kept open and written as we go (the log). Opened O_NOFOLLOW (a
// symlink as the last component is refused by the kernel) and O_NONBLOCK (a FIFO
// cannot hang the open), then checked on the descriptor itself, so nothing can be
// swapped in between: a regular file, ours, with one link; only then truncated.
// replaceFile: a report written whole at the end. Written to a new file created
// O_EXCL|O_NOFOLLOW in the same directory and renamed over the name (rename replaces a
// link, never what it points at); a name that is a symlink or not ours is refused.
// Not covered: symlinked directories inside the path (the path is the caller's).
import { closeSync, constants, fstatSync, ftruncateSync, lstatSync, openSync, renameSync, unlinkSync, writeSync, type Stats } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { randomBytes } from 'node:crypto'

import { UserError } from './errors'

const { O_WRONLY, O_CREAT, O_EXCL, O_APPEND, O_NOFOLLOW, O_NONBLOCK } = constants

const code = (err: unknown) => (err as NodeJS.ErrnoException).code ?? String(err)

/** What a file that is not a regular one is, for a one-line error (shared with option-file.ts). */
export function kindOf(st: Pick<Stats, 'isSymbolicLink' | 'isFIFO' | 'isCharacterDevice' | 'isBlockDevice' | 'isSocket' | 'isDirectory'>): string {
  if (st.isSymbolicLink()) return 'a symbolic link'
  if (st.isFIFO()) return 'a FIFO'
  if (st.isCharacterDevice()) return 'a character device'
  if (st.isBlockDevice()) return 'a block device'
  if (st.isSocket()) return 'a socket'
  if (st.isDirectory()) return 'a directory'
  return 'not a regular file'
}

/** Why `st` is not a file we may write in place of, or undefined if it is one. */
function notOurs(st: Stats, inPlace: boolean): string | undefined {
  if (!st.isFile()) return `is ${kindOf(st)}, not a regular file`
  const uid = process.geteuid?.() ?? 0
  if (st.uid !== uid) return `belongs to uid ${st.uid}, not to us (uid ${uid})`
  // Writing in place through a second name would write someone's file.
  if (inPlace && st.nlink !== 1) return `has ${st.nlink} hard links`
  return undefined
}

function isSymlink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink()
  } catch {
    return false
  }
}

/** Opens `path` to write, refusing anything but our own regular file; `append` keeps its content, else it is truncated. The error is one line naming `what` and the file. */
export function openOwned(path: string, what: string, append: boolean): number {
  let fd: number
  try {
    fd = openSync(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | (append ? O_APPEND : 0), 0o644)
  } catch (err) {
    // ELOOP, or EACCES on some kernels when O_CREAT meets a symlink in a sticky dir.
    if (isSymlink(path)) throw new UserError(`${what} ${path}: is a symbolic link: refused (it could point at any file)`)
    throw new UserError(`${what} ${path}: cannot open: ${code(err)}`)
  }
  try {
    const why = notOurs(fstatSync(fd), true)
    if (why) throw new UserError(`${what} ${path}: ${why}: refused`)
    if (!append) ftruncateSync(fd, 0)
    return fd
  } catch (err) {
    closeSync(fd)
    throw err instanceof UserError ? err : new UserError(`${what} ${path}: ${code(err)}`)
  }
}

/** Checks now what `replaceFile` would refuse later, so a bad name is found before a restore, not after it. */
export function checkReplaceable(path: string, what: string): void {
  let st: Stats
  try {
    st = lstatSync(path)
  } catch (err) {
    if (code(err) === 'ENOENT') return
    throw new UserError(`${what} ${path}: ${code(err)}`)
  }
  const why = notOurs(st, false)
  if (why) throw new UserError(`${what} ${path}: ${why}: refused`)
}

/** Writes `data` as the whole new content of `path` (see the header). The error is one line naming `what` and the file; the old content, if any, is then left as it was. */
export function replaceFile(path: string, what: string, data: string): void {
  checkReplaceable(path, what)
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}`)
  let fd: number
  try {
    fd = openSync(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644)
  } catch (err) {
    throw new UserError(`${what} ${path}: cannot create ${basename(temp)} next to it: ${code(err)}`)
  }
  try {
    const bytes = Buffer.from(data, 'utf8')
    for (let off = 0; off < bytes.length; ) off += writeSync(fd, bytes, off)
    const written = fd
    fd = -1
    closeSync(written)
    renameSync(temp, path)
  } catch (err) {
    if (fd >= 0) closeSync(fd)
    try {
      unlinkSync(temp)
    } catch {
      /* already renamed, or never there */
    }
    throw new UserError(`${what} ${path}: cannot write: ${code(err)}`)
  }
}
