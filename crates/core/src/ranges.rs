//! `LazyRanges`: the set of lazy pages of one uffd that nobody has copied yet.
//!
//! Every range carries two addresses: `start` is where the page lives *now* in the
//! restored task (it follows mremap), `img_start` is where it lived at dump time, which
//! is how the page source indexes its bytes. Both advance together inside a range, so
//! splitting a range only has to shift `img_start` by the same amount as `start`.
//!
//! Ranges are never merged with their neighbours on insert: two ranges that touch may
//! belong to different VMAs, and one UFFDIO_COPY cannot span a VMA boundary.

use std::collections::BTreeMap;

/// Page size of the only supported target (x86_64); see facts §0.
pub const PAGE_SIZE: u64 = 4096;
const PAGE_MASK: u64 = !(PAGE_SIZE - 1);

/// Rounds `addr` down to its page.
pub fn page_floor(addr: u64) -> u64 {
    addr & PAGE_MASK
}

/// Rounds `addr` up to a page boundary (saturating at the top of the address space).
pub fn page_ceil(addr: u64) -> u64 {
    addr.checked_add(PAGE_SIZE - 1)
        .map_or(PAGE_MASK, |a| a & PAGE_MASK)
}

/// One run of pending pages: run-time `[start, end)` whose first page was at `img_start`
/// in the dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LazyRange {
    pub start: u64,
    pub end: u64,
    pub img_start: u64,
}

/// A run of pages taken out of a `LazyRanges`; whoever holds it must copy it or put it
/// back.
pub type Claim = LazyRange;

impl LazyRange {
    pub fn new(start: u64, end: u64, img_start: u64) -> Self {
        LazyRange {
            start,
            end,
            img_start,
        }
    }

    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn pages(&self) -> u64 {
        self.len() / PAGE_SIZE
    }

    /// Dump-time address of run-time `addr` (which must lie inside the range).
    pub fn img_addr(&self, addr: u64) -> u64 {
        self.img_start + (addr - self.start)
    }

    /// The part of `self` inside `[start, end)`, if any.
    pub fn clip(&self, start: u64, end: u64) -> Option<LazyRange> {
        let s = self.start.max(start);
        let e = self.end.min(end);
        (s < e).then(|| LazyRange::new(s, e, self.img_addr(s)))
    }

    fn is_page_aligned(&self) -> bool {
        self.start % PAGE_SIZE == 0 && self.end % PAGE_SIZE == 0
    }
}

/// Sorted, non-overlapping set of pending lazy ranges of one uffd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LazyRanges {
    // start -> (end, img_start); a BTreeMap keeps lookups by address O(log n) even after
    // faults have shredded the initial ranges into many pieces.
    map: BTreeMap<u64, (u64, u64)>,
    pages: u64,
}

impl LazyRanges {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of pending pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of separate ranges.
    pub fn range_count(&self) -> usize {
        self.map.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = LazyRange> + '_ {
        self.map
            .iter()
            .map(|(&s, &(e, img))| LazyRange::new(s, e, img))
    }

    /// Adds `range`; any pending pages it overlaps are replaced by it. Returns false (and
    /// adds nothing) for an empty or unaligned range, which only corrupt input produces.
    pub fn insert(&mut self, range: LazyRange) -> bool {
        if range.is_empty() || !range.is_page_aligned() || range.img_start % PAGE_SIZE != 0 {
            return false;
        }
        self.remove(range.start, range.end);
        self.put(range);
        true
    }

