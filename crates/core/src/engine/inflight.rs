//! Claims taken out of `LazyRanges` whose bytes are being fetched or copied.
//!
//! A claim keeps following the address space while it is in flight: REMOVE/UNMAP trim
//! it and REMAP moves it, exactly like pending ranges, so when its copy finally runs it
//! only touches what is still lazy, at its current address.

use crate::ranges::{Claim, LazyRange, LazyRanges};

#[derive(Debug)]
struct InFlight {
    id: u64,
    pieces: LazyRanges,
}

#[derive(Debug, Default)]
pub(crate) struct InFlightSet {
    next_id: u64,
    claims: Vec<InFlight>,
}

impl InFlightSet {
    /// Registers a claim; the id finds its surviving pieces later.
    pub fn add(&mut self, claim: Claim) -> u64 {
        self.next_id += 1;
        let mut pieces = LazyRanges::new();
        pieces.insert(claim);
        self.claims.push(InFlight {
            id: self.next_id,
            pieces,
        });
        self.next_id
    }

    /// Whether claim `id` is still owned by its copier (task exit takes every claim).
    pub fn has(&self, id: u64) -> bool {
        self.claims.iter().any(|c| c.id == id)
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.claims.iter().any(|c| c.pieces.contains(addr))
    }

    /// The dump-time address of `addr`, if a claim in flight holds it.
    pub fn img_addr_of(&self, addr: u64) -> Option<u64> {
        self.claims
            .iter()
            .find_map(|c| c.pieces.iter().find(|r| r.start <= addr && addr < r.end))
            .map(|r| r.img_addr(addr))
    }

    /// What is left of claim `id`; None once it was finished or dropped wholesale.
    pub fn pieces(&self, id: u64) -> Option<Vec<LazyRange>> {
        self.claims
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.pieces.iter().collect())
    }

    /// Narrows claim `id` to `rest` (the part its copier has not handled yet); false if
    /// the claim is gone (task exited). Only for the claim's own copier, under the shared
    /// gate: nothing else changes a claim's pieces then except dropping them all.
    pub fn narrow(&mut self, id: u64, rest: &[LazyRange]) -> bool {
        let Some(c) = self.claims.iter_mut().find(|c| c.id == id) else {
            return false;
        };
        let mut pieces = LazyRanges::new();
        for &r in rest {
            pieces.insert(r);
        }
        c.pieces = pieces;
        true
    }

    /// Forgets claim `id`, returning what was left of it.
    pub fn finish(&mut self, id: u64) -> Vec<LazyRange> {
        match self.claims.iter().position(|c| c.id == id) {
            Some(i) => self.claims.swap_remove(i).pieces.iter().collect(),
            None => Vec::new(),
        }
    }

    /// Drops `[start, end)` from every claim; returns the pages dropped.
    pub fn remove(&mut self, start: u64, end: u64) -> u64 {
        self.claims
            .iter_mut()
            .map(|c| c.pieces.remove(start, end))
            .sum()
    }

    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        for c in &mut self.claims {
            c.pieces.remap(from, to, len);
        }
    }

    /// Every piece of every claim (a FORK child needs them as pending).
    pub fn all_pieces(&self) -> impl Iterator<Item = LazyRange> + '_ {
        self.claims.iter().flat_map(|c| c.pieces.iter())
    }

    pub fn pages(&self) -> u64 {
        self.claims.iter().map(|c| c.pieces.pages()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.iter().all(|c| c.pieces.is_empty())
    }

    /// Drops everything (task exit); returns the pages dropped.
    pub fn clear(&mut self) -> u64 {
        let pages = self.pages();
        self.claims.clear();
        pages
    }
}
