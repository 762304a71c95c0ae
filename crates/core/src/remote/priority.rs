//! `PrioritySource`: two connections to one lazy-pages page server, faults on
//! one and background reads on the other. A server answers each connection
//! strictly in order, so on a single connection a fault's reply still waits
//! behind the background bytes already asked for (the background window);
//! on its own connection it waits behind other faults only, and our server
//! runs each connection on its own thread.

use super::client::{ConnectError, Priority, RemoteConfig, RemotePages};
use crate::engine::{PageData, PageSource, SourceError, Waker};

pub struct PrioritySource {
    bulk: RemotePages,
    urgent: RemotePages,
}

impl PrioritySource {
    /// Connects the bulk connection first: a one-client server takes the
    /// first connection's address as its client's.
    pub fn connect(addr: &str, config: RemoteConfig) -> Result<PrioritySource, ConnectError> {
        let bulk = RemotePages::connect(addr, config.clone())?;
        let urgent = RemotePages::connect(addr, config)?;
        Ok(PrioritySource { bulk, urgent })
    }

    /// The first connection's fatal error, if either failed.
    pub fn failure(&self) -> Option<String> {
        self.urgent.failure().or_else(|| self.bulk.failure())
    }

    /// Closes both sessions; the first error wins, but both are tried so the
    /// server can end either way.
    pub fn close(&self) -> Result<(), SourceError> {
        let urgent = self.urgent.close();
        let bulk = self.bulk.close();
        urgent.and(bulk)
    }
}

impl PageSource for PrioritySource {
    fn pages<'a>(
        &'a self,
        pid: u32,
        img_addr: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
        priority: Priority,
    ) -> Result<PageData<'a>, SourceError> {
        // Each connection keeps its own book: a fault for a page the bulk
        // connection already asked for is fetched again on the urgent one, which is
        // the point of having two (`hurry` is therefore not needed here).
        match priority {
            Priority::Fault => self.urgent.fetch(pid, img_addr, len, scratch, priority),
            _ => self.bulk.fetch(pid, img_addr, len, scratch, priority),
        }
    }

    fn set_waker(&self, waker: Waker) {
        self.bulk.set_waker(waker.clone());
        self.urgent.set_waker(waker);
    }

    fn will_need(&self, pid: u32, spans: &[(u64, usize)]) {
        self.bulk.will_need(pid, spans);
    }

    fn read_ahead_bytes(&self) -> u64 {
        self.bulk.read_ahead_bytes()
    }
}
