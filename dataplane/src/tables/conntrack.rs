//! Connection tracking: the one flow table every worker shares.
//!
//! This module owns the flow records (which backend a flow was balanced to, its TCP state and idle
//! time), the index that finds them by either direction's key, the free-slot lists, the per-zone
//! budgets and eviction, and the incremental reclaim of expired flows. See DESIGN.md §3.
//!
//! # Layout
//!
//! - **Slab.** `capacity` fixed 128-byte flow slots, allocated once in [`Conntrack::new`]. Every
//!   field is an atomic. A slot's `sequence` word is a seqlock and a generation at once: it counts up
//!   through FREE → CREATING → LIVE → FREEING (its value modulo 4), so a LIVE value names one
//!   incarnation of the slot and is the generation in a [`FlowHandle`].
//! - **Index.** A power-of-two array of 64-byte buckets, sized so at most half of its entry words are
//!   ever used. Word 0 of a bucket is its control word (bit 0: writer lock; the rest: how many entries
//!   whose home is this bucket or an earlier one had to be placed further on). Words 1–7 hold entries
//!   `tag (32) | reply-direction (1) | slot + 1 (31)`, 0 meaning empty. A key's home bucket and tag come
//!   from a randomly seeded hash, so hostile traffic cannot choose buckets. Each flow is indexed twice,
//!   under its original key and its reply key.
//!
//! # Concurrency
//!
//! - A lookup takes no lock and writes nothing: it scans the home bucket (and the next ones while their
//!   overflow count is non-zero), follows entries whose tag matches, and reads the slot under its
//!   seqlock, comparing the whole key. A race with removal or reuse can only produce a miss, never a
//!   hit on another flow's record.
//! - Creating a flow locks the home buckets of both its keys (in index order, so two creators cannot
//!   deadlock) and looks both keys up again under the locks. Every writer of entries homed in a bucket
//!   holds that bucket's lock, so the re-check is exact: of two workers racing to create one flow,
//!   the second finds the first's entry and is told to use it ([`Insert::Existing`]).
//! - Removing a flow first claims its slot with a compare-and-swap on the sequence (so exactly one of
//!   several removers wins), then unindexes each key under its home bucket's lock, one lock at a time,
//!   and only then returns the slot to a free list. Eviction runs with no bucket lock held.
//! - Per-packet updates ([`Conntrack::touch`]) compare-and-swap one `activity` word that carries
//!   part of the generation, so a stale handle cannot update a reused slot, and they write nothing when
//!   neither the second nor the TCP state changed.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::hint::spin_loop;
use std::ops::Deref;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

use crate::flow::{Direction, FlowKey, Protocol, Timestamp, Zone};

/// Idle timeouts in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP flow that has sent a SYN but seen no answer.
    pub tcp_syn: u32,
    pub tcp_established: u32,
    /// After a RST, or after FIN in both directions.
    pub tcp_closing: u32,
    /// After a FIN in one direction only.
    pub tcp_fin_wait: u32,
    /// UDP, and SCTP (which kxdp does not track by state; its heartbeats keep an association alive).
    pub udp: u32,
    /// ICMP and ICMPv6 echo.
    pub icmp_echo: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: 60,
            tcp_established: 21_600,
            tcp_closing: 10,
            tcp_fin_wait: 120,
            udp: 60,
            icmp_echo: 30,
        }
    }
}

/// How big the table is and how it is shared between zones.
///
/// Each zone may hold up to its budget. The budgets may add up to more than the capacity (the defaults
/// do): the slab never holds more than `capacity` flows, and when it is full an east-west insert that is
/// under its budget takes room from north-south, while a north-south insert only ever evicts
/// north-south flows. So east-west is guaranteed `capacity - north_south_budget` entries however hard
/// the outside floods, and north-south `capacity - east_west_budget`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Number of flows; at least 1 and below 2^31.
    pub capacity: usize,
    pub east_west_budget: usize,
    pub north_south_budget: usize,
    pub timeouts: Timeouts,
}

impl Config {
    /// East-west may use three quarters of the table, north-south half of it (each at least one flow),
    /// default timeouts.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            east_west_budget: (capacity / 4 * 3 + capacity % 4 * 3 / 4).max(1),
            north_south_budget: (capacity / 2).max(1),
            timeouts: Timeouts::default(),
        }
    }
}

/// Where a TCP flow is in its life; it decides the idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// SYN seen from the client, nothing answered yet.
    SynSent,
    Established,
    /// FIN seen in one direction.
    FinWait,
    /// RST seen, or FIN seen in both directions.
    Closing,
}

/// What the pipeline knows when it creates a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewFlow {
    /// The key of the packet that creates the flow (client to service).
    pub original: FlowKey,
    /// The key reply packets will carry after translation (backend, or SNAT address, to client).
    pub reply: FlowKey,
    pub zone: Zone,
    pub service: u32,
    pub backend: u32,
}

/// Names one incarnation of a slab slot; stale once the flow is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowHandle {
    slot: u32,
    /// The slot's sequence word while this flow is live.
    generation: u64,
}

/// A consistent copy of one flow record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub handle: FlowHandle,
    pub original: FlowKey,
    pub reply: FlowKey,
    pub zone: Zone,
    pub service: u32,
    pub backend: u32,
    /// `Some` exactly for TCP flows.
    pub tcp_state: Option<TcpState>,
    /// Whether any packet has been seen in the reply direction.
    pub seen_reply: bool,
    pub last_seen_secs: u32,
    pub created_secs: u32,
}

impl Flow {
    /// The second from which the flow counts as expired: last seen plus the timeout for its state.
    pub fn expires_at_secs(&self, timeouts: &Timeouts) -> u64 {
        let timeout = match (self.original.protocol, self.tcp_state) {
            (Protocol::Tcp, Some(TcpState::SynSent)) => timeouts.tcp_syn,
            (Protocol::Tcp, Some(TcpState::FinWait)) => timeouts.tcp_fin_wait,
            (Protocol::Tcp, Some(TcpState::Closing)) => timeouts.tcp_closing,
            (Protocol::Tcp, _) => timeouts.tcp_established,
            (Protocol::Udp | Protocol::Sctp, _) => timeouts.udp,
            (Protocol::Icmp | Protocol::Icmpv6, _) => timeouts.icmp_echo,
        };
        u64::from(self.last_seen_secs) + u64::from(timeout)
    }

    fn is_expired(&self, now_secs: u64, timeouts: &Timeouts) -> bool {
        now_secs >= self.expires_at_secs(timeouts)
    }
}

/// A key packed and hashed: the state carried between the steps of a batched lookup.
#[derive(Clone, Copy, Debug)]
pub struct Prepared {
    words: [u64; 5],
    hash: u64,
}

/// A lookup hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub flow: Flow,
    /// Which of the flow's keys equals the key looked up.
    pub direction: Direction,
}

/// The outcome of [`Conntrack::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    Created(Flow),
    /// A live flow already has the new flow's original key or its reply key (in either of its own
    /// directions); the caller must use it and release anything it allocated for the new one. Compare
    /// `hit.flow.original` with the packet's key to tell a creation race (equal) from a reply-key
    /// collision (different).
    Existing(Hit),
}

#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// The zone is at its budget (or the table is full) and nothing in the eviction window could be
    /// evicted.
    #[error("conntrack zone {0:?} is full")]
    ZoneFull(Zone),
}

/// How many flows each zone holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub east_west: usize,
    pub north_south: usize,
    pub capacity: usize,
}

/// The largest capacity: a slot number plus one must fit the 31 bits of an index entry.
const MAX_CAPACITY: usize = (1 << 31) - 1;

/// Entry words per bucket; word 0 is the control word.
const BUCKET_ENTRIES: usize = 7;
/// Control word bit 0: a writer holds the bucket.
const LOCKED: u64 = 1;
/// Control word bits 1..: one unit per entry that passed over this bucket because it was full.
const OVERFLOW_UNIT: u64 = 2;
const TAG_MASK: u64 = 0xFFFF_FFFF_0000_0000;
const REPLY_BIT: u64 = 1 << 31;
const SLOT_MASK: u64 = REPLY_BIT - 1;

/// Slot sequence states, by the sequence value modulo 4.
const FREE: u64 = 0;
const CREATING: u64 = 1;
const LIVE: u64 = 2;
const FREEING: u64 = 3;

/// `activity` word layout: last-seen second, TCP state bits, and 24 bits of the generation.
const LAST_SEEN_MASK: u64 = 0xFFFF_FFFF;
const TCP_STATE_SHIFT: u32 = 32;
const TCP_STATE_MASK: u64 = 0b11 << TCP_STATE_SHIFT;
const SEEN_REPLY: u64 = 1 << 34;
const FIN_ORIGINAL: u64 = 1 << 35;
const FIN_REPLY: u64 = 1 << 36;
const GENERATION_SHIFT: u32 = 40;
const GENERATION_TAG_MASK: u64 = 0xFF_FFFF;

/// TCP flag bits as on the wire.
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Slots examined when a zone is full, looking for something to evict.
const EVICTION_WINDOW: usize = 64;
/// How many times an insert evicts and retries before it reports the zone full.
const INSERT_ATTEMPTS: usize = 4;
/// Free lists; creators start at one picked by the key hash, so they rarely contend on one head.
const FREE_LISTS: usize = 16;
/// Expired duplicates of the new flow's keys an insert frees in one pass.
const CLAIMS_PER_PASS: usize = 4;

