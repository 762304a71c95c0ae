//! Property-style tests of `LazyRanges` against a page-by-page reference model.

use std::collections::BTreeMap;

use lazy_pages_core::ranges::{Claim, LazyRange, LazyRanges, PAGE_SIZE};

const BASE: u64 = 0x7f00_0000_0000;
const SPAN_PAGES: u64 = 96;

/// run-time page address -> dump-time page address.
type Model = BTreeMap<u64, u64>;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, no extra crate.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn page(&mut self) -> u64 {
        BASE + self.below(SPAN_PAGES) * PAGE_SIZE
    }
}

fn model_insert(m: &mut Model, r: LazyRange) {
    for i in 0..r.pages() {
        m.insert(r.start + i * PAGE_SIZE, r.img_start + i * PAGE_SIZE);
    }
}

fn model_remove(m: &mut Model, start: u64, end: u64) -> Vec<(u64, u64)> {
    let keys: Vec<u64> = m.range(start..end).map(|(&k, _)| k).collect();
    keys.into_iter()
        .map(|k| (k, m.remove(&k).unwrap()))
        .collect()
}

fn check_structure(set: &LazyRanges, m: &Model) {
    let mut prev_end = 0;
    let mut pages = 0;
    let mut expanded = Model::new();
    for r in set.iter() {
        assert!(r.start < r.end, "empty range {r:?}");
        assert!(r.start >= prev_end, "overlap/unsorted at {r:?}");
        assert_eq!(r.start % PAGE_SIZE, 0);
        assert_eq!(r.end % PAGE_SIZE, 0);
        prev_end = r.end;
        pages += r.pages();
        model_insert(&mut expanded, r);
    }
    assert_eq!(pages, set.pages());
    assert_eq!(&expanded, m, "set and model disagree");
}

/// A claim must be pages of the model with the right dump address, starting at `start`.
fn check_claim(m: &mut Model, claim: Claim, start: u64, max: u64) {
    assert_eq!(
        claim.start, start,
        "claim {claim:?} should start at {start:#x}"
    );
    assert!(
        claim.pages() >= 1 && claim.pages() <= max,
        "claim {claim:?} size"
    );
    for i in 0..claim.pages() {
        let addr = claim.start + i * PAGE_SIZE;
        assert_eq!(
            m.remove(&addr),
            Some(claim.img_start + i * PAGE_SIZE),
            "claim {claim:?} page {addr:#x}"
        );
    }
}

fn run(seed: u64, steps: usize) {
    let mut rng = Rng(seed | 1);
    let mut set = LazyRanges::new();
    let mut m = Model::new();
    for _ in 0..steps {
        match rng.below(9) {
            0 | 1 => {
                let start = rng.page();
                let end =
                    (start + (1 + rng.below(12)) * PAGE_SIZE).min(BASE + SPAN_PAGES * PAGE_SIZE);
                let img = 0x1000_0000 + rng.below(1 << 16) * PAGE_SIZE;
                let r = LazyRange::new(start, end, img);
                if r.is_empty() {
                    continue;
                }
                model_remove(&mut m, start, end);
                model_insert(&mut m, r);
                assert!(set.insert(r));
            }
            2 => {
                let addr = rng.page() + rng.below(PAGE_SIZE);
                let page = addr & !(PAGE_SIZE - 1);
                match set.take_page(addr) {
                    Some(c) => check_claim(&mut m, c, page, 1),
                    None => assert!(!m.contains_key(&page)),
                }
            }
            3 => {
                let max = 1 + rng.below(8);
                let addr = rng.page();
                match set.take_cluster(addr, max) {
                    Some(c) => check_claim(&mut m, c, addr, max),
                    None => assert!(!m.contains_key(&addr)),
                }
            }
            4 => {
                let max = 1 + rng.below(16);
                let hint = (rng.below(3) > 0).then(|| rng.page());
                let expected = hint
                    .and_then(|h| m.range(h..).next().map(|(&k, _)| k))
                    .or_else(|| m.keys().next().copied());
                match set.take_chunk(max, hint) {
                    Some(c) => {
                        check_claim(&mut m, c, expected.expect("model empty but got claim"), max)
                    }
                    None => assert!(m.is_empty()),
                }
            }
            5 => {
                let start = rng.page();
                let end = start + rng.below(20) * PAGE_SIZE;
                let max = 1 + rng.below(16);
                let expected = m.range(start..end).next().map(|(&k, _)| k);
                match set.take_within(start, end, max) {
                    Some(c) => {
                        assert!(c.end <= end.max(start));
                        check_claim(&mut m, c, expected.expect("nothing in window"), max)
                    }
                    None => assert_eq!(expected, None),
                }
            }
            6 => {
                let start = rng.page();
                let end = start + rng.below(24) * PAGE_SIZE;
                let removed = model_remove(&mut m, start, end);
                assert_eq!(set.remove(start, end), removed.len() as u64);
            }
            7 => {
                let from = rng.page();
                let to = rng.page();
                let len = rng.below(16) * PAGE_SIZE;
                let moved = model_remove(&mut m, from, from + len);
                model_remove(&mut m, to, to + len);
                for (addr, img) in moved {
                    m.insert(addr - from + to, img);
                }
                set.remap(from, to, len);
            }
            _ => {
                let copy = set.clone();
                assert_eq!(copy, set);
                let addr = rng.page();
                assert_eq!(set.contains(addr), m.contains_key(&addr));
            }
        }
        check_structure(&set, &m);
    }
}

