import { join, resolve } from 'node:path'

export const ROOT = resolve(__dirname, '..', '..')
export const CRIU = process.env.LAZY_PAGES_CRIU ?? join(ROOT, '.criu', 'bin', 'criu')
export const LPW = join(ROOT, 'build', 'workloads', 'lpw')
export const LPW_HOT = join(ROOT, 'build', 'workloads', 'lpw-hot')
/** LAZY_PAGES_CLI: run the tests against another build (e.g. to see a new test fail before its fix). */
export const CLI = process.env.LAZY_PAGES_CLI ?? join(ROOT, 'bin', 'lazy-pages.js')
/** Scratch space for dumps: on disk, not tmpfs, so 256 MiB dumps don't eat RAM twice. */
export const SCRATCH = process.env.LAZY_PAGES_SCRATCH ?? join(ROOT, '.work', 'test')
