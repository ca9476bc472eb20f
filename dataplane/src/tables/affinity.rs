//! Session affinity (`sessionAffinity: ClientIP`): which backend each (service, client address) was
//! last sent to, and when.
//!
//! This module owns that state, shared by all workers. It is a fixed-size set-associative cache: a
//! seeded hash of (service, client) picks a set of `WAYS` (4) entries, lookups scan the set without a
//! lock (each entry is a seqlock, so a torn read is discarded, never returned), and writers serialize
//! per set on a lock word in the set's first cache line. Nothing is allocated after [`AffinityTable::new`].
//!
//! Affinity is best effort under overload, like kube-proxy's use of the iptables `recent` module
//! (whose lists are bounded too): when a set is full, [`AffinityTable::record`] replaces the least
//! recently used entry of that set, so a client forgotten that way is balanced afresh on its next new
//! connection. Established connections do not depend on this table; conntrack keeps them on their
//! backend.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

use super::conntrack::{lock_word, unlock_word};
use crate::flow::Timestamp;

/// Entries per set. Four 40-byte entries and the lock fill three cache lines.
const WAYS: usize = 4;

/// Key word 0: `family << 33 | PRESENT | service`; never 0 for a used entry.
const PRESENT: u64 = 1 << 32;
const IPV6: u64 = 1 << 33;

/// One remembered choice.
#[derive(Default)]
struct Entry {
    /// Seqlock over `key`: odd while a writer replaces the entry.
    sequence: AtomicU64,
    /// `[family | present | service, address high, address low]`, all 0 when empty.
    key: [AtomicU64; 3],
    /// `last used second << 32 | backend`. Updated in place when the same key is recorded again.
    value: AtomicU64,
}

#[derive(Default)]
#[repr(C, align(64))]
struct Set {
    /// Writer lock in bit 0 (see [`lock_word`]).
    lock: AtomicU64,
    entries: [Entry; WAYS],
}

/// Releases a set's lock on drop.
struct SetGuard<'a>(&'a Set);

impl<'a> SetGuard<'a> {
    fn lock(set: &'a Set) -> Self {
        lock_word(&set.lock);
        Self(set)
    }
}

impl Drop for SetGuard<'_> {
    fn drop(&mut self) {
        unlock_word(&self.0.lock);
    }
}

/// The affinity table. `Send + Sync`; nothing needs `&mut`.
pub struct AffinityTable {
    sets: Box<[Set]>,
    set_mask: usize,
    hasher: foldhash::quality::RandomState,
    len: AtomicUsize,
}

impl fmt::Debug for AffinityTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityTable")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

fn key_words(service: u32, client: IpAddr) -> [u64; 3] {
    let (family, bits) = match client {
        IpAddr::V4(v4) => (0, u128::from(v4.to_ipv6_mapped())),
        IpAddr::V6(v6) => (IPV6, u128::from(v6)),
    };
    [
        family | PRESENT | u64::from(service),
        (bits >> 64) as u64,
        bits as u64,
    ]
}

fn secs_u32(now: Timestamp) -> u32 {
    u32::try_from(now.as_secs()).unwrap_or(u32::MAX)
}