#[test]
fn random_operations_match_model() {
    for seed in 1..=300 {
        run(seed * 0x9e37_79b9, 400);
    }
}

#[test]
fn remove_edges() {
    let mut set = LazyRanges::new();
    set.insert(LazyRange::new(0x1000, 0x9000, 0x100000));
    // Exactly at the edges: nothing before start or at end is touched.
    assert_eq!(set.remove(0x0, 0x1000), 0);
    assert_eq!(set.remove(0x9000, 0xa000), 0);
    // Unaligned bounds widen to whole pages.
    assert_eq!(set.remove(0x2001, 0x2fff), 1);
    assert_eq!(
        set.iter().collect::<Vec<_>>(),
        vec![
            LazyRange::new(0x1000, 0x2000, 0x100000),
            LazyRange::new(0x3000, 0x9000, 0x102000),
        ]
    );
    assert_eq!(set.remove(0, !0xfff), 7);
    assert!(set.is_empty());
}

#[test]
fn remap_keeps_dump_addresses_and_overwrites_destination() {
    let mut set = LazyRanges::new();
    set.insert(LazyRange::new(0x10000, 0x14000, 0x500000));
    set.insert(LazyRange::new(0x20000, 0x22000, 0x900000));
    // Move the middle two pages of the first range onto the second.
    set.remap(0x11000, 0x20000, 0x2000);
    assert_eq!(
        set.iter().collect::<Vec<_>>(),
        vec![
            LazyRange::new(0x10000, 0x11000, 0x500000),
            LazyRange::new(0x13000, 0x14000, 0x503000),
            LazyRange::new(0x20000, 0x22000, 0x501000),
        ]
    );
    assert_eq!(set.pages(), 4);
}

#[test]
fn insert_rejects_garbage() {
    let mut set = LazyRanges::new();
    assert!(!set.insert(LazyRange::new(0x2000, 0x2000, 0)));
    assert!(!set.insert(LazyRange::new(0x2000, 0x1000, 0)));
    assert!(!set.insert(LazyRange::new(0x2001, 0x3000, 0)));
    assert!(!set.insert(LazyRange::new(0x2000, 0x3000, 0x10)));
    assert!(set.is_empty());
}

#[test]
fn take_chunk_prefers_hint_then_wraps() {
    let mut set = LazyRanges::new();
    set.insert(LazyRange::new(0x1000, 0x3000, 0));
    set.insert(LazyRange::new(0x8000, 0xc000, 0x10000));
    assert_eq!(
        set.take_chunk(2, Some(0x9000)),
        Some(LazyRange::new(0x9000, 0xb000, 0x11000))
    );
    assert_eq!(
        set.take_chunk(8, Some(0x5000)),
        Some(LazyRange::new(0x8000, 0x9000, 0x10000))
    );
    assert_eq!(
        set.take_chunk(8, Some(0xf000)),
        Some(LazyRange::new(0x1000, 0x3000, 0))
    );
    assert_eq!(
        set.take_chunk(8, None),
        Some(LazyRange::new(0xb000, 0xc000, 0x13000))
    );
    assert_eq!(set.take_chunk(8, None), None);
}
