//! lazy-pages core: everything on the hot path of a post-copy restore, with no
//! dependency on Node. The napi crate is a thin wrapper over this one.

pub mod engine;
pub mod guardian;
pub mod images;
pub mod local_pages;
pub mod option_file;
pub mod ranges;
pub mod remote;
pub mod restore_socket;
pub mod session;
pub mod transform;
pub mod uffd;
pub mod workdir_lock;
