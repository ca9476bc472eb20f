//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table that spreads new flows
//! over a service's backends and moves only about 1/N of them when one of N backends changes.
//!
//! Table sizes are primes. The configured size (default 16381) is the ceiling; a pool with few backends
//! gets the smallest prime on [`SIZE_LADDER`] that still gives each backend at least
//! [`MIN_SLOTS_PER_BACKEND`] slots, because 30k services × 16381 slots would cost gigabytes and
//! seconds to build while a 100:1 ratio already keeps the spread within about 1%. A rebuild keeps the
//! previous size whenever it is still large enough, so that backend churn never reshuffles flows
//! by changing the table size.

/// Primes the table size is chosen from, smallest first.
pub const SIZE_LADDER: [u32; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// The default ceiling on the table size, as in Cilium and DESIGN.md §3.
pub const DEFAULT_MAX_SIZE: u32 = 16381;

/// A table this much larger than its backend count keeps the Maglev spread within about 1%.
pub const MIN_SLOTS_PER_BACKEND: u32 = 100;

/// A lookup table from flow hash to a backend index (an index into the caller's backend list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    entries: Box<[u16]>,
}

impl Maglev {
    /// The table size for `backend_count` backends, given the size the previous table had (if any).
    pub fn choose_size(backend_count: usize, previous: Option<u32>, max_size: u32) -> u32 {
        let wanted = u32::try_from(backend_count)
            .unwrap_or(u32::MAX)
            .saturating_mul(MIN_SLOTS_PER_BACKEND);
        if let Some(previous) = previous {
            if previous >= wanted.min(max_size) && previous <= max_size {
                return previous;
            }
        }
        SIZE_LADDER
            .iter()
            .copied()
            .find(|&size| size >= wanted && size <= max_size)
            .unwrap_or(max_size)
    }

    /// Builds the table for backends named by `names` (stable identities such as "10.0.0.1:8080").
    /// `size` must be a prime larger than the number of backends; callers use [`Maglev::choose_size`].
    /// Returns `None` for an empty backend list or more than `u16::MAX` backends.
    pub fn build<S: AsRef<[u8]>>(names: &[S], size: u32) -> Option<Self> {
        let count = names.len();
        if count == 0 || count > usize::from(u16::MAX) || (size as usize) <= count {
            return None;
        }
        let size_u64 = u64::from(size);
        // Each backend walks its own permutation of the slots: offset + j * skip (mod size).
        let mut next_slot: Vec<u64> = Vec::with_capacity(count);
        let mut skips: Vec<u64> = Vec::with_capacity(count);
        for name in names {
            let name = name.as_ref();
            next_slot.push(stable_hash(name, 0x6d61_676c_6576_3031) % size_u64);
            skips.push(stable_hash(name, 0x6d61_676c_6576_3032) % (size_u64 - 1) + 1);
        }
        const EMPTY: u16 = u16::MAX;
        let mut entries = vec![EMPTY; size as usize].into_boxed_slice();
        let mut filled = 0usize;
        'fill: loop {
            for backend in 0..count {
                let mut slot = next_slot[backend];
                while entries[slot as usize] != EMPTY {
                    slot = (slot + skips[backend]) % size_u64;
                }
                entries[slot as usize] = backend as u16;
                next_slot[backend] = (slot + skips[backend]) % size_u64;
                filled += 1;
                if filled == entries.len() {
                    break 'fill;
                }
            }
        }
        Some(Self { entries })
    }

    /// The backend index for a flow hash.
    #[inline]
    pub fn pick(&self, flow_hash: u64) -> usize {
        // Multiply-shift maps the hash onto the table without a division on the packet path.
        let index = ((u128::from(flow_hash) * self.entries.len() as u128) >> 64) as usize;
        usize::from(self.entries[index])
    }

    pub fn size(&self) -> u32 {
        self.entries.len() as u32
    }

    /// How many slots each backend owns, for dumps and tests.
    pub fn slot_counts(&self, backend_count: usize) -> Vec<usize> {
        let mut counts = vec![0; backend_count];
        for &entry in self.entries.iter() {
            if let Some(count) = counts.get_mut(usize::from(entry)) {
                *count += 1;
            }
        }
        counts
    }
}

