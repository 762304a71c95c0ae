//! `lazy-pages page-server`: serve the lazy pages of a dump over CRIU's wire
//! protocol, on native threads; JS gets session events and the final totals.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use lazy_pages_core::images::Dump;
use lazy_pages_core::remote::{
    wire_version_of, PageServer, PageServerConfig, ServerEvent, ServerStopper, TlsServer,
    WireVersion,
};
use napi::bindgen_prelude::{AsyncTask, Object};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status, Task};
use napi_derive::napi;

use crate::daemon::err;

/// The wire format to speak: `--criu-version` if given, else what wrote the images.
pub(crate) fn wire_version(flag: Option<&str>, images_dir: &str) -> napi::Result<WireVersion> {
    match flag {
        Some("4.1" | "4.1.1" | "4.1.0") => Ok(WireVersion::V411),
        Some("4.2" | "4.2.0") => Ok(WireVersion::V42),
        Some(other) => Err(err(format!("--criu-version {other}: expected 4.1 or 4.2"))),
        None => {
            let dump = Dump::open(Path::new(images_dir)).map_err(err)?;
            wire_version_of(&dump).ok_or_else(|| {
                err(format!("{images_dir}: cannot tell which CRIU wrote these images (no lazy pagemap entries); pass --criu-version"))
            })
        }
    }
}

#[napi(object)]
pub struct PageServerOptions {
    pub images_dir: String,
    /// Numeric address to bind (default 0.0.0.0, like CRIU).
    pub address: Option<String>,
    /// 0: an ephemeral port (see `port`).
    pub port: u32,
    pub keep_serving: bool,
    pub criu_version: Option<String>,
    pub max_request_pages: Option<u32>,
    /// `--tls` (absent: plain TCP).
    pub tls: Option<crate::tls::TlsOptions>,
}

#[napi(object)]
pub struct PageServerEvent {
    /// session-started | session-ended | refused
    pub kind: String,
    pub peer: String,
    pub requests: Option<f64>,
    pub pages: Option<f64>,
    pub error: Option<String>,
}

#[napi(object)]
pub struct PageServerSummary {
    pub sessions: f64,
    pub failed_sessions: f64,
    /// `--tls`: connections that never became a session (failed, stalled or cut
    /// handshakes, or refused after one).
    pub rejected: f64,
    pub requests: f64,
    pub pages: f64,
}

type EventFn = ThreadsafeFunction<PageServerEvent, (), PageServerEvent, Status, false, false, 256>;

/// The server is bound before JS hands over its callback: events go through this slot.
type EventSlot = Arc<Mutex<Option<Box<dyn Fn(ServerEvent) + Send + Sync>>>>;

#[napi]
pub struct LazyPageServer {
    server: Mutex<Option<PageServer>>,
    events: EventSlot,
    stopper: ServerStopper,
    address: String,
    port: u32,
    version: String,
}

pub struct PrepareServer {
    options: Option<PageServerOptions>,
}

impl Task for PrepareServer {
    type Output = LazyPageServer;
    type JsValue = LazyPageServer;

    fn compute(&mut self) -> napi::Result<LazyPageServer> {
        let o = self
            .options
            .take()
            .ok_or_else(|| err("prepare ran twice"))?;
        let dump = Dump::open(Path::new(&o.images_dir)).map_err(err)?;
        let version = wire_version(o.criu_version.as_deref(), &o.images_dir)?;
        let mut config = PageServerConfig {
            keep_serving: o.keep_serving,
            version,
            ..PageServerConfig::default()
        };
        if let Some(addr) = &o.address {
            config.address = addr.parse::<IpAddr>().map_err(|_| {
                err(format!(
                    "--address {addr}: not a numeric IPv4 or IPv6 address"
                ))
            })?;
        }
        if let Some(t) = &o.tls {
            config.tls = Some(Arc::new(
                TlsServer::new(&t.files(), o.address.as_deref()).map_err(err)?,
            ));
        }
        config.port =
            u16::try_from(o.port).map_err(|_| err(format!("--port {}: out of range", o.port)))?;
        if let Some(max) = o.max_request_pages {
            config.max_request_pages = max.max(1).into();
        }
        let events: EventSlot = Arc::default();
        let slot = events.clone();
        let forward = Arc::new(move |e: ServerEvent| {
            if let Ok(guard) = slot.lock() {
                if let Some(f) = guard.as_ref() {
                    f(e);
                }
            }
        });
        let server = PageServer::bind(&dump, config, forward).map_err(err)?;
        let local = server.local_addr();
        Ok(LazyPageServer {
            stopper: server.stopper(),
            address: local.ip().to_string(),
            port: local.port().into(),
            version: match version {
                WireVersion::V411 => "4.1".into(),
                WireVersion::V42 => "4.2".into(),
            },
            server: Mutex::new(Some(server)),
            events,
        })
    }