/// Spins on a contended lock before yielding the CPU (the holder may have been preempted).
const SPINS_BEFORE_YIELD: u32 = 128;

/// Keeps a hot atomic on its own pair of cache lines (the adjacent-line prefetcher pairs lines).
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One flow record: two cache lines, aligned so the adjacent-line prefetcher fetches both.
///
/// Line 0 holds what every hit reads (sequence, activity, ids, original key), line 1 the reply key and
/// the cold fields.
#[derive(Default)]
#[repr(C, align(128))]
struct FlowSlot {
    sequence: AtomicU64,
    /// Last-seen second | TCP state | seen-reply | FIN bits | generation tag; see the constants.
    activity: AtomicU64,
    /// `service << 32 | backend`.
    identity: AtomicU64,
    original: [AtomicU64; 5],
    reply: [AtomicU64; 5],
    /// `zone << 32 | created second`.
    birth: AtomicU64,
    /// While FREE: the next free slot plus one, 0 at the end of the list.
    next_free: AtomicU64,
}

/// One 64-byte index bucket.
#[derive(Default)]
#[repr(C, align(64))]
struct Bucket {
    control: AtomicU64,
    entries: [AtomicU64; BUCKET_ENTRIES],
}

/// Takes the writer lock in bit 0 of `word`, spinning.
///
/// Critical sections are a few dozen instructions, so spinning beats parking; after a while the
/// thread yields in case the holder was preempted (only on this contended slow path).
pub(super) fn lock_word(word: &AtomicU64) {
    let mut spins = 0u32;
    loop {
        // Relaxed: only a hint whether the compare-and-swap below can succeed.
        let current = word.load(Ordering::Relaxed);
        if current & LOCKED == 0
            // Acquire: the critical section must see everything the previous holder wrote before its
            // Release unlock.
            && word
                .compare_exchange_weak(current, current | LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return;
        }
        spins += 1;
        if spins < SPINS_BEFORE_YIELD {
            spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Releases a lock taken with [`lock_word`], keeping the other bits.
pub(super) fn unlock_word(word: &AtomicU64) {
    // Release: publishes the critical section's writes to the next holder's Acquire.
    word.fetch_and(!LOCKED, Ordering::Release);
}

/// Loads a key's words. Relaxed: callers validate with the slot's sequence afterwards (or own it).
fn load_words(words: &[AtomicU64; 5]) -> [u64; 5] {
    std::array::from_fn(|i| words[i].load(Ordering::Relaxed))
}

/// Stores a key's words. Relaxed: only into a CREATING slot, published by the Release of LIVE.
fn store_words(target: &[AtomicU64; 5], words: &[u64; 5]) {
    for (atomic, word) in target.iter().zip(words) {
        atomic.store(*word, Ordering::Relaxed);
    }
}

fn generation_tag(generation: u64) -> u64 {
    ((generation >> 2) & GENERATION_TAG_MASK) << GENERATION_SHIFT
}

fn now_secs_u32(now_secs: u64) -> u32 {
    u32::try_from(now_secs).unwrap_or(u32::MAX)
}

fn tcp_state_bits(state: TcpState) -> u64 {
    let code: u64 = match state {
        TcpState::SynSent => 0,
        TcpState::Established => 1,
        TcpState::FinWait => 2,
        TcpState::Closing => 3,
    };
    code << TCP_STATE_SHIFT
}

fn tcp_state_of(activity: u64) -> TcpState {
    match (activity & TCP_STATE_MASK) >> TCP_STATE_SHIFT {
        0 => TcpState::SynSent,
        1 => TcpState::Established,
        2 => TcpState::FinWait,
        _ => TcpState::Closing,
    }
}

fn with_tcp_state(activity: u64, state: TcpState) -> u64 {
    (activity & !TCP_STATE_MASK) | tcp_state_bits(state)
}

/// The TCP state machine on the `activity` bits for one packet's flags.
fn tcp_transition(activity: u64, direction: Direction, flags: u8) -> u64 {
    let state = tcp_state_of(activity);
    if flags & TCP_RST != 0 {
        return with_tcp_state(activity, TcpState::Closing);
    }
    let bare_syn = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
    if direction == Direction::Original
        && bare_syn
        && matches!(state, TcpState::FinWait | TcpState::Closing)
    {
        // The client reuses the tuple for a new connection (its side left TIME_WAIT): start over
        // rather than leave a live connection on the short closing timeout.
        let cleared = activity & !(FIN_ORIGINAL | FIN_REPLY | SEEN_REPLY);
        return with_tcp_state(cleared, TcpState::SynSent);
    }
    let mut next = activity;
    if direction == Direction::Reply && state == TcpState::SynSent && flags & TCP_ACK != 0 {
        next = with_tcp_state(next, TcpState::Established);
    }
    if flags & TCP_FIN != 0 {
        next |= match direction {
            Direction::Original => FIN_ORIGINAL,
            Direction::Reply => FIN_REPLY,
        };
        let both = next & (FIN_ORIGINAL | FIN_REPLY) == FIN_ORIGINAL | FIN_REPLY;
        if both {
            next = with_tcp_state(next, TcpState::Closing);
        } else if tcp_state_of(next) != TcpState::Closing {
            next = with_tcp_state(next, TcpState::FinWait);
        }
    }
    next
}

/// Why an insert could not get a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shortage {
    /// The zone is at its budget.
    Budget,
    /// The slab is full.
    Slots,
}

/// Slots an insert claimed because they were expired flows with one of its keys; it frees them once
/// it has released its bucket locks (freeing takes bucket locks itself).
#[derive(Default)]
struct Claimed {
    slots: [(usize, u64); CLAIMS_PER_PASS],
    len: usize,
}

impl Claimed {
    fn claim(&mut self, table: &Conntrack, index: usize, generation: u64) {
        if self.len < CLAIMS_PER_PASS && table.claim(index, generation) {
            self.slots[self.len] = (index, generation + 1);
            self.len += 1;
        }
    }

    fn finish(&self, table: &Conntrack) {
        for &(index, claimed) in &self.slots[..self.len] {
            table.finish_free(index, claimed);
        }
    }
}

/// Holds one or two bucket locks, released on drop.
struct BucketLocks<'a> {
    table: &'a Conntrack,
    first: usize,
    second: Option<usize>,
}

impl Drop for BucketLocks<'_> {
    fn drop(&mut self) {
        if let Some(second) = self.second {
            unlock_word(&self.table.buckets[second].control);
        }
        unlock_word(&self.table.buckets[self.first].control);
    }
}

/// The shared flow table. `Send + Sync`; nothing needs `&mut`.
pub struct Conntrack {
    slots: Box<[FlowSlot]>,
    buckets: Box<[Bucket]>,
    bucket_mask: usize,
    hasher: foldhash::quality::RandomState,
    /// Treiber stacks of free slots: `ABA counter (32) | slot + 1 (32)`, 0 slot meaning empty.
    free_lists: Box<[Padded<AtomicU64>]>,
    /// Flows per zone, indexed by `Zone as usize`.
    zone_counts: [Padded<AtomicUsize>; 2],
    budgets: [usize; 2],
    reclaim_cursor: Padded<AtomicUsize>,
    timeouts: Timeouts,
}

