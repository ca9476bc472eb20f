//! The ICMPv4 message view (RFC 792): the fixed 8-byte header, echo fields, and the quoted packet
//! of error messages.
//!
//! The view covers the whole message (the IP payload); the checksum covers the whole buffer.

use super::checksum;

/// Length of the fixed header (type, code, checksum and the four rest-of-header bytes).
pub const HEADER_LEN: usize = 8;

/// Message types kxdp reads or sends.
pub mod message {
    pub const ECHO_REPLY: u8 = 0;
    pub const DESTINATION_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// Codes of [`message::DESTINATION_UNREACHABLE`].
pub mod unreachable {
    pub const NETWORK: u8 = 0;
    pub const HOST: u8 = 1;
    pub const PROTOCOL: u8 = 2;
    pub const PORT: u8 = 3;
    pub const FRAGMENTATION_NEEDED: u8 = 4;
    pub const ADMIN_PROHIBITED: u8 = 13;
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

/// Why an ICMP message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("ICMP message shorter than 8 bytes")]
    Truncated,
}

/// A read/write view of an ICMPv4 message.
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

    /// Bytes 4..8 as one word: unused for most errors, the next-hop MTU in the low 16 bits of
    /// "fragmentation needed", the pointer in the high 8 bits of "parameter problem".
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

    /// Whether this is an error message, which quotes the packet that caused it.
    #[inline]
    pub fn is_error(&self) -> bool {
        matches!(
            self.msg_type(),
            message::DESTINATION_UNREACHABLE
                | 4 // source quench (deprecated, but still an error that quotes a packet)
                | 5 // redirect
                | message::TIME_EXCEEDED
                | message::PARAMETER_PROBLEM
        )
    }

    /// Whether this is an echo request or reply.
    #[inline]
    pub fn is_echo(&self) -> bool {
        matches!(self.msg_type(), message::ECHO_REQUEST | message::ECHO_REPLY)
    }

    /// Whether the checksum over the whole message is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0xffff
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

    /// Recomputes the checksum over the whole message.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let value = checksum::finish(checksum::sum(self.buffer.as_ref()));
        self.set_checksum(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{fixtures, ipv4, udp};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    #[test]
    fn echo_request() {
        let bytes = &fixtures::ICMP_ECHO[34..];
        let packet = Packet::new_checked(bytes).unwrap();
        assert_eq!(packet.msg_type(), message::ECHO_REQUEST);
        assert_eq!(packet.code(), 0);
        assert_eq!(packet.echo_identifier(), 0x1f3b);
        assert_eq!(packet.echo_sequence(), 7);
        assert_eq!(packet.rest_of_header(), 0x1f3b_0007);
        assert!(packet.is_echo());
        assert!(!packet.is_error());
        assert_eq!(packet.payload().len(), 56);
        assert_eq!(&packet.payload()[16..20], &[0x10, 0x11, 0x12, 0x13]);
        assert!(packet.verify_checksum());
        let expected = etherparse::Icmpv4Slice::from_slice(bytes)
            .unwrap()
            .icmp_type()
            .calc_checksum(packet.payload());
        assert_eq!(packet.checksum(), expected);
        assert_eq!(packet.into_inner().len(), 64);
    }

    #[test]
    fn port_unreachable_quotes_the_query() {
        let bytes = &fixtures::ICMP_PORT_UNREACHABLE[34..];
        let packet = Packet::new_checked(bytes).unwrap();
        assert_eq!(packet.msg_type(), message::DESTINATION_UNREACHABLE);
        assert_eq!(packet.code(), unreachable::PORT);
        assert_eq!(packet.rest_of_header(), 0);
        assert!(packet.is_error() && !packet.is_echo());
        assert!(packet.verify_checksum());
        // The quote is the original IPv4 header and the first 8 bytes of its UDP datagram; the
        // quoted total length covers more than was quoted, so it is read unchecked.
        let quoted = ipv4::Packet::new_unchecked(packet.payload());
        assert_eq!(quoted.source(), Ipv4Addr::new(10, 244, 1, 5));
        assert_eq!(quoted.destination(), Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(
            ipv4::Packet::new_checked(packet.payload()).unwrap_err(),
            ipv4::Error::BadTotalLength
        );
        let datagram = udp::Packet::new_unchecked(&packet.payload()[20..]);
        assert_eq!(datagram.source_port(), 53124);
        assert_eq!(datagram.destination_port(), 53);
    }

    #[test]
    fn classification() {
        let mut bytes = [0u8; 8];
        for msg_type in 0..=255u8 {
            bytes[0] = msg_type;
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            assert_eq!(packet.is_error(), [3, 4, 5, 11, 12].contains(&msg_type));
            assert_eq!(packet.is_echo(), msg_type == 0 || msg_type == 8);
        }
    }

    #[test]
    fn build_echo_reply_and_fragmentation_needed() {
        let mut bytes = fixtures::ICMP_ECHO[34..].to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_msg_type(message::ECHO_REPLY);
        packet.set_echo_identifier(0x4242);
        packet.set_echo_sequence(8);
        // An echo reply differs from its request in the type only: update incrementally.
        let updated = checksum::update_u16(packet.checksum(), 0x0800, 0x0000);
        packet.fill_checksum();
        assert!(packet.verify_checksum());
        assert_eq!(packet.echo_identifier(), 0x4242);
        assert_eq!(packet.echo_sequence(), 8);
        let mut reply = fixtures::ICMP_ECHO[34..].to_vec();
        reply[0] = 0;
        let mut reply = Packet::new_checked(&mut reply[..]).unwrap();
        reply.fill_checksum();
        assert_eq!(updated, reply.checksum());

        packet.set_msg_type(message::DESTINATION_UNREACHABLE);
        packet.set_code(unreachable::FRAGMENTATION_NEEDED);
        packet.set_rest_of_header(1450);
        packet.payload_mut()[0] = 0x45;
        packet.set_checksum(0);
        assert!(!packet.verify_checksum());
        packet.fill_checksum();
        assert!(packet.verify_checksum());
        assert_eq!(packet.code(), 4);
        assert_eq!(packet.rest_of_header(), 1450);
        assert_eq!(packet.echo_sequence(), 1450);
        let slice = etherparse::Icmpv4Slice::from_slice(&bytes).unwrap();
        assert_eq!(
            slice.checksum(),
            slice.icmp_type().calc_checksum(slice.payload())
        );
    }

    #[test]
    fn truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&fixtures::ICMP_ECHO[34..34 + len]).unwrap_err(),
                Error::Truncated
            );
        }
        let packet = Packet::new_checked(&fixtures::ICMP_ECHO[34..42]).unwrap();
        assert!(packet.payload().is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(mut packet) = Packet::new_checked(&mut bytes[..]) {
                let _ = (
                    packet.msg_type(), packet.code(), packet.checksum(), packet.echo_identifier(),
                    packet.echo_sequence(), packet.rest_of_header(), packet.payload().len(),
                    packet.is_error(), packet.is_echo(), packet.verify_checksum(),
                );
                packet.fill_checksum();
                prop_assert!(packet.verify_checksum());
                let _ = packet.payload_mut();
            }
        }
    }
}
