//! TLS on the page-server connection, as CRIU's `--tls` (criu/tls.c, GnuTLS):
//! mutual X.509, the handshake right after connect/accept, then the page-server
//! stream unchanged inside it.
//!
//! Owns: loading the PEM files (CA, optional CRL, own certificate and key) into
//! rustls configurations (`TlsClient`, `TlsServer`), the handshake with a
//! deadline, and `Wire`, the byte stream both our client and our server talk
//! through (plain TCP or TLS), with `send_reply` for a page reply: sendfile on
//! plain TCP, or pages read from the image and sealed in full 16 KiB records.
//!
//! Promises, as CRIU does:
//! * both ends present a certificate; each verifies the other's chain to the
//!   CA (`--tls-cacert`; without it the system trust plus the default CA
//!   file), its validity dates and, if a CRL is given or the default one is
//!   readable, that the end certificate is not revoked;
//! * the name check: the client checks the server's certificate against the
//!   host it connects to, the server the client's against its own `--address`
//!   (none given: no check); `--tls-no-cn-verify` skips it. A name matches a
//!   subjectAltName (DNS or IP) or, when the certificate has no DNS names, its
//!   common name, which is how GnuTLS matches;
//! * TLS 1.3 or 1.2 with rustls' default (AEAD, forward-secret) suites, which
//!   GnuTLS's default priority accepts.
//!
//! Kernel TLS is not used: this kernel is built without CONFIG_TLS (no `tls`
//! ULP), so records are sealed and opened in userspace (rustls, ring).
//!
//! May go wrong: unreadable or empty files, or ones that are no regular file or
//! too big (`option_file`: a FIFO cannot hang us) (`TlsSetupError`, one line naming
//! the file); a peer that fails verification, is not speaking TLS, or stalls
//! the handshake (an error naming the peer, from `client_handshake` /
//! `server_handshake`); a record that fails to open later (an I/O error of
//! kind InvalidData on that `Wire`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, Connection, DigitallySignedStruct,
    DistinguishedName, RootCertStore, ServerConfig, ServerConnection, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

use super::zero_copy::{arm_send, send_file_range, send_header, REPLY_LATE};
use crate::option_file::{read_regular, OptionFileError};

/// CRIU's defaults (SYSCONFDIR=/etc).
pub const DEFAULT_CACERT: &str = "/etc/pki/CA/cacert.pem";
pub const DEFAULT_CACRL: &str = "/etc/pki/CA/cacrl.pem";
pub const DEFAULT_CERT: &str = "/etc/pki/criu/cert.pem";
pub const DEFAULT_KEY: &str = "/etc/pki/criu/private/key.pem";

/// The system trust store, added when no `--tls-cacert` is given (as GnuTLS's
/// system trust is): Debian's bundle, then Fedora's.
const SYSTEM_TRUST: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// How long a handshake may take before the peer counts as stalled.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `--tls-*` options; `None` = CRIU's default path.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub cacert: Option<PathBuf>,
    pub cacrl: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub no_cn_verify: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsSetupError(String);

/// Our client's side: its configuration and the name the server must carry.
pub struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient({:?})", self.name)
    }
}

/// Our server's side: its configuration (which checks the name clients must
/// carry: `--address`, if given and not `--tls-no-cn-verify`).
pub struct TlsServer {
    config: Arc<ServerConfig>,
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsServer")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// TLS 1.3 and 1.2 (what GnuTLS's default priority offers too).
fn versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    rustls::ALL_VERSIONS
}

