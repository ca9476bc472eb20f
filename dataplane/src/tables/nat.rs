//! SNAT port allocation. Each worker owns a disjoint slice of the node's SNAT port range, so allocation
//! never contends between workers.
//!
//! The allocator keeps no per-port state: a port is free for a backend exactly when conntrack has no live
//! flow with that reply key, so the caller tries candidates until conntrack accepts the reply key, and a
//! port becomes free again when its flow expires or is removed.

use std::ops::RangeInclusive;

/// The node-wide default, above Linux's default ephemeral range (32768–60999) and the NodePort range.
pub const DEFAULT_SNAT_PORTS: RangeInclusive<u16> = 61000..=65535;

/// How many candidate ports one new flow may try before the worker gives up.
pub const MAX_ATTEMPTS: usize = 64;

/// One worker's slice of the SNAT range and its rotating cursor.
#[derive(Clone, Debug)]
pub struct SnatPorts {
    first: u16,
    count: u16,
    cursor: u16,
}

impl SnatPorts {
    /// The slice of `range` that worker `worker` of `workers` owns. Slices are disjoint and cover the range.
    pub fn for_worker(range: RangeInclusive<u16>, worker: usize, workers: usize) -> Self {
        let (start, end) = (u32::from(*range.start()), u32::from(*range.end()));
        let total = end.saturating_sub(start) + u32::from(end >= start);
        let workers = workers.max(1) as u32;
        let worker = (worker as u32).min(workers - 1);
        let first = start + total * worker / workers;
        let last = start + total * (worker + 1) / workers;
        Self {
            first: first as u16,
            count: (last - first) as u16,
            cursor: 0,
        }
    }

    /// Up to [`MAX_ATTEMPTS`] candidate ports, continuing where the previous flow stopped so that
    /// recently freed ports are reused last (which keeps TIME_WAIT collisions on backends rare).
    pub fn candidates(&mut self) -> impl Iterator<Item = u16> + '_ {
        let attempts = usize::from(self.count).min(MAX_ATTEMPTS);
        (0..attempts).map(move |_| {
            let port = self.first + self.cursor;
            self.cursor = if self.cursor + 1 >= self.count {
                0
            } else {
                self.cursor + 1
            };
            port
        })
    }

    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn range(&self) -> RangeInclusive<u16> {
        self.first..=self.first.saturating_add(self.count.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_disjoint_and_cover_the_range() {
        for workers in 1..=7 {
            let mut seen = std::collections::BTreeSet::new();
            for worker in 0..workers {
                let slice = SnatPorts::for_worker(DEFAULT_SNAT_PORTS, worker, workers);
                for port in slice.range() {
                    assert!(seen.insert(port), "port {port} in two slices");
                }
            }
            assert_eq!(seen.len(), DEFAULT_SNAT_PORTS.len());
        }
    }

    #[test]
    fn candidates_rotate_and_wrap() {
        let mut ports = SnatPorts::for_worker(100..=103, 0, 1);
        let first: Vec<u16> = ports.candidates().collect();
        assert_eq!(first, vec![100, 101, 102, 103]);
        let mut ports = SnatPorts::for_worker(100..=199, 0, 1);
        assert_eq!(ports.candidates().next(), Some(100));
        assert_eq!(
            ports.candidates().next(),
            Some(101),
            "the cursor moves on between flows"
        );
    }

    #[test]
    fn empty_range_gives_no_candidates() {
        let (start, end) = (10, 9);
        let mut ports = SnatPorts::for_worker(start..=end, 0, 2);
        assert!(ports.is_empty());
        assert_eq!(ports.candidates().count(), 0);
    }
}
