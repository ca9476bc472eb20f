//! The UDP datagram view (RFC 768), including the zero-checksum rules of each IP version.
//!
//! The datagram is the first [`Packet::length`] bytes of the buffer; the checksum and its
//! pseudo-header cover exactly those.
//!
//! A checksum of `0` means "none" over IPv4 and is invalid over IPv6 (RFC 8200 §8.1), so a
//! computed `0` is transmitted as `0xffff`. Rewriters updating the checksum incrementally must
//! follow the same two rules: leave a `0` field alone over IPv4, and store [`transmitted`] of the
//! updated value.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum;

/// Length of the header.
pub const HEADER_LEN: usize = 8;
/// Offset of the checksum field, for callers that patch it in place.
pub const CHECKSUM_OFFSET: usize = 6;

const PROTOCOL: u8 = 17;

mod field {
    use core::ops::Range;

    pub const SOURCE_PORT: Range<usize> = 0..2;
    pub const DESTINATION_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = super::CHECKSUM_OFFSET..super::CHECKSUM_OFFSET + 2;
}

/// Why a UDP datagram was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("UDP datagram shorter than 8 bytes")]
    Truncated,
    #[error("UDP length below 8 or past the buffer")]
    BadLength,
}

/// The checksum to put on the wire for a computed (or incrementally updated) `value`: `0` is
/// reserved for "no checksum", so it becomes `0xffff`, its ones'-complement equal.
#[inline]
pub const fn transmitted(value: u16) -> u16 {
    if value == 0 {
        0xffff
    } else {
        value
    }
}

