//! The TCP segment view (RFC 9293): header fields, flags and the checksum over either pseudo-header.
//!
//! The view covers exactly the segment (the IP payload); the checksum and its pseudo-header length
//! cover the whole buffer. Options are left as bytes between 20 and [`Packet::header_len`].

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::BitOr;

use super::checksum;

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// Offset of the checksum field, for callers that patch it in place.
pub const CHECKSUM_OFFSET: usize = 16;

const PROTOCOL: u8 = 6;

mod field {
    use core::ops::Range;

    pub const SOURCE_PORT: Range<usize> = 0..2;
    pub const DESTINATION_PORT: Range<usize> = 2..4;
    pub const SEQUENCE: Range<usize> = 4..8;
    pub const ACKNOWLEDGEMENT: Range<usize> = 8..12;
    /// Data offset in 32-bit words (high nibble), reserved bits and the NS/AE bit.
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = super::CHECKSUM_OFFSET..super::CHECKSUM_OFFSET + 2;
    pub const URGENT: Range<usize> = 18..20;
}

/// Why a TCP segment was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("TCP segment shorter than 20 bytes")]
    Truncated,
    #[error("TCP data offset below 5 words or past the segment")]
    BadDataOffset,
}

/// The eight flag bits of byte 13.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    pub const FIN: Self = Self(0x01);
    pub const SYN: Self = Self(0x02);
    pub const RST: Self = Self(0x04);
    pub const PSH: Self = Self(0x08);
    pub const ACK: Self = Self(0x10);
    pub const URG: Self = Self(0x20);
    pub const ECE: Self = Self(0x40);
    pub const CWR: Self = Self(0x80);

    /// Whether every flag in `other` is set in `self`.
    #[inline]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Flags {
    type Output = Self;

    #[inline]
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// A read/write view of a TCP segment.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline]
fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

