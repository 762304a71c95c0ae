// Command line: `lazy-pages [daemon options]` (drop-in for `criu lazy-pages`),
// `lazy-pages images`. Option spellings follow CRIU so scripts run unchanged.
import { availableParallelism } from 'node:os'

import { Command, InvalidArgumentError, Option } from 'commander'

import { DEFAULT_VERBOSITY } from './argv'
import { compatibilityHelp, resolveArgv, type Note } from './criu-argv'
import { oneLine, UserError } from './errors'
import { addTlsOptions } from './tls'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const pkg: { version: string } = require('../package.json')

/**
 * Background fill threads by default: one CPU is left to the fault thread and the
 * restored process, the rest fill, at least 1 and at most 2 (1 on this 2-CPU VM).
 * Measured here (quiet 2-vCPU VM, 1 GiB, interleaved rounds, 2026-12-01 19:50 UTC): two
 * jobs fill in 0.20 s against 0.31-0.33 s with one (since each job has its own stripe of
 * memory, `engine/stripes.rs`), but faults during a two-job fill waited p99 0.4-3.6 ms
 * against 0.2-0.35 ms with one: with a fill thread on every CPU, a fault's path (the
 * woken fault thread, the gate, the woken process) meets a busy CPU. Faults come first,
 * so two fill threads only from 3 CPUs on; more was not measured (the bench machine
 * has two CPUs), so it stays a choice: --jobs N.
 */
const DEFAULT_JOBS = Math.max(1, Math.min(availableParallelism() - 1, 2))

function nonNegativeInt(name: string) {
  return (value: string): number => {
    if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`${name} must be a non-negative integer`)
    return Number(value)
  }
}

function positiveInt(name: string) {
  return (value: string): number => {
    const n = nonNegativeInt(name)(value)
    if (n === 0) throw new InvalidArgumentError(`${name} must be greater than 0`)
    return n
  }
}

function verbosityOption(): Option {
  return new Option('-v, --verbosity <level>', 'log level: 0 messages, 1 errors, 2 warnings (default), 3 info, 4 debug; -v, -vv, -v4 also work')
    .argParser(nonNegativeInt('--verbosity'))
    .default(DEFAULT_VERBOSITY)
}

/** CRIU's config-file options, on both CRIU commands (read by criu-argv.ts, not by commander). */
function configOptions(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'read options from this CRIU config file (then not the default ones)')
    .option('--no-default-config', 'do not read /etc/criu/default.conf and ~/.criu/default.conf')
}

