//! The IPv6 header view (RFC 8200), the extension-header walk to the upper layer, and a builder
//! for the fixed header kxdp emits.
//!
//! The buffer may extend past `40 + payload_len`; [`Packet::payload`] stops at the payload length.
//! Jumbograms (payload length 0 with a Hop-by-Hop jumbo option) are not supported: they read as
//! an empty payload.

use std::net::Ipv6Addr;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// The most extension headers [`Packet::upper_layer`] walks before giving up.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Next-header values of the extension headers [`Packet::upper_layer`] understands.
pub mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const DESTINATION_OPTIONS: u8 = 60;
}

mod field {
    use core::ops::Range;

    /// Version (4 bits), traffic class (8 bits), flow label (20 bits).
    pub const VERSION_CLASS_FLOW: Range<usize> = 0..4;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SOURCE: Range<usize> = 8..24;
    pub const DESTINATION: Range<usize> = 24..40;

    /// Within a Fragment extension header.
    pub const FRAGMENT_LEN: usize = 8;
    pub const FRAGMENT_OFFSET_FLAGS: Range<usize> = 2..4;
    pub const FRAGMENT_IDENTIFICATION: Range<usize> = 4..8;
}

/// Why an IPv6 packet was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("IPv6 packet shorter than 40 bytes")]
    Truncated,
    #[error("IP version is not 6")]
    BadVersion,
    #[error("IPv6 payload length past the buffer")]
    BadPayloadLength,
    #[error("IPv6 extension header past the payload, or too many of them")]
    BadExtensionHeader,
}

/// The fixed part of a Fragment extension header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of this fragment's data in the original payload, in bytes.
    pub offset_bytes: u16,
    /// The M flag: more fragments follow.
    pub more: bool,
    pub identification: u32,
}

/// Where the upper-layer header starts, found by [`Packet::upper_layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The protocol number of the first header that is not a known extension header.
    pub protocol: u8,
    /// Offset of that header from the start of the IPv6 header. At most `40 + payload_len`.
    pub offset: usize,
    /// The first Fragment header on the way, if any.
    pub fragment: Option<Fragment>,
}

