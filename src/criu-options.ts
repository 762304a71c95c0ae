// Every option spelling `criu` 4.1 and 4.2 accept (their getopt table), so a command
// line or config file written for `criu lazy-pages` / `criu page-server` parses here.
//
// What an option does for us is not written here: a CRIU option is *honoured* by a
// command when that command defines an option of the same long name (cli.ts), so adding
// `--tls` to the commands made CRIU's `--tls*` spellings honoured with no change
// here. The rest is accepted and ignored with a debug line, except the few in REFUSED,
// whose meaning we cannot give and whose silent absence would do the wrong thing.

export type Arity = 'none' | 'required' | 'optional'

export interface CriuOption {
  /** Long name without dashes. */
  name: string
  arity: Arity
  /** One-letter spelling, if any. */
  short?: string
  /** CRIU also accepts `--no-NAME` to turn it off. */
  negatable?: boolean
  /** The option we act on under another name (`--restore-detached` is `--daemon`). */
  sameAs?: string
}

const flag = (name: string, extra: Partial<CriuOption> = {}): CriuOption => ({ name, arity: 'none', ...extra })
const bool = (name: string, extra: Partial<CriuOption> = {}): CriuOption => ({ name, arity: 'none', negatable: true, ...extra })
const value = (name: string, short?: string): CriuOption => ({ name, arity: 'required', ...(short ? { short } : {}) })
const maybe = (name: string, short?: string): CriuOption => ({ name, arity: 'optional', ...(short ? { short } : {}) })

/** CRIU 4.2's table (4.1 lacks only `allow-uprobes`), in its order. */
export const CRIU_OPTIONS: readonly CriuOption[] = [
  value('tree', 't'),
  flag('leave-stopped', { short: 's' }),
  flag('leave-running', { short: 'R' }),
  bool('restore-detached', { sameAs: 'daemon' }),
  bool('restore-sibling', { short: 'S' }),
  bool('daemon', { short: 'd' }),
  value('images-dir', 'D'),
  value('work-dir', 'W'),
  value('log-file', 'o'),
  value('join-ns', 'J'),
  value('root', 'r'),
  maybe('ext-unix-sk', 'x'),
  flag('help', { short: 'h' }),
  bool('tcp-established'),
  value('close'),
  bool('log-pid'),
  flag('version', { short: 'V' }),
  bool('evasive-devices'),
  value('pidfile'),
  value('veth-pair'),
  value('action-script'),
  bool('link-remap'),
  bool('shell-job', { short: 'j' }),
  bool('file-locks', { short: 'l' }),
  bool('page-server'),
  value('address'),
  value('port'),
  value('prev-images-dir'),
  flag('ms'),
  bool('track-mem'),
  bool('auto-dedup'),
  value('libdir', 'L'),
  maybe('cpu-cap'),
  bool('force-irmap'),
  value('ext-mount-map', 'M'),
  flag('exec-cmd'),
  maybe('manage-cgroups'),
  value('cgroup-root'),
  value('inherit-fd'),
  value('feature'),
  value('skip-mnt'),
  value('enable-fs'),
  flag('enable-external-sharing'),
  flag('enable-external-masters'),
  value('freeze-cgroup'),
  value('ghost-limit'),
  value('irmap-scan-path'),
  value('lsm-profile'),
  value('timeout'),
  value('external'),
  value('empty-ns'),
  flag('lazy-pages'),
  bool('extra'),
  bool('experimental'),
  flag('all'),
  value('cgroup-props'),
  value('cgroup-props-file'),
  value('cgroup-dump-controller'),
  bool('skip-in-flight'),
  bool('deprecated'),
  bool('display-stats'),
  bool('weak-sysctls'),
  value('status-fd'),
  bool('tcp-close'),
  maybe('verbosity', 'v'),
  value('ps-socket'),
  bool('stream'),
  value('config'),
  flag('no-default-config'),
  value('tls-cacert'),
  value('tls-cacrl'),
  value('tls-cert'),
  value('tls-key'),
  bool('tls'),
  flag('tls-no-cn-verify'),
  value('cgroup-yard'),
  value('pre-dump-mode'),
  value('file-validation'),
  bool('skip-file-rwx-check'),
  value('lsm-mount-context'),
  value('network-lock'),
  bool('mntns-compat-mode'),
  bool('unprivileged'),
  bool('ghost-fiemap'),
  bool('allow-uprobes'),
]

/**
 * Options we cannot honour and must not ignore: ignoring them would quietly do
 * something else than what the user asked for.
 */
export const REFUSED: Readonly<Record<string, string>> = {
  'ps-socket': 'talking over an inherited socket is not supported: give --address and --port',
  stream: 'images from criu-image-streamer are not supported: give the images directory with -D',
}

/** Handled while reading the command line itself (config files), never passed on. */
export const CONFIG_OPTIONS = new Set(['config', 'no-default-config'])

const byName = new Map(CRIU_OPTIONS.map((o) => [o.name, o]))
const byShort = new Map(CRIU_OPTIONS.filter((o) => o.short).map((o) => [o.short!, o]))

export function criuOption(name: string): CriuOption | undefined {
  return byName.get(name)
}

export function criuShort(letter: string): CriuOption | undefined {
  return byShort.get(letter)
}

/** Every long spelling CRIU takes, `no-` forms included. */
export function criuSpellings(): string[] {
  return CRIU_OPTIONS.flatMap((o) => (o.negatable ? [o.name, `no-${o.name}`] : [o.name]))
}