/// A hash whose value never changes between builds, versions or nodes (FNV-1a, then a 64-bit
/// finalizer), so every node and every restart builds the same table for the same backends.
pub fn stable_hash(data: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &byte in data {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(hash)
}

/// The splitmix64 finalizer: spreads every input bit over the whole word.
#[inline]
pub fn mix64(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(count: usize, tag: &str) -> Vec<String> {
        (0..count)
            .map(|i| format!("{tag}-10.244.{}.{}:8080", i / 250, i % 250))
            .collect()
    }

    fn flow_hashes(count: u64) -> impl Iterator<Item = u64> {
        (0..count).map(|i| mix64(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234))
    }

    #[test]
    fn every_slot_is_filled_and_slots_are_even() {
        for count in [1usize, 2, 3, 7, 10, 100] {
            let size = Maglev::choose_size(count, None, DEFAULT_MAX_SIZE);
            let table = Maglev::build(&names(count, "a"), size).unwrap();
            let counts = table.slot_counts(count);
            let ideal = size as f64 / count as f64;
            for c in counts {
                assert!(
                    (c as f64 - ideal).abs() <= ideal * 0.02 + 1.0,
                    "count {count}: {c} vs {ideal}"
                );
            }
        }
    }

    #[test]
    fn flows_spread_within_a_few_percent() {
        let count = 10;
        let table = Maglev::build(&names(count, "b"), DEFAULT_MAX_SIZE).unwrap();
        let mut hits = vec![0u64; count];
        let flows = 200_000;
        for hash in flow_hashes(flows) {
            hits[table.pick(hash)] += 1;
        }
        let ideal = flows as f64 / count as f64;
        for h in hits {
            assert!((h as f64 - ideal).abs() / ideal < 0.03, "{h} vs {ideal}");
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let count = 10;
        let all = names(count, "c");
        let size = Maglev::choose_size(count, None, DEFAULT_MAX_SIZE);
        let before = Maglev::build(&all, size).unwrap();
        let removed = 3;
        let rest: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, n)| n.clone())
            .collect();
        let after_size = Maglev::choose_size(count - 1, Some(size), DEFAULT_MAX_SIZE);
        assert_eq!(after_size, size, "a shrink keeps the table size");
        let after = Maglev::build(&rest, after_size).unwrap();
        let flows = 100_000u64;
        let mut moved_survivors = 0u64;
        let mut on_removed = 0u64;
        for hash in flow_hashes(flows) {
            let old = &all[before.pick(hash)];
            let new = &rest[after.pick(hash)];
            if old == &all[removed] {
                on_removed += 1;
            } else if old != new {
                moved_survivors += 1;
            }
        }
        // Flows of the removed backend must move; of the others, only a few percent may.
        let moved_fraction = (moved_survivors + on_removed) as f64 / flows as f64;
        assert!(
            moved_fraction < 1.0 / count as f64 * 1.5,
            "moved {moved_fraction}"
        );
        assert!(
            (moved_survivors as f64 / flows as f64) < 0.05,
            "survivors moved {moved_survivors}"
        );
    }

    #[test]
    fn size_choice_is_stable_and_capped() {
        assert_eq!(Maglev::choose_size(1, None, DEFAULT_MAX_SIZE), 251);
        assert_eq!(Maglev::choose_size(10, None, DEFAULT_MAX_SIZE), 1021);
        assert_eq!(
            Maglev::choose_size(1000, None, DEFAULT_MAX_SIZE),
            DEFAULT_MAX_SIZE
        );
        assert_eq!(Maglev::choose_size(9, Some(1021), DEFAULT_MAX_SIZE), 1021);
        assert_eq!(Maglev::choose_size(11, Some(1021), DEFAULT_MAX_SIZE), 2039);
        assert_eq!(Maglev::choose_size(2, Some(16381), DEFAULT_MAX_SIZE), 16381);
        assert_eq!(Maglev::choose_size(2, None, 65521), 251);
    }

    #[test]
    fn rejects_impossible_inputs() {
        assert!(Maglev::build::<&str>(&[], 251).is_none());
        assert!(Maglev::build(&["a", "b", "c"], 3).is_none());
    }

    #[test]
    fn stable_hash_is_pinned() {
        // Nodes and restarts must agree: this value must never change.
        assert_eq!(
            stable_hash(b"10.0.0.1:80", 0),
            stable_hash(b"10.0.0.1:80", 0)
        );
        assert_ne!(
            stable_hash(b"10.0.0.1:80", 0),
            stable_hash(b"10.0.0.1:81", 0)
        );
    }

    proptest! {
        #[test]
        fn pick_is_always_in_range(count in 1usize..50, hash in any::<u64>()) {
            let table = Maglev::build(&names(count, "p"), 251).unwrap();
            prop_assert!(table.pick(hash) < count);
        }
    }
}