impl AffinityTable {
    /// Room for at least `capacity` (service, client) pairs, rounded up to whole power-of-two sets.
    pub fn new(capacity: usize) -> Self {
        let set_count = capacity.div_ceil(WAYS).next_power_of_two().max(1);
        Self {
            sets: (0..set_count).map(|_| Set::default()).collect(),
            set_mask: set_count - 1,
            hasher: foldhash::quality::RandomState::default(),
            len: AtomicUsize::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Entries in use, including idle ones not yet replaced.
    pub fn len(&self) -> usize {
        // Relaxed: a statistic.
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backend last recorded for `client` on `service`, unless it has been idle longer than
    /// `timeout_secs`. Takes no lock and writes nothing.
    pub fn lookup(
        &self,
        service: u32,
        client: IpAddr,
        now: Timestamp,
        timeout_secs: u32,
    ) -> Option<u32> {
        let key = key_words(service, client);
        let set = self.set(&key);
        let now_secs = now.as_secs();
        set.entries.iter().find_map(|entry| {
            let value = Self::read(entry, &key)?;
            let last_used = value >> 32;
            // Another worker may have recorded with a slightly later clock: idle time is then 0.
            (now_secs.saturating_sub(last_used) <= u64::from(timeout_secs)).then_some(value as u32)
        })
    }

    /// Remembers `backend` for `client` on `service` as of `now`: refreshes the entry if there is one,
    /// else fills an empty way of the set, else replaces the set's least recently used entry.
    pub fn record(&self, service: u32, client: IpAddr, backend: u32, now: Timestamp) {
        let key = key_words(service, client);
        let set = self.set(&key);
        let value = (u64::from(secs_u32(now)) << 32) | u64::from(backend);
        let _guard = SetGuard::lock(set);
        // Relaxed loads below: under the set lock nobody else writes these entries.
        let stored_key = |entry: &Entry| -> [u64; 3] {
            std::array::from_fn(|i| entry.key[i].load(Ordering::Relaxed))
        };
        if let Some(entry) = set.entries.iter().find(|entry| stored_key(entry) == key) {
            let current = entry.value.load(Ordering::Relaxed);
            // Never move last-used backwards (workers' clocks differ slightly), and write only on
            // change: readers share this line.
            let refreshed = if current >> 32 > value >> 32 {
                (current & !0xFFFF_FFFF) | u64::from(backend)
            } else {
                value
            };
            if refreshed != current {
                // Release: a reader that picks this value up and then re-checks the sequence must see
                // every earlier replacement of the entry (ordered before us by the set lock), or it
                // could pair this value with a key read before that replacement.
                entry.value.store(refreshed, Ordering::Release);
            }
            return;
        }
        let victim = set
            .entries
            .iter()
            .find(|entry| entry.key[0].load(Ordering::Relaxed) == 0)
            .unwrap_or_else(|| {
                set.entries
                    .iter()
                    .min_by_key(|entry| entry.value.load(Ordering::Relaxed) >> 32)
                    .expect("a set has entries")
            });
        if victim.key[0].load(Ordering::Relaxed) == 0 {
            // Relaxed: a statistic.
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Self::write(victim, &key, value);
    }

    /// Forgets every client of `service` (it was deleted or its affinity turned off); returns how many.
    pub fn forget_service(&self, service: u32) -> usize {
        let mut forgotten = 0;
        for set in self.sets.iter() {
            let _guard = SetGuard::lock(set);
            for entry in &set.entries {
                // Relaxed: under the set lock.
                let first = entry.key[0].load(Ordering::Relaxed);
                if first & PRESENT != 0 && first as u32 == service {
                    Self::write(entry, &[0; 3], 0);
                    forgotten += 1;
                }
            }
        }
        // Relaxed: a statistic.
        self.len.fetch_sub(forgotten, Ordering::Relaxed);
        forgotten
    }

    fn set(&self, key: &[u64; 3]) -> &Set {
        let mut hasher = self.hasher.build_hasher();
        hasher.write_u64(key[0]);
        hasher.write_u128((u128::from(key[1]) << 64) | u128::from(key[2]));
        &self.sets[hasher.finish() as usize & self.set_mask]
    }

    /// The entry's value if it holds `key`, read consistently with the key.
    fn read(entry: &Entry, key: &[u64; 3]) -> Option<u64> {
        // Acquire: pairs with the writer's final Release store, making the key and value it wrote
        // visible.
        let sequence = entry.sequence.load(Ordering::Acquire);
        if sequence % 2 == 1 {
            // Being replaced: whatever it held is going away.
            return None;
        }
        // Relaxed: validated by the sequence re-check below.
        let stored: [u64; 3] = std::array::from_fn(|i| entry.key[i].load(Ordering::Relaxed));
        let value = entry.value.load(Ordering::Relaxed);
        // Acquire fence: if a read above saw a replacing writer's store (made after its Release
        // fence), the re-check sees the odd or newer sequence.
        fence(Ordering::Acquire);
        (entry.sequence.load(Ordering::Relaxed) == sequence && stored == *key).then_some(value)
    }

    /// Replaces an entry's key and value. The caller holds the set lock.
    fn write(entry: &Entry, key: &[u64; 3], value: u64) {
        // Relaxed: we hold the set lock, so nobody else changes the sequence.
        let sequence = entry.sequence.load(Ordering::Relaxed);
        entry.sequence.store(sequence + 1, Ordering::Relaxed);
        // Release fence: a reader that sees any store below also sees the odd sequence on re-check.
        fence(Ordering::Release);
        for (word, new) in entry.key.iter().zip(key) {
            // Relaxed: published by the Release store of the even sequence.
            word.store(*new, Ordering::Relaxed);
        }
        entry.value.store(value, Ordering::Relaxed);
        // Release: readers that Acquire the even sequence see the new key and value.
        entry.sequence.store(sequence + 2, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const TIMEOUT: u32 = 10_800;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_secs(secs)
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn record_then_lookup() {
        let table = AffinityTable::new(64);
        assert!(table.is_empty());
        assert_eq!(table.lookup(1, v4(1), at(0), TIMEOUT), None);
        table.record(1, v4(1), 42, at(100));
        assert_eq!(table.lookup(1, v4(1), at(100), TIMEOUT), Some(42));
        assert_eq!(table.lookup(1, v4(2), at(100), TIMEOUT), None);
        // Recording again with another backend (the old one went away) replaces it.
        table.record(1, v4(1), 43, at(101));
        assert_eq!(table.lookup(1, v4(1), at(101), TIMEOUT), Some(43));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn idle_entries_time_out_and_refresh_extends() {
        let table = AffinityTable::new(64);
        table.record(1, v4(1), 7, at(1000));
        assert_eq!(table.lookup(1, v4(1), at(1010), 10), Some(7));
        assert_eq!(table.lookup(1, v4(1), at(1011), 10), None);
        // A lookup does not refresh; recording does.
        table.record(1, v4(1), 7, at(1008));
        assert_eq!(table.lookup(1, v4(1), at(1018), 10), Some(7));
        assert_eq!(table.lookup(1, v4(1), at(1019), 10), None);
        // A record with an older clock neither moves last-used back nor loses the backend.
        table.record(1, v4(1), 8, at(1005));
        assert_eq!(table.lookup(1, v4(1), at(1018), 10), Some(8));
    }

    #[test]
    fn services_are_isolated() {
        let table = AffinityTable::new(64);
        table.record(1, v4(1), 10, at(0));
        table.record(2, v4(1), 20, at(0));
        assert_eq!(table.lookup(1, v4(1), at(0), TIMEOUT), Some(10));
        assert_eq!(table.lookup(2, v4(1), at(0), TIMEOUT), Some(20));
        assert_eq!(table.lookup(3, v4(1), at(0), TIMEOUT), None);
        assert_eq!(table.forget_service(1), 1);
        assert_eq!(table.lookup(1, v4(1), at(0), TIMEOUT), None);
        assert_eq!(table.lookup(2, v4(1), at(0), TIMEOUT), Some(20));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn ipv4_and_ipv6_clients_are_distinct() {
        let table = AffinityTable::new(64);
        let plain = v4(1);
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        table.record(1, plain, 4, at(0));
        table.record(1, mapped, 5, at(0));
        table.record(1, v6, 6, at(0));
        assert_eq!(table.lookup(1, plain, at(0), TIMEOUT), Some(4));
        assert_eq!(table.lookup(1, mapped, at(0), TIMEOUT), Some(5));
        assert_eq!(table.lookup(1, v6, at(0), TIMEOUT), Some(6));
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn full_set_replaces_least_recently_used() {
        // One set of four ways: the fifth client evicts the one used longest ago.
        let table = AffinityTable::new(WAYS);
        assert_eq!(table.capacity(), WAYS);
        for client in 0..WAYS as u8 {
            table.record(1, v4(client), u32::from(client), at(u64::from(client)));
        }
        table.record(1, v4(0), 0, at(10)); // client 0 is now the most recent
        table.record(1, v4(9), 9, at(11));
        assert_eq!(table.lookup(1, v4(1), at(11), TIMEOUT), None);
        for client in [0, 2, 3, 9] {
            assert_eq!(
                table.lookup(1, v4(client), at(11), TIMEOUT),
                Some(u32::from(client))
            );
        }
        assert_eq!(table.len(), WAYS);
    }

    /// Writers keep replacing entries of a tiny table while readers check that whatever they get back
    /// was recorded for exactly the (service, client) they asked about.
    #[test]
    fn concurrent_record_and_lookup_never_mix_keys() {
        let table = AffinityTable::new(8);
        let backend_for = |service: u32, client: u8| service * 1000 + u32::from(client);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let mut writers = Vec::new();
            for writer in 0..2u32 {
                let table = &table;
                writers.push(scope.spawn(move || {
                    for step in 0..40_000u32 {
                        let service = (step + writer) % 5;
                        let client = (step.wrapping_mul(7) % 40) as u8;
                        table.record(
                            service,
                            v4(client),
                            backend_for(service, client),
                            at(u64::from(step)),
                        );
                        if step % 5000 == 0 {
                            table.forget_service(service);
                        }
                    }
                }));
            }
            for reader in 0..2u32 {
                let (table, done) = (&table, &done);
                scope.spawn(move || {
                    let mut step = reader;
                    while !done.load(Ordering::Relaxed) {
                        let service = step % 5;
                        let client = (step % 40) as u8;
                        if let Some(backend) = table.lookup(service, v4(client), at(0), u32::MAX) {
                            assert_eq!(backend, backend_for(service, client));
                        }
                        step = step.wrapping_add(3);
                    }
                });
            }
            for writer in writers {
                writer.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
        });
        assert!(table.len() <= table.capacity());
    }

    #[test]
    fn table_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<AffinityTable>();
    }
}
