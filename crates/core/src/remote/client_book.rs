//! The client's bookkeeping, with no I/O: which spans were asked for, which
//! GETs are on the wire (in wire order: a CRIU server answers strictly FIFO),
//! what has arrived, and what may be sent next within the background window
//! (`client_window.rs`), which each reply header's delay steers.
//!
//! A `Request` is one span the engine asked for (or announced: read-ahead), with
//! its own buffer. It goes out as one or more `Segment`s (GETs); a reply may carry
//! fewer pages than asked (the server clamps at the end of a run), and the rest is
//! asked again.
//!
//! Buffers: the reader receives straight into the request's buffer, at a page-
//! aligned offset (so each page UFFDIO_COPY reads is one page of ours, not two
//! halves). A caller asking for a whole done request gets that buffer itself
//! (swapped with its scratch, no copy); the scratch it gave up, and the buffers of
//! requests served by copying or evicted, go to a small pool that new requests
//! take from, so the steady state allocates and zeroes nothing. (The kernel's copy
//! into the task remains: UFFDIO_MOVE would take our pages instead, but it moves
//! pages only within the address space of the process that created the uffd, which
//! for CRIU's uffds is the restored process, not this daemon; fs/userfaultfd.c
//! resolves both `src` and `dst` in the uffd context's mm.)

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::client_window::{Mark, Window};
use super::wire::IovHeader;
use crate::images::PAGE_SIZE;

pub use crate::engine::Priority;

/// Limits, all in bytes or counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Pages per GET.
    pub max_request_pages: u64,
    /// Bytes of all request buffers together; done ones are evicted to stay under.
    pub cache_bytes: u64,
    /// Unfinished fault requests at once.
    pub max_fault_requests: usize,
}

pub(crate) struct Request {
    pub pid: u32,
    pub vaddr: u64,
    pub priority: Priority,
    /// Holds the data at `base..base + len`; taken out (empty) while the reader fills it.
    pub buf: Vec<u8>,
    /// Where the data starts in `buf`: the first page-aligned byte.
    base: usize,
    pub len: u64,
    pub received: u64,
    /// (byte offset, pages) not asked for yet, including clamped remainders.
    unsent: VecDeque<(u64, u64)>,
    /// Parts a fault is waiting on, taken out of `unsent`: they go out first, as
    /// faults, outside the window (`promote`).
    urgent: VecDeque<(u64, u64)>,
    /// Bytes handed to callers; a request served whole is dropped.
    served: u64,
}

impl Request {
    pub fn done(&self) -> bool {
        self.received >= self.len
    }

    /// Whether any byte of [off, off + len) of the span is still to be asked for.
    fn unsent_within(&self, off: u64, len: u64) -> bool {
        self.unsent
            .iter()
            .chain(&self.urgent)
            .any(|&(o, pages)| o < off + len && off < o + pages * PAGE_SIZE)
    }

    /// Moves the unsent parts of [off, off + len) to the urgent queue, cut out of the
    /// pieces that hold them. True if anything moved.
    fn promote(&mut self, off: u64, len: u64) -> bool {
        let end = off + len;
        let mut moved = false;
        let mut keep = VecDeque::with_capacity(self.unsent.len() + 2);
        for (o, pages) in self.unsent.drain(..) {
            let stop = o + pages * PAGE_SIZE;
            let (a, b) = (o.max(off), stop.min(end));
            if a >= b {
                keep.push_back((o, pages));
                continue;
            }
            if o < a {
                keep.push_back((o, (a - o) / PAGE_SIZE));
            }
            self.urgent.push_back((a, (b - a) / PAGE_SIZE));
            moved = true;
            if b < stop {
                keep.push_back((b, (stop - b) / PAGE_SIZE));
            }
        }
        self.unsent = keep;
        moved
    }

    /// Where a part sent at `priority` goes when it must be asked for again: a
    /// promoted part stays urgent.
    fn queue_for(&mut self, priority: Priority) -> &mut VecDeque<(u64, u64)> {
        if priority == Priority::Fault && self.priority != Priority::Fault {
            &mut self.urgent
        } else {
            &mut self.unsent
        }
    }