#[inline]
fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a malformed segment.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the length and the data offset.
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
        let header_len = self.header_len();
        if header_len < HEADER_LEN || header_len > len {
            return Err(Error::BadDataOffset);
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

    #[inline]
    pub fn sequence_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQUENCE.start)
    }

    #[inline]
    pub fn acknowledgement_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACKNOWLEDGEMENT.start)
    }

    /// Header length in bytes (data offset × 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    #[inline]
    pub fn flags(&self) -> Flags {
        Flags(self.buffer.as_ref()[field::FLAGS])
    }

    #[inline]
    pub fn window(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW.start)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    #[inline]
    pub fn urgent_pointer(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT.start)
    }

    /// The option bytes, empty for a 20-byte header.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The data after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// The segment length as the pseudo-header carries it.
    #[inline]
    fn segment_len(&self) -> u32 {
        self.buffer.as_ref().len() as u32
    }

    /// Whether the checksum is correct for an IPv4 pseudo-header.
    #[inline]
    pub fn verify_checksum_v4(&self, source: Ipv4Addr, destination: Ipv4Addr) -> bool {
        let pseudo = checksum::pseudo_header_v4(source, destination, PROTOCOL, self.segment_len());
        checksum::fold(checksum::combine(
            pseudo,
            checksum::sum(self.buffer.as_ref()),
        )) == 0xffff
    }

    /// Whether the checksum is correct for an IPv6 pseudo-header.
    #[inline]
    pub fn verify_checksum_v6(&self, source: &Ipv6Addr, destination: &Ipv6Addr) -> bool {
        let pseudo = checksum::pseudo_header_v6(source, destination, PROTOCOL, self.segment_len());
        checksum::fold(checksum::combine(
            pseudo,
            checksum::sum(self.buffer.as_ref()),
        )) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn write_u16(&mut self, at: usize, value: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    #[inline]
    fn write_u32(&mut self, at: usize, value: u32) {
        self.buffer.as_mut()[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    #[inline]
    pub fn set_source_port(&mut self, value: u16) {
        self.write_u16(field::SOURCE_PORT.start, value);
    }

    #[inline]
    pub fn set_destination_port(&mut self, value: u16) {
        self.write_u16(field::DESTINATION_PORT.start, value);
    }

    #[inline]
    pub fn set_sequence_number(&mut self, value: u32) {
        self.write_u32(field::SEQUENCE.start, value);
    }

    #[inline]
    pub fn set_acknowledgement_number(&mut self, value: u32) {
        self.write_u32(field::ACKNOWLEDGEMENT.start, value);
    }

    /// Sets the header length in bytes (a multiple of 4 in `20..=60`), keeping the low nibble.
    /// The caller keeps it within the buffer.
    #[inline]
    pub fn set_header_len(&mut self, bytes: usize) {
        debug_assert!(bytes & 3 == 0 && (HEADER_LEN..=60).contains(&bytes));
        let data = self.buffer.as_mut();
        data[field::DATA_OFFSET] = ((bytes / 4) as u8) << 4 | (data[field::DATA_OFFSET] & 0x0f);
    }

    #[inline]
    pub fn set_flags(&mut self, flags: Flags) {
        self.buffer.as_mut()[field::FLAGS] = flags.0;
    }

    #[inline]
    pub fn set_window(&mut self, value: u16) {
        self.write_u16(field::WINDOW.start, value);
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        self.write_u16(field::CHECKSUM.start, value);
    }

    #[inline]
    pub fn set_urgent_pointer(&mut self, value: u16) {
        self.write_u16(field::URGENT.start, value);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }

    /// Recomputes the checksum from scratch over an IPv4 pseudo-header.
    #[inline]
    pub fn fill_checksum_v4(&mut self, source: Ipv4Addr, destination: Ipv4Addr) {
        self.set_checksum(0);
        let pseudo = checksum::pseudo_header_v4(source, destination, PROTOCOL, self.segment_len());
        let sum = checksum::combine(pseudo, checksum::sum(self.buffer.as_ref()));
        self.set_checksum(checksum::finish(sum));
    }

    /// Recomputes the checksum from scratch over an IPv6 pseudo-header.
    #[inline]
    pub fn fill_checksum_v6(&mut self, source: &Ipv6Addr, destination: &Ipv6Addr) {
        self.set_checksum(0);
        let pseudo = checksum::pseudo_header_v6(source, destination, PROTOCOL, self.segment_len());
        let sum = checksum::combine(pseudo, checksum::sum(self.buffer.as_ref()));
        self.set_checksum(checksum::finish(sum));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{fixtures, ipv4, ipv6};
    use proptest::prelude::*;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

    #[test]
    fn syn_getters() {
        let bytes = &fixtures::TCP_SYN[34..];
        let packet = Packet::new_checked(bytes).unwrap();
        assert_eq!(packet.source_port(), 43210);
        assert_eq!(packet.destination_port(), 443);
        assert_eq!(packet.sequence_number(), 0x9a3c_51f2);
        assert_eq!(packet.acknowledgement_number(), 0);
        assert_eq!(packet.header_len(), 40);
        assert_eq!(packet.flags(), Flags::SYN);
        assert!(packet.flags().contains(Flags::SYN));
        assert!(!packet.flags().contains(Flags::SYN | Flags::ACK));
        assert_eq!(packet.window(), 64240);
        assert_eq!(packet.checksum(), 0xef16);
        assert_eq!(packet.urgent_pointer(), 0);
        assert_eq!(&packet.options()[..4], &[0x02, 0x04, 0x05, 0xb4]);
        assert!(packet.payload().is_empty());
        assert!(packet.verify_checksum_v4(POD, CLUSTER_IP));
        assert!(!packet.verify_checksum_v4(POD, Ipv4Addr::new(10, 96, 0, 2)));
        let ip = ipv4::Packet::new_checked(&fixtures::TCP_SYN[14..]).unwrap();
        assert_eq!(ip.payload(), bytes);
    }

    #[test]
    fn ipv6_syn() {
        let ip = ipv6::Packet::new_checked(&fixtures::IPV6_TCP_SYN[14..]).unwrap();
        let packet = Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(packet.source_port(), 51000);
        assert_eq!(packet.destination_port(), 80);
        assert_eq!(packet.flags(), Flags::SYN);
        assert!(packet.verify_checksum_v6(&ip.source(), &ip.destination()));
        assert!(!packet.verify_checksum_v6(&ip.destination(), &"fd00::9".parse().unwrap()));
    }

    #[test]
    fn checksums_agree_with_etherparse() {
        let mut bytes = fixtures::TCP_SYN[34..].to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n!"); // odd length
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_flags(Flags::PSH | Flags::ACK);
        packet.fill_checksum_v4(POD, CLUSTER_IP);
        assert!(packet.verify_checksum_v4(POD, CLUSTER_IP));
        let (header, payload) = etherparse::TcpHeader::from_slice(&bytes).unwrap();
        let expected = header
            .calc_checksum_ipv4_raw(POD.octets(), CLUSTER_IP.octets(), payload)
            .unwrap();
        assert_eq!(header.checksum, expected);

        let source: Ipv6Addr = "fd00:10:244:1::5".parse().unwrap();
        let destination: Ipv6Addr = "fd00:10:96::1".parse().unwrap();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.fill_checksum_v6(&source, &destination);
        assert!(packet.verify_checksum_v6(&source, &destination));
        let (header, payload) = etherparse::TcpHeader::from_slice(&bytes).unwrap();
        let expected = header
            .calc_checksum_ipv6_raw(source.octets(), destination.octets(), payload)
            .unwrap();
        assert_eq!(header.checksum, expected);
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = fixtures::TCP_SYN[34..].to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_source_port(1);
        packet.set_destination_port(65535);
        packet.set_sequence_number(0xffff_fffe);
        packet.set_acknowledgement_number(0x0102_0304);
        packet.set_flags(Flags::RST | Flags::ACK);
        packet.set_window(0);
        packet.set_checksum(0xbeef);
        packet.set_urgent_pointer(7);
        packet.set_header_len(24);
        assert_eq!(packet.source_port(), 1);
        assert_eq!(packet.destination_port(), 65535);
        assert_eq!(packet.sequence_number(), 0xffff_fffe);
        assert_eq!(packet.acknowledgement_number(), 0x0102_0304);
        assert_eq!(packet.flags(), Flags(0x14));
        assert!(packet.flags().contains(Flags::RST));
        assert_eq!(packet.window(), 0);
        assert_eq!(packet.checksum(), 0xbeef);
        assert_eq!(packet.urgent_pointer(), 7);
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.payload().len(), 16);
        packet.payload_mut()[0] = 0xaa;
        assert_eq!(bytes[24], 0xaa);
        let flags = [
            Flags::FIN,
            Flags::SYN,
            Flags::RST,
            Flags::PSH,
            Flags::ACK,
            Flags::URG,
            Flags::ECE,
            Flags::CWR,
        ];
        let all = flags.iter().fold(Flags::default(), |all, &flag| all | flag);
        assert_eq!(all, Flags(0xff));
    }

    #[test]
    fn errors() {
        let bytes = &fixtures::TCP_SYN[34..];
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        // Data offset 10 needs 40 bytes.
        for len in HEADER_LEN..40 {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                Error::BadDataOffset
            );
        }
        let mut bad = bytes.to_vec();
        for offset in 0..5u8 {
            bad[12] = offset << 4;
            assert_eq!(
                Packet::new_checked(&bad[..]).unwrap_err(),
                Error::BadDataOffset
            );
        }
        bad[12] = 0x50;
        let packet = Packet::new_checked(&bad[..20]).unwrap();
        assert!(packet.options().is_empty() && packet.payload().is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(mut packet) = Packet::new_checked(&mut bytes[..]) {
                let _ = (
                    packet.source_port(), packet.destination_port(), packet.sequence_number(),
                    packet.acknowledgement_number(), packet.header_len(), packet.flags(),
                    packet.window(), packet.checksum(), packet.urgent_pointer(),
                    packet.options().len(), packet.payload().len(),
                    packet.verify_checksum_v4(POD, CLUSTER_IP),
                    packet.verify_checksum_v6(&Ipv6Addr::LOCALHOST, &Ipv6Addr::UNSPECIFIED),
                );
                packet.fill_checksum_v4(POD, CLUSTER_IP);
                prop_assert!(packet.verify_checksum_v4(POD, CLUSTER_IP));
                packet.fill_checksum_v6(&Ipv6Addr::LOCALHOST, &Ipv6Addr::UNSPECIFIED);
                prop_assert!(packet.verify_checksum_v6(&Ipv6Addr::LOCALHOST, &Ipv6Addr::UNSPECIFIED));
                let _ = packet.payload_mut();
            }
        }

        /// DNAT and SNAT of a TCP segment: addresses change in the pseudo-header, ports in the
        /// segment; the incremental update must equal a full recompute.
        #[test]
        fn nat_rewrite_matches_recompute(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            source in any::<[u8; 4]>(),
            destination in any::<[u8; 4]>(),
            new_source in any::<[u8; 4]>(),
            new_destination in any::<[u8; 4]>(),
            new_source_port in any::<u16>(),
            new_destination_port in any::<u16>(),
            v6 in any::<[[u8; 16]; 4]>(),
        ) {
            let mut bytes = fixtures::TCP_SYN[34..].to_vec();
            bytes.extend_from_slice(&payload);
            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();

            // IPv4.
            let (source, destination) = (Ipv4Addr::from(source), Ipv4Addr::from(destination));
            let (new_source, new_destination) = (Ipv4Addr::from(new_source), Ipv4Addr::from(new_destination));
            packet.fill_checksum_v4(source, destination);
            let mut value = packet.checksum();
            value = checksum::update_address(value, source.into(), new_source.into());
            value = checksum::update_address(value, destination.into(), new_destination.into());
            value = checksum::update_u16(value, packet.source_port(), new_source_port);
            value = checksum::update_u16(value, packet.destination_port(), new_destination_port);
            packet.set_source_port(new_source_port);
            packet.set_destination_port(new_destination_port);
            packet.fill_checksum_v4(new_source, new_destination);
            prop_assert_eq!(value, packet.checksum());

            // IPv6.
            let [source, destination, new_source, new_destination] = v6.map(Ipv6Addr::from);
            packet.fill_checksum_v6(&source, &destination);
            let mut value = packet.checksum();
            value = checksum::update_bytes(value, &source.octets(), &new_source.octets());
            value = checksum::update_address(value, destination.into(), new_destination.into());
            value = checksum::update_u32(
                value,
                u32::from(packet.source_port()) << 16 | u32::from(packet.destination_port()),
                u32::from(new_destination_port) << 16 | u32::from(new_source_port),
            );
            packet.set_source_port(new_destination_port);
            packet.set_destination_port(new_source_port);
            packet.fill_checksum_v6(&new_source, &new_destination);
            prop_assert_eq!(value, packet.checksum());
        }
    }
}
