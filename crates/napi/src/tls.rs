//! The `--tls*` options as JS hands them over, turned into core's `TlsFiles`.

use std::path::PathBuf;

use lazy_pages_core::remote::TlsFiles;
use napi_derive::napi;

/// CRIU's `--tls-*` file options (absent: CRIU's default paths).
#[napi(object)]
pub struct TlsOptions {
    pub cacert: Option<String>,
    pub cacrl: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub no_cn_verify: Option<bool>,
}

impl TlsOptions {
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cacert: self.cacert.as_ref().map(PathBuf::from),
            cacrl: self.cacrl.as_ref().map(PathBuf::from),
            cert: self.cert.as_ref().map(PathBuf::from),
            key: self.key.as_ref().map(PathBuf::from),
            no_cn_verify: self.no_cn_verify.unwrap_or(false),
        }
    }
}

/// The host part of "host:port" or "[v6]:port": the name the server's certificate must carry.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}
