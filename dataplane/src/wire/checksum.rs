//! The internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are carried as `u32` values that are congruent, modulo `0xffff`, to the ones'-complement sum
//! of the covered 16-bit big-endian words. They can be [`combine`]d in any order and are folded to
//! 16 bits only at the end ([`fold`], [`finish`]).
//!
//! # Positive and negative zero
//!
//! In ones'-complement arithmetic `0x0000` (+0) and `0xffff` (-0) are the same number. The functions
//! here pick representatives consistently:
//!
//! - [`sum`] of data that is not all zero folds to a value in `1..=0xffff`, never to `0`, so
//!   [`finish`] of such data lies in `0..=0xfffe`: it never yields `0xffff`.
//! - The `update_*` functions use RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`, with end-around-carry
//!   addition. When `HC` is a correct checksum of data that is not all zero (so `HC != 0xffff`) and
//!   the data after the change is not all zero either, the result is **exactly** what a full
//!   recompute with [`finish`] gives: both are the unique representative in `0..=0xfffe`.
//! - The one remaining difference: when `HC == 0xffff` on input (only possible for all-zero data,
//!   or a UDP checksum that was transmitted as `0xffff` in place of a computed `0`), and the new data
//!   sums to -0, the update yields `0xffff` where a recompute yields `0x0000`. The two are equal in
//!   ones'-complement and both verify; UDP transmits `0xffff` for a computed zero anyway.
//!
//! Callers updating a UDP checksum must skip the update when the field is `0` (IPv4 "no checksum")
//! and store `0xffff` if the update yields `0`; see [`super::udp`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Folds a 64-bit accumulator to 32 bits, keeping it congruent modulo `0xffff`.
#[inline]
fn fold64(mut accumulator: u64) -> u32 {
    // Two rounds take any u64 below 2^33; a third makes the result fit in 32 bits in every case.
    accumulator = (accumulator & 0xffff_ffff) + (accumulator >> 32);
    accumulator = (accumulator & 0xffff_ffff) + (accumulator >> 32);
    accumulator as u32
}

/// The ones'-complement sum of `data` as big-endian 16-bit words, an odd trailing byte padded with
/// zero on the right, as a partial sum for [`combine`], [`fold`] and [`finish`]. It is zero only if
/// `data` is all zero.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    // Two facts make this fast (RFC 1071 §2):
    // - Adding 32-bit words is the same as adding their two 16-bit halves, since 2^16 ≡ 1
    //   (mod 0xffff). Each 8-byte chunk adds two halves of at most 2^32 - 1 to a u64, which cannot
    //   overflow below 2^31 chunks (16 GiB), far beyond any packet. With no carry chain between
    //   chunks, the compiler vectorises the loop.
    // - The sum is byte-order independent: summing native-endian words and swapping the folded
    //   result gives the big-endian sum, so no per-word byte swap is needed.
    let mut accumulator: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        accumulator += (word >> 32) + (word & 0xffff_ffff);
    }
    let mut pairs = chunks.remainder().chunks_exact(2);
    for pair in &mut pairs {
        accumulator += u64::from(u16::from_ne_bytes([pair[0], pair[1]]));
    }
    if let [last] = pairs.remainder() {
        accumulator += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    let folded = fold(fold64(accumulator));
    let folded = if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    };
    u32::from(folded)
}

/// Folds the carries of `sum` into 16 bits. Non-zero sums fold to `1..=0xffff`.
#[inline]
pub fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The value to store in a checksum field covering `sum`: `!fold(sum)`.
#[inline]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// The ones'-complement sum of two partial sums.
#[inline]
pub fn combine(a: u32, b: u32) -> u32 {
    let (total, carry) = a.overflowing_add(b);
    // With a carry, `total <= 2^32 - 2`, so adding it back cannot overflow.
    total + u32::from(carry)
}

/// Sum of a 32-bit value as two 16-bit words, without folding.
#[inline]
fn sum_u32(value: u32) -> u32 {
    (value >> 16) + (value & 0xffff)
}

/// The partial sum of the IPv4 pseudo-header (RFC 793 §3.1, RFC 768) for the upper-layer checksum.
/// `length` is the upper-layer length (header plus data) in bytes.
#[inline]
pub fn pseudo_header_v4(source: Ipv4Addr, destination: Ipv4Addr, protocol: u8, length: u32) -> u32 {
    sum_u32(source.to_bits())
        + sum_u32(destination.to_bits())
        + u32::from(protocol)
        + sum_u32(length)
}