/// A read/write view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline]
fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a malformed datagram.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the length field against it.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    /// Checks everything the accessors rely on.
    #[inline]
    pub fn check(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let length = usize::from(self.length());
        if length < HEADER_LEN || length > len {
            return Err(Error::BadLength);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn source_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SOURCE_PORT.start)
    }

    #[inline]
    pub fn destination_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DESTINATION_PORT.start)
    }

    /// The length field: header plus data, in bytes.
    #[inline]
    pub fn length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH.start)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// The data, up to the length field.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.length())]
    }

    #[inline]
    fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.length())]
    }

    #[inline]
    fn sum_v4(&self, source: Ipv4Addr, destination: Ipv4Addr) -> u32 {
        let pseudo =
            checksum::pseudo_header_v4(source, destination, PROTOCOL, u32::from(self.length()));
        checksum::combine(pseudo, checksum::sum(self.datagram()))
    }

    #[inline]
    fn sum_v6(&self, source: &Ipv6Addr, destination: &Ipv6Addr) -> u32 {
        let pseudo =
            checksum::pseudo_header_v6(source, destination, PROTOCOL, u32::from(self.length()));
        checksum::combine(pseudo, checksum::sum(self.datagram()))
    }

    /// Whether the checksum is correct for an IPv4 pseudo-header; `0` (none) is accepted.
    #[inline]
    pub fn verify_checksum_v4(&self, source: Ipv4Addr, destination: Ipv4Addr) -> bool {
        self.checksum() == 0 || checksum::fold(self.sum_v4(source, destination)) == 0xffff
    }

    /// Whether the checksum is correct for an IPv6 pseudo-header; `0` is invalid over IPv6.
    #[inline]
    pub fn verify_checksum_v6(&self, source: &Ipv6Addr, destination: &Ipv6Addr) -> bool {
        self.checksum() != 0 && checksum::fold(self.sum_v6(source, destination)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn write_u16(&mut self, at: usize, value: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    #[inline]
    pub fn set_source_port(&mut self, value: u16) {
        self.write_u16(field::SOURCE_PORT.start, value);
    }

    #[inline]
    pub fn set_destination_port(&mut self, value: u16) {
        self.write_u16(field::DESTINATION_PORT.start, value);
    }

    /// Sets the length field. The caller keeps it within `8..=buffer.len()`.
    #[inline]
    pub fn set_length(&mut self, value: u16) {
        self.write_u16(field::LENGTH.start, value);
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        self.write_u16(field::CHECKSUM.start, value);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.length());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// Computes the checksum over an IPv4 pseudo-header (a computed `0` is stored as `0xffff`).
    #[inline]
    pub fn fill_checksum_v4(&mut self, source: Ipv4Addr, destination: Ipv4Addr) {
        self.set_checksum(0);
        let value = checksum::finish(self.sum_v4(source, destination));
        self.set_checksum(transmitted(value));
    }

    /// Computes the checksum over an IPv6 pseudo-header (a computed `0` is stored as `0xffff`).
    #[inline]
    pub fn fill_checksum_v6(&mut self, source: &Ipv6Addr, destination: &Ipv6Addr) {
        self.set_checksum(0);
        let value = checksum::finish(self.sum_v6(source, destination));
        self.set_checksum(transmitted(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{fixtures, ipv4, ipv6};
    use proptest::prelude::*;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    fn dns_query() -> &'static [u8] {
        &fixtures::DNS_QUERY[34..]
    }

    #[test]
    fn dns_query_getters() {
        let packet = Packet::new_checked(dns_query()).unwrap();
        assert_eq!(packet.source_port(), 53124);
        assert_eq!(packet.destination_port(), 53);
        assert_eq!(packet.length(), 62);
        assert_eq!(packet.checksum(), 0x0846);
        assert_eq!(packet.payload().len(), 54);
        // DNS header: id 0x4f2a, RD set, one question; then the name's first label.
        assert_eq!(&packet.payload()[..4], &[0x4f, 0x2a, 0x01, 0x00]);
        assert_eq!(&packet.payload()[12..23], b"\x0akubernetes");
        assert!(packet.verify_checksum_v4(POD, DNS));
        assert!(!packet.verify_checksum_v4(DNS, Ipv4Addr::new(10, 96, 0, 11)));
        let ip = ipv4::Packet::new_checked(&fixtures::DNS_QUERY[14..]).unwrap();
        assert_eq!(ip.payload(), packet.into_inner());
    }

    #[test]
    fn vlan_datagram() {
        let packet = Packet::new_checked(&fixtures::VLAN_UDP[38..]).unwrap();
        assert_eq!(packet.source_port(), 5000);
        assert_eq!(packet.destination_port(), 6000);
        assert_eq!(packet.payload(), b"ping");
        let (source, destination) = (
            Ipv4Addr::new(192, 168, 100, 2),
            Ipv4Addr::new(192, 168, 100, 1),
        );
        assert!(packet.verify_checksum_v4(source, destination));
    }

    #[test]
    fn ipv6_fragment_is_not_a_whole_datagram() {
        // The first fragment holds the UDP header; its length field (48) covers data in later
        // fragments, so a view over this fragment alone is rejected.
        let ip = ipv6::Packet::new_checked(&fixtures::IPV6_HBH_FRAG[14..]).unwrap();
        let upper = ip.upper_layer().unwrap();
        let bytes = &ip.into_inner()[upper.offset..];
        assert_eq!(Packet::new_checked(bytes).unwrap_err(), Error::BadLength);
        let packet = Packet::new_unchecked(bytes);
        assert_eq!(packet.length(), 48);
        assert_eq!(packet.destination_port(), 5353);
    }

    #[test]
    fn checksums_agree_with_etherparse() {
        let mut bytes = dns_query().to_vec();
        let source6: Ipv6Addr = "fd00:10:244:1::5".parse().unwrap();
        let destination6: Ipv6Addr = "fd00:10:96::a".parse().unwrap();
        for trailing in [0usize, 3] {
            // Trailing bytes past the length field must not count.
            bytes.resize(62 + trailing, 0xab);
            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
            packet.fill_checksum_v4(POD, DNS);
            assert!(packet.verify_checksum_v4(POD, DNS));
            let (header, _) = etherparse::UdpHeader::from_slice(&bytes).unwrap();
            let expected = header
                .calc_checksum_ipv4_raw(POD.octets(), DNS.octets(), &bytes[8..62])
                .unwrap();
            assert_eq!(header.checksum, expected);

            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
            packet.fill_checksum_v6(&source6, &destination6);
            assert!(packet.verify_checksum_v6(&source6, &destination6));
            let (header, _) = etherparse::UdpHeader::from_slice(&bytes).unwrap();
            let expected = header
                .calc_checksum_ipv6_raw(source6.octets(), destination6.octets(), &bytes[8..62])
                .unwrap();
            assert_eq!(header.checksum, expected);
        }
    }

    #[test]
    fn zero_checksum_rules() {
        let mut bytes = dns_query().to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_checksum(0);
        assert!(packet.verify_checksum_v4(POD, DNS));
        let (source, destination) = (Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
        assert!(!packet.verify_checksum_v6(&source, &destination));

        // Pick the last two payload bytes so the whole sum is -0: the computed checksum is 0
        // and must go on the wire as 0xffff, which then verifies.
        packet.fill_checksum_v4(POD, DNS);
        let computed = packet.checksum();
        let last = usize::from(packet.length()) - 2;
        let word = u16::from_be_bytes([bytes[last], bytes[last + 1]]);
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        let adjusted = checksum::fold(u32::from(word) + u32::from(computed));
        packet.payload_mut()[last - 8..].copy_from_slice(&adjusted.to_be_bytes());
        packet.fill_checksum_v4(POD, DNS);
        assert_eq!(packet.checksum(), 0xffff);
        assert!(packet.verify_checksum_v4(POD, DNS));
        let (header, _) = etherparse::UdpHeader::from_slice(&bytes).unwrap();
        let expected = header
            .calc_checksum_ipv4_raw(POD.octets(), DNS.octets(), &bytes[8..])
            .unwrap();
        assert_eq!(expected, 0xffff);

        assert_eq!(transmitted(0), 0xffff);
        assert_eq!(transmitted(0x1234), 0x1234);
        assert_eq!(transmitted(0xffff), 0xffff);
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = dns_query().to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_source_port(33333);
        packet.set_destination_port(5353);
        packet.set_length(12);
        packet.set_checksum(0x5555);
        assert_eq!(packet.source_port(), 33333);
        assert_eq!(packet.destination_port(), 5353);
        assert_eq!(packet.length(), 12);
        assert_eq!(packet.checksum(), 0x5555);
        assert_eq!(packet.payload().len(), 4);
        packet.payload_mut().copy_from_slice(b"abcd");
        assert_eq!(&bytes[8..12], b"abcd");
    }

    #[test]
    fn errors() {
        let bytes = dns_query();
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        for len in HEADER_LEN..bytes.len() {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                Error::BadLength
            );
        }
        let mut bad = bytes.to_vec();
        bad[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::BadLength);
        bad[4..6].copy_from_slice(&63u16.to_be_bytes());
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::BadLength);
        bad[4..6].copy_from_slice(&8u16.to_be_bytes());
        assert!(Packet::new_checked(&bad[..]).unwrap().payload().is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..64), fix in any::<bool>()) {
            if fix && bytes.len() >= 8 {
                let len = bytes.len().min(8 + usize::from(bytes[5]));
                bytes[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            }
            if let Ok(mut packet) = Packet::new_checked(&mut bytes[..]) {
                let (source6, destination6) = (Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
                let _ = (
                    packet.source_port(), packet.destination_port(), packet.length(),
                    packet.checksum(), packet.payload().len(),
                    packet.verify_checksum_v4(POD, DNS),
                    packet.verify_checksum_v6(&source6, &destination6),
                );
                packet.fill_checksum_v4(POD, DNS);
                prop_assert!(packet.verify_checksum_v4(POD, DNS));
                prop_assert_ne!(packet.checksum(), 0);
                packet.fill_checksum_v6(&source6, &destination6);
                prop_assert!(packet.verify_checksum_v6(&source6, &destination6));
                let _ = packet.payload_mut();
            }
        }

        /// A NAT rewrite done incrementally, following the module's rules, verifies and matches
        /// what a full recompute puts on the wire.
        #[test]
        fn nat_rewrite_matches_recompute(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            new_destination in any::<[u8; 4]>(),
            new_port in any::<u16>(),
        ) {
            let mut bytes = vec![0u8; 8];
            bytes.extend_from_slice(&payload);
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            packet.set_source_port(53124);
            packet.set_destination_port(53);
            packet.set_length((8 + payload.len()) as u16);
            packet.fill_checksum_v4(POD, DNS);
            let new_destination = Ipv4Addr::from(new_destination);
            let mut value = packet.checksum();
            value = checksum::update_address(value, DNS.into(), new_destination.into());
            value = checksum::update_u16(value, 53, new_port);
            packet.set_destination_port(new_port);
            packet.set_checksum(transmitted(value));
            prop_assert!(packet.verify_checksum_v4(POD, new_destination));
            let incremental = packet.checksum();
            packet.fill_checksum_v4(POD, new_destination);
            prop_assert_eq!(incremental, packet.checksum());
        }
    }
}
