//! The ICMPv6 message view (RFC 4443): the fixed 8-byte header, echo fields, the quoted packet of
//! error messages, and the checksum over the IPv6 pseudo-header.
//!
//! The view covers the whole message (the upper-layer payload); the checksum and the
//! pseudo-header length cover the whole buffer.

use std::net::Ipv6Addr;

use super::checksum;

/// Length of the fixed header (type, code, checksum and the four rest-of-header bytes).
pub const HEADER_LEN: usize = 8;

/// The IPv6 next-header value of ICMPv6.
pub const NEXT_HEADER: u8 = 58;

/// Message types kxdp reads or sends.
pub mod message {
    pub const DESTINATION_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
}

/// Codes of [`message::DESTINATION_UNREACHABLE`].
pub mod unreachable {
    pub const NO_ROUTE: u8 = 0;
    pub const ADMIN_PROHIBITED: u8 = 1;
    pub const ADDRESS: u8 = 3;
    pub const PORT: u8 = 4;
}

mod field {
    use core::ops::Range;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const REST_OF_HEADER: Range<usize> = 4..8;
    pub const ECHO_IDENTIFIER: Range<usize> = 4..6;
    pub const ECHO_SEQUENCE: Range<usize> = 6..8;
}

/// Why an ICMPv6 message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("ICMPv6 message shorter than 8 bytes")]
    Truncated,
}