/// A read/write view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline]
fn read_address(data: &[u8], at: usize) -> Ipv6Addr {
    let mut octets = [0; 16];
    octets.copy_from_slice(&data[at..at + 16]);
    Ipv6Addr::from(octets)
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a malformed packet.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the length, version and payload length. Extension headers
    /// are checked by [`Packet::upper_layer`].
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
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if data[0] >> 4 != 6 {
            return Err(Error::BadVersion);
        }
        if HEADER_LEN + usize::from(self.payload_len()) > data.len() {
            return Err(Error::BadPayloadLength);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn first_word(&self) -> u32 {
        let data = self.buffer.as_ref();
        u32::from_be_bytes([data[0], data[1], data[2], data[3]])
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_CLASS_FLOW.start] >> 4
    }

    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (self.first_word() >> 20) as u8
    }

    #[inline]
    pub fn flow_label(&self) -> u32 {
        self.first_word() & 0x000f_ffff
    }

    #[inline]
    pub fn payload_len(&self) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_be_bytes([
            data[field::PAYLOAD_LEN.start],
            data[field::PAYLOAD_LEN.start + 1],
        ])
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline]
    pub fn source(&self) -> Ipv6Addr {
        read_address(self.buffer.as_ref(), field::SOURCE.start)
    }

    #[inline]
    pub fn destination(&self) -> Ipv6Addr {
        read_address(self.buffer.as_ref(), field::DESTINATION.start)
    }

    /// End of the packet: the fixed header plus the payload length.
    #[inline]
    fn end(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    /// The bytes after the fixed header, extension headers included, up to the payload length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.end()]
    }

    /// Walks the extension headers (Hop-by-Hop, Routing, Fragment, Destination Options,
    /// Authentication) to the first header that is none of them. Every walked header must lie
    /// within the payload, and at most [`MAX_EXTENSION_HEADERS`] are walked.
    ///
    /// The upper layer of a non-first fragment is not at `offset`: callers check `fragment`.
    pub fn upper_layer(&self) -> Result<UpperLayer, Error> {
        let data = self.buffer.as_ref();
        let end = self.end();
        let mut protocol = self.next_header();
        let mut offset = HEADER_LEN;
        let mut fragment = None;
        for _ in 0..=MAX_EXTENSION_HEADERS {
            let len = match protocol {
                next_header::HOP_BY_HOP
                | next_header::ROUTING
                | next_header::DESTINATION_OPTIONS => {
                    if offset + 2 > end {
                        return Err(Error::BadExtensionHeader);
                    }
                    // Length in 8-byte units, not counting the first 8 bytes.
                    (usize::from(data[offset + 1]) + 1) * 8
                }
                next_header::AUTHENTICATION => {
                    if offset + 2 > end {
                        return Err(Error::BadExtensionHeader);
                    }
                    // Length in 4-byte units, minus 2 (RFC 4302 §2.2).
                    (usize::from(data[offset + 1]) + 2) * 4
                }
                next_header::FRAGMENT => {
                    if offset + field::FRAGMENT_LEN > end {
                        return Err(Error::BadExtensionHeader);
                    }
                    let header = &data[offset..offset + field::FRAGMENT_LEN];
                    if fragment.is_none() {
                        let offset_flags = u16::from_be_bytes([
                            header[field::FRAGMENT_OFFSET_FLAGS.start],
                            header[field::FRAGMENT_OFFSET_FLAGS.start + 1],
                        ]);
                        let id = &header[field::FRAGMENT_IDENTIFICATION];
                        fragment = Some(Fragment {
                            // The 13-bit offset in 8-byte units sits above three flag bits, so
                            // masking them off leaves the offset in bytes.
                            offset_bytes: offset_flags & 0xfff8,
                            more: offset_flags & 1 != 0,
                            identification: u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
                        });
                    }
                    field::FRAGMENT_LEN
                }
                _ => {
                    return Ok(UpperLayer {
                        protocol,
                        offset,
                        fragment,
                    })
                }
            };
            if offset + len > end {
                return Err(Error::BadExtensionHeader);
            }
            protocol = data[offset];
            offset += len;
        }
        Err(Error::BadExtensionHeader)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    #[inline]
    pub fn set_next_header(&mut self, value: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = value;
    }

    /// Sets the payload length. The caller keeps `40 + value` within the buffer.
    #[inline]
    pub fn set_payload_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&value.to_be_bytes());
    }

    #[inline]
    pub fn set_source(&mut self, address: Ipv6Addr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&address.octets());
    }

    #[inline]
    pub fn set_destination(&mut self, address: Ipv6Addr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&address.octets());
    }

    /// Lowers the hop limit by one. Returns false and changes nothing if it is 0 or 1: the packet
    /// must not be forwarded. (IPv6 has no header checksum to update.)
    #[inline]
    pub fn decrement_hop_limit(&mut self) -> bool {
        let hop_limit = self.hop_limit();
        if hop_limit <= 1 {
            return false;
        }
        self.set_hop_limit(hop_limit - 1);
        true
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.end();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// The fields of a fixed IPv6 header, for building packets kxdp originates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub source: Ipv6Addr,
    pub destination: Ipv6Addr,
    pub next_header: u8,
    pub hop_limit: u8,
    pub payload_len: u16,
}