/// The partial sum of the IPv6 pseudo-header (RFC 8200 §8.1) for the upper-layer checksum.
/// `length` is the upper-layer packet length in bytes.
#[inline]
pub fn pseudo_header_v6(
    source: &Ipv6Addr,
    destination: &Ipv6Addr,
    next_header: u8,
    length: u32,
) -> u32 {
    let addresses = u64::from(sum(&source.octets())) + u64::from(sum(&destination.octets()));
    combine(fold64(addresses), u32::from(next_header) + sum_u32(length))
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word covered by `checksum` changes from `old` to
/// `new`. See the module docs for how this agrees with a full recompute.
#[inline]
pub fn update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    finish(u32::from(!checksum) + u32::from(!old) + u32::from(new))
}

/// [`update_u16`] for an aligned 32-bit field (two consecutive 16-bit words).
#[inline]
pub fn update_u32(checksum: u16, old: u32, new: u32) -> u16 {
    finish(u32::from(!checksum) + sum_u32(!old) + sum_u32(new))
}

/// [`update_u16`] for a run of 16-bit-aligned bytes (an address) changing from `old` to `new`.
/// The two slices must have the same, even length.
#[inline]
pub fn update_bytes(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    debug_assert_eq!(old.len(), new.len(), "update_bytes: lengths differ");
    debug_assert_eq!(old.len() % 2, 0, "update_bytes: odd length");
    let mut accumulator = u64::from(!checksum);
    for (old, new) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        accumulator += u64::from(!u16::from_be_bytes([old[0], old[1]]));
        accumulator += u64::from(u16::from_be_bytes([new[0], new[1]]));
    }
    finish(fold64(accumulator))
}

/// [`update_bytes`] for an address rewrite. Callers never mix families (a NAT rewrite keeps the
/// family); a mixed pair is a bug, caught by a debug assertion, and leaves `checksum` unchanged in
/// release builds.
#[inline]
pub fn update_address(checksum: u16, old: IpAddr, new: IpAddr) -> u16 {
    match (old, new) {
        (IpAddr::V4(old), IpAddr::V4(new)) => update_u32(checksum, old.to_bits(), new.to_bits()),
        (IpAddr::V6(old), IpAddr::V6(new)) => update_bytes(checksum, &old.octets(), &new.octets()),
        _ => {
            debug_assert!(false, "update_address: mixed address families");
            checksum
        }
    }
}