    fn covers(&self, pid: u32, addr: u64, len: u64) -> bool {
        self.pid == pid
            && self.vaddr <= addr
            && addr.saturating_add(len) <= self.vaddr.saturating_add(self.len)
    }
}

/// One GET on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub req: u64,
    pub pid: u32,
    pub vaddr: u64,
    pub pages: u64,
    pub priority: Priority,
    /// When its GET was handed to the socket: its reply header's delay is a sample
    /// of the round trip, and its data's landing one of the delivery rate.
    pub sent: Instant,
    pub mark: Mark,
}

impl Segment {
    pub fn header(&self) -> IovHeader {
        IovHeader::get(self.pid, self.vaddr, self.pages)
    }

    fn bytes(&self) -> u64 {
        self.pages * PAGE_SIZE
    }
}

/// What is on the wire, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Get(Segment),
    Close,
}

/// Where the reader puts the data of the reply at the front of the wire queue.
pub(crate) struct Landing {
    pub seg: Segment,
    pub pages: u64,
    /// Byte offset of the data in the request's span.
    pub offset: u64,
    /// Where in `buf` the data goes.
    pub start: usize,
    /// The request's buffer (None if the request is gone: discard the data).
    pub buf: Option<Vec<u8>>,
}

/// Spare buffers kept at most (each also counts against half the cache's bytes).
const POOL_BUFFERS: usize = 16;

/// Bytes from the start of `buf` to its first page boundary.
fn page_offset(buf: &[u8]) -> usize {
    let page = PAGE_SIZE as usize;
    (page - buf.as_ptr() as usize % page) % page
}

pub(crate) struct Book {
    limits: Limits,
    window: Window,
    reqs: BTreeMap<u64, Request>,
    pub wire: VecDeque<Sent>,
    background_on_wire: u64,
    /// Background GETs among them.
    background_gets: u64,
    held: u64,
    /// Spare buffers, `pooled` bytes in all.
    pool: Vec<Vec<u8>>,
    pooled: u64,
    /// Read-ahead found no room in the window at its last call: the window is what
    /// holds background back (as when admitted requests wait unsent).
    wanting: bool,
    next_id: u64,
    pub fatal: Option<String>,
    pub closed: bool,
    /// A CLOSE went out (`close_sent`): no GET may follow it on the wire. The server
    /// answers CLOSE and hangs up, so a GET sent after it (the unsent rest of a
    /// read-ahead request, pumped when a last reply landed) met a closed socket and
    /// turned a clean end into "Broken pipe", exit 1.
    closing: bool,
    /// The connection dropped and a new one is not up yet: nothing is sent.
    pub lost: bool,
}

impl Book {
    pub fn new(limits: Limits, window: Window) -> Book {
        Book {
            limits,
            window,
            reqs: BTreeMap::new(),
            wire: VecDeque::new(),
            background_on_wire: 0,
            background_gets: 0,
            held: 0,
            pool: Vec::new(),
            pooled: 0,
            wanting: false,
            next_id: 1,
            fatal: None,
            closed: false,
            closing: false,
            lost: false,
        }
    }

    /// Requests admitted so far (to tell whether a call added any).
    pub fn admitted(&self) -> u64 {
        self.next_id
    }

    /// Parts promoted and not sent yet (to tell whether a call promoted any).
    pub fn urgent_parts(&self) -> usize {
        self.reqs.values().map(|r| r.urgent.len()).sum()
    }

    pub fn window_bytes(&self) -> u64 {
        self.window.bytes()
    }

    #[cfg(test)]
    pub fn request(&self, id: u64) -> Option<&Request> {
        self.reqs.get(&id)
    }

    /// A request whose span holds [addr, addr+len) of `pid`, done ones first.
    fn covering(&self, pid: u32, addr: u64, len: u64) -> Option<u64> {
        let mut found = None;
        for (&id, r) in self.reqs.iter().filter(|(_, r)| r.covers(pid, addr, len)) {
            if r.done() {
                return Some(id);
            }
            found = found.or(Some(id));
        }
        found
    }