impl TlsClient {
    /// `host`: the page server's host as given (`--address`), the name its
    /// certificate must carry.
    pub fn new(files: &TlsFiles, host: &str) -> Result<TlsClient, TlsSetupError> {
        let m = Material::load(files)?;
        let name = ServerName::try_from(host.trim_matches(|c| c == '[' || c == ']').to_string())
            .map_err(|e| TlsSetupError(format!("--tls: page server host {host:?}: {e}")))?;
        let mut builder = WebPkiServerVerifier::builder_with_provider(m.roots.clone(), provider());
        if !m.crls.is_empty() {
            builder = builder
                .with_crls(m.crls.clone())
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let inner = builder
            .build()
            .map_err(|e| TlsSetupError(format!("--tls: {e}")))?;
        let check_name =
            (!files.no_cn_verify).then(|| host.trim_matches(|c| c == '[' || c == ']').to_string());
        let verifier = Arc::new(ServerCheck {
            inner,
            name: check_name,
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions())
            .map_err(|e| TlsSetupError(format!("--tls: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(m.certs, m.key)
            .map_err(|e| TlsSetupError(format!("--tls-cert/--tls-key: {e}")))?;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(TlsClient {
            config: Arc::new(config),
            name,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }
}

impl TlsServer {
    /// `address`: the `--address` given (the name client certificates must carry).
    pub fn new(files: &TlsFiles, address: Option<&str>) -> Result<TlsServer, TlsSetupError> {
        let m = Material::load(files)?;
        let mut builder = WebPkiClientVerifier::builder_with_provider(m.roots.clone(), provider());
        if !m.crls.is_empty() {
            builder = builder
                .with_crls(m.crls.clone())
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let inner = builder
            .build()
            .map_err(|e| TlsSetupError(format!("--tls: {e}")))?;
        let name = if files.no_cn_verify {
            None
        } else {
            address.map(str::to_string)
        };
        let verifier = Arc::new(ClientCheck { inner, name });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions())
            .map_err(|e| TlsSetupError(format!("--tls: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(m.certs, m.key)
            .map_err(|e| TlsSetupError(format!("--tls-cert/--tls-key: {e}")))?;
        // One session per connection; nothing to resume.
        config.send_tls13_tickets = 0;
        Ok(TlsServer {
            config: Arc::new(config),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }
}

/// Everything read from the PEM files.
struct Material {
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Material {
    fn load(files: &TlsFiles) -> Result<Material, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        if files.cacert.is_none() {
            if let Some(certs) = SYSTEM_TRUST
                .iter()
                .find_map(|p| read_certs(Path::new(p), MAX_CA_BYTES).ok())
            {
                roots.add_parsable_certificates(certs);
            }
        }
        let cacert = files.cacert.as_deref().unwrap_or(Path::new(DEFAULT_CACERT));
        match read_certs(cacert, MAX_CA_BYTES) {
            Ok(certs) => {
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 && files.cacert.is_some() {
                    return Err(TlsSetupError(format!(
                        "--tls-cacert {}: no usable CA certificate in it",
                        cacert.display()
                    )));
                }
            }
            // The default CA file may be absent or unusable (the system trust may do); not a FIFO or a huge file.
            Err(PemFileError::File(OptionFileError::Open(_)) | PemFileError::Pem(_))
                if files.cacert.is_none() => {}
            Err(e) => {
                return Err(TlsSetupError(format!(
                    "--tls-cacert {}: {e}",
                    cacert.display()
                )))
            }
        }
        if roots.is_empty() {
            return Err(TlsSetupError(format!(
                "--tls: no trusted CA certificate ({} is not readable; pass --tls-cacert)",
                cacert.display()
            )));
        }
        let crl_path = files.cacrl.as_deref().unwrap_or(Path::new(DEFAULT_CACRL));
        let crl_err =
            |e: PemFileError| TlsSetupError(format!("--tls-cacrl {}: {e}", crl_path.display()));
        let crls = match read_regular(crl_path, MAX_CA_BYTES) {
            // As CRIU: the default CRL only if it is there and readable.
            Err(OptionFileError::Open(_)) if files.cacrl.is_none() => Vec::new(),
            Err(e) => return Err(crl_err(e.into())),
            Ok(pem) => {
                let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| crl_err(e.into()))?;
                if crls.is_empty() {
                    return Err(TlsSetupError(format!(
                        "--tls-cacrl {}: no CRL in it",
                        crl_path.display()
                    )));
                }
                crls
            }
        };
        let cert = files.cert.as_deref().unwrap_or(Path::new(DEFAULT_CERT));
        let certs = read_certs(cert, MAX_OWN_BYTES)
            .map_err(|e| TlsSetupError(format!("--tls-cert {}: {e}", cert.display())))?;
        if certs.is_empty() {
            return Err(TlsSetupError(format!(
                "--tls-cert {}: no certificate in it",
                cert.display()
            )));
        }
        let key_path = files.key.as_deref().unwrap_or(Path::new(DEFAULT_KEY));
        let key_err =
            |e: PemFileError| TlsSetupError(format!("--tls-key {}: {e}", key_path.display()));
        let key_pem = read_regular(key_path, MAX_OWN_BYTES).map_err(|e| key_err(e.into()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| key_err(e.into()))?;
        Ok(Material {
            roots: Arc::new(roots),
            crls,
            certs,
            key,
        })
    }
}

/// Own certificate (with its chain) or key: a few KiB in practice.
const MAX_OWN_BYTES: u64 = 1 << 20;
/// CA bundles and CRLs: a system bundle is ~200 KiB, a big CA's CRL some MiB.
const MAX_CA_BYTES: u64 = 16 << 20;

/// A PEM file that could not be read (`option_file`) or parsed.
#[derive(Debug, thiserror::Error)]
enum PemFileError {
    #[error(transparent)]
    File(#[from] OptionFileError),
    #[error("{0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
}

fn read_certs(path: &Path, max: u64) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let pem = read_regular(path, max)?;
    Ok(CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>()?)
}

/// The client's check of the server certificate: webpki's chain, dates and
/// revocation checks, then our name rule (webpki matches subjectAltNames
/// only, GnuTLS falls back to the common name; CRIU can skip the name).
#[derive(Debug)]
struct ServerCheck {
    inner: Arc<WebPkiServerVerifier>,
    name: Option<String>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            // webpki checks the name last: this error means everything else passed.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self
                .name
                .as_deref()
                .is_none_or(|n| name_matches(end_entity, n)) =>
            {
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server's check of the client certificate: webpki's chain, dates and
/// revocation checks, then (CRIU's server) the name against its own
/// `--address`. Inside the handshake, so a refused client gets an alert.
#[derive(Debug)]
struct ClientCheck {
    inner: Arc<dyn ClientCertVerifier>,
    name: Option<String>,
}

impl ClientCertVerifier for ClientCheck {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match &self.name {
            Some(name) if !name_matches(end_entity, name) => Err(rustls::Error::General(format!(
                "client certificate not valid for name {name:?} (the server's --address; --tls-no-cn-verify skips this)"
            ))),
            _ => Ok(verified),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// GnuTLS's rule: an IP name matches an IP subjectAltName; any name matches a
/// DNS subjectAltName (one leading `*.` label as wildcard); the common name
/// counts only when there is no DNS subjectAltName.
pub(crate) fn name_matches(cert: &CertificateDer<'_>, name: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let ip = name.parse::<IpAddr>().ok();
    let mut dns_names = 0;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            match general {
                GeneralName::DNSName(dns) => {
                    dns_names += 1;
                    if dns_matches(dns, name) {
                        return true;
                    }
                }
                GeneralName::IPAddress(bytes) => {
                    let theirs = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if ip.is_some() && theirs == ip {
                        return true;
                    }
                }
                _ => {}
            }
        }
    }
    dns_names == 0
        && cert
            .subject()
            .iter_common_name()
            .any(|cn| cn.as_str().is_ok_and(|cn| dns_matches(cn, name)))
}

fn dns_matches(pattern: &str, name: &str) -> bool {
    if pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty()
                && rest.eq_ignore_ascii_case(suffix)
                && name.parse::<IpAddr>().is_err()
        }
        _ => false,
    }
}

/// Connects TLS on a connected socket; on success the returned `Wire` carries
/// the page-server stream. Errors name the peer and what failed.
pub(crate) fn client_handshake(
    sock: TcpStream,
    tls: &TlsClient,
    peer: SocketAddr,
) -> Result<Wire, String> {
    let conn = ClientConnection::new(tls.config.clone(), tls.name.clone())
        .map_err(|e| format!("page server {peer}: TLS: {e}"))?;
    let conn = handshake(&sock, conn.into(), tls.handshake_timeout)
        .map_err(|e| format!("page server {peer}: TLS handshake failed: {e}"))?;
    Ok(Wire::Tls(TlsWire::new(sock, conn)))
}

/// Accepts TLS on an accepted socket (the client's certificate, and its name
/// if the server was given an address, are checked in the handshake).
pub(crate) fn server_handshake(
    sock: TcpStream,
    tls: &TlsServer,
    peer: SocketAddr,
) -> Result<Wire, String> {
    let conn = ServerConnection::new(tls.config.clone())
        .map_err(|e| format!("client {peer}: TLS: {e}"))?;
    let conn = handshake(&sock, conn.into(), tls.handshake_timeout)
        .map_err(|e| format!("client {peer}: TLS handshake failed: {e}"))?;
    Ok(Wire::Tls(TlsWire::new(sock, conn)))
}

/// Runs the handshake to its end within `timeout`; socket timeouts are left
/// for the caller to set afterwards.
fn handshake(
    sock: &TcpStream,
    mut conn: Connection,
    timeout: Duration,
) -> Result<Connection, String> {
    let deadline = Instant::now() + timeout;
    let mut io = sock;
    let stalled = || format!("no handshake within {timeout:?} (peer stalled)");
    // A peer that closes before sending a byte never looked at our hello: a server
    // with no room for us (it closes before reading), or one not speaking TLS.
    let mut heard = false;
    while conn.is_handshaking() || conn.wants_write() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(stalled)?;
        sock.set_read_timeout(Some(left))
            .and_then(|()| sock.set_write_timeout(Some(left)))
            .map_err(|e| e.to_string())?;
        while conn.wants_write() {
            match conn.write_tls(&mut io) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(stalled())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("sending: {e}")),
            }
        }
        if !conn.is_handshaking() {
            break;
        }
        match conn.read_tls(&mut io) {
            Ok(0) if !heard => {
                return Err("the peer closed the connection before answering (refused: server full? or not speaking TLS)".into())
            }
            Ok(0) => return Err("the peer closed the connection (not speaking TLS, or it rejected our certificate?)".into()),
            Ok(_) => heard = true,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => continue,
            Err(e) => return Err(format!("receiving: {e}")),
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the peer why (an alert), best effort.
            let _ = conn.write_tls(&mut io);
            return Err(explain(&e));
        }
    }
    Ok(conn)
}

fn explain(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("{e} (the peer is not speaking TLS: is --tls given on both ends?)")
        }
        rustls::Error::AlertReceived(_) => format!("{e} (the peer rejected us)"),
        _ => e.to_string(),
    }
}

/// The page-server byte stream: plain TCP, or TLS over it. Client and server
/// read and write it like a socket; `try_clone` gives a second handle on the
/// same stream (the client's reader and writer threads each hold one).
pub(crate) enum Wire {
    Plain(TcpStream),
    Tls(TlsWire),
}

impl Wire {
    pub fn socket(&self) -> &TcpStream {
        match self {
            Wire::Plain(s) => s,
            Wire::Tls(t) => &t.sock,
        }
    }

    pub fn try_clone(&self) -> io::Result<Wire> {
        Ok(match self {
            Wire::Plain(s) => Wire::Plain(s.try_clone()?),
            Wire::Tls(t) => Wire::Tls(TlsWire {
                sock: t.sock.try_clone()?,
                conn: t.conn.clone(),
                raw: Vec::new(),
                pos: 0,
                len: 0,
                eof: false,
                out: Vec::new(),
            }),
        })
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.socket().shutdown(how)
    }

    /// Ends TLS with close_notify (best effort; nothing for plain TCP). Only
    /// called right before the socket goes: it is made non-blocking so that a
    /// peer that stopped reading cannot hold this up for the send timeout.
    pub fn close_notify(&mut self) {
        if let Wire::Tls(t) = self {
            let _ = t.sock.set_nonblocking(true);
            let mut conn = lock(&t.conn);
            conn.send_close_notify();
            let _ = flush_records(&mut conn, &t.sock, None);
        }
    }

    /// One page reply: `header`, then `len` bytes of `file` from `offset`.
    /// Plain TCP: sendfile, no copy through us. TLS: the header in a record
    /// of its own, then the pages, read into a buffer and sealed straight
    /// from it in full 16 KiB records (no record spans two replies).
    /// All of it must be sent by `deadline` (else an error of kind TimedOut): a
    /// client reading slowly is not waited on past it. The socket's own send
    /// timeout is put back afterwards.
    pub fn send_reply(
        &mut self,
        header: &[u8],
        file: &File,
        offset: u64,
        len: u64,
        deadline: Instant,
    ) -> io::Result<()> {
        use std::os::fd::AsFd;
        let own = self.socket().write_timeout()?;
        let sent = match self {
            Wire::Plain(s) => send_header(s.as_fd(), header, deadline)
                .and_then(|()| send_file_range(s.as_fd(), file.as_fd(), offset, len, deadline)),
            Wire::Tls(t) => t.send_file(header, file, offset, len, deadline),
        };
        self.socket().set_write_timeout(own)?;
        // Past the deadline a blocking send returns EAGAIN, reported as the peer
        // having stopped reading; it did not stop, it was too slow.
        match sent {
            Err(e) if e.kind() == io::ErrorKind::TimedOut && Instant::now() >= deadline => {
                Err(io::Error::new(io::ErrorKind::TimedOut, REPLY_LATE))
            }
            other => other,
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Tls(t) => t.write_all(buf).map(|()| buf.len()),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.write_all(buf),
            Wire::Tls(t) => t.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One handle on a TLS stream. The connection state is shared by the
/// handles; the lock is never held while waiting for the network on the read
/// side, so a reader blocked on the socket never holds up a writer.
pub(crate) struct TlsWire {
    sock: TcpStream,
    conn: Arc<Mutex<Connection>>,
    /// Ciphertext taken off the socket and not yet handed to rustls.
    raw: Vec<u8>,
    pos: usize,
    len: usize,
    eof: bool,
    /// Records sealed under the lock, sent after it is released.
    out: Vec<u8>,
}

/// Ciphertext read per syscall: many records at once.
const RAW_READ: usize = 256 << 10;
/// Plaintext sealed per step of a page reply.
const SEAL_CHUNK: usize = 256 << 10;

impl TlsWire {
    fn new(sock: TcpStream, mut conn: Connection) -> TlsWire {
        // Sealed records are sent as they are made; no cap on the queue.
        conn.set_buffer_limit(None);
        TlsWire {
            sock,
            conn: Arc::new(Mutex::new(conn)),
            raw: Vec::new(),
            pos: 0,
            len: 0,
            eof: false,
            out: Vec::new(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            {
                let mut conn = lock(&self.conn);
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The peer closed without close_notify: an end of stream all the same
                    // (the page-server protocol knows how many bytes are due).
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                if self.pos < self.len {
                    let mut rest = &self.raw[self.pos..self.len];
                    self.pos += conn.read_tls(&mut rest)?;
                    conn.process_new_packets().map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
                    })?;
                    continue;
                }
                if self.eof {
                    return Ok(0);
                }
            }
            if self.raw.len() < RAW_READ {
                self.raw.resize(RAW_READ, 0);
            }
            // Blocks (up to the socket's read timeout) without the lock.
            let n = self.sock.read(&mut self.raw)?;
            self.pos = 0;
            self.len = n;
            if n == 0 {
                self.eof = true;
                let mut conn = lock(&self.conn);
                conn.read_tls(&mut &[][..])?;
                let _ = conn.process_new_packets();
            }
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.clear();
        {
            let mut conn = lock(&self.conn);
            conn.writer().write_all(buf)?;
            while conn.wants_write() {
                conn.write_tls(&mut self.out)?;
            }
        }
        (&self.sock)
            .write_all(&self.out)
            .map_err(would_block_is_timeout)
    }

    fn send_file(
        &mut self,
        header: &[u8],
        file: &File,
        offset: u64,
        len: u64,
        deadline: Instant,
    ) -> io::Result<()> {
        // The header in a record of its own, as CRIU's server sends it: CRIU's
        // client reads the header, then waits for the socket to be readable
        // again, so page data sealed in the header's record (already taken
        // off the socket into GnuTLS's buffer) would never be read.
        {
            let mut conn = lock(&self.conn);
            conn.writer().write_all(header)?;
            flush_records(&mut conn, &self.sock, Some(deadline))?;
        }
        let mut buf = std::mem::take(&mut self.out);
        let result = (|| {
            let mut off = offset;
            let mut left = len;
            while left > 0 {
                let take = SEAL_CHUNK.min(left as usize);
                buf.clear();
                buf.resize(take, 0);
                file.read_exact_at(&mut buf, off).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("pages file ends before {:#x}", off + take as u64),
                        )
                    } else {
                        e
                    }
                })?;
                off += take as u64;
                left -= take as u64;
                // The session thread is this stream's only user: sealing
                // and sending under the lock costs nobody a wait.
                let mut conn = lock(&self.conn);
                conn.writer().write_all(&buf)?;
                flush_records(&mut conn, &self.sock, Some(deadline))?;
            }
            Ok(())
        })();
        self.out = buf;
        result
    }
}

/// Writes every sealed record to the socket, by `deadline` if one is given.
fn flush_records(
    conn: &mut Connection,
    sock: &TcpStream,
    deadline: Option<Instant>,
) -> io::Result<()> {
    use std::os::fd::AsFd;
    let mut io = sock;
    while conn.wants_write() {
        if let Some(deadline) = deadline {
            arm_send(sock.as_fd(), deadline)?;
        }
        match conn.write_tls(&mut io) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(would_block_is_timeout(e)),
        }
    }
    Ok(())
}

/// A blocking socket reports an expired SO_SNDTIMEO as EAGAIN.
fn would_block_is_timeout(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "peer stopped reading (send timeout)",
        )
    } else {
        err
    }
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
