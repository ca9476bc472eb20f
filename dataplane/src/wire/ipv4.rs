//! The IPv4 header view (RFC 791) and a builder for the plain 20-byte header kxdp emits.
//!
//! The buffer may extend past the total length (Ethernet pads short frames to 60 bytes);
//! [`Packet::payload`] stops at the total length.

use std::net::Ipv4Addr;

use super::checksum;

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

mod field {
    use core::ops::Range;

    /// Version (high nibble) and IHL (low nibble, in 32-bit words).
    pub const VERSION_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const IDENTIFICATION: Range<usize> = 4..6;
    /// Reserved, DF and MF bits, then the 13-bit fragment offset in 8-byte units.
    pub const FLAGS_FRAGMENT: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SOURCE: Range<usize> = 12..16;
    pub const DESTINATION: Range<usize> = 16..20;
    pub const OPTIONS_START: usize = 20;
}

const DONT_FRAGMENT: u16 = 0x4000;
const MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET: u16 = 0x1fff;

/// Why an IPv4 packet was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("IPv4 packet shorter than 20 bytes")]
    Truncated,
    #[error("IP version is not 4")]
    BadVersion,
    #[error("IPv4 header length below 20 bytes or past the buffer")]
    BadHeaderLength,
    #[error("IPv4 total length shorter than the header or past the buffer")]
    BadTotalLength,
}

/// A read/write view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline]
fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

#[inline]
fn read_address(data: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(data[at], data[at + 1], data[at + 2], data[at + 3])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a malformed packet.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the version, header length and total length.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    /// Checks everything the accessors rely on.
    #[inline]
    pub fn check(&self) -> Result<(), Error> {
        let data = self.buffer.as_ref();
        if data.len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::BadVersion);
        }
        let header_len = self.header_len();
        if header_len < MIN_HEADER_LEN || header_len > data.len() {
            return Err(Error::BadHeaderLength);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len || total_len > data.len() {
            return Err(Error::BadTotalLength);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VERSION_IHL] & 0x0f) * 4
    }

    /// The DSCP (high six bits) and ECN (low two bits) byte.
    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TOTAL_LEN.start)
    }

    #[inline]
    pub fn identification(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENTIFICATION.start)
    }

    #[inline]
    fn flags_fragment(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAGMENT.start)
    }

    #[inline]
    pub fn dont_fragment(&self) -> bool {
        self.flags_fragment() & DONT_FRAGMENT != 0
    }

    #[inline]
    pub fn more_fragments(&self) -> bool {
        self.flags_fragment() & MORE_FRAGMENTS != 0
    }

    /// The fragment offset in bytes (the field is in 8-byte units).
    #[inline]
    pub fn fragment_offset(&self) -> u16 {
        (self.flags_fragment() & FRAGMENT_OFFSET) * 8
    }

    /// Whether this is any fragment of a larger datagram, the first included.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_fragment() & (MORE_FRAGMENTS | FRAGMENT_OFFSET) != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    #[inline]
    pub fn header_checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    #[inline]
    pub fn source(&self) -> Ipv4Addr {
        read_address(self.buffer.as_ref(), field::SOURCE.start)
    }

    #[inline]
    pub fn destination(&self) -> Ipv4Addr {
        read_address(self.buffer.as_ref(), field::DESTINATION.start)
    }

    /// The options, empty for a 20-byte header.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS_START..self.header_len()]
    }

    /// Whether the header checksum is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        let header = &self.buffer.as_ref()[..self.header_len()];
        checksum::fold(checksum::sum(header)) == 0xffff
    }

    /// The bytes after the header, up to the total length (trailing padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn write_u16(&mut self, at: usize, value: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    #[inline]
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    /// Sets the total length. The caller keeps it within `header_len()..=buffer.len()`.
    #[inline]
    pub fn set_total_len(&mut self, value: u16) {
        self.write_u16(field::TOTAL_LEN.start, value);
    }

    #[inline]
    pub fn set_identification(&mut self, value: u16) {
        self.write_u16(field::IDENTIFICATION.start, value);
    }

    /// Sets DF, MF and the fragment offset in bytes (a multiple of 8; the low bits are dropped).
    #[inline]
    pub fn set_flags_and_fragment_offset(
        &mut self,
        dont_fragment: bool,
        more: bool,
        offset_bytes: u16,
    ) {
        debug_assert_eq!(offset_bytes % 8, 0, "fragment offset not a multiple of 8");
        let mut value = offset_bytes / 8;
        if dont_fragment {
            value |= DONT_FRAGMENT;
        }
        if more {
            value |= MORE_FRAGMENTS;
        }
        self.write_u16(field::FLAGS_FRAGMENT.start, value);
    }

    #[inline]
    pub fn set_ttl(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    #[inline]
    pub fn set_protocol(&mut self, value: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = value;
    }

    #[inline]
    pub fn set_header_checksum(&mut self, value: u16) {
        self.write_u16(field::CHECKSUM.start, value);
    }

    #[inline]
    pub fn set_source(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&address.octets());
    }

    #[inline]
    pub fn set_destination(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&address.octets());
    }

    /// Recomputes the header checksum from scratch.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_header_checksum(0);
        let header_len = self.header_len();
        let value = checksum::finish(checksum::sum(&self.buffer.as_ref()[..header_len]));
        self.set_header_checksum(value);
    }

    /// Lowers the TTL by one, updating the header checksum incrementally. Returns false and changes
    /// nothing if the TTL is 0 or 1: the packet must not be forwarded.
    #[inline]
    pub fn decrement_ttl(&mut self) -> bool {
        let ttl = self.ttl();
        if ttl <= 1 {
            return false;
        }
        // TTL is the high byte of the 16-bit word it shares with the protocol.
        let protocol = u16::from(self.protocol());
        let old = u16::from(ttl) << 8 | protocol;
        let new = u16::from(ttl - 1) << 8 | protocol;
        let updated = checksum::update_u16(self.header_checksum(), old, new);
        self.set_ttl(ttl - 1);
        self.set_header_checksum(updated);
        true
    }

    /// The bytes after the header, up to the total length.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        &mut self.buffer.as_mut()[range]
    }
}

