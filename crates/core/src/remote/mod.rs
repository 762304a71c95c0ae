//! Pages over TCP, speaking CRIU's page-server protocol: a server for the lazy
//! pages of a normal dump, and a `PageSource` that fetches from any lazy page
//! server (ours, `criu page-server --lazy-pages`, `criu dump --lazy-pages`).

mod client;
mod client_book;
mod client_reader;
mod client_window;
mod lazy_index;
mod priority;
mod server;
mod server_admission;
mod server_session;
mod tls;
mod version;
pub mod wire;
mod zero_copy;

pub use client::{ConnectError, Priority, RemoteConfig, RemotePages, REMOTE_CHUNK_PAGES};
pub use lazy_index::Invalid;
pub use priority::PrioritySource;
pub use server::{
    PageServer, PageServerConfig, ServeSummary, ServerCallback, ServerError, ServerEvent,
    ServerStopper,
};
pub use server_session::SessionStats;
pub use tls::{
    TlsClient, TlsFiles, TlsServer, TlsSetupError, DEFAULT_CACERT, DEFAULT_CACRL, DEFAULT_CERT,
    DEFAULT_KEY,
};
pub use version::{classify, pagemap_writer_of, wire_version_of, PagemapWriter};
pub use wire::{IovHeader, WireError, WireVersion};