impl Header {
    /// Writes a 40-byte header (traffic class 0, flow label 0) to the start of `buffer` and
    /// returns 40. Callers guarantee `buffer` holds at least 40 bytes.
    #[inline]
    pub fn emit(&self, buffer: &mut [u8]) -> usize {
        debug_assert!(buffer.len() >= HEADER_LEN, "buffer too short for IPv6");
        let header = &mut buffer[..HEADER_LEN];
        header[field::VERSION_CLASS_FLOW].copy_from_slice(&0x6000_0000u32.to_be_bytes());
        header[field::PAYLOAD_LEN].copy_from_slice(&self.payload_len.to_be_bytes());
        header[field::NEXT_HEADER] = self.next_header;
        header[field::HOP_LIMIT] = self.hop_limit;
        header[field::SOURCE].copy_from_slice(&self.source.octets());
        header[field::DESTINATION].copy_from_slice(&self.destination.octets());
        HEADER_LEN
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

    fn address(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn hop_by_hop_and_fragment() {
        let bytes = ip(&fixtures::IPV6_HBH_FRAG);
        let packet = Packet::new_checked(bytes).unwrap();
        assert_eq!(packet.version(), 6);
        assert_eq!(packet.traffic_class(), 0x12);
        assert_eq!(packet.flow_label(), 0x4b2c1);
        assert_eq!(packet.payload_len(), 48);
        assert_eq!(packet.next_header(), next_header::HOP_BY_HOP);
        assert_eq!(packet.hop_limit(), 64);
        assert_eq!(packet.source(), address("fd00:10:244:1::5"));
        assert_eq!(packet.destination(), address("fd00:10:96::a"));
        assert_eq!(packet.payload(), &bytes[40..]);
        assert_eq!(
            packet.upper_layer(),
            Ok(UpperLayer {
                protocol: 17,
                offset: 56,
                fragment: Some(Fragment {
                    offset_bytes: 0,
                    more: true,
                    identification: 0xdead_beef,
                }),
            })
        );
        // The UDP header follows: source port 40001.
        assert_eq!(&bytes[56..58], &40001u16.to_be_bytes());
    }

    #[test]
    fn agrees_with_etherparse() {
        for frame in [
            &fixtures::IPV6_HBH_FRAG[..],
            &fixtures::ICMPV6_ECHO[..],
            &fixtures::IPV6_TCP_SYN[..],
        ] {
            let bytes = ip(frame);
            let packet = Packet::new_checked(bytes).unwrap();
            let (header, _) = etherparse::Ipv6Header::from_slice(bytes).unwrap();
            assert_eq!(packet.traffic_class(), header.traffic_class);
            assert_eq!(packet.flow_label(), header.flow_label.value());
            assert_eq!(packet.payload_len(), header.payload_length);
            assert_eq!(packet.hop_limit(), header.hop_limit);
            assert_eq!(packet.source().octets(), header.source);
            assert_eq!(packet.destination().octets(), header.destination);
            let upper = packet.upper_layer().unwrap();
            let sliced = etherparse::SlicedPacket::from_ip(bytes).unwrap();
            let ip = sliced.net.unwrap();
            let payload = ip.ip_payload_ref().unwrap();
            assert_eq!(upper.protocol, payload.ip_number.0);
            assert_eq!(upper.offset, bytes.len() - payload.payload.len());
            assert_eq!(upper.fragment.is_some(), payload.fragmented);
        }
    }

    #[test]
    fn plain_upper_layers() {
        let packet = Packet::new_checked(ip(&fixtures::ICMPV6_ECHO)).unwrap();
        assert_eq!(packet.payload_len(), 32);
        assert_eq!(
            packet.upper_layer(),
            Ok(UpperLayer {
                protocol: 58,
                offset: 40,
                fragment: None,
            })
        );
        let packet = Packet::new_checked(ip(&fixtures::IPV6_TCP_SYN)).unwrap();
        assert_eq!(packet.upper_layer().unwrap().protocol, 6);
        assert_eq!(packet.flow_label(), 0x3c1d7);
        assert_eq!(packet.traffic_class(), 0);
    }

    /// An IPv6 packet with the given extension headers (each as raw bytes) and an 8-byte UDP-ish
    /// upper layer.
    fn with_extensions(first: u8, headers: &[Vec<u8>]) -> Vec<u8> {
        let payload_len: usize = headers.iter().map(Vec::len).sum::<usize>() + 8;
        let mut bytes = vec![0u8; 40];
        Header {
            source: address("fd00::1"),
            destination: address("fd00::2"),
            next_header: first,
            hop_limit: 9,
            payload_len: payload_len as u16,
        }
        .emit(&mut bytes);
        for header in headers {
            bytes.extend_from_slice(header);
        }
        bytes.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 8, 0, 0]);
        bytes
    }

