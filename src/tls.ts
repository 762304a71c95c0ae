// CRIU's --tls options, shared by `lazy-pages --page-server` (client) and
// `lazy-pages page-server` (server). Same spellings, same defaults; the files
// are read and checked by the native side (crates/core/src/remote/tls.rs).
// As in CRIU, the --tls-* file options mean nothing without --tls.
import { X509Certificate } from 'node:crypto'

import type { Command } from 'commander'

import type { TlsOptions } from '../index'
import { readOptionFile } from './option-file'

/** CRIU's default --tls-cert (crates/core/src/remote/tls.rs). */
const DEFAULT_CERT = '/etc/pki/criu/cert.pem'

export interface TlsCliOptions {
  tls?: boolean
  tlsCacert?: string
  tlsCacrl?: string
  tlsCert?: string
  tlsKey?: string
  tlsNoCnVerify?: boolean
}

export function addTlsOptions(cmd: Command, peer: string): Command {
  return cmd
    .option('--tls', `TLS with mutual X.509 authentication on the page-server connection (as CRIU's --tls; the ${peer} needs it too)`)
    .option('--tls-cacert <file>', 'with --tls: CA certificate(s) to trust, PEM (default: the system trust and /etc/pki/CA/cacert.pem)')
    .option('--tls-cacrl <file>', 'with --tls: certificate revocation list, PEM (default: /etc/pki/CA/cacrl.pem, if readable)')
    .option('--tls-cert <file>', 'with --tls: own certificate, PEM (default: /etc/pki/criu/cert.pem)')
    .option('--tls-key <file>', 'with --tls: own private key, PEM (default: /etc/pki/criu/private/key.pem)')
    .option('--tls-no-cn-verify', `with --tls: do not check that the ${peer}'s certificate names --address`)
}

/** The native options, or undefined without --tls. */
export function tlsOptions(opts: TlsCliOptions): TlsOptions | undefined {
  if (!opts.tls) return undefined
  return {
    cacert: opts.tlsCacert,
    cacrl: opts.tlsCacrl,
    cert: opts.tlsCert,
    key: opts.tlsKey,
    noCnVerify: !!opts.tlsNoCnVerify,
  }
}

/** True for addresses only this host can reach (no warning for a plaintext page server there). */
export function isLoopback(address: string): boolean {
  return /^127\./.test(address) || address === '::1' || address === 'localhost'
}

/**
 * With --tls, a warning when our own certificate is outside its validity dates now:
 * the server starts (as CRIU's does) but every client will refuse it. Read after the
 * native side loaded it, so the file is known to be a sane PEM; anything unexpected
 * here says nothing rather than stop a server that did start.
 */
export function ownCertificateDates(opts: TlsCliOptions, now = new Date()): string | undefined {
  if (!opts.tls) return undefined
  const path = opts.tlsCert ?? DEFAULT_CERT
  let cert: X509Certificate
  try {
    cert = new X509Certificate(readOptionFile(path, 1 << 20))
  } catch {
    return undefined
  }
  const from = new Date(cert.validFrom)
  const to = new Date(cert.validTo)
  if (now > to) return `--tls-cert ${path}: expired on ${to.toISOString()}: clients will refuse it`
  if (now < from) return `--tls-cert ${path}: not valid before ${from.toISOString()}: clients will refuse it until then`
  return undefined
}