    /// The requests that together hold [addr, addr+len) of `pid`, in address
    /// order, admitting a request for each part nobody asked for yet. A span
    /// that no longer lines up with the requests (a fault took a page out of a
    /// run, so later claims start elsewhere) is thus put together from what is
    /// already asked for, never fetched twice. A fault promotes what it needs of
    /// requests made at a lower priority that has not gone out yet (`promote`).
    /// None: a part could not be admitted now (the parts admitted so far stay
    /// asked for).
    pub fn cover(&mut self, pid: u32, addr: u64, len: u64, priority: Priority) -> Option<Vec<u64>> {
        if let Some(id) = self.covering(pid, addr, len) {
            if priority == Priority::Fault {
                self.promote_in(id, addr, len);
            }
            return Some(vec![id]);
        }
        let end = addr.saturating_add(len);
        let mut parts = Vec::new();
        let mut at = addr;
        while at < end {
            let usable = |r: &Request| r.pid == pid && r.vaddr <= at && at < r.vaddr + r.len;
            let holder = self
                .reqs
                .iter()
                .filter(|(_, r)| usable(r))
                .max_by_key(|(_, r)| (r.done(), r.vaddr + r.len))
                .map(|(&id, r)| (id, r.vaddr + r.len));
            let (id, next) = match holder {
                Some((id, next)) => {
                    if priority == Priority::Fault {
                        self.promote_in(id, at, next.min(end) - at);
                    }
                    (id, next)
                }
                None => {
                    // Up to the next request of this task, or the span's end.
                    let stop = self
                        .reqs
                        .values()
                        .filter(|r| r.pid == pid && r.vaddr > at)
                        .map(|r| r.vaddr)
                        .min()
                        .map_or(end, |v| v.min(end));
                    (self.admit(pid, at, stop - at, priority)?, stop)
                }
            };
            parts.push(id);
            at = next;
        }
        Some(parts)
    }

    /// A fault waits on [addr, addr+len) of request `id`: whatever of it has not gone
    /// out yet goes out first, outside the window, so the fault is not asked twice and
    /// does not wait for room. True if anything was promoted (a send plan is due).
    fn promote_in(&mut self, id: u64, addr: u64, len: u64) -> bool {
        let Some(r) = self.reqs.get_mut(&id) else {
            return false;
        };
        if r.priority == Priority::Fault {
            return false;
        }
        let off = addr.saturating_sub(r.vaddr);
        let len = len.min(r.len.saturating_sub(off));
        r.promote(off, len)
    }

    /// `hurry`: every request holding part of [addr, addr+len) of `pid` promotes it.
    pub fn promote(&mut self, pid: u32, addr: u64, len: u64) -> bool {
        let end = addr.saturating_add(len);
        let ids: Vec<u64> = self
            .reqs
            .iter()
            .filter(|(_, r)| r.pid == pid && r.vaddr < end && addr < r.vaddr + r.len)
            .map(|(&id, _)| id)
            .collect();
        let mut any = false;
        for id in ids {
            let r = &self.reqs[&id];
            let (a, b) = (addr.max(r.vaddr), end.min(r.vaddr + r.len));
            any |= self.promote_in(id, a, b - a);
        }
        any
    }

    /// Whether every byte of [addr, addr+len) is in, across `parts` (as `cover` gave
    /// them): a part that is not done may still hold the span's bytes, when what is
    /// missing of it lies elsewhere (a promoted page of a large request).
    pub fn span_ready(&self, parts: &[u64], addr: u64, len: u64) -> Option<bool> {
        let end = addr + len;
        for id in parts {
            let r = self.reqs.get(id)?;
            if r.done() {
                continue;
            }
            let (a, b) = (addr.max(r.vaddr), end.min(r.vaddr + r.len));
            if a >= b {
                continue;
            }
            // The reader has the buffer while it lands a reply into it.
            if r.buf.is_empty() || r.unsent_within(a - r.vaddr, b - a) {
                return Some(false);
            }
            let on_wire = self.wire.iter().any(|w| matches!(w, Sent::Get(seg) if seg.req == *id && seg.vaddr < b && a < seg.vaddr + seg.bytes()));
            if on_wire {
                return Some(false);
            }
        }
        Some(true)
    }