    #[test]
    fn every_extension_kind() {
        let headers = vec![
            // Hop-by-Hop, 8 bytes, next Routing.
            vec![43, 0, 1, 4, 0, 0, 0, 0],
            // Routing, 24 bytes (length 2), next Destination Options.
            [vec![60, 2, 0, 0, 0, 0, 0, 0], vec![0; 16]].concat(),
            // Destination Options, 8 bytes, next Authentication.
            vec![51, 0, 1, 4, 0, 0, 0, 0],
            // Authentication, (4 + 2) * 4 = 24 bytes, next Fragment.
            [vec![44, 4, 0, 0], vec![0; 20]].concat(),
            // Fragment: offset 1232 bytes (154 units), no more fragments, next UDP.
            vec![17, 0, 0x04, 0xd0, 0, 0, 0, 42],
        ];
        let bytes = with_extensions(next_header::HOP_BY_HOP, &headers);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            packet.upper_layer(),
            Ok(UpperLayer {
                protocol: 17,
                offset: 40 + 8 + 24 + 8 + 24 + 8,
                fragment: Some(Fragment {
                    offset_bytes: 1232,
                    more: false,
                    identification: 42,
                }),
            })
        );
    }

    #[test]
    fn extension_chain_limits() {
        // Eight Destination Options headers are fine; nine are not.
        let chain = |count: usize| {
            let headers: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let next = if i + 1 == count { 17 } else { 60 };
                    vec![next, 0, 1, 4, 0, 0, 0, 0]
                })
                .collect();
            with_extensions(next_header::DESTINATION_OPTIONS, &headers)
        };
        let eight = chain(8);
        let upper = Packet::new_checked(&eight[..]).unwrap().upper_layer();
        assert_eq!(upper.unwrap().offset, 40 + 64);
        let nine = chain(9);
        let packet = Packet::new_checked(&nine[..]).unwrap();
        assert_eq!(packet.upper_layer(), Err(Error::BadExtensionHeader));
    }

    #[test]
    fn extension_headers_running_off_the_end() {
        let bytes = ip(&fixtures::IPV6_HBH_FRAG);
        // Cut the payload length so the chain runs past it, at every byte of both headers.
        for payload_len in 0..16u16 {
            let mut short = bytes.to_vec();
            short[4..6].copy_from_slice(&payload_len.to_be_bytes());
            let packet = Packet::new_checked(&short[..]).unwrap();
            assert_eq!(
                packet.upper_layer(),
                Err(Error::BadExtensionHeader),
                "{payload_len}"
            );
        }
        // Exactly the two headers: the upper layer is empty but located.
        let mut short = bytes.to_vec();
        short[4..6].copy_from_slice(&16u16.to_be_bytes());
        let upper = Packet::new_checked(&short[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert_eq!(upper.offset, 56);
        // A Hop-by-Hop length that claims more than the payload holds.
        let mut long = bytes.to_vec();
        long[41] = 200;
        let packet = Packet::new_checked(&long[..]).unwrap();
        assert_eq!(packet.upper_layer(), Err(Error::BadExtensionHeader));
        // An Authentication header longer than the payload.
        let bytes = with_extensions(next_header::AUTHENTICATION, &[vec![17, 5, 0, 0]]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.upper_layer(), Err(Error::BadExtensionHeader));
    }

    #[test]
    fn errors() {
        let bytes = ip(&fixtures::ICMPV6_ECHO);
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        for len in HEADER_LEN..bytes.len() {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).unwrap_err(),
                Error::BadPayloadLength
            );
        }
        let mut bad = bytes.to_vec();
        bad[0] = 0x45;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            Error::BadVersion
        );
        // A longer buffer (padding) is fine; the payload stops at the payload length.
        let mut padded = bytes.to_vec();
        padded.extend_from_slice(&[0; 6]);
        let packet = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload().len(), 32);
    }

    #[test]
    fn setters_and_hop_limit() {
        let mut bytes = ip(&fixtures::ICMPV6_ECHO).to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_source(address("2001:db8::1"));
        packet.set_destination(address("2001:db8::2"));
        packet.set_next_header(17);
        packet.set_payload_len(8);
        packet.set_hop_limit(2);
        assert_eq!(packet.source(), address("2001:db8::1"));
        assert_eq!(packet.destination(), address("2001:db8::2"));
        assert_eq!(packet.next_header(), 17);
        assert_eq!(packet.payload_len(), 8);
        assert!(packet.decrement_hop_limit());
        assert_eq!(packet.hop_limit(), 1);
        assert!(!packet.decrement_hop_limit());
        assert_eq!(packet.hop_limit(), 1);
        packet.set_hop_limit(0);
        assert!(!packet.decrement_hop_limit());
        assert_eq!(packet.hop_limit(), 0);
        packet.payload_mut()[0] = 0xee;
        assert_eq!(packet.payload().len(), 8);
        assert_eq!(packet.into_inner()[40], 0xee);
        // The traffic class and flow label are untouched.
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.flow_label(), 0x8f1a2);
    }

    #[test]
    fn emit_builds_a_valid_header() {
        let header = Header {
            source: address("fd00:10:96::a"),
            destination: address("fd00:10:244:1::5"),
            next_header: 58,
            hop_limit: 255,
            payload_len: 16,
        };
        let mut buffer = [0xffu8; 56];
        assert_eq!(header.emit(&mut buffer), 40);
        let packet = Packet::new_checked(&buffer[..]).unwrap();
        assert_eq!(packet.traffic_class(), 0);
        assert_eq!(packet.flow_label(), 0);
        assert_eq!(packet.source(), header.source);
        assert_eq!(packet.destination(), header.destination);
        assert_eq!(packet.next_header(), 58);
        assert_eq!(packet.hop_limit(), 255);
        assert_eq!(packet.payload_len(), 16);
        let (parsed, _) = etherparse::Ipv6Header::from_slice(&buffer).unwrap();
        assert_eq!(parsed.payload_length, 16);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..160),
            fix in any::<bool>(),
            chain in proptest::collection::vec(prop_oneof![Just(0u8), Just(43), Just(44), Just(51), Just(60), any::<u8>()], 0..4),
        ) {
            // Half the cases get a valid version and payload length, and sprinkle extension
            // header numbers where the walk will look, so it gets exercised deeply.
            if fix && bytes.len() >= 40 {
                bytes[0] = 0x60 | (bytes[0] & 0x0f);
                let payload_len = (bytes.len() - 40).min(usize::from(bytes[5]));
                bytes[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
                if let Some(&first) = chain.first() {
                    bytes[6] = first;
                }
                for (i, &next) in chain.iter().skip(1).enumerate() {
                    if let Some(byte) = bytes.get_mut(40 + i * 8) {
                        *byte = next;
                    }
                    if let Some(byte) = bytes.get_mut(41 + i * 8) {
                        *byte = 0;
                    }
                }
            }
            if let Ok(mut packet) = Packet::new_checked(&mut bytes[..]) {
                let _ = (
                    packet.version(), packet.traffic_class(), packet.flow_label(),
                    packet.payload_len(), packet.next_header(), packet.hop_limit(),
                    packet.source(), packet.destination(), packet.payload().len(),
                );
                if let Ok(upper) = packet.upper_layer() {
                    prop_assert!(upper.offset <= 40 + usize::from(packet.payload_len()));
                }
                let _ = packet.decrement_hop_limit();
                let _ = packet.payload_mut();
            }
        }
    }
}