impl fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conntrack")
            .field("occupancy", &self.occupancy())
            .field("buckets", &self.buckets.len())
            .field("budgets", &self.budgets)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl Conntrack {
    /// Allocates everything the table will ever use.
    ///
    /// # Panics
    /// If `capacity` is 0 or not below 2^31. Budgets above the capacity are clamped to it.
    pub fn new(config: Config) -> Self {
        let capacity = config.capacity;
        assert!(
            (1..=MAX_CAPACITY).contains(&capacity),
            "conntrack capacity must be between 1 and {MAX_CAPACITY}, got {capacity}"
        );
        // Two entries per flow, at most half the entry words in use: probes stay short and a
        // placement always finds an empty word.
        let bucket_count = (capacity * 4)
            .div_ceil(BUCKET_ENTRIES)
            .next_power_of_two()
            .max(2);
        let slots: Box<[FlowSlot]> = (0..capacity).map(|_| FlowSlot::default()).collect();
        let buckets: Box<[Bucket]> = (0..bucket_count).map(|_| Bucket::default()).collect();
        let list_count = FREE_LISTS.min(capacity);
        let free_lists: Box<[Padded<AtomicU64>]> =
            (0..list_count).map(|_| Padded::default()).collect();
        // Thread slot i onto list i % list_count, lowest slots on top.
        for index in (0..capacity).rev() {
            let head = &free_lists[index % list_count];
            // Relaxed: nothing else can see the table yet.
            slots[index]
                .next_free
                .store(head.load(Ordering::Relaxed), Ordering::Relaxed);
            head.store(index as u64 + 1, Ordering::Relaxed);
        }
        Self {
            slots,
            buckets,
            bucket_mask: bucket_count - 1,
            hasher: foldhash::quality::RandomState::default(),
            free_lists,
            zone_counts: Default::default(),
            budgets: [
                config.east_west_budget.min(capacity),
                config.north_south_budget.min(capacity),
            ],
            reclaim_cursor: Padded::default(),
            timeouts: config.timeouts,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Finds the live flow with `key` as its original or reply key. Takes no lock, writes nothing and
    /// allocates nothing; an expired flow is a miss.
    pub fn lookup(&self, key: &FlowKey, now: Timestamp) -> Option<Hit> {
        let prepared = self.prepare(key);
        self.lookup_prepared(key, &prepared, now)
    }

    /// The first step of a batched lookup: the key's words and hash. No memory of the table is
    /// touched, so a batch can be parsed and hashed before any of its cache misses are taken.
    #[inline]
    pub fn prepare(&self, key: &FlowKey) -> Prepared {
        let words = key.to_words();
        let hash = self.hash(&words);
        Prepared { words, hash }
    }

    /// A cache warm-up: loads the key's home bucket. Run over a whole batch in a tight loop, the
    /// loads overlap in the CPU instead of queueing behind each other's misses.
    #[inline]
    pub fn load_bucket(&self, prepared: &Prepared) -> u64 {
        // Relaxed: only brings the line in; the value matters to no one.
        self.buckets[self.home(prepared.hash)]
            .control
            .load(Ordering::Relaxed)
    }

    /// The second cache warm-up: loads the slot the home bucket points at for this key's tag, if
    /// any. Correctness never depends on it.
    #[inline]
    pub fn load_slot(&self, prepared: &Prepared) -> u64 {
        let tag = prepared.hash & TAG_MASK;
        let bucket = &self.buckets[self.home(prepared.hash)];
        for entry in &bucket.entries {
            // Relaxed: a hint only; `lookup_prepared` re-reads everything with the proper orderings.
            let value = entry.load(Ordering::Relaxed);
            if value != 0 && value & TAG_MASK == tag {
                let index = (value & SLOT_MASK) as usize - 1;
                if let Some(slot) = self.slots.get(index) {
                    return slot.sequence.load(Ordering::Relaxed);
                }
            }
        }
        0
    }

    /// The last step of a batched lookup; the same answer as [`Conntrack::lookup`].
    #[inline]
    pub fn lookup_prepared(
        &self,
        key: &FlowKey,
        prepared: &Prepared,
        now: Timestamp,
    ) -> Option<Hit> {
        self.probe(
            &prepared.words,
            prepared.hash,
            now.as_secs(),
            Some(key),
            |_, _| {},
        )
    }

    /// Creates a flow, unless a live one already has its original or reply key.
    ///
    /// The initial TCP state comes from the packet's flags: a SYN without ACK starts in
    /// [`TcpState::SynSent`]; anything else (a flow picked up mid-stream, e.g. after a restart) in
    /// [`TcpState::Established`], moved on by a FIN or RST in the same packet.
    pub fn insert(
        &self,
        flow: NewFlow,
        now: Timestamp,
        tcp_flags: Option<u8>,
    ) -> Result<Insert, InsertError> {
        let now_secs = now.as_secs();
        let original = flow.original.to_words();
        let reply = flow.reply.to_words();
        let original_hash = self.hash(&original);
        let reply_hash = self.hash(&reply);
        let symmetric = original == reply;
        let mut shortages = 0;
        loop {
            let mut claimed = Claimed::default();
            let outcome = {
                let _locks = self.lock_pair(self.home(original_hash), self.home(reply_hash));
                let mut claim = |index, generation| claimed.claim(self, index, generation);
                let existing = self
                    .probe(&original, original_hash, now_secs, None, &mut claim)
                    .or_else(|| {
                        if symmetric {
                            None
                        } else {
                            self.probe(&reply, reply_hash, now_secs, None, &mut claim)
                        }
                    });
                if let Some(hit) = existing {
                    Ok(Insert::Existing(hit))
                } else if claimed.len > 0 {
                    // Expired flows still hold these keys: free them first, then re-check.
                    Err(None)
                } else {
                    match self.allocate(flow.zone, original_hash) {
                        Ok(index) => {
                            let created = self.fill(index, &flow, now_secs, tcp_flags);
                            self.place(&original, original_hash, index, Direction::Original);
                            if !symmetric {
                                self.place(&reply, reply_hash, index, Direction::Reply);
                            }
                            Ok(Insert::Created(created))
                        }
                        Err(shortage) => Err(Some(shortage)),
                    }
                }
            };
            claimed.finish(self);
            match outcome {
                Ok(insert) => return Ok(insert),
                Err(None) => {}
                Err(Some(shortage)) => {
                    shortages += 1;
                    let start = (original_hash >> 16) as usize % self.capacity();
                    if shortages > INSERT_ATTEMPTS
                        || !self.make_room(flow.zone, shortage, start, now_secs)
                    {
                        return Err(InsertError::ZoneFull(flow.zone));
                    }
                }
            }
        }
    }

    /// Per-packet update: last-seen time (written only when the second changes) and the TCP state
    /// machine (flags byte as on the wire: FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10). Reply-direction
    /// packets set `seen_reply` and move SynSent → Established on SYN+ACK or ACK; a FIN in one direction
    /// moves to FinWait, FINs in both or a RST to Closing; a bare SYN from the client on a FinWait or
    /// Closing flow starts it over in SynSent (tuple reuse).
    ///
    /// A no-op if the handle's generation no longer matches (the slot was reused).
    pub fn touch(&self, hit: &Hit, now: Timestamp, tcp_flags: Option<u8>) {
        let handle = hit.flow.handle;
        let Some(slot) = self.slots.get(handle.slot as usize) else {
            return;
        };
        // Relaxed: an early exit only; the generation tag in `activity` is what guards the write.
        if slot.sequence.load(Ordering::Relaxed) != handle.generation {
            return;
        }
        let tag = generation_tag(handle.generation);
        let now_secs = now_secs_u32(now.as_secs());
        let tcp = hit.flow.original.protocol == Protocol::Tcp;
        // Relaxed throughout: `activity` is self-contained (no other data is published through it), and
        // the compare-and-swap makes concurrent touches from two workers compose.
        let mut current = slot.activity.load(Ordering::Relaxed);
        loop {
            if current & (GENERATION_TAG_MASK << GENERATION_SHIFT) != tag {
                return;
            }
            let mut next = current;
            // Workers' clocks differ by a batch or so: never move last-seen backwards.
            if (next & LAST_SEEN_MASK) < u64::from(now_secs) {
                next = (next & !LAST_SEEN_MASK) | u64::from(now_secs);
            }
            if hit.direction == Direction::Reply {
                next |= SEEN_REPLY;
            }
            if let (true, Some(flags)) = (tcp, tcp_flags) {
                next = tcp_transition(next, hit.direction, flags);
            }
            if next == current {
                // Nothing changed: do not dirty a cache line other workers read.
                return;
            }
            match slot.activity.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Removes the flow if the handle is still current; false if it was already gone.
    pub fn remove(&self, handle: FlowHandle) -> bool {
        let index = handle.slot as usize;
        index < self.capacity() && self.free(index, handle.generation)
    }

    /// Removes every live flow whose backend id equals `backend`, optionally only of one protocol;
    /// returns the count. Used by the control thread when an endpoint goes away, so the next packet of
    /// a UDP flow is balanced again instead of black-holed. Scans the whole slab.
    ///
    /// Workers still holding a snapshot that lists the backend can create new flows to it meanwhile:
    /// call this after every worker has moved to a snapshot without it.
    pub fn remove_backend_flows(&self, backend: u32, protocol: Option<Protocol>) -> usize {
        let mut removed = 0;
        for (index, slot) in self.slots.iter().enumerate() {
            // Relaxed: a cheap pre-filter on line 0 before the full consistent read; a slot being
            // rewritten right now is the race described above either way.
            if slot.identity.load(Ordering::Relaxed) as u32 != backend {
                continue;
            }
            let Some(flow) = self.read_slot(index) else {
                continue;
            };
            if flow.backend == backend
                && protocol.is_none_or(|p| p == flow.original.protocol)
                && self.free(index, flow.handle.generation)
            {
                removed += 1;
            }
        }
        removed
    }

    /// Examines up to `max_slots` slots from an internal cursor and frees the expired flows; returns
    /// how many it freed. Lookups keep running meanwhile; several sweepers may run at once.
    pub fn reclaim(&self, now: Timestamp, max_slots: usize) -> usize {
        let capacity = self.capacity();
        let count = max_slots.min(capacity);
        // Relaxed: the cursor only spreads sweeps over the slab; any interleaving is fine.
        let start = self.reclaim_cursor.fetch_add(count, Ordering::Relaxed) % capacity;
        let now_secs = now.as_secs();
        let mut freed = 0;
        for offset in 0..count {
            let index = (start + offset) % capacity;
            if let Some(flow) = self.read_slot(index) {
                if flow.is_expired(now_secs, &self.timeouts)
                    && self.free(index, flow.handle.generation)
                {
                    freed += 1;
                }
            }
        }
        freed
    }

    /// Flows per zone, including expired ones not yet reclaimed.
    pub fn occupancy(&self) -> Occupancy {
        // Relaxed: a statistic; no data is read through it.
        Occupancy {
            east_west: self.zone_counts[Zone::EastWest as usize].load(Ordering::Relaxed),
            north_south: self.zone_counts[Zone::NorthSouth as usize].load(Ordering::Relaxed),
            capacity: self.capacity(),
        }
    }

    /// Calls `f` with every live, unexpired flow (for `kxdp conntrack`). Scans the whole slab.
    pub fn for_each(&self, now: Timestamp, mut f: impl FnMut(&Flow)) {
        let now_secs = now.as_secs();
        for index in 0..self.capacity() {
            if let Some(flow) = self.read_slot(index) {
                if !flow.is_expired(now_secs, &self.timeouts) {
                    f(&flow);
                }
            }
        }
    }

    fn hash(&self, words: &[u64; 5]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write_u128((u128::from(words[0]) << 64) | u128::from(words[1]));
        hasher.write_u128((u128::from(words[2]) << 64) | u128::from(words[3]));
        hasher.write_u64(words[4]);
        hasher.finish()
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & self.bucket_mask
    }

    fn entry_value(hash: u64, index: usize, direction: Direction) -> u64 {
        let reply = match direction {
            Direction::Original => 0,
            Direction::Reply => REPLY_BIT,
        };
        (hash & TAG_MASK) | reply | (index as u64 + 1)
    }

    /// Finds a live, unexpired flow with the key `words` under either of its directions. Expired
    /// matches are passed to `on_expired` with their generation.
    fn probe(
        &self,
        words: &[u64; 5],
        hash: u64,
        now_secs: u64,
        known_key: Option<&FlowKey>,
        mut on_expired: impl FnMut(usize, u64),
    ) -> Option<Hit> {
        let tag = hash & TAG_MASK;
        let mut bucket_index = self.home(hash);
        // Bounded for robustness; at most half full, the chain always ends long before.
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[bucket_index];
            for entry in &bucket.entries {
                // Acquire: pairs with the Release that placed the entry, so the slot's LIVE sequence
                // written before it is visible (otherwise a just-created flow could look absent).
                let value = entry.load(Ordering::Acquire);
                if value == 0 || value & TAG_MASK != tag {
                    continue;
                }
                let index = (value & SLOT_MASK) as usize - 1;
                let direction = if value & REPLY_BIT == 0 {
                    Direction::Original
                } else {
                    Direction::Reply
                };
                if let Some(flow) = self.read_matching(index, direction, words, known_key) {
                    if !flow.is_expired(now_secs, &self.timeouts) {
                        return Some(Hit { flow, direction });
                    }
                    on_expired(index, flow.handle.generation);
                }
            }
            // Acquire: pairs with the Release increment by a writer that placed an entry further on.
            // Zero: no key homed here or earlier continues past this bucket.
            if bucket.control.load(Ordering::Acquire) < OVERFLOW_UNIT {
                return None;
            }
            bucket_index = (bucket_index + 1) & self.bucket_mask;
        }
        None
    }

    /// Reads slot `index` if it is live and its `direction` key equals `words`.
    /// `known_key`, when given, is the decoded form of `words`: it saves decoding that side again.
    fn read_matching(
        &self,
        index: usize,
        direction: Direction,
        words: &[u64; 5],
        known_key: Option<&FlowKey>,
    ) -> Option<Flow> {
        self.read_slot_where(index, Some((direction, words)), known_key)
    }

    /// A consistent copy of slot `index`, if it holds a live flow.
    fn read_slot(&self, index: usize) -> Option<Flow> {
        self.read_slot_where(index, None, None)
    }

    /// The seqlock read. The key comparison must use words read inside the same sequence window as
    /// everything else: comparing first and re-reading later could return a flow created in the slot
    /// in between, under another key.
    fn read_slot_where(
        &self,
        index: usize,
        expected: Option<(Direction, &[u64; 5])>,
        known_key: Option<&FlowKey>,
    ) -> Option<Flow> {
        let slot = &self.slots[index];
        // Acquire: pairs with the creator's Release store of LIVE, making the fields it wrote visible.
        let sequence = slot.sequence.load(Ordering::Acquire);
        if sequence % 4 != LIVE {
            return None;
        }
        // Relaxed: everything read here is validated by the sequence re-check below.
        let original = load_words(&slot.original);
        if let Some((Direction::Original, words)) = expected {
            // A mismatch is a miss whether or not the read was torn, so it needs no validation; checking
            // before touching the second line keeps tag collisions cheap.
            if original != *words {
                return None;
            }
        }
        let reply = load_words(&slot.reply);
        if let Some((Direction::Reply, words)) = expected {
            if reply != *words {
                return None;
            }
        }
        let identity = slot.identity.load(Ordering::Relaxed);
        let birth = slot.birth.load(Ordering::Relaxed);
        let activity = slot.activity.load(Ordering::Relaxed);
        // Acquire fence: if any read above saw a store made after the slot left LIVE (those stores
        // follow a Release fence in `fill`), the re-check below sees the changed sequence.
        // `activity` is also written by `touch` with relaxed compare-and-swaps, which give no such
        // guarantee; the generation tag it carries is what rejects a later incarnation's value.
        fence(Ordering::Acquire);
        if slot.sequence.load(Ordering::Relaxed) != sequence
            || activity & (GENERATION_TAG_MASK << GENERATION_SHIFT) != generation_tag(sequence)
        {
            return None;
        }
        // The side that matched the caller's key needs no decoding: it is that key.
        let (original, reply) = match (expected, known_key) {
            (Some((Direction::Original, _)), Some(known)) => (*known, FlowKey::from_words(reply)?),
            (Some((Direction::Reply, _)), Some(known)) => (FlowKey::from_words(original)?, *known),
            _ => (FlowKey::from_words(original)?, FlowKey::from_words(reply)?),
        };
        Some(Flow {
            handle: FlowHandle {
                slot: index as u32,
                generation: sequence,
            },
            original,
            reply,
            zone: if (birth >> 32) & 1 == 0 {
                Zone::EastWest
            } else {
                Zone::NorthSouth
            },
            service: (identity >> 32) as u32,
            backend: identity as u32,
            tcp_state: (original.protocol == Protocol::Tcp).then(|| tcp_state_of(activity)),
            seen_reply: activity & SEEN_REPLY != 0,
            last_seen_secs: activity as u32,
            created_secs: birth as u32,
        })
    }

    fn lock_pair(&self, a: usize, b: usize) -> BucketLocks<'_> {
        // Always lower index first, so two creators holding one lock each cannot wait on each other.
        let (first, second) = (a.min(b), a.max(b));
        lock_word(&self.buckets[first].control);
        let second = (second != first).then(|| {
            lock_word(&self.buckets[second].control);
            second
        });
        BucketLocks {
            table: self,
            first,
            second,
        }
    }

    /// Indexes slot `index` under `words`. The caller holds the lock of the key's home bucket.
    fn place(&self, words: &[u64; 5], hash: u64, index: usize, direction: Direction) {
        debug_assert_eq!(*words, {
            let slot = &self.slots[index];
            load_words(match direction {
                Direction::Original => &slot.original,
                Direction::Reply => &slot.reply,
            })
        });
        let value = Self::entry_value(hash, index, direction);
        let mut bucket_index = self.home(hash);
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[bucket_index];
            for entry in &bucket.entries {
                // Words in this bucket may be claimed concurrently by writers of other homes, hence
                // the compare-and-swap. Release: publishes the LIVE slot to probes that find it.
                if entry.load(Ordering::Relaxed) == 0
                    && entry
                        .compare_exchange(0, value, Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                {
                    return;
                }
            }
            // Full: count the entry passing over so probes of this home keep going.
            // Release: ordered before the entry itself becomes visible further on.
            bucket.control.fetch_add(OVERFLOW_UNIT, Ordering::Release);
            bucket_index = (bucket_index + 1) & self.bucket_mask;
        }
        unreachable!("conntrack index has no empty word although it is at most half full");
    }

    /// Removes the entry for slot `index` under the key hashing to `hash`, taking the home bucket's lock.
    fn unplace(&self, hash: u64, index: usize, direction: Direction) {
        let value = Self::entry_value(hash, index, direction);
        let home = self.home(hash);
        let _locks = self.lock_pair(home, home);
        let mut bucket_index = home;
        for passed in 0..self.buckets.len() {
            let bucket = &self.buckets[bucket_index];
            // Relaxed load: entries homed here only change under the lock we hold.
            if let Some(entry) = bucket
                .entries
                .iter()
                .find(|entry| entry.load(Ordering::Relaxed) == value)
            {
                // Release: a probe that sees the word gone and then the slot reused is ordered after
                // it; probes racing with us may miss the flow, which is being removed anyway.
                entry.store(0, Ordering::Release);
                let mut overflowed = home;
                for _ in 0..passed {
                    // Release: after the entry is gone, so a probe never stops before a still-placed
                    // entry.
                    self.buckets[overflowed]
                        .control
                        .fetch_sub(OVERFLOW_UNIT, Ordering::Release);
                    overflowed = (overflowed + 1) & self.bucket_mask;
                }
                return;
            }
            bucket_index = (bucket_index + 1) & self.bucket_mask;
        }
        debug_assert!(
            false,
            "conntrack entry for slot {index} missing from its index chain"
        );
    }

    /// Reserves room in `zone` and pops a free slot.
    fn allocate(&self, zone: Zone, hash: u64) -> Result<usize, Shortage> {
        let count = &self.zone_counts[zone as usize];
        let budget = self.budgets[zone as usize];
        // Relaxed: the counter only bounds a number; the slot itself is handed over by the free list.
        let mut current = count.load(Ordering::Relaxed);
        loop {
            if current >= budget {
                return Err(Shortage::Budget);
            }
            match count.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        match self.pop_free(hash) {
            Some(index) => Ok(index),
            None => {
                // Relaxed: as above.
                count.fetch_sub(1, Ordering::Relaxed);
                Err(Shortage::Slots)
            }
        }
    }

    fn pop_free(&self, hash: u64) -> Option<usize> {
        let lists = self.free_lists.len();
        let first = (hash >> 40) as usize % lists;
        (0..lists).find_map(|offset| self.pop_list(&self.free_lists[(first + offset) % lists]))
    }

    fn pop_list(&self, head: &AtomicU64) -> Option<usize> {
        // Acquire: see the `next_free` the pusher wrote before its Release compare-and-swap.
        let mut current = head.load(Ordering::Acquire);
        loop {
            let top = current & 0xFFFF_FFFF;
            if top == 0 {
                return None;
            }
            // Relaxed: ordered by the Acquire above. It may be stale if the slot was popped and pushed
            // meanwhile, but then the ABA counter moved and the compare-and-swap fails.
            let next = self.slots[top as usize - 1]
                .next_free
                .load(Ordering::Relaxed);
            let counter = (current >> 32).wrapping_add(1) << 32;
            match head.compare_exchange_weak(
                current,
                counter | next,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(top as usize - 1),
                Err(actual) => current = actual,
            }
        }
    }

    fn push_free(&self, index: usize) {
        let head = &self.free_lists[index % self.free_lists.len()];
        // Relaxed: the compare-and-swap below decides.
        let mut current = head.load(Ordering::Relaxed);
        loop {
            // Relaxed: published by the Release compare-and-swap.
            self.slots[index]
                .next_free
                .store(current & 0xFFFF_FFFF, Ordering::Relaxed);
            let counter = (current >> 32).wrapping_add(1) << 32;
            // Release: the popper must see `next_free` and the slot's FREE sequence.
            match head.compare_exchange_weak(
                current,
                counter | (index as u64 + 1),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Writes a new flow into the FREE slot `index`, which this thread owns, and marks it LIVE.
    fn fill(&self, index: usize, flow: &NewFlow, now_secs: u64, tcp_flags: Option<u8>) -> Flow {
        let slot = &self.slots[index];
        // Relaxed: we own the slot; the free list's Acquire pop ordered its last writes before us.
        let free = slot.sequence.load(Ordering::Relaxed);
        debug_assert_eq!(free % 4, FREE);
        let generation = free + (LIVE - FREE);
        slot.sequence
            .store(free + (CREATING - FREE), Ordering::Relaxed);
        // Release fence: a reader whose relaxed field reads see any store below also sees CREATING (or
        // later) when it re-checks the sequence, so it rejects what it read.
        fence(Ordering::Release);

        let created_secs = now_secs_u32(now_secs);
        let tcp = flow.original.protocol == Protocol::Tcp;
        let mut activity = generation_tag(generation) | u64::from(created_secs);
        if tcp {
            let flags = tcp_flags.unwrap_or(TCP_ACK);
            let initial = if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
                TcpState::SynSent
            } else {
                TcpState::Established
            };
            activity = tcp_transition(
                with_tcp_state(activity, initial),
                Direction::Original,
                flags,
            );
        }
        // Relaxed: published by the Release store of LIVE below.
        store_words(&slot.original, &flow.original.to_words());
        store_words(&slot.reply, &flow.reply.to_words());
        slot.identity.store(
            (u64::from(flow.service) << 32) | u64::from(flow.backend),
            Ordering::Relaxed,
        );
        slot.birth.store(
            ((flow.zone as u64) << 32) | u64::from(created_secs),
            Ordering::Relaxed,
        );
        slot.activity.store(activity, Ordering::Relaxed);
        // Release: readers that Acquire-load LIVE see every field above.
        slot.sequence.store(generation, Ordering::Release);

        Flow {
            handle: FlowHandle {
                slot: index as u32,
                generation,
            },
            original: flow.original,
            reply: flow.reply,
            zone: flow.zone,
            service: flow.service,
            backend: flow.backend,
            tcp_state: tcp.then(|| tcp_state_of(activity)),
            seen_reply: false,
            last_seen_secs: created_secs,
            created_secs,
        }
    }

    /// Claims a live slot for freeing; only one of several concurrent removers succeeds.
    fn claim(&self, index: usize, generation: u64) -> bool {
        generation % 4 == LIVE
            // Acquire: the claimer goes on to read the keys the creator published with LIVE.
            && self.slots[index]
                .sequence
                .compare_exchange(
                    generation,
                    generation + (FREEING - LIVE),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Unindexes a claimed slot, gives its zone the room back and returns it to a free list.
    fn finish_free(&self, index: usize, claimed: u64) {
        debug_assert_eq!(claimed % 4, FREEING);
        let slot = &self.slots[index];
        // Relaxed: the slot is ours since the claim, and its fields were published to us by it.
        let original = load_words(&slot.original);
        let reply = load_words(&slot.reply);
        self.unplace(self.hash(&original), index, Direction::Original);
        if reply != original {
            self.unplace(self.hash(&reply), index, Direction::Reply);
        }
        let zone = (slot.birth.load(Ordering::Relaxed) >> 32) & 1;
        // Relaxed: a budget counter only.
        self.zone_counts[zone as usize].fetch_sub(1, Ordering::Relaxed);
        // Relaxed: the next owner gets it through the push's Release; readers reject FREE anyway.
        slot.sequence
            .store(claimed + (4 + FREE - FREEING), Ordering::Relaxed);
        self.push_free(index);
    }

    fn free(&self, index: usize, generation: u64) -> bool {
        if self.claim(index, generation) {
            self.finish_free(index, generation + (FREEING - LIVE));
            true
        } else {
            false
        }
    }

    /// Frees something so an insert into `zone` can succeed. North-south never evicts east-west;
    /// east-west evicts north-south when the slab is full and east-west is under its budget.
    fn make_room(&self, zone: Zone, shortage: Shortage, start: usize, now_secs: u64) -> bool {
        match (shortage, zone) {
            (Shortage::Budget, _) | (Shortage::Slots, Zone::NorthSouth) => {
                self.evict(zone, start, now_secs)
            }
            (Shortage::Slots, Zone::EastWest) => {
                self.evict(Zone::NorthSouth, start, now_secs)
                    || self.evict(Zone::EastWest, start, now_secs)
            }
        }
    }

    /// Frees the expired `zone` flows in the first window of `EVICTION_WINDOW` slots from `start` that
    /// holds any `zone` flow, or if none of them has expired, the one that would expire first. Moves on
    /// window by window (a small zone may be sparse in the slab); false only if the zone is empty.
    /// True also when another thread freed the chosen flow first: room was made either way.
    fn evict(&self, zone: Zone, start: usize, now_secs: u64) -> bool {
        // Relaxed: a hint that saves a full scan; a stale value only costs or saves one sweep.
        if self.zone_counts[zone as usize].load(Ordering::Relaxed) == 0 {
            return false;
        }
        let capacity = self.capacity();
        let mut scanned = 0;
        while scanned < capacity {
            let window_end = (scanned + EVICTION_WINDOW).min(capacity);
            let mut found = false;
            let mut soonest: Option<(u64, usize, u64)> = None;
            for offset in scanned..window_end {
                let index = (start + offset) % capacity;
                let Some(flow) = self.read_slot(index) else {
                    continue;
                };
                if flow.zone != zone {
                    continue;
                }
                let expires = flow.expires_at_secs(&self.timeouts);
                if now_secs >= expires {
                    self.free(index, flow.handle.generation);
                    found = true;
                } else if soonest.is_none_or(|(best, _, _)| expires < best) {
                    soonest = Some((expires, index, flow.handle.generation));
                }
            }
            if found {
                return true;
            }
            if let Some((_, index, generation)) = soonest {
                self.free(index, generation);
                return true;
            }
            scanned = window_end;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::AtomicBool;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const SERVICE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));

    fn backend_ip(backend: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + backend))
    }

    fn new_flow(protocol: Protocol, port: u16, backend: u32, zone: Zone) -> NewFlow {
        let original = FlowKey::new(protocol, CLIENT, port, SERVICE, 53);
        let reply = FlowKey::new(protocol, backend_ip(backend), 5353, CLIENT, port);
        NewFlow {
            original,
            reply,
            zone,
            service: 7,
            backend,
        }
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_secs(secs)
    }

    fn created(result: Result<Insert, InsertError>) -> Flow {
        match result {
            Ok(Insert::Created(flow)) => flow,
            other => panic!("expected Created, got {other:?}"),
        }
    }

    fn small(capacity: usize) -> Conntrack {
        Conntrack::new(Config::with_capacity(capacity))
    }

    #[test]
    fn insert_then_lookup_both_directions() {
        let table = small(64);
        let flow = new_flow(Protocol::Udp, 40000, 3, Zone::EastWest);
        let made = created(table.insert(flow, at(100), None));
        assert_eq!((made.service, made.backend, made.created_secs), (7, 3, 100));
        assert_eq!(made.tcp_state, None);

        let hit = table.lookup(&flow.original, at(101)).unwrap();
        assert_eq!(hit.direction, Direction::Original);
        assert_eq!(hit.flow, made);
        let back = table.lookup(&flow.reply, at(101)).unwrap();
        assert_eq!(back.direction, Direction::Reply);
        assert_eq!(back.flow.handle, made.handle);

        // Neither the reversed original nor another port matches.
        assert!(table.lookup(&flow.original.reversed(), at(101)).is_none());
        let other = new_flow(Protocol::Udp, 40001, 3, Zone::EastWest);
        assert!(table.lookup(&other.original, at(101)).is_none());
        assert_eq!(table.occupancy().east_west, 1);
    }

    #[test]
    fn ipv6_and_symmetric_keys() {
        let table = small(16);
        let client: IpAddr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into();
        let original = FlowKey::new(Protocol::Tcp, client, 1000, client, 1000);
        let flow = NewFlow {
            original,
            reply: original,
            zone: Zone::EastWest,
            service: 1,
            backend: 2,
        };
        let made = created(table.insert(flow, at(0), Some(TCP_SYN)));
        let hit = table.lookup(&original, at(1)).unwrap();
        assert_eq!((hit.flow, hit.direction), (made, Direction::Original));
        assert!(table.remove(made.handle));
        assert!(table.lookup(&original, at(1)).is_none());
        assert_eq!(table.occupancy().east_west, 0);
    }

    #[test]
    fn each_timeout_kind_expires() {
        let timeouts = Timeouts::default();
        let table = small(64);
        let cases = [
            (Protocol::Udp, None, timeouts.udp),
            (Protocol::Sctp, None, timeouts.udp),
            (Protocol::Icmp, None, timeouts.icmp_echo),
            (Protocol::Icmpv6, None, timeouts.icmp_echo),
            (Protocol::Tcp, Some(TCP_SYN), timeouts.tcp_syn),
            (Protocol::Tcp, Some(TCP_ACK), timeouts.tcp_established),
            (Protocol::Tcp, None, timeouts.tcp_established),
            (
                Protocol::Tcp,
                Some(TCP_FIN | TCP_ACK),
                timeouts.tcp_fin_wait,
            ),
            (Protocol::Tcp, Some(TCP_RST), timeouts.tcp_closing),
        ];
        for (port, (protocol, flags, timeout)) in (1000..).zip(cases) {
            let flow = new_flow(protocol, port, 1, Zone::EastWest);
            let made = created(table.insert(flow, at(1000), flags));
            let timeout = u64::from(timeout);
            assert_eq!(made.expires_at_secs(&timeouts), 1000 + timeout);
            assert!(
                table
                    .lookup(&flow.original, at(1000 + timeout - 1))
                    .is_some(),
                "{protocol:?} {flags:?}"
            );
            assert!(
                table.lookup(&flow.original, at(1000 + timeout)).is_none(),
                "{protocol:?} {flags:?}"
            );
            assert!(table.lookup(&flow.reply, at(1000 + timeout)).is_none());
        }
    }

    #[test]
    fn tcp_state_machine_and_timeouts() {
        let timeouts = Timeouts::default();
        let table = small(64);
        let flow = new_flow(Protocol::Tcp, 2000, 1, Zone::NorthSouth);
        let made = created(table.insert(flow, at(0), Some(TCP_SYN)));
        assert_eq!(made.tcp_state, Some(TcpState::SynSent));
        let state = |now| {
            let hit = table.lookup(&flow.original, at(now)).unwrap();
            (hit.flow.tcp_state.unwrap(), hit.flow.seen_reply, hit)
        };

        // A retransmitted SYN keeps SynSent; the clock moves last-seen.
        let (_, _, hit) = state(1);
        table.touch(&hit, at(5), Some(TCP_SYN));
        let (s, seen, hit) = state(5);
        assert_eq!(
            (s, seen, hit.flow.last_seen_secs),
            (TcpState::SynSent, false, 5)
        );
        assert!(table
            .lookup(&flow.original, at(5 + u64::from(timeouts.tcp_syn)))
            .is_none());

        // SYN+ACK from the backend: established, reply seen.
        let reply = table.lookup(&flow.reply, at(6)).unwrap();
        table.touch(&reply, at(6), Some(TCP_SYN | TCP_ACK));
        let (s, seen, _) = state(6);
        assert_eq!((s, seen), (TcpState::Established, true));
        let established_until = 6 + u64::from(timeouts.tcp_established);
        assert!(table
            .lookup(&flow.original, at(established_until - 1))
            .is_some());

        // FIN from the client: fin-wait.
        let (_, _, hit) = state(10);
        table.touch(&hit, at(10), Some(TCP_FIN | TCP_ACK));
        assert_eq!(state(10).0, TcpState::FinWait);
        assert!(table
            .lookup(&flow.original, at(10 + u64::from(timeouts.tcp_fin_wait)))
            .is_none());
        // A second client FIN (retransmit) is still fin-wait; the backend's FIN closes.
        table.touch(&hit, at(11), Some(TCP_FIN | TCP_ACK));
        assert_eq!(state(11).0, TcpState::FinWait);
        let reply = table.lookup(&flow.reply, at(12)).unwrap();
        table.touch(&reply, at(12), Some(TCP_FIN | TCP_ACK));
        assert_eq!(state(12).0, TcpState::Closing);
        let closing_until = 12 + u64::from(timeouts.tcp_closing);
        assert!(table
            .lookup(&flow.original, at(closing_until - 1))
            .is_some());
        assert!(table.lookup(&flow.original, at(closing_until)).is_none());

        // The client reuses the tuple: a bare SYN starts over.
        let (_, _, hit) = state(13);
        table.touch(&hit, at(13), Some(TCP_SYN));
        let (s, seen, _) = state(13);
        assert_eq!((s, seen), (TcpState::SynSent, false));

        // A RST from either side closes.
        let reply = table.lookup(&flow.reply, at(14)).unwrap();
        table.touch(&reply, at(14), Some(TCP_ACK));
        assert_eq!(state(14).0, TcpState::Established);
        table.touch(&reply, at(15), Some(TCP_RST));
        assert_eq!(state(15).0, TcpState::Closing);
        assert!(table
            .lookup(&flow.original, at(15 + u64::from(timeouts.tcp_closing)))
            .is_none());
    }

    #[test]
    fn touch_writes_only_on_change_and_never_goes_back() {
        let table = small(16);
        let flow = new_flow(Protocol::Udp, 3000, 1, Zone::EastWest);
        created(table.insert(flow, at(10), None));
        let hit = table.lookup(&flow.original, at(10)).unwrap();
        let slot = &table.slots[hit.flow.handle.slot as usize];
        let before = slot.activity.load(Ordering::Relaxed);
        table.touch(&hit, Timestamp::from_nanos(10_900_000_000), None);
        assert_eq!(slot.activity.load(Ordering::Relaxed), before);
        table.touch(&hit, at(20), None);
        table.touch(&hit, at(15), None);
        assert_eq!(
            table
                .lookup(&flow.original, at(20))
                .unwrap()
                .flow
                .last_seen_secs,
            20
        );
        // UDP: the reply direction marks the flow answered.
        let reply = table.lookup(&flow.reply, at(21)).unwrap();
        table.touch(&reply, at(21), None);
        assert!(
            table
                .lookup(&flow.original, at(21))
                .unwrap()
                .flow
                .seen_reply
        );
    }

    #[test]
    fn stale_handle_touch_and_remove_are_no_ops() {
        let table = small(1);
        assert_eq!(table.budgets, [1, 1]);
        let first = new_flow(Protocol::Udp, 1, 1, Zone::EastWest);
        let old = table.lookup(&first.original, at(0));
        assert!(old.is_none());
        created(table.insert(first, at(0), None));
        let old = table.lookup(&first.original, at(0)).unwrap();
        assert!(table.remove(old.flow.handle));
        assert!(!table.remove(old.flow.handle));

        // The only slot is reused by another flow.
        let second = new_flow(Protocol::Tcp, 2, 2, Zone::EastWest);
        let made = created(table.insert(second, at(50), Some(TCP_SYN)));
        assert_eq!(made.handle.slot, old.flow.handle.slot);
        assert_ne!(made.handle, old.flow.handle);
        table.touch(&old, at(60), Some(TCP_RST));
        let now = table.lookup(&second.original, at(60)).unwrap().flow;
        assert_eq!(
            (now.last_seen_secs, now.tcp_state),
            (50, Some(TcpState::SynSent))
        );
        assert!(!table.remove(old.flow.handle));
        assert!(table.lookup(&second.original, at(60)).is_some());
        assert!(table.lookup(&first.original, at(60)).is_none());
    }

    #[test]
    fn racing_creator_and_reply_collision_get_existing() {
        let table = small(64);
        let flow = new_flow(Protocol::Udp, 4000, 1, Zone::EastWest);
        let made = created(table.insert(flow, at(0), None));

        // Same original key, another backend: the first creator's entry wins.
        let racer = new_flow(Protocol::Udp, 4000, 2, Zone::EastWest);
        match table.insert(racer, at(0), None) {
            Ok(Insert::Existing(hit)) => {
                assert_eq!((hit.flow, hit.direction), (made, Direction::Original));
            }
            other => panic!("{other:?}"),
        }
        assert!(table.lookup(&racer.reply, at(0)).is_none());

        // Another client whose reply key would be the same (e.g. a SNAT port clash).
        let mut clash = flow;
        clash.original.source_port = 4001;
        match table.insert(clash, at(0), None) {
            Ok(Insert::Existing(hit)) => {
                assert_eq!(
                    (hit.flow.handle, hit.direction),
                    (made.handle, Direction::Reply)
                );
                assert_ne!(hit.flow.original, clash.original);
            }
            other => panic!("{other:?}"),
        }
        // A new flow whose reply key is an existing flow's original key.
        let reverse = NewFlow {
            original: FlowKey::new(Protocol::Udp, CLIENT, 9, SERVICE, 9),
            reply: flow.original,
            ..flow
        };
        match table.insert(reverse, at(0), None) {
            Ok(Insert::Existing(hit)) => assert_eq!(hit.direction, Direction::Original),
            other => panic!("{other:?}"),
        }
        assert_eq!(table.occupancy().east_west, 1);
    }

    #[test]
    fn expired_flow_is_replaced_on_insert() {
        let table = small(8);
        let flow = new_flow(Protocol::Udp, 5000, 1, Zone::EastWest);
        let old = created(table.insert(flow, at(0), None));
        let later = at(u64::from(table.timeouts().udp) + 1);
        let fresh = created(table.insert(
            new_flow(Protocol::Udp, 5000, 2, Zone::EastWest),
            later,
            None,
        ));
        assert_ne!(old.handle, fresh.handle);
        assert_eq!(table.lookup(&flow.original, later).unwrap().flow.backend, 2);
        assert_eq!(table.occupancy().east_west, 1);
    }

    #[test]
    fn reclaim_frees_expired_slots_incrementally() {
        let table = small(100);
        for port in 0..40 {
            created(table.insert(
                new_flow(Protocol::Udp, port, 1, Zone::EastWest),
                at(0),
                None,
            ));
        }
        for port in 40..60 {
            created(table.insert(
                new_flow(Protocol::Tcp, port, 1, Zone::NorthSouth),
                at(0),
                None,
            ));
        }
        assert_eq!(
            table.occupancy(),
            Occupancy {
                east_west: 40,
                north_south: 20,
                capacity: 100
            }
        );
        // Nothing has expired yet.
        assert_eq!(table.reclaim(at(10), 100), 0);
        // UDP flows expire at 60; TCP established ones much later. Sweep in small steps.
        let now = at(60);
        let freed: usize = (0..10).map(|_| table.reclaim(now, 10)).sum();
        assert_eq!(freed, 40);
        assert_eq!(
            table.occupancy(),
            Occupancy {
                east_west: 0,
                north_south: 20,
                capacity: 100
            }
        );
        let mut live = 0;
        table.for_each(now, |flow| {
            assert_eq!(flow.original.protocol, Protocol::Tcp);
            live += 1;
        });
        assert_eq!(live, 20);
        // The freed slots are usable again, up to the east-west budget.
        for port in 100..175 {
            created(table.insert(new_flow(Protocol::Udp, port, 1, Zone::EastWest), now, None));
        }
        assert_eq!(table.occupancy().east_west, 75);
    }

    #[test]
    fn north_south_flood_never_evicts_east_west() {
        let table = small(100); // east-west budget 75, north-south 50
        let mut east_west = Vec::new();
        for port in 0..30 {
            let flow = new_flow(Protocol::Tcp, port, 1, Zone::EastWest);
            created(table.insert(flow, at(0), Some(TCP_ACK)));
            east_west.push(flow);
        }
        // The outside floods with SYNs: north-south fills to its budget, then only evicts its own.
        for port in 1000..1300 {
            let flow = new_flow(Protocol::Tcp, port, 2, Zone::NorthSouth);
            created(table.insert(flow, at(1), Some(TCP_SYN)));
        }
        assert_eq!(table.occupancy().north_south, 50);
        // East-west keeps growing to its budget; once the slab is full it takes room from north-south.
        for port in 30..75 {
            let flow = new_flow(Protocol::Tcp, port, 1, Zone::EastWest);
            created(table.insert(flow, at(2), Some(TCP_ACK)));
            east_west.push(flow);
        }
        let occupancy = table.occupancy();
        assert_eq!((occupancy.east_west, occupancy.north_south), (75, 25));
        // More flood: north-south stays within what is left and never touches east-west.
        for port in 2000..2200 {
            let flow = new_flow(Protocol::Tcp, port, 2, Zone::NorthSouth);
            assert!(matches!(
                table.insert(flow, at(3), Some(TCP_SYN)),
                Ok(Insert::Created(_)) | Err(InsertError::ZoneFull(Zone::NorthSouth))
            ));
        }
        for flow in &east_west {
            assert!(table.lookup(&flow.original, at(3)).is_some());
        }
        assert_eq!(table.occupancy().east_west, 75);
        // East-west at its budget evicts its own soonest-to-expire flow.
        let extra = new_flow(Protocol::Udp, 9999, 1, Zone::EastWest);
        created(table.insert(extra, at(3), None));
        assert_eq!(table.occupancy().east_west, 75);
    }

    #[test]
    fn full_zone_evicts_expired_before_live() {
        let mut config = Config::with_capacity(64);
        config.north_south_budget = 8;
        let table = Conntrack::new(config);
        // Seven long-lived TCP flows and one UDP flow that expires at 60.
        let mut tcp = Vec::new();
        for port in 0..7 {
            let flow = new_flow(Protocol::Tcp, port, 1, Zone::NorthSouth);
            created(table.insert(flow, at(0), Some(TCP_ACK)));
            tcp.push(flow);
        }
        let udp = new_flow(Protocol::Udp, 7, 1, Zone::NorthSouth);
        created(table.insert(udp, at(0), None));
        let newcomer = new_flow(Protocol::Udp, 8, 1, Zone::NorthSouth);
        created(table.insert(newcomer, at(61), None));
        assert!(table.lookup(&udp.original, at(0)).is_none());
        for flow in &tcp {
            assert!(table.lookup(&flow.original, at(61)).is_some());
        }
        assert_eq!(table.occupancy().north_south, 8);
        // With nothing expired, the flow closest to expiry goes: the newcomer (UDP, 60 s).
        let another = new_flow(Protocol::Udp, 9, 1, Zone::NorthSouth);
        created(table.insert(another, at(62), None));
        assert!(table.lookup(&newcomer.original, at(62)).is_none());
        assert_eq!(table.occupancy().north_south, 8);
    }

    #[test]
    fn zone_full_when_nothing_to_evict() {
        let mut config = Config::with_capacity(4);
        config.east_west_budget = 4;
        config.north_south_budget = 4;
        let table = Conntrack::new(config);
        for port in 0..4 {
            created(table.insert(
                new_flow(Protocol::Udp, port, 1, Zone::EastWest),
                at(0),
                None,
            ));
        }
        // The slab is full of east-west flows, which north-south may not evict.
        let outside = new_flow(Protocol::Udp, 100, 1, Zone::NorthSouth);
        assert_eq!(
            table.insert(outside, at(0), None),
            Err(InsertError::ZoneFull(Zone::NorthSouth))
        );
        assert_eq!(table.occupancy().east_west, 4);
    }

    #[test]
    fn remove_backend_flows_by_protocol() {
        let table = small(64);
        for port in 0..10 {
            created(table.insert(
                new_flow(Protocol::Udp, port, 1, Zone::EastWest),
                at(0),
                None,
            ));
            created(table.insert(
                new_flow(Protocol::Tcp, port, 1, Zone::EastWest),
                at(0),
                None,
            ));
            created(table.insert(
                new_flow(Protocol::Udp, port + 100, 2, Zone::EastWest),
                at(0),
                None,
            ));
        }
        assert_eq!(table.remove_backend_flows(1, Some(Protocol::Udp)), 10);
        assert!(table
            .lookup(
                &new_flow(Protocol::Udp, 3, 1, Zone::EastWest).original,
                at(1)
            )
            .is_none());
        assert!(table
            .lookup(
                &new_flow(Protocol::Tcp, 3, 1, Zone::EastWest).original,
                at(1)
            )
            .is_some());
        assert_eq!(table.remove_backend_flows(1, None), 10);
        assert_eq!(table.remove_backend_flows(1, None), 0);
        assert_eq!(table.occupancy().east_west, 10);
        assert!(table
            .lookup(
                &new_flow(Protocol::Udp, 103, 2, Zone::EastWest).reply,
                at(1)
            )
            .is_some());
    }

    #[test]
    fn removals_keep_other_keys_findable() {
        let table = small(512);
        let flows: Vec<_> = (0..384)
            .map(|port| new_flow(Protocol::Udp, port, 1, Zone::EastWest))
            .collect();
        for flow in &flows {
            created(table.insert(*flow, at(0), None));
        }
        for (i, flow) in flows.iter().enumerate() {
            if i % 3 == 0 {
                let hit = table.lookup(&flow.original, at(0)).unwrap();
                assert!(table.remove(hit.flow.handle));
            }
        }
        for (i, flow) in flows.iter().enumerate() {
            assert_eq!(table.lookup(&flow.original, at(0)).is_some(), i % 3 != 0);
            assert_eq!(table.lookup(&flow.reply, at(0)).is_some(), i % 3 != 0);
        }
        assert_eq!(table.remove_backend_flows(1, None), 256);
        assert!(table
            .buckets
            .iter()
            .all(|b| b.control.load(Ordering::Relaxed) == 0));
        assert!(table
            .buckets
            .iter()
            .all(|b| b.entries.iter().all(|e| e.load(Ordering::Relaxed) == 0)));
    }

    /// Forces twenty keys onto one home bucket (seven words) to exercise overflow counts and probe
    /// chains, which a random hash at half load rarely produces.
    #[test]
    fn overflowing_home_bucket_chains_into_neighbours() {
        let table = small(64);
        let home = 5usize;
        let hash_of = |port: u16| (u64::from(port) + 1) << 32 | home as u64;
        let mut placed = Vec::new();
        for port in 0..20u16 {
            let flow = new_flow(Protocol::Udp, port, 1, Zone::EastWest);
            let index = table.allocate(Zone::EastWest, 0).unwrap();
            table.fill(index, &flow, 0, None);
            let words = flow.original.to_words();
            let _locks = table.lock_pair(home, home);
            table.place(&words, hash_of(port), index, Direction::Original);
            placed.push((port, words, index));
        }
        let overflow =
            |bucket: usize| table.buckets[bucket].control.load(Ordering::Relaxed) / OVERFLOW_UNIT;
        assert_eq!(
            (overflow(home), overflow(home + 1), overflow(home + 2)),
            (13, 6, 0)
        );
        let find =
            |port: u16, words: &[u64; 5]| table.probe(words, hash_of(port), 0, None, |_, _| {});
        for (port, words, index) in &placed {
            let hit = find(*port, words).unwrap();
            assert_eq!(hit.flow.handle.slot as usize, *index);
        }
        // Remove the first seven (all in the home bucket): the chain must still reach the rest.
        for (port, words, index) in &placed[..7] {
            table.unplace(hash_of(*port), *index, Direction::Original);
            assert!(find(*port, words).is_none());
        }
        assert_eq!((overflow(home), overflow(home + 1)), (13, 6));
        for (port, words, _) in &placed[7..] {
            assert!(find(*port, words).is_some());
        }
        // Removing the ones that overflowed takes their counts back.
        for (port, _, index) in &placed[7..] {
            table.unplace(hash_of(*port), *index, Direction::Original);
        }
        assert_eq!((overflow(home), overflow(home + 1)), (0, 0));
    }

    /// Two workers see the A and the AAAA query of one DNS socket at once and pick different backends.
    #[test]
    fn racing_creators_agree_on_one_entry() {
        const PORTS: u16 = 10_000;
        let table = small(16_384);
        let outcomes: Vec<[AtomicU64; 2]> = (0..PORTS).map(|_| Default::default()).collect();
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let mut creators = Vec::new();
            for worker in 0..4u32 {
                let (table, outcomes) = (&table, &outcomes);
                creators.push(scope.spawn(move || {
                    // Workers 0 and 1 race on even ports, 2 and 3 on odd ones, in the same order.
                    let (parity, side) = (worker / 2, worker % 2);
                    for port in (0..PORTS).filter(|p| u32::from(*p) % 2 == parity) {
                        let flow = new_flow(Protocol::Udp, port, 1 + worker, Zone::EastWest);
                        let (kind, backend) = match table.insert(flow, at(0), None) {
                            Ok(Insert::Created(made)) => (1, made.backend),
                            Ok(Insert::Existing(hit)) => {
                                assert_eq!(hit.flow.original, flow.original);
                                (2, hit.flow.backend)
                            }
                            Err(error) => panic!("{error}"),
                        };
                        outcomes[usize::from(port)][side as usize]
                            .store((kind << 32) | u64::from(backend), Ordering::Relaxed);
                    }
                }));
            }
            for reader in 0..2u16 {
                let (table, done) = (&table, &done);
                scope.spawn(move || {
                    let mut port = reader;
                    while !done.load(Ordering::Relaxed) {
                        let key = new_flow(Protocol::Udp, port, 0, Zone::EastWest).original;
                        if let Some(hit) = table.lookup(&key, at(0)) {
                            assert_eq!(hit.flow.original, key);
                            assert_eq!(hit.direction, Direction::Original);
                        }
                        port = (port + 7) % PORTS;
                    }
                });
            }
            for creator in creators {
                creator.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
        });
        for (port, pair) in outcomes.iter().enumerate() {
            let [a, b] = [0, 1].map(|i| pair[i].load(Ordering::Relaxed));
            let kinds = (a >> 32, b >> 32);
            assert!(kinds == (1, 2) || kinds == (2, 1), "port {port}: {kinds:?}");
            assert_eq!(
                a as u32, b as u32,
                "port {port}: creators disagree on the backend"
            );
            let key = new_flow(Protocol::Udp, port as u16, 0, Zone::EastWest).original;
            let hit = table.lookup(&key, at(0)).unwrap();
            assert_eq!(hit.flow.backend, a as u32);
            // The loser's reply key was never indexed.
            let parity_pair = if port % 2 == 0 { [1, 2] } else { [3, 4] };
            for backend in parity_pair {
                let reply = new_flow(Protocol::Udp, port as u16, backend, Zone::EastWest).reply;
                assert_eq!(table.lookup(&reply, at(0)).is_some(), backend == a as u32);
            }
        }
        assert_eq!(table.occupancy().east_west, usize::from(PORTS));
        let mut count = 0;
        table.for_each(at(0), |_| count += 1);
        assert_eq!(count, usize::from(PORTS));
    }

    /// Inserts, removes, expiry-driven replacement, eviction and sweeps all at once on a small table:
    /// no lookup may ever return a flow whose key differs from the key asked for.
    #[test]
    fn concurrent_churn_never_returns_a_wrong_flow() {
        const KEYS: u16 = 600;
        let mut config = Config::with_capacity(256);
        config.timeouts.udp = 2;
        let table = Conntrack::new(config);
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let mut writers = Vec::new();
            for worker in 0..3u32 {
                let table = &table;
                writers.push(scope.spawn(move || {
                    let mut state = 0x9e37_79b9_u32.wrapping_mul(worker + 1);
                    for step in 0..12_000u64 {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        let port = (state % u32::from(KEYS)) as u16;
                        let zone = if state & 0x100 == 0 {
                            Zone::EastWest
                        } else {
                            Zone::NorthSouth
                        };
                        let protocol = if state & 0x200 == 0 {
                            Protocol::Udp
                        } else {
                            Protocol::Tcp
                        };
                        let now = at(step / 1000);
                        let flow = new_flow(protocol, port, worker, zone);
                        match table.insert(flow, now, Some(TCP_SYN)) {
                            Ok(Insert::Created(made)) => {
                                if state & 0x400 == 0 {
                                    table.remove(made.handle);
                                }
                            }
                            Ok(Insert::Existing(hit)) => {
                                assert!(
                                    hit.flow.original == flow.original
                                        || hit.flow.reply == flow.reply
                                );
                                table.touch(&hit, now, Some(TCP_ACK));
                            }
                            Err(InsertError::ZoneFull(_)) => {}
                        }
                        if step % 500 == 0 {
                            table.reclaim(now, 64);
                            table.remove_backend_flows(worker, Some(Protocol::Udp));
                        }
                    }
                }));
            }
            for reader in 0..2u16 {
                let (table, done) = (&table, &done);
                scope.spawn(move || {
                    let mut port = reader;
                    let mut backend = 0;
                    while !done.load(Ordering::Relaxed) {
                        for protocol in [Protocol::Udp, Protocol::Tcp] {
                            let flow = new_flow(protocol, port, backend, Zone::EastWest);
                            if let Some(hit) = table.lookup(&flow.original, at(0)) {
                                assert_eq!(hit.flow.original, flow.original);
                                assert_eq!(hit.direction, Direction::Original);
                            }
                            if let Some(hit) = table.lookup(&flow.reply, at(0)) {
                                assert_eq!(hit.flow.reply, flow.reply);
                                assert_eq!(hit.direction, Direction::Reply);
                                assert_eq!(hit.flow.backend, backend);
                            }
                        }
                        port = (port + 1) % KEYS;
                        backend = (backend + 1) % 3;
                    }
                });
            }
            for writer in writers {
                writer.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
        });
        // The books balance: every counted flow is a live slot, every live slot is findable.
        let occupancy = table.occupancy();
        let mut live = 0;
        for index in 0..table.capacity() {
            if let Some(flow) = table.read_slot(index) {
                live += 1;
                let hit = table.lookup(&flow.original, Timestamp::ZERO);
                assert!(hit.is_none_or(|hit| hit.flow.handle == flow.handle));
            }
        }
        assert_eq!(occupancy.east_west + occupancy.north_south, live);
        assert!(live <= table.capacity());
        let removed = table.remove_backend_flows(0, None)
            + table.remove_backend_flows(1, None)
            + table.remove_backend_flows(2, None);
        assert_eq!(removed, live);
        assert!(table
            .buckets
            .iter()
            .all(|b| b.control.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn table_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Conntrack>();
        assert_eq!(std::mem::size_of::<FlowSlot>(), 128);
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
    }
}