/// The fields of a plain IPv4 header, for building packets kxdp originates (rejects, ICMP errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    /// Length of what follows the header; the total length is this plus 20.
    pub payload_len: u16,
}

impl Header {
    /// Writes a 20-byte header (version 4, IHL 5, DSCP 0, DF, id 0, checksum filled) to the
    /// start of `buffer` and returns 20. Callers guarantee `buffer` holds at least 20 bytes.
    #[inline]
    pub fn emit(&self, buffer: &mut [u8]) -> usize {
        debug_assert!(buffer.len() >= MIN_HEADER_LEN, "buffer too short for IPv4");
        debug_assert!(usize::from(self.payload_len) <= usize::from(u16::MAX) - MIN_HEADER_LEN);
        let header = &mut buffer[..MIN_HEADER_LEN];
        let total_len = self.payload_len.wrapping_add(MIN_HEADER_LEN as u16);
        header[field::VERSION_IHL] = 0x45;
        header[field::DSCP_ECN] = 0;
        header[field::TOTAL_LEN].copy_from_slice(&total_len.to_be_bytes());
        header[field::IDENTIFICATION].copy_from_slice(&[0, 0]);
        header[field::FLAGS_FRAGMENT].copy_from_slice(&DONT_FRAGMENT.to_be_bytes());
        header[field::TTL] = self.ttl;
        header[field::PROTOCOL] = self.protocol;
        header[field::CHECKSUM].copy_from_slice(&[0, 0]);
        header[field::SOURCE].copy_from_slice(&self.source.octets());
        header[field::DESTINATION].copy_from_slice(&self.destination.octets());
        let value = checksum::finish(checksum::sum(header));
        header[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
        MIN_HEADER_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures;
    use proptest::prelude::*;

    fn ip(frame: &[u8]) -> &[u8] {
        &frame[14..]
    }

    #[test]
    fn tcp_syn_header() {
        let packet = Packet::new_checked(ip(&fixtures::TCP_SYN)).unwrap();
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.dscp_ecn(), 0);
        assert_eq!(packet.total_len(), 60);
        assert_eq!(packet.identification(), 0x1c46);
        assert!(packet.dont_fragment());
        assert!(!packet.more_fragments());
        assert_eq!(packet.fragment_offset(), 0);
        assert!(!packet.is_fragment());
        assert_eq!(packet.ttl(), 64);
        assert_eq!(packet.protocol(), 6);
        assert_eq!(packet.header_checksum(), 0x081d);
        assert_eq!(packet.source(), Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(packet.destination(), Ipv4Addr::new(10, 96, 0, 1));
        assert!(packet.options().is_empty());
        assert!(packet.verify_checksum());
        assert_eq!(packet.payload(), &fixtures::TCP_SYN[34..]);
        assert_eq!(packet.into_inner().len(), 60);
    }

    #[test]
    fn options_and_ethernet_padding() {
        let packet = Packet::new_checked(ip(&fixtures::IPV4_OPTIONS)).unwrap();
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.options(), &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(packet.total_len(), 32);
        assert_eq!(packet.dscp_ecn(), 0xc0);
        assert_eq!(packet.ttl(), 1);
        assert_eq!(packet.protocol(), 2);
        assert_eq!(packet.destination(), Ipv4Addr::new(239, 1, 2, 3));
        // 46 bytes of buffer, 32 of packet: the 14 padding bytes are not payload.
        assert_eq!(packet.payload().len(), 8);
        assert_eq!(packet.payload()[0], 0x16);
        assert!(packet.verify_checksum());
    }

    #[test]
    fn vlan_and_icmp_headers() {
        let packet = Packet::new_checked(&fixtures::VLAN_UDP[18..]).unwrap();
        assert!(!packet.dont_fragment());
        assert_eq!(packet.identification(), 1);
        assert!(packet.verify_checksum());
        let packet = Packet::new_checked(ip(&fixtures::ICMP_PORT_UNREACHABLE)).unwrap();
        assert_eq!(packet.protocol(), 1);
        assert!(packet.verify_checksum());
    }

    #[test]
    fn checksums_agree_with_etherparse() {
        for frame in [
            &fixtures::TCP_SYN[..],
            &fixtures::DNS_QUERY[..],
            &fixtures::ICMP_ECHO[..],
            &fixtures::ICMP_PORT_UNREACHABLE[..],
            &fixtures::IPV4_OPTIONS[..],
        ] {
            let mut bytes = ip(frame).to_vec();
            let (header, _) = etherparse::Ipv4Header::from_slice(&bytes).unwrap();
            let expected = header.calc_header_checksum();
            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
            assert_eq!(packet.header_checksum(), expected);
            packet.set_header_checksum(0x1234);
            assert!(!packet.verify_checksum());
            packet.fill_checksum();
            assert_eq!(packet.header_checksum(), expected);
        }
    }

    #[test]
    fn fragments() {
        let mut bytes = ip(&fixtures::DNS_QUERY).to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_flags_and_fragment_offset(false, true, 0);
        assert!(packet.is_fragment() && packet.more_fragments() && !packet.dont_fragment());
        packet.set_flags_and_fragment_offset(false, false, 1480);
        assert!(packet.is_fragment() && !packet.more_fragments());
        assert_eq!(packet.fragment_offset(), 1480);
        packet.set_flags_and_fragment_offset(true, false, 65528);
        assert_eq!(packet.fragment_offset(), 65528);
        assert!(packet.dont_fragment() && packet.is_fragment());
        packet.set_flags_and_fragment_offset(true, false, 0);
        assert!(!packet.is_fragment());
        packet.fill_checksum();
        let (header, _) = etherparse::Ipv4Header::from_slice(&bytes).unwrap();
        assert!(header.dont_fragment);
        assert_eq!(header.header_checksum, header.calc_header_checksum());
    }

    #[test]
    fn setters_round_trip() {
        let mut bytes = ip(&fixtures::TCP_SYN).to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_dscp_ecn(0xb8);
        packet.set_total_len(40);
        packet.set_identification(0xbeef);
        packet.set_ttl(3);
        packet.set_protocol(17);
        packet.set_source(Ipv4Addr::new(192, 0, 2, 1));
        packet.set_destination(Ipv4Addr::new(198, 51, 100, 7));
        packet.fill_checksum();
        assert_eq!(packet.dscp_ecn(), 0xb8);
        assert_eq!(packet.total_len(), 40);
        assert_eq!(packet.identification(), 0xbeef);
        assert_eq!(packet.ttl(), 3);
        assert_eq!(packet.protocol(), 17);
        assert_eq!(packet.source(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(packet.destination(), Ipv4Addr::new(198, 51, 100, 7));
        assert!(packet.verify_checksum());
        assert_eq!(packet.payload().len(), 20);
        packet.payload_mut()[0] = 0xaa;
        assert_eq!(bytes[20], 0xaa);
        assert!(Packet::new_checked(&bytes[..]).is_ok());
    }

    #[test]
    fn decrement_ttl() {
        let mut bytes = ip(&fixtures::TCP_SYN).to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        assert!(packet.decrement_ttl());
        assert_eq!(packet.ttl(), 63);
        assert!(packet.verify_checksum());
        packet.set_ttl(2);
        packet.fill_checksum();
        assert!(packet.decrement_ttl());
        assert_eq!(packet.ttl(), 1);
        let before = bytes.clone();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        assert!(!packet.decrement_ttl());
        packet.set_ttl(0);
        packet.fill_checksum();
        let before_zero = bytes.clone();
        assert!(!Packet::new_unchecked(&mut bytes[..]).decrement_ttl());
        assert_eq!(bytes, before_zero);
        assert_ne!(before, before_zero);
    }

    #[test]
    fn emit_builds_a_valid_header() {
        let header = Header {
            source: Ipv4Addr::new(10, 96, 0, 10),
            destination: Ipv4Addr::new(10, 244, 1, 5),
            protocol: 1,
            ttl: 64,
            payload_len: 36,
        };
        let mut buffer = [0xffu8; 56];
        assert_eq!(header.emit(&mut buffer), 20);
        let packet = Packet::new_checked(&buffer[..]).unwrap();
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.total_len(), 56);
        assert!(packet.dont_fragment() && !packet.is_fragment());
        assert_eq!(packet.identification(), 0);
        assert_eq!(packet.dscp_ecn(), 0);
        assert_eq!(packet.source(), header.source);
        assert_eq!(packet.destination(), header.destination);
        assert_eq!(packet.protocol(), 1);
        assert_eq!(packet.ttl(), 64);
        assert!(packet.verify_checksum());
        let (parsed, _) = etherparse::Ipv4Header::from_slice(&buffer).unwrap();
        assert_eq!(parsed.header_checksum, parsed.calc_header_checksum());
        assert_eq!(parsed.total_len, 56);
    }

    #[test]
    fn errors() {
        let bytes = ip(&fixtures::IPV4_OPTIONS);
        for len in 0..MIN_HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        // IHL 6 needs 24 bytes of buffer.
        for len in MIN_HEADER_LEN..24 {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                Error::BadHeaderLength
            );
        }
        // Total length 32 needs 32 bytes of buffer.
        for len in 24..32 {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                Error::BadTotalLength
            );
        }
        assert!(Packet::new_checked(&bytes[..32]).is_ok());

        let mut bad = ip(&fixtures::TCP_SYN).to_vec();
        bad[0] = 0x65;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            Error::BadVersion
        );
        for ihl in 0..5 {
            bad[0] = 0x40 | ihl;
            assert_eq!(
                Packet::new_checked(&bad[..]).unwrap_err(),
                Error::BadHeaderLength
            );
        }
        bad[0] = 0x4f; // 60 bytes: fits the 60-byte buffer, but the total length is 60 too.
        assert!(Packet::new_checked(&bad[..]).is_ok());
        bad[0] = 0x45;
        bad[2..4].copy_from_slice(&61u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            Error::BadTotalLength
        );
        bad[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            Error::BadTotalLength
        );
        bad[2..4].copy_from_slice(&20u16.to_be_bytes());
        let packet = Packet::new_checked(&bad[..]).unwrap();
        assert!(packet.payload().is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..80), fix in any::<bool>()) {
            // Half the cases get a plausible version/IHL/length so the checks pass more often.
            if fix && bytes.len() >= 20 {
                bytes[0] = 0x40 | (bytes[0] & 0x0f);
                let len = bytes.len().min(usize::from(u16::from_be_bytes([bytes[2], bytes[3]])));
                bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            }
            if let Ok(mut packet) = Packet::new_checked(&mut bytes[..]) {
                let _ = (
                    packet.version(), packet.header_len(), packet.dscp_ecn(), packet.total_len(),
                    packet.identification(), packet.dont_fragment(), packet.more_fragments(),
                    packet.fragment_offset(), packet.is_fragment(), packet.ttl(), packet.protocol(),
                    packet.header_checksum(), packet.source(), packet.destination(),
                    packet.options().len(), packet.verify_checksum(), packet.payload().len(),
                );
                let _ = packet.decrement_ttl();
                packet.fill_checksum();
                prop_assert!(packet.verify_checksum());
                let _ = packet.payload_mut();
            }
        }

        #[test]
        fn incremental_rewrites_match_recompute(
            source in any::<[u8; 4]>(),
            destination in any::<[u8; 4]>(),
            new_source in any::<[u8; 4]>(),
            new_destination in any::<[u8; 4]>(),
            protocol in any::<u8>(),
            ttl in any::<u8>(),
            payload_len in 0u16..1500,
        ) {
            let mut buffer = [0u8; 20];
            Header {
                source: source.into(),
                destination: destination.into(),
                protocol,
                ttl,
                payload_len,
            }
            .emit(&mut buffer);
            let mut packet = Packet::new_unchecked(&mut buffer[..]);
            let mut value = packet.header_checksum();
            value = checksum::update_address(value, packet.source().into(), Ipv4Addr::from(new_source).into());
            value = checksum::update_bytes(value, &destination, &new_destination);
            packet.set_source(new_source.into());
            packet.set_destination(new_destination.into());
            packet.set_header_checksum(value);
            prop_assert_eq!(packet.decrement_ttl(), ttl > 1);
            let incremental = packet.header_checksum();
            packet.fill_checksum();
            prop_assert_eq!(incremental, packet.header_checksum());
        }
    }
}