    /// Pending pages at or after `addr`, lowest first; a range holding `addr` is
    /// clipped to start there.
    pub fn iter_from(&self, addr: u64) -> impl Iterator<Item = LazyRange> + '_ {
        let addr = page_floor(addr);
        let first = self
            .find(addr)
            .filter(|r| r.start < addr)
            .and_then(|r| r.clip(addr, r.end));
        first.into_iter().chain(
            self.map
                .range(addr..)
                .map(|(&s, &(e, img))| LazyRange::new(s, e, img)),
        )
    }

    /// The pending range containing `addr`, if any.
    pub fn find(&self, addr: u64) -> Option<LazyRange> {
        let (&s, &(e, img)) = self.map.range(..=addr).next_back()?;
        (addr < e).then(|| LazyRange::new(s, e, img))
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.find(addr).is_some()
    }

    /// Pending pages inside `[start, end)`.
    pub fn pages_within(&self, start: u64, end: u64) -> u64 {
        let end = page_ceil(end);
        self.iter_from(start)
            .take_while(|r| r.start < end)
            .map(|r| (r.end.min(end) - r.start) / PAGE_SIZE)
            .sum()
    }

    /// Address of the pending page `n` pages (counted in pending pages) after the first
    /// pending page at or above `start`; None if fewer than `n + 1` follow.
    pub fn nth_page_from(&self, start: u64, mut n: u64) -> Option<u64> {
        for r in self.iter_from(start) {
            if n < r.pages() {
                return Some(r.start + n * PAGE_SIZE);
            }
            n -= r.pages();
        }
        None
    }

    /// Claims the single page holding `addr`, if it is pending.
    pub fn take_page(&mut self, addr: u64) -> Option<Claim> {
        self.take_cluster(addr, 1)
    }

    /// Claims the page holding `addr` plus up to `max_pages - 1` pending pages right after
    /// it in the same range; None if that page is not pending.
    pub fn take_cluster(&mut self, addr: u64, max_pages: u64) -> Option<Claim> {
        let page = page_floor(addr);
        let range = self.find(page)?;
        let end = range
            .end
            .min(page.saturating_add(max_pages.max(1) * PAGE_SIZE));
        self.cut(range, page, end)
    }

    /// Claims up to `max_pages` from the range containing `hint` (starting at the hint's
    /// page), else from the nearest range after it, else from the lowest range.
    pub fn take_chunk(&mut self, max_pages: u64, hint: Option<u64>) -> Option<Claim> {
        let start = hint
            .and_then(|h| {
                let page = page_floor(h);
                if self.contains(page) {
                    Some(page)
                } else {
                    self.map.range(page..).next().map(|(&s, _)| s)
                }
            })
            .or_else(|| self.map.keys().next().copied())?;
        self.take_cluster(start, max_pages)
    }

    /// Claims up to `max_pages` from the lowest pending page inside `[start, end)`,
    /// never reaching past `end`.
    pub fn take_within(&mut self, start: u64, end: u64, max_pages: u64) -> Option<Claim> {
        let (start, end) = (page_floor(start), page_ceil(end));
        let first = match self.find(start) {
            Some(_) => start,
            None => *self.map.range(start..end).next()?.0,
        };
        let range = self.find(first)?;
        let stop = range
            .end
            .min(end)
            .min(first.saturating_add(max_pages.max(1) * PAGE_SIZE));
        self.cut(range, first, stop)
    }

    /// Drops `[start, end)` (MADV_DONTNEED, munmap, exit); returns the pages dropped.
    pub fn remove(&mut self, start: u64, end: u64) -> u64 {
        self.extract(start, end).iter().map(LazyRange::pages).sum()
    }

    /// Removes and returns the pending pieces inside `[start, end)`, lowest first.
    pub fn extract(&mut self, start: u64, end: u64) -> Vec<LazyRange> {
        let (start, end) = (page_floor(start), page_ceil(end));
        if start >= end {
            return Vec::new();
        }
        let mut hit: Vec<LazyRange> = self.find(start).into_iter().collect();
        for (&s, &(e, img)) in self.map.range(start..end) {
            if hit.first().map(|r| r.start) != Some(s) {
                hit.push(LazyRange::new(s, e, img));
            }
        }
        let mut out = Vec::with_capacity(hit.len());
        for r in hit {
            self.take_out(r.start);
            if let Some(left) = r.clip(r.start, start) {
                self.put(left);
            }
            if let Some(right) = r.clip(end, r.end) {
                self.put(right);
            }
            if let Some(mid) = r.clip(start, end) {
                out.push(mid);
            }
        }
        out
    }

    /// Applies mremap(from, len -> to): pending pages inside `[from, from + len)` move by
    /// `to - from`, keeping their dump-time address. Whatever was pending at the
    /// destination is gone (the kernel unmapped it).
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        let moved = self.extract(from, from.saturating_add(len));
        self.remove(to, to.saturating_add(len));
        for r in moved {
            let start = r.start - from + to;
            self.put(LazyRange::new(start, start + r.len(), r.img_start));
        }
    }

    /// Empties the set; returns the pages dropped.
    pub fn clear(&mut self) -> u64 {
        let pages = self.pages;
        self.map.clear();
        self.pages = 0;
        pages
    }

    /// Splits `range` (currently in the map) so that `[from, to)` is returned as a claim.
    fn cut(&mut self, range: LazyRange, from: u64, to: u64) -> Option<Claim> {
        let claim = range.clip(from, to)?;
        self.take_out(range.start);
        if let Some(left) = range.clip(range.start, claim.start) {
            self.put(left);
        }
        if let Some(right) = range.clip(claim.end, range.end) {
            self.put(right);
        }
        Some(claim)
    }

    fn take_out(&mut self, start: u64) {
        if let Some((end, _)) = self.map.remove(&start) {
            self.pages -= (end - start) / PAGE_SIZE;
        }
    }

    // Callers guarantee `r` overlaps nothing already in the map.
    fn put(&mut self, r: LazyRange) {
        if !r.is_empty() {
            self.pages += r.pages();
            self.map.insert(r.start, (r.end, r.img_start));
        }
    }
}

impl FromIterator<LazyRange> for LazyRanges {
    fn from_iter<I: IntoIterator<Item = LazyRange>>(iter: I) -> Self {
        let mut set = LazyRanges::new();
        for r in iter {
            set.insert(r);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_page_splits_range() {
        let mut r = LazyRanges::new();
        r.insert(LazyRange::new(0x1000, 0x5000, 0x10000));
        let c = r.take_page(0x2abc).unwrap();
        assert_eq!(c, LazyRange::new(0x2000, 0x3000, 0x11000));
        assert_eq!(r.pages(), 3);
        assert!(!r.contains(0x2000));
        assert_eq!(
            r.find(0x3000),
            Some(LazyRange::new(0x3000, 0x5000, 0x12000))
        );
    }
}
