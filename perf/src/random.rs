//! Seeded randomness for the generator and the bench: a small PRNG and a Zipf sampler.
//!
//! Both are written here rather than taken from `rand`/`rand_distr` so that a seed produces the same
//! pcap bytes and the same bench workload forever, whatever those crates change between versions.
//! Statistical quality only has to be good enough to spread flows over services and ports.

/// SplitMix64 (Steele, Lea, Flood 2014): one add and a 64-bit finalizer per draw, and every seed,
/// including zero, gives a full-period stream.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream for one purpose (flows, packet order, ...), so that changing how many
    /// draws one purpose makes does not shift the draws of another.
    pub fn fork(&self, purpose: u64) -> Self {
        Self::new(finalize(self.state ^ finalize(purpose.wrapping_add(1))))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        finalize(self.state)
    }

    /// Uniform in `0..bound` (multiply-shift: no modulo bias worth speaking of at these bounds).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

fn finalize(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// Zipf over ranks `0..n`: rank `k` is drawn with probability proportional to `1 / (k + 1)^exponent`.
///
/// Sampling inverts a precomputed cumulative table with a binary search. The table costs 8 bytes per
/// rank (8 MB at a million flows), which is nothing next to the tables being measured, and it is exact
/// for every exponent including 0 (uniform).
#[derive(Clone, Debug)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// `n` must be at least 1.
    pub fn new(n: usize, exponent: f64) -> Self {
        assert!(n > 0, "Zipf needs at least one rank");
        let mut cumulative = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 0..n {
            total += ((rank + 1) as f64).powf(-exponent);
            cumulative.push(total);
        }
        for value in &mut cumulative {
            *value /= total;
        }
        Self { cumulative }
    }

    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.cumulative.len() - 1)
    }

    /// The share of draws that land on the `top` most popular ranks.
    pub fn head_share(&self, top: usize) -> f64 {
        match top {
            0 => 0.0,
            _ => self.cumulative[top.min(self.cumulative.len()) - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_forks_differ() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let root = Rng::new(7);
        assert_ne!(root.fork(1).next_u64(), root.fork(2).next_u64());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = rng.below(10);
            assert!(v < 10);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn zipf_prefers_low_ranks_by_the_expected_ratio() {
        let zipf = Zipf::new(1000, 1.0);
        let mut rng = Rng::new(3);
        let mut counts = vec![0u32; 1000];
        let draws = 200_000;
        for _ in 0..draws {
            counts[zipf.sample(&mut rng)] += 1;
        }
        // With exponent 1, rank 0 is drawn twice as often as rank 1 and ten times as often as rank 9.
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((ratio - 2.0).abs() < 0.15, "rank0/rank1 = {ratio}");
        let ratio = f64::from(counts[0]) / f64::from(counts[9]);
        assert!((ratio - 10.0).abs() < 1.5, "rank0/rank9 = {ratio}");
        let expected_head = zipf.head_share(10);
        let head: u32 = counts[..10].iter().sum();
        assert!((f64::from(head) / f64::from(draws) - expected_head).abs() < 0.01);
    }

    #[test]
    fn zipf_exponent_zero_is_uniform() {
        let zipf = Zipf::new(4, 0.0);
        assert!((zipf.head_share(2) - 0.5).abs() < 1e-12);
        let mut rng = Rng::new(9);
        assert!((0..100).all(|_| zipf.sample(&mut rng) < 4));
    }
}
