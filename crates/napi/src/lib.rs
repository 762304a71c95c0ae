//! Thin Node binding over `lazy-pages-core`. Anything that touches a disk,
//! a socket or a uffd runs off the JS thread (libuv pool or engine threads).

mod daemon;
mod images;
mod page_server;
mod terminal;
mod tls;
mod transform;
mod workdir_lock;

use napi_derive::napi;

/// Version of the native addon; the CLI checks it matches package.json.
#[napi]
pub fn native_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