/// Several RFC 1624 word changes summed once, then applied to every checksum that covers them: a NAT
/// rewrite changes the addresses once and applies them to the IPv4 header checksum and (with the
/// ports) to the L4 checksum, instead of updating each checksum word by word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// One 16-bit word changes from `old` to `new`.
    #[inline]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// An aligned 32-bit field changes.
    #[inline]
    pub fn double_word(&mut self, old: u32, new: u32) {
        self.0 += u64::from(sum_u32(!old)) + u64::from(sum_u32(new));
    }

    /// An address changes; both must be of one family (a NAT rewrite keeps the family).
    #[inline]
    pub fn address(&mut self, old: IpAddr, new: IpAddr) {
        match (old, new) {
            (IpAddr::V4(old), IpAddr::V4(new)) => self.double_word(old.to_bits(), new.to_bits()),
            (IpAddr::V6(old), IpAddr::V6(new)) => {
                let (old, new) = (old.to_bits(), new.to_bits());
                for shift in (0..128).step_by(32) {
                    self.double_word((old >> shift) as u32, (new >> shift) as u32);
                }
            }
            _ => debug_assert!(false, "Delta::address: mixed address families"),
        }
    }

    /// The checksum after all the changes, by RFC 1624 eqn. 3 applied once.
    #[inline]
    pub fn apply(&self, checksum: u16) -> u16 {
        finish(fold64(u64::from(!checksum) + self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook definition: 16-bit words, end-around carry after every addition.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut total: u32 = 0;
        for pair in data.chunks(2) {
            let word = u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
            total += word;
            if total > 0xffff {
                total -= 0xffff;
            }
        }
        total as u16
    }

    fn recompute(data: &[u8], offset: usize) -> u16 {
        let mut copy = data.to_vec();
        copy[offset..offset + 2].copy_from_slice(&[0, 0]);
        finish(sum(&copy))
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 (before complement).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(finish(sum(&data)), !0xddf2);
    }

    #[test]
    fn odd_length_pads_right() {
        assert_eq!(fold(sum(&[0xab])), 0xab00);
        assert_eq!(fold(sum(&[0x12, 0x34, 0xab])), 0x12 * 256 + 0x34 + 0xab00);
    }

    #[test]
    fn zero_and_negative_zero() {
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0; 64]), 0);
        assert_eq!(finish(0), 0xffff);
        // Non-zero data that sums to -0 folds to 0xffff, so the checksum is 0x0000.
        assert_eq!(fold(sum(&[0xff, 0xff])), 0xffff);
        assert_eq!(fold(sum(&[0x80, 0x00, 0x7f, 0xff])), 0xffff);
        assert_eq!(finish(sum(&[0xff, 0xff, 0xff, 0xff])), 0);
    }

    #[test]
    fn sixty_four_kib_of_ones() {
        let data = vec![0xff; 65536];
        assert_eq!(fold(sum(&data)), 0xffff);
        let data = vec![0xfe; 65535];
        assert_eq!(fold(sum(&data)), reference_sum(&data));
    }

    #[test]
    fn combine_wraps_carry() {
        assert_eq!(combine(u32::MAX, 1), 1);
        assert_eq!(combine(u32::MAX, u32::MAX), u32::MAX);
        assert_eq!(combine(0xffff_0000, 0x0001_0000), 1);
    }

    #[test]
    fn pseudo_headers_match_bytes() {
        let source = Ipv4Addr::new(192, 168, 1, 10);
        let destination = Ipv4Addr::new(10, 96, 0, 1);
        let bytes = [192, 168, 1, 10, 10, 96, 0, 1, 0, 6, 0, 40];
        assert_eq!(
            fold(pseudo_header_v4(source, destination, 6, 40)),
            fold(sum(&bytes))
        );

        let source: Ipv6Addr = "fd00::1".parse().unwrap();
        let destination: Ipv6Addr = "fd00:10:96::a".parse().unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&source.octets());
        bytes.extend_from_slice(&destination.octets());
        bytes.extend_from_slice(&70_000u32.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 17]);
        assert_eq!(
            fold(pseudo_header_v6(&source, &destination, 17, 70_000)),
            fold(sum(&bytes))
        );
    }

    #[test]
    fn rfc1624_negative_zero_example() {
        // RFC 1624 §4: a header summing to 0xcd7a whose word 0x5555 becomes 0x3285. Eqn. 3 gives
        // 0x0000, the same as a full recompute.
        let checksum = finish(0xcd7a + 0x5555);
        assert_eq!(checksum, 0xdd2f);
        assert_eq!(update_u16(checksum, 0x5555, 0x3285), 0x0000);
        assert_eq!(finish(0xcd7a + 0x3285), 0x0000);
    }

    #[test]
    #[should_panic(expected = "mixed address families")]
    #[cfg(debug_assertions)]
    fn mixed_families_are_a_bug() {
        update_address(
            0x1234,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        );
    }

    /// Whether `data` has a non-zero byte outside the checksum field at `offset`.
    fn covers_nonzero(data: &[u8], offset: usize) -> bool {
        data.iter()
            .enumerate()
            .any(|(i, &b)| b != 0 && !(offset..offset + 2).contains(&i))
    }

    fn nonzero_data() -> impl Strategy<Value = Vec<u8>> {
        // At least 40 bytes so that 16-byte fields fit; never all zero (see the module docs).
        proptest::collection::vec(any::<u8>(), 40..300)
            .prop_filter("not all zero", |data| data.iter().any(|&b| b != 0))
    }

    proptest! {
        /// Summing changes in a Delta and applying it once equals updating word by word and equals a
        /// full recompute, for an IPv4-pseudo-header-shaped buffer whose addresses and ports change.
        #[test]
        fn delta_equals_sequential_updates_and_full_recompute(
            mut data in proptest::collection::vec(any::<u8>(), 12..200),
            source in any::<[u8; 4]>(),
            destination in any::<[u8; 4]>(),
            ports in any::<[u8; 4]>(),
        ) {
            if data.len() % 2 == 1 { data.push(0); }
            prop_assume!(data.iter().any(|&b| b != 0));
            let before = finish(sum(&data));
            let mut changed = data.clone();
            changed[0..4].copy_from_slice(&source);
            changed[4..8].copy_from_slice(&destination);
            changed[8..12].copy_from_slice(&ports);
            prop_assume!(changed.iter().any(|&b| b != 0));
            let word = |bytes: &[u8], at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
            let mut delta = Delta::default();
            delta.address(
                IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
                IpAddr::V4(Ipv4Addr::from(source)),
            );
            delta.double_word(
                u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
                u32::from_be_bytes(destination),
            );
            delta.word(word(&data, 8), word(&changed, 8));
            delta.word(word(&data, 10), word(&changed, 10));
            let mut sequential = before;
            for at in (0..12).step_by(2) {
                sequential = update_u16(sequential, word(&data, at), word(&changed, at));
            }
            prop_assert_eq!(delta.apply(before), sequential);
            prop_assert_eq!(delta.apply(before), finish(sum(&changed)));
        }
    }

    proptest! {
        #[test]
        fn sum_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            prop_assert_eq!(fold(sum(&data)), reference_sum(&data));
        }

        #[test]
        fn sum_is_split_invariant(data in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..300) {
            let cut = (cut * 2).min(data.len() & !1);
            let (a, b) = data.split_at(cut);
            prop_assert_eq!(fold(combine(sum(a), sum(b))), fold(sum(&data)));
        }

        #[test]
        fn update_u16_matches_recompute(mut data in nonzero_data(), field in 0usize..19, new in any::<u16>()) {
            // The checksum lives at bytes 0..2, the changed word at an even offset after it.
            let offset = 2 + field * 2;
            prop_assume!(covers_nonzero(&data, 0));
            let checksum = recompute(&data, 0);
            let old = u16::from_be_bytes([data[offset], data[offset + 1]]);
            data[offset..offset + 2].copy_from_slice(&new.to_be_bytes());
            prop_assume!(covers_nonzero(&data, 0));
            prop_assert_eq!(update_u16(checksum, old, new), recompute(&data, 0));
        }

        #[test]
        fn update_u32_matches_recompute(mut data in nonzero_data(), field in 0usize..9, new in any::<u32>()) {
            let offset = 4 + field * 4;
            prop_assume!(covers_nonzero(&data, 2));
            let checksum = recompute(&data, 2);
            let old = u32::from_be_bytes([data[offset], data[offset + 1], data[offset + 2], data[offset + 3]]);
            data[offset..offset + 4].copy_from_slice(&new.to_be_bytes());
            prop_assume!(covers_nonzero(&data, 2));
            prop_assert_eq!(update_u32(checksum, old, new), recompute(&data, 2));
        }

        #[test]
        fn update_bytes_matches_recompute(mut data in nonzero_data(), new in any::<[u8; 16]>()) {
            prop_assume!(covers_nonzero(&data, 0));
            let checksum = recompute(&data, 0);
            let old: [u8; 16] = data[8..24].try_into().unwrap();
            data[8..24].copy_from_slice(&new);
            prop_assume!(covers_nonzero(&data, 0));
            prop_assert_eq!(update_bytes(checksum, &old, &new), recompute(&data, 0));
        }

        #[test]
        fn update_address_matches_recompute(
            mut data in nonzero_data(),
            v4 in any::<bool>(),
            new4 in any::<[u8; 4]>(),
            new6 in any::<[u8; 16]>(),
        ) {
            prop_assume!(covers_nonzero(&data, 0));
            let checksum = recompute(&data, 0);
            let (old, new, len) = if v4 {
                let old: [u8; 4] = data[4..8].try_into().unwrap();
                (IpAddr::from(old), IpAddr::from(new4), 4)
            } else {
                let old: [u8; 16] = data[4..20].try_into().unwrap();
                (IpAddr::from(old), IpAddr::from(new6), 16)
            };
            match new {
                IpAddr::V4(a) => data[4..4 + len].copy_from_slice(&a.octets()),
                IpAddr::V6(a) => data[4..4 + len].copy_from_slice(&a.octets()),
            }
            prop_assume!(covers_nonzero(&data, 0));
            prop_assert_eq!(update_address(checksum, old, new), recompute(&data, 0));
        }

        #[test]
        fn update_from_negative_zero_is_equivalent(new in 1u16..) {
            // Data [checksum, 0xffff] sums to -0: the checksum is 0x0000. Changing the word to any
            // non-zero `new` must match a recompute exactly.
            let checksum = finish(sum(&[0, 0, 0xff, 0xff]));
            prop_assert_eq!(checksum, 0);
            prop_assert_eq!(update_u16(checksum, 0xffff, new), finish(sum(&new.to_be_bytes())));
        }
    }
}