    /// Read-ahead: asks for whatever part of each span nobody asked for yet, as
    /// background, in order, while the window has room; never waits. True if
    /// anything was admitted.
    pub fn admit_ahead(&mut self, pid: u32, spans: &[(u64, usize)]) -> bool {
        let before = self.admitted();
        self.wanting = false;
        for &(addr, len) in spans {
            let len = len as u64;
            if len == 0 || len % PAGE_SIZE != 0 || addr % PAGE_SIZE != 0 {
                continue;
            }
            if self.cover(pid, addr, len, Priority::Background).is_none() {
                self.wanting = true;
                break;
            }
        }
        self.admitted() != before
    }

    /// Records a new span to fetch, or None if the limits say not now.
    pub fn admit(&mut self, pid: u32, vaddr: u64, len: u64, priority: Priority) -> Option<u64> {
        let unfinished = |p: Priority| {
            self.reqs
                .values()
                .filter(move |r| r.priority == p && !r.done())
        };
        match priority {
            Priority::Fault
                if unfinished(Priority::Fault).count() >= self.limits.max_fault_requests =>
            {
                return None
            }
            Priority::WorkingSet | Priority::Background => {
                // Admitting up to a window ahead lets a second fill job's span go
                // out right behind the first one's, with no gap on the link.
                let queued: u64 = unfinished(Priority::Background)
                    .chain(unfinished(Priority::WorkingSet))
                    .map(|r| r.len - r.received)
                    .sum();
                if queued >= self.window.bytes() {
                    return None;
                }
            }
            Priority::Fault => {}
        }
        self.evict_for(len);
        let (buf, base) = self.buffer(usize::try_from(len).ok()?);
        let id = self.next_id;
        self.next_id += 1;
        self.held += len;
        let unsent = VecDeque::from([(0, len / PAGE_SIZE)]);
        self.reqs.insert(
            id,
            Request {
                pid,
                vaddr,
                priority,
                buf,
                base,
                len,
                received: 0,
                unsent,
                urgent: VecDeque::new(),
                served: 0,
            },
        );
        Some(id)
    }

    /// A buffer with room for `len` bytes from a page boundary: the smallest in the
    /// pool that fits, else a new one (zeroed once, reused as it is).
    fn buffer(&mut self, len: usize) -> (Vec<u8>, usize) {
        let fits = |b: &Vec<u8>| {
            page_offset(b)
                .checked_add(len)
                .is_some_and(|end| end <= b.len())
        };
        let best = self
            .pool
            .iter()
            .enumerate()
            .filter(|(_, b)| fits(b))
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        let buf = match best {
            Some(i) => {
                let b = self.pool.swap_remove(i);
                self.pooled -= b.len() as u64;
                b
            }
            None => vec![0u8; len + PAGE_SIZE as usize - 1],
        };
        let base = page_offset(&buf);
        (buf, base)
    }