/** `notes` receives the lines criu-argv.ts wants logged once the log is open. */
export function buildProgram(rawArgs: string[] = [], notes: Note[] = []): Command {
  const program = new Command('lazy-pages')
  program
    .description(
      'Serve the memory of a process restored by `criu restore --lazy-pages` over userfaultfd:\n' +
        'faulted pages first, the rest in the background. A drop-in replacement for `criu lazy-pages`.',
    )
    .version(pkg.version, '-V, --version')
    .enablePositionalOptions()
    .showHelpAfterError()
    .option('-D, --images-dir <dir>', 'images directory of the dump to serve', '.')
    .option('-W, --work-dir <dir>', 'work directory: lazy-pages.socket, relative log and pidfile paths (default: the images dir)')
    .option('-d, --daemon', 'detach once the socket is ready')
    .option('--pidfile <file>', 'with --daemon: write the daemon pid here (relative to the work dir)')
    .option('--status-fd <fd>', 'write one zero byte to this fd and close it when ready', nonNegativeInt('--status-fd'))
    .option('-o, --log-file <file>', 'log here instead of stderr (relative to the work dir; "-" = stdout); lines a full disk cannot take are dropped and counted, the restore goes on')
    .addOption(verbosityOption())
    .option('--page-server', 'fetch lazy pages from a page server (--address, --port) instead of the local pages images')
    .option('--address <host>', 'with --page-server: the page server host')
    .option('--port <port>', 'with --page-server: the page server port', positiveInt('--port'))
    .option(
      '--reconnect <seconds>',
      "with --page-server: if a lazy-pages page server drops the connection, reconnect and resume for up to this long (CRIU's page server serves one session: leave 0 for it)",
      nonNegativeInt('--reconnect'),
      0,
    )
    .option(
      '--stall-timeout <seconds>',
      'with --page-server: fail when the page server sends nothing for this long while a request is unanswered or a reply partly received',
      positiveInt('--stall-timeout'),
      60,
    )
    .option(
      '--urgent-connection',
      "with --page-server and a lazy-pages page server: a second connection for faults, so they never queue behind background pages (CRIU's page server takes one connection: not for it)",
    )
    .addOption(new Option('--criu-version <version>', "the page server's CRIU wire format (default: from the images)").choices(['4.1', '4.2']))
  addTlsOptions(program, 'page server')
  program
    .option('--connect-timeout <seconds>', 'fail if no restore connects within this time, or if its handshake (connect to "restore finished") then takes longer (0 = wait forever)', nonNegativeInt('--connect-timeout'), 300)
    .option('--jobs <n>', 'background fill threads (default: CPUs - 1, at least 1, at most 2)', positiveInt('--jobs'), DEFAULT_JOBS)
    .option(
      '--chunk-pages <n>',
      'pages per background claim (bounds how long a fault can wait behind one; default: 64, with --page-server 256: larger requests cost the page server less)',
      positiveInt('--chunk-pages'),
    )
    .option('--fill-delay <ms>', 'after restore finishes, serve only faults (and a --prefetch-ws working set) for this long before the background fill starts (with 0, the default, the fill starts as soon as each process\'s memory arrives, before the restore finishes)', nonNegativeInt('--fill-delay'), 0)
    .addOption(
      new Option('--prefetch <strategy>', 'background fill order after restore finishes')
        .choices(['neighbourhood', 'address'])
        .default('neighbourhood'),
    )
    .option('--stats-json <file>', 'write the per-task and total summary as JSON here (relative to the work dir)')
    .option(
      '--record-ws <file>',
      'write each process\'s working set here (relative to the work dir): the lazy pages it faulted on, in order (background fill brings pages before they fault, so record with a --fill-delay that covers the start-up you want to capture)',
    )
    .option('--prefetch-ws <file>', 'fetch the pages of this working set (from --record-ws on the same dump) first, as soon as each process arrives (relative to the work dir)')
    .option(
      '--resume-timeout <seconds>',
      'if this daemon dies before every page is in, its guardian keeps the restored processes waiting this long for the same command to be run again (which resumes), then poisons every unserved page (SIGBUS on touch, never zeros)',
      nonNegativeInt('--resume-timeout'),
      60,
    )
    .option('--no-progress', 'no progress bar, even on a TTY')
  configOptions(program)
    .addHelpText('after', () => compatibilityHelp(program, 'lazy-pages'))
    .addHelpText(
      'after',
      '\nExit status: 0 every lazy page served (or dropped with its task) and every report written; ' +
        '1 the restore failed (unserved pages poisoned) or never started; ' +
        '2 every page served, but --stats-json or --record-ws could not be written (one line names the file).',
    )
    .action(async (opts) => {
      const { runDaemon } = await import('./daemon')
      process.exitCode = await runDaemon({ ...opts, notes }, rawArgs)
    })

  program
    .command('images')
    .description('validate a dump and print, per task, its VMAs and pages (total, lazy, in parent, present, bytes)')
    .option('-D, --images-dir <dir>', 'images directory', '.')
    .option('--json', 'print JSON (numbers as plain numbers)')
    .addOption(verbosityOption())
    .action(async (opts: { imagesDir: string; json?: boolean }) => {
      const { readImagesReport, formatImagesTable } = await import('./images')
      const report = await readImagesReport(opts.imagesDir)
      process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : formatImagesTable(report) + '\n')
    })

  program
    .command('rebase')
    .description('turn the full dump -D into an incremental dump on top of an earlier dump of the same processes (pages equal in --parent become parent holes, as a pre-dump chain)')
    .requiredOption('-D, --images-dir <dir>', 'images directory of the later, full dump (rewritten in place)')
    .requiredOption('--parent <dir>', 'images directory of the earlier dump of the same process tree')
    .option('--json', 'print JSON (numbers as plain numbers)')
    .action(async (opts: { imagesDir: string; parent: string; json?: boolean }) => {
      const { runRebase } = await import('./transform')
      await runRebase(opts)
    })

  program
    .command('split')
    .description('copy the dump -D to -o without its lazy page data, as `criu dump --lazy-pages` writes it (lazy pages then come from a page server)')
    .requiredOption('-D, --images-dir <dir>', 'images directory to copy')
    .requiredOption('-o, --out <dir>', 'new images directory (must not exist, or be empty)')
    .option('--json', 'print JSON (numbers as plain numbers)')
    .action(async (opts: { imagesDir: string; out: string; json?: boolean }) => {
      const { runSplit } = await import('./transform')
      await runSplit(opts)
    })

  const pageServer = program
    .command('page-server')
    .description('serve the lazy pages of a dump over CRIU\'s page-server protocol, to lazy-pages --page-server or criu lazy-pages --page-server')
    .option('-D, --images-dir <dir>', 'images directory of a normal dump', '.')
    .option('--address <addr>', 'numeric address to listen on (default: all IPv4)')
    .option('--port <port>', 'port to listen on (0 or absent: an ephemeral port, printed)', nonNegativeInt('--port'), 0)
    .option('--keep-serving', 'serve any number of restores, concurrently (default: exit after one session, as CRIU)')
    .option('--lazy-pages', 'accepted for `criu page-server --lazy-pages` compatibility (always on)')
    .addOption(new Option('--criu-version <version>', 'wire format to speak (default: from the images)').choices(['4.1', '4.2']))
  addTlsOptions(pageServer, 'client')
  pageServer
    .option('-W, --work-dir <dir>', 'work directory for relative -o and --pidfile (default: the images dir)')
    .option('-d, --daemon', 'detach once listening')
    .option('--pidfile <file>', 'with --daemon: write the server pid here')
    .option('--status-fd <fd>', 'write one zero byte to this fd and close it when listening', nonNegativeInt('--status-fd'))
    .option('-o, --log-file <file>', 'log here instead of stderr')
    .addOption(verbosityOption())
  configOptions(pageServer)
    .addHelpText('after', () => compatibilityHelp(pageServer, 'lazy-pages page-server'))
    .action(async (opts) => {
      const { runPageServer } = await import('./page-server')
      process.exitCode = await runPageServer({ ...opts, notes }, rawArgs)
    })

  return program
}

export { positiveInt }

export async function main(argv: string[]): Promise<void> {
  const notes: Note[] = []
  const program = buildProgram(argv, notes)
  program.exitOverride()
  try {
    const resolved = resolveArgv(argv, program)
    notes.push(...resolved.notes)
    await program.parseAsync(resolved.args, { from: 'user' })
  } catch (err) {
    const code = (err as { code?: string }).code
    if (code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help') {
      process.exitCode = 0
      return
    }
    if (code && code.startsWith('commander.')) {
      process.exitCode = (err as { exitCode?: number }).exitCode ?? 1
      return // commander already printed the message
    }
    process.stderr.write(`lazy-pages: ${oneLine(err)}\n`)
    process.exitCode = err instanceof UserError ? err.exitCode : 1
  }
}
