//! userfaultfd plumbing: the few ioctls the engine issues and the events it reads.
//!
//! The `userfaultfd` crate's `Uffd` is the owned handle (it closes on drop) and does the
//! batched event reads, WAKE and UNREGISTER. UFFDIO_COPY and UFFDIO_ZEROPAGE are issued
//! here instead, because the crate's versions lose the partial-progress information the
//! engine needs (see `fill.rs`).

mod error;
mod event;
mod fill;
mod range_ops;
mod raw;

pub use error::UffdError;
pub use event::{read_events, ReadStatus, UffdEvent};
pub use fill::{copy, poison, poison_span, zeropage, FillOutcome, PoisonEnd};
pub use range_ops::{
    set_nonblocking, uffd_from_owned, uffd_into_owned, unregister, wake, UnregisterOutcome,
};
pub use userfaultfd::{EventBuffer, Uffd};