    fn resolve(&mut self, _env: Env, output: LazyPageServer) -> napi::Result<LazyPageServer> {
        Ok(output)
    }
}

/// Read the dump and listen; nothing is served until `serve`.
#[napi(ts_return_type = "Promise<LazyPageServer>")]
pub fn prepare_page_server(options: PageServerOptions) -> AsyncTask<PrepareServer> {
    AsyncTask::new(PrepareServer {
        options: Some(options),
    })
}

#[napi]
impl LazyPageServer {
    #[napi(getter)]
    pub fn address(&self) -> String {
        self.address.clone()
    }

    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.port
    }

    /// "4.1" or "4.2": the wire format spoken.
    #[napi(getter)]
    pub fn criu_version(&self) -> String {
        self.version.clone()
    }

    /// Serve until stopped (or after one session without keepServing).
    #[napi(
        ts_args_type = "onEvent: (event: PageServerEvent) => void",
        ts_return_type = "Promise<PageServerSummary>"
    )]
    pub fn serve<'env>(&self, env: &'env Env, on_event: EventFn) -> napi::Result<Object<'env>> {
        let server = self
            .server
            .lock()
            .map_err(err)?
            .take()
            .ok_or_else(|| err("this page server already ran"))?;
        let (deferred, promise) = env.create_deferred()?;
        let on_event = Arc::new(on_event);
        let events = on_event.clone();
        *self.events.lock().map_err(err)? = Some(Box::new(move |e: ServerEvent| {
            let js = match e {
                ServerEvent::SessionStarted { peer } => PageServerEvent {
                    kind: "session-started".into(),
                    peer: peer.to_string(),
                    requests: None,
                    pages: None,
                    error: None,
                },
                ServerEvent::SessionEnded { peer, stats, error } => PageServerEvent {
                    kind: "session-ended".into(),
                    peer: peer.to_string(),
                    requests: Some(stats.requests as f64),
                    pages: Some(stats.pages as f64),
                    error,
                },
                ServerEvent::Refused { peer, reason } => PageServerEvent {
                    kind: "refused".into(),
                    peer: peer.to_string(),
                    requests: None,
                    pages: None,
                    error: Some(reason),
                },
            };
            events.call(js, ThreadsafeFunctionCallMode::Blocking);
        }));
        let slot = self.events.clone();
        std::thread::Builder::new()
            .name("lazy-page-server".into())
            .spawn(move || {
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.run()));
                // Release the JS callback so Node can exit.
                if let Ok(mut guard) = slot.lock() {
                    guard.take();
                }
                drop(on_event);
                match result {
                    Ok(Ok(s)) => deferred.resolve(move |_| {
                        Ok(PageServerSummary {
                            sessions: s.sessions as f64,
                            failed_sessions: s.failed_sessions as f64,
                            rejected: s.rejected as f64,
                            requests: s.requests as f64,
                            pages: s.pages as f64,
                        })
                    }),
                    Ok(Err(e)) => deferred.reject(err(e)),
                    Err(_) => deferred.reject(err("internal error: the page server panicked")),
                }
            })
            .map_err(err)?;
        Ok(promise)
    }

    /// Stop accepting and cut live sessions.
    #[napi]
    pub fn stop(&self) {
        self.stopper.stop();
    }
}