    /// Keeps `buf` for a later request, within the pool's bounds.
    /// A full pool gives up its smallest buffer for a larger one, so buffers of
    /// one-page faults cannot crowd out those of background chunks.
    fn recycle(&mut self, buf: Vec<u8>) {
        let size = buf.len() as u64;
        if size <= PAGE_SIZE {
            return;
        }
        if self.pool.len() >= POOL_BUFFERS {
            let Some((i, smallest)) = self
                .pool
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.len())
                .map(|(i, b)| (i, b.len() as u64))
            else {
                return;
            };
            if smallest >= size {
                return;
            }
            self.pool.swap_remove(i);
            self.pooled -= smallest;
        }
        if self.pooled + size <= self.limits.cache_bytes / 2 {
            self.pooled += size;
            self.pool.push(buf);
        }
    }

    /// Drops done requests, oldest first, until `len` more bytes fit the cache.
    fn evict_for(&mut self, len: u64) {
        // Read-ahead keeps up to a window of bytes arriving ahead of the fill: a
        // cache smaller than that would evict them before they are used.
        let limit = self.limits.cache_bytes.max(2 * self.window.bytes());
        while self.held.saturating_add(len) > limit {
            let Some(id) = self.reqs.iter().find(|(_, r)| r.done()).map(|(&id, _)| id) else {
                return;
            };
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(r) = self.reqs.remove(&id) {
            self.held -= r.len;
            self.recycle(r.buf);
        }
    }

    /// Puts [addr, addr+len) in `out`, from done requests `parts` (as `cover` gave
    /// them), and says where in `out` the bytes start. A call for one whole request
    /// takes its buffer (swapped with `out`, whose old buffer the pool keeps); any
    /// other copies. None if a part is gone or the span is not all in.
    pub fn take_out(
        &mut self,
        parts: &[u64],
        addr: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Option<usize> {
        if !self.span_ready(parts, addr, len)? {
            return None;
        }
        let [id] = *parts else {
            return self.assemble(parts, addr, len, out);
        };
        let r = self.reqs.get_mut(&id)?;
        let start = r.base + (addr - r.vaddr) as usize;
        r.buf.get(start..start + len as usize)?;
        if addr == r.vaddr && len == r.len && r.served == 0 {
            let r = self.reqs.remove(&id)?;
            self.held -= r.len;
            let old = std::mem::replace(out, r.buf);
            self.recycle(old);
            return Some(start);
        }
        out.clear();
        out.extend_from_slice(&r.buf[start..start + len as usize]);
        r.served += len;
        if r.served >= r.len {
            self.remove(id);
        }
        Some(0)
    }

    /// Copies [addr, addr+len) out of several done requests, in order.
    fn assemble(&mut self, parts: &[u64], addr: u64, len: u64, out: &mut Vec<u8>) -> Option<usize> {
        out.clear();
        let end = addr + len;
        let mut at = addr;
        for &id in parts {
            let r = self.reqs.get_mut(&id)?;
            let stop = end.min(r.vaddr + r.len);
            if at < r.vaddr || stop <= at {
                return None;
            }
            let start = r.base + (at - r.vaddr) as usize;
            out.extend_from_slice(r.buf.get(start..start + (stop - at) as usize)?);
            r.served += stop - at;
            if r.served >= r.len {
                self.remove(id);
            }
            at = stop;
        }
        (at == end).then_some(0)
    }

    /// Picks the GETs to send now (faults first, then background within the
    /// window) and records them as on the wire since `sent`. The caller must
    /// write them in this order before anyone else records more.
    pub fn plan_sends(&mut self, sent: Instant) -> Vec<Segment> {
        let mut out = Vec::new();
        if self.fatal.is_some() || self.closed || self.closing || self.lost {
            return out;
        }
        let max = self.limits.max_request_pages.max(1);
        // Faults first, outside the window: fault requests, and the parts of other
        // requests that a fault promoted.
        let ids: Vec<u64> = self.reqs.keys().copied().collect();
        for &id in &ids {
            let Some(r) = self.reqs.get_mut(&id) else {
                continue;
            };
            let queue = if r.priority == Priority::Fault {
                &mut r.unsent
            } else {
                &mut r.urgent
            };
            while let Some((off, pages)) = queue.pop_front() {
                let take = pages.min(max);
                if take < pages {
                    queue.push_front((off + take * PAGE_SIZE, pages - take));
                }
                let seg = Segment {
                    req: id,
                    pid: r.pid,
                    vaddr: r.vaddr + off,
                    pages: take,
                    priority: Priority::Fault,
                    sent,
                    mark: self.window.mark(),
                };
                self.wire.push_back(Sent::Get(seg));
                out.push(seg);
            }
        }
        // Then the working set, then the rest, within the window.
        'planning: for priority in [Priority::WorkingSet, Priority::Background] {
            for &id in &ids {
                loop {
                    let Some(r) = self.reqs.get_mut(&id).filter(|r| r.priority == priority) else {
                        break;
                    };
                    if r.unsent.is_empty() {
                        break;
                    }
                    let Some(room) = self.window.room(
                        self.background_on_wire / PAGE_SIZE,
                        self.background_gets,
                        max,
                    ) else {
                        break 'planning;
                    };
                    let Some((off, pages)) = r.unsent.pop_front() else {
                        break;
                    };
                    let take = pages.min(room);
                    if take < pages {
                        r.unsent.push_front((off + take * PAGE_SIZE, pages - take));
                    }
                    let seg = Segment {
                        req: id,
                        pid: r.pid,
                        vaddr: r.vaddr + off,
                        pages: take,
                        priority,
                        sent,
                        mark: self.window.mark(),
                    };
                    self.background_on_wire += seg.bytes();
                    self.background_gets += 1;
                    self.wire.push_back(Sent::Get(seg));
                    out.push(seg);
                }
            }
        }
        let held = self
            .reqs
            .values()
            .any(|r| r.priority != Priority::Fault && !r.unsent.is_empty());
        self.window.set_limited(held || self.wanting);
        out
    }

    /// Matches a reply header (read at `now`) with the oldest GET on the wire and
    /// lends out the buffer its data goes to. Err = the stream is out of step (fatal).
    pub fn land(&mut self, reply: &IovHeader, now: Instant) -> Result<Landing, String> {
        let seg = match self.wire.front() {
            Some(Sent::Get(seg)) => *seg,
            Some(Sent::Close) => {
                return Err("sent a page header where the CLOSE reply was due".into())
            }
            None => {
                return Err(format!(
                    "sent a reply nobody asked for (task {}, {:#x})",
                    reply.dst_id, reply.vaddr
                ))
            }
        };
        if reply.dst_id != u64::from(seg.pid) || reply.vaddr != seg.vaddr {
            return Err(format!(
                "replied for task {} at {:#x}, but the oldest request is task {} at {:#x}",
                reply.dst_id, reply.vaddr, seg.pid, seg.vaddr
            ));
        }
        if reply.nr_pages == 0 || reply.nr_pages > seg.pages {
            return Err(format!(
                "replied with {} pages to a request for {} (task {} at {:#x})",
                reply.nr_pages, seg.pages, seg.pid, seg.vaddr
            ));
        }
        self.wire.pop_front();
        self.window
            .rtt_sample(now, now.saturating_duration_since(seg.sent));
        let (offset, start, buf) = match self.reqs.get_mut(&seg.req) {
            Some(r) => (
                seg.vaddr - r.vaddr,
                r.base + (seg.vaddr - r.vaddr) as usize,
                Some(std::mem::take(&mut r.buf)),
            ),
            None => (0, 0, None),
        };
        Ok(Landing {
            seg,
            pages: reply.nr_pages,
            offset,
            start,
            buf,
        })
    }

    /// The data of `landing` arrived (`complete`), or the connection broke
    /// mid-reply: return the buffer either way; count only whole replies and
    /// queue the clamped-off rest again. A broken reply goes back on the wire
    /// front, so `requeue` asks for it again whole.
    pub fn landed(&mut self, landing: Landing, complete: bool, now: Instant) {
        let seg = landing.seg;
        if !complete {
            self.wire.push_front(Sent::Get(seg));
        } else {
            self.off_wire(&seg);
            self.window
                .landed(now, seg.sent, seg.mark, landing.pages * PAGE_SIZE);
        }
        let Some(buf) = landing.buf else { return };
        let Some(r) = self.reqs.get_mut(&seg.req) else {
            return;
        };
        r.buf = buf;
        if !complete {
            return;
        }
        r.received += landing.pages * PAGE_SIZE;
        if landing.pages < seg.pages {
            let rest = (
                landing.offset + landing.pages * PAGE_SIZE,
                seg.pages - landing.pages,
            );
            r.queue_for(seg.priority).push_front(rest);
        }
    }

    /// The connection is gone: every GET on the wire becomes unsent again, in
    /// its old order within its request (nothing of them was counted).
    pub fn requeue(&mut self) {
        while let Some(sent) = self.wire.pop_back() {
            let Sent::Get(seg) = sent else { continue };
            self.off_wire(&seg);
            if let Some(r) = self.reqs.get_mut(&seg.req) {
                let part = (seg.vaddr - r.vaddr, seg.pages);
                r.queue_for(seg.priority).push_front(part);
            }
        }
    }

    /// The CLOSE is being written: it is the last thing on the wire.
    pub fn close_sent(&mut self) {
        self.wire.push_back(Sent::Close);
        self.closing = true;
    }

    /// `seg` is no longer on the wire: a background one frees its room in the window.
    fn off_wire(&mut self, seg: &Segment) {
        if seg.priority != Priority::Fault {
            self.background_on_wire = self.background_on_wire.saturating_sub(seg.bytes());
            self.background_gets = self.background_gets.saturating_sub(1);
        }
    }

    /// Some request still waits for bytes (so a lost connection matters now).
    pub fn wants_data(&self) -> bool {
        self.reqs.values().any(|r| !r.done())
    }

    /// Every request and the wire, in one line (for test failures).
    pub fn debug_dump(&self) -> String {
        let reqs: Vec<String> = self
            .reqs
            .iter()
            .map(|(id, r)| {
                format!(
                    "#{id} {:#x}+{} {:?} rcv {} unsent {:?} urgent {:?} served {}",
                    r.vaddr,
                    r.len / PAGE_SIZE,
                    r.priority,
                    r.received / PAGE_SIZE,
                    r.unsent,
                    r.urgent,
                    r.served
                )
            })
            .collect();
        format!(
            "reqs {reqs:?} wire {} bg_on_wire {} held {} lost {} win {}",
            self.wire.len(),
            self.background_on_wire / PAGE_SIZE,
            self.held,
            self.lost,
            self.window.bytes()
        )
    }

    /// GETs on the wire (for messages).
    pub fn on_wire(&self) -> usize {
        self.wire.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const P: u64 = PAGE_SIZE;

    fn book() -> Book {
        Book::new(
            Limits {
                max_request_pages: 1024,
                cache_bytes: 16 << 20,
                max_fault_requests: 64,
            },
            Window::fixed(8 << 20),
        )
    }

    /// Sends what is planned and answers every GET in full, with each page's
    /// bytes being its address (as the reader would land them).
    fn answer_all(b: &mut Book) {
        let now = Instant::now();
        b.plan_sends(now);
        while let Some(Sent::Get(seg)) = b.wire.front().copied() {
            let reply = IovHeader::get(seg.pid, seg.vaddr, seg.pages);
            let mut landing = b.land(&reply, now + Duration::from_micros(10)).unwrap();
            let buf = landing.buf.as_mut().unwrap();
            for i in 0..seg.pages {
                let at = landing.start + (i * P) as usize;
                buf[at..at + 8].copy_from_slice(&(seg.vaddr + i * P).to_le_bytes());
            }
            b.landed(landing, true, now);
        }
    }

    fn page_at(out: &[u8], i: u64) -> u64 {
        let at = (i * P) as usize;
        u64::from_le_bytes(out[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn a_span_across_read_ahead_requests_is_put_together_not_fetched_again() {
        let mut b = book();
        // Read-ahead announced [0, 4) and [4, 8); a fault then shifted the next claim.
        assert!(b.admit_ahead(1, &[(0, (4 * P) as usize), (4 * P, (4 * P) as usize)]));
        assert!(
            !b.admit_ahead(1, &[(0, (4 * P) as usize)]),
            "already asked for"
        );
        let parts = b.cover(1, 2 * P, 4 * P, Priority::Background).unwrap();
        assert_eq!(parts.len(), 2, "[2, 6) is held by the two requests");
        assert_eq!(b.admitted(), 3, "nothing new asked for");
        // [6, 10): the part past the last request is asked for on its own.
        let tail = b.cover(1, 6 * P, 4 * P, Priority::Background).unwrap();
        assert_eq!(tail.len(), 2);
        assert_eq!(
            b.request(tail[1]).map(|r| (r.vaddr, r.len)),
            Some((8 * P, 2 * P))
        );
        answer_all(&mut b);
        let mut out = Vec::new();
        let start = b.take_out(&parts, 2 * P, 4 * P, &mut out).unwrap();
        assert_eq!(
            (0..4)
                .map(|i| page_at(&out[start..], i))
                .collect::<Vec<_>>(),
            [2 * P, 3 * P, 4 * P, 5 * P]
        );
    }

    #[test]
    fn a_whole_request_is_handed_over_page_aligned_and_its_buffer_reused() {
        let mut b = book();
        let id = b.cover(1, 0, 16 * P, Priority::Background).unwrap();
        answer_all(&mut b);
        let mut out = Vec::new();
        let start = b.take_out(&id, 0, 16 * P, &mut out).unwrap();
        let data = &out[start..start + (16 * P) as usize];
        assert_eq!(data.as_ptr() as u64 % P, 0, "page-aligned for UFFDIO_COPY");
        assert_eq!(page_at(data, 15), 15 * P);
        assert_eq!(b.held, 0, "handed over: no longer the cache's");
        // The caller's next call gives this buffer back; the next request takes it.
        let given = out.as_ptr();
        let again = b.cover(1, 16 * P, 16 * P, Priority::Background).unwrap();
        answer_all(&mut b);
        b.take_out(&again, 16 * P, 16 * P, &mut out).unwrap();
        assert_ne!(out.as_ptr(), given, "swapped for the new request's buffer");
        let third = b.cover(1, 32 * P, 16 * P, Priority::Background).unwrap();
        assert_eq!(
            b.request(third[0]).unwrap().buf.as_ptr(),
            given,
            "the pool's buffer, not a new one"
        );
    }

    #[test]
    fn a_fault_on_background_still_unsent_promotes_it_instead_of_asking_twice() {
        let mut b = Book::new(
            Limits {
                max_request_pages: 1024,
                cache_bytes: 16 << 20,
                max_fault_requests: 64,
            },
            Window::fixed(4 * P),
        );
        let bg = b.cover(1, 0, 64 * P, Priority::Background).unwrap();
        b.plan_sends(Instant::now());
        // Four pages went out; page 40 still waits for room.
        let fault = b.cover(1, 40 * P, P, Priority::Fault).unwrap();
        assert_eq!(
            fault, bg,
            "the background request holds it: not asked twice"
        );
        assert_eq!(b.admitted(), 2, "no new request");
        let sent = b.plan_sends(Instant::now());
        assert_eq!(
            sent.iter()
                .map(|s| (s.vaddr, s.pages, s.priority))
                .collect::<Vec<_>>(),
            [(40 * P, 1, Priority::Fault)],
            "sent at once, outside the window"
        );
        assert_eq!(b.span_ready(&fault, 40 * P, P), Some(false));
        answer_all(&mut b);
        // Its page is in long before the rest of the request.
        let mut out = Vec::new();
        let start = b
            .take_out(&fault, 40 * P, P, &mut out)
            .expect("the promoted page is in");
        assert_eq!(page_at(&out[start..], 0), 40 * P);
        assert!(
            !b.request(bg[0]).unwrap().done(),
            "the rest still waits for room"
        );
        assert_eq!(b.span_ready(&bg, 0, 64 * P), Some(false));
    }

    #[test]
    fn a_fault_asked_again_while_the_connection_is_down_is_not_asked_twice() {
        let mut b = book();
        b.lost = true;
        let first = b.cover(1, 7 * P, P, Priority::Fault).unwrap();
        assert!(
            b.plan_sends(Instant::now()).is_empty(),
            "nothing goes out between connections"
        );
        assert_eq!(b.cover(1, 7 * P, P, Priority::Fault).unwrap(), first);
        assert_eq!(b.admitted(), 2);
    }

    #[test]
    fn nothing_is_sent_after_close() {
        let mut b = Book::new(
            Limits {
                max_request_pages: 1024,
                cache_bytes: 16 << 20,
                max_fault_requests: 64,
            },
            Window::fixed(4 * P),
        );
        b.cover(1, 0, 64 * P, Priority::Background).unwrap();
        assert_eq!(
            b.plan_sends(Instant::now()).len(),
            1,
            "four pages of 64 fit the window"
        );
        b.close_sent();
        answer_all(&mut b);
        assert!(
            b.plan_sends(Instant::now()).is_empty(),
            "the rest of the request would follow the CLOSE"
        );
        b.cover(1, 100 * P, P, Priority::Fault).unwrap();
        assert!(b.plan_sends(Instant::now()).is_empty(), "a fault neither");
    }
}
