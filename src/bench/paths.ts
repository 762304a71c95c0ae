// Where the bench finds its tools. Dumps go to disk (not tmpfs): a 4 GiB dump must not
// hold RAM twice while the restored process fills it again.
import { join, resolve } from 'node:path'

export const ROOT = resolve(__dirname, '..', '..')
export const CRIU = process.env.LAZY_PAGES_CRIU ?? join(ROOT, '.criu', 'bin', 'criu')
export const CLI = join(ROOT, 'bin', 'lazy-pages.js')
export const LPW = join(ROOT, 'build', 'workloads', 'lpw')
export const LPW_TOUCH = join(ROOT, 'build', 'workloads', 'lpw-touch')
export const LPW_HOT = join(ROOT, 'build', 'workloads', 'lpw-hot')
export const PROBE = join(ROOT, 'target', 'release', 'lazy-pages-probe')
export const SCRATCH = process.env.LAZY_PAGES_BENCH_SCRATCH ?? join(ROOT, '.work', 'bench')
/** LAZY_PAGES_BENCH_RESULTS: write the report elsewhere (a partial run must not replace the committed one). */
export const RESULTS = process.env.LAZY_PAGES_BENCH_RESULTS ?? join(ROOT, 'bench', 'results')