/// A read/write view of an ICMPv6 message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline]
fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic if it is too short.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking that the fixed header fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    /// Checks everything the accessors rely on.
    #[inline]
    pub fn check(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// The identifier of an echo request or reply.
    #[inline]
    pub fn echo_identifier(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENTIFIER.start)
    }

    /// The sequence number of an echo request or reply.
    #[inline]
    pub fn echo_sequence(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQUENCE.start)
    }

    /// Bytes 4..8 as one word: unused for most errors, the MTU of "packet too big", the pointer
    /// of "parameter problem".
    #[inline]
    pub fn rest_of_header(&self) -> u32 {
        let data = self.buffer.as_ref();
        let at = field::REST_OF_HEADER.start;
        u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
    }

    /// Everything after the 8-byte header: echo data, or the quoted packet of an error.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Whether this is an error message (types below 128), which quotes the packet that caused it.
    #[inline]
    pub fn is_error(&self) -> bool {
        self.msg_type() < 128
    }

    /// Whether this is an echo request or reply.
    #[inline]
    pub fn is_echo(&self) -> bool {
        matches!(self.msg_type(), message::ECHO_REQUEST | message::ECHO_REPLY)
    }

    #[inline]
    fn sum(&self, source: &Ipv6Addr, destination: &Ipv6Addr) -> u32 {
        let data = self.buffer.as_ref();
        let pseudo =
            checksum::pseudo_header_v6(source, destination, NEXT_HEADER, data.len() as u32);
        checksum::combine(pseudo, checksum::sum(data))
    }

    /// Whether the checksum is correct for the IPv6 pseudo-header.
    #[inline]
    pub fn verify_checksum(&self, source: &Ipv6Addr, destination: &Ipv6Addr) -> bool {
        checksum::fold(self.sum(source, destination)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn write_u16(&mut self, at: usize, value: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    #[inline]
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    #[inline]
    pub fn set_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        self.write_u16(field::CHECKSUM.start, value);
    }

    #[inline]
    pub fn set_echo_identifier(&mut self, value: u16) {
        self.write_u16(field::ECHO_IDENTIFIER.start, value);
    }

    #[inline]
    pub fn set_echo_sequence(&mut self, value: u16) {
        self.write_u16(field::ECHO_SEQUENCE.start, value);
    }

    #[inline]
    pub fn set_rest_of_header(&mut self, value: u32) {
        self.buffer.as_mut()[field::REST_OF_HEADER].copy_from_slice(&value.to_be_bytes());
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    /// Recomputes the checksum over the IPv6 pseudo-header and the whole message.
    #[inline]
    pub fn fill_checksum(&mut self, source: &Ipv6Addr, destination: &Ipv6Addr) {
        self.set_checksum(0);
        let value = checksum::finish(self.sum(source, destination));
        self.set_checksum(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{fixtures, ipv6};
    use proptest::prelude::*;

    fn addresses() -> (Ipv6Addr, Ipv6Addr) {
        ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
    }

    fn etherparse_checksum(bytes: &[u8], source: &Ipv6Addr, destination: &Ipv6Addr) -> u16 {
        let slice = etherparse::Icmpv6Slice::from_slice(bytes).unwrap();
        slice
            .icmp_type()
            .calc_checksum(source.octets(), destination.octets(), slice.payload())
            .unwrap()
    }

    #[test]
    fn echo_request() {
        let ip = ipv6::Packet::new_checked(&fixtures::ICMPV6_ECHO[14..]).unwrap();
        assert_eq!(ip.source(), addresses().0);
        assert_eq!(ip.destination(), addresses().1);
        let packet = Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(packet.msg_type(), message::ECHO_REQUEST);
        assert_eq!(packet.code(), 0);
        assert_eq!(packet.echo_identifier(), 0x0d21);
        assert_eq!(packet.echo_sequence(), 1);
        assert_eq!(packet.rest_of_header(), 0x0d21_0001);
        assert!(packet.is_echo() && !packet.is_error());
        assert_eq!(packet.payload().len(), 24);
        assert_eq!(&packet.payload()[8..10], &[0x10, 0x11]);
        assert!(packet.verify_checksum(&ip.source(), &ip.destination()));
        assert!(!packet.verify_checksum(&ip.source(), &Ipv6Addr::LOCALHOST));
        assert_eq!(
            packet.checksum(),
            etherparse_checksum(ip.payload(), &ip.source(), &ip.destination())
        );
        assert_eq!(packet.into_inner().len(), 32);
    }

    #[test]
    fn build_port_unreachable() {
        // Quote the IPv6 TCP SYN in a port unreachable, as a reject would.
        let quoted = &fixtures::IPV6_TCP_SYN[14..];
        let mut bytes = vec![0u8; HEADER_LEN + quoted.len()];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_msg_type(message::DESTINATION_UNREACHABLE);
        packet.set_code(unreachable::PORT);
        packet.set_rest_of_header(0);
        packet.payload_mut().copy_from_slice(quoted);
        let source: Ipv6Addr = "fd00:10:96::1".parse().unwrap();
        let destination: Ipv6Addr = "fd00:10:244:1::5".parse().unwrap();
        packet.fill_checksum(&source, &destination);
        assert!(packet.verify_checksum(&source, &destination));
        assert!(packet.is_error() && !packet.is_echo());
        assert_eq!(packet.code(), 4);
        let checksum = packet.checksum();
        assert_eq!(checksum, etherparse_checksum(&bytes, &source, &destination));
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        let inner = ipv6::Packet::new_checked(packet.payload()).unwrap();
        assert_eq!(inner.upper_layer().unwrap().protocol, 6);
    }

    #[test]
    fn setters_round_trip() {
        let (source, destination) = addresses();
        let mut bytes = fixtures::ICMPV6_ECHO[54..].to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_msg_type(message::ECHO_REPLY);
        packet.set_echo_identifier(7);
        packet.set_echo_sequence(9);
        packet.fill_checksum(&destination, &source);
        assert_eq!(packet.msg_type(), 129);
        assert_eq!(packet.echo_identifier(), 7);
        assert_eq!(packet.echo_sequence(), 9);
        assert!(packet.verify_checksum(&destination, &source));
        packet.set_checksum(0);
        assert_eq!(packet.checksum(), 0);
        packet.set_msg_type(message::PACKET_TOO_BIG);
        packet.set_rest_of_header(1280);
        assert_eq!(packet.rest_of_header(), 1280);
        assert!(packet.is_error());
        packet.fill_checksum(&destination, &source);
        assert_eq!(
            packet.checksum(),
            etherparse_checksum(&bytes, &destination, &source)
        );
    }

    #[test]
    fn classification() {
        let mut bytes = [0u8; 8];
        for msg_type in 0..=255u8 {
            bytes[0] = msg_type;
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            assert_eq!(packet.is_error(), msg_type < 128);
            assert_eq!(packet.is_echo(), msg_type == 128 || msg_type == 129);
        }
    }

    #[test]
    fn truncated() {
        let bytes = &fixtures::ICMPV6_ECHO[54..];
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        assert!(Packet::new_checked(&bytes[..HEADER_LEN]).is_ok());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let (source, destination) = addresses();
            if let Ok(mut packet) = Packet::new_checked(&mut bytes[..]) {
                let _ = (
                    packet.msg_type(), packet.code(), packet.checksum(), packet.echo_identifier(),
                    packet.echo_sequence(), packet.rest_of_header(), packet.payload().len(),
                    packet.is_error(), packet.is_echo(), packet.verify_checksum(&source, &destination),
                );
                packet.fill_checksum(&source, &destination);
                prop_assert!(packet.verify_checksum(&source, &destination));
                let _ = packet.payload_mut();
            }
        }

        /// Echo NAT: identifier and addresses rewritten incrementally equal a full recompute.
        #[test]
        fn echo_rewrite_matches_recompute(
            new_source in any::<[u8; 16]>(),
            new_identifier in any::<u16>(),
        ) {
            let (source, destination) = addresses();
            let new_source = Ipv6Addr::from(new_source);
            let mut bytes = fixtures::ICMPV6_ECHO[54..].to_vec();
            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
            let mut value = packet.checksum();
            value = checksum::update_address(value, source.into(), new_source.into());
            value = checksum::update_u16(value, packet.echo_identifier(), new_identifier);
            packet.set_echo_identifier(new_identifier);
            packet.fill_checksum(&new_source, &destination);
            prop_assert_eq!(value, packet.checksum());
        }
    }
}
