//! The Ethernet II frame view, with at most one 802.1Q / 802.1ad VLAN tag skipped.
//!
//! [`Frame::ethertype`] is the type after the tag, so callers dispatch on it without caring whether
//! the frame was tagged. A second tag (QinQ) is not skipped: such a frame reports the inner tag's
//! type, [`ethertype::VLAN`], which the pipeline treats as "not IP".

/// Well-known EtherType values.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag (the outer tag of QinQ).
    pub const QINQ: u16 = 0x88a8;
}

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = 14;
/// Length of an Ethernet header with one VLAN tag.
pub const TAGGED_HEADER_LEN: usize = 18;

mod field {
    use core::ops::Range;

    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    /// The EtherType of an untagged frame, or the TPID of a tagged one.
    pub const ETHERTYPE: Range<usize> = 12..14;
    /// PCP, DEI and the 12-bit VLAN id of a tagged frame.
    pub const TCI: Range<usize> = 14..16;
    pub const INNER_ETHERTYPE: Range<usize> = 16..18;
}

/// Why a frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("ethernet frame shorter than its header")]
    Truncated,
}

/// A read/write view of an Ethernet frame.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` without checking it; accessors may panic if it is too short.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking that the header (and the VLAN tag, if any) fits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that every accessor is in bounds.
    #[inline]
    pub fn check_len(&self) -> Result<(), Error> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.is_tagged() && data.len() < TAGGED_HEADER_LEN {
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
    fn outer_ethertype(&self) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_be_bytes([
            data[field::ETHERTYPE.start],
            data[field::ETHERTYPE.start + 1],
        ])
    }

    #[inline]
    fn is_tagged(&self) -> bool {
        matches!(self.outer_ethertype(), ethertype::VLAN | ethertype::QINQ)
    }

    #[inline]
    pub fn destination(&self) -> [u8; 6] {
        let data = self.buffer.as_ref();
        let mut address = [0; 6];
        address.copy_from_slice(&data[field::DESTINATION]);
        address
    }

    #[inline]
    pub fn source(&self) -> [u8; 6] {
        let data = self.buffer.as_ref();
        let mut address = [0; 6];
        address.copy_from_slice(&data[field::SOURCE]);
        address
    }

    /// The EtherType of the payload: the one after the VLAN tag for a tagged frame.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        let data = self.buffer.as_ref();
        if self.is_tagged() {
            u16::from_be_bytes([
                data[field::INNER_ETHERTYPE.start],
                data[field::INNER_ETHERTYPE.start + 1],
            ])
        } else {
            self.outer_ethertype()
        }
    }

    /// The 12-bit VLAN id of a tagged frame.
    #[inline]
    pub fn vlan_id(&self) -> Option<u16> {
        if self.is_tagged() {
            let data = self.buffer.as_ref();
            let tci = u16::from_be_bytes([data[field::TCI.start], data[field::TCI.start + 1]]);
            Some(tci & 0x0fff)
        } else {
            None
        }
    }

    /// [`HEADER_LEN`] or, for a tagged frame, [`TAGGED_HEADER_LEN`].
    #[inline]
    pub fn header_len(&self) -> usize {
        if self.is_tagged() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Everything after the header (including any trailing padding).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    #[inline]
    pub fn set_destination(&mut self, address: &[u8; 6]) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(address);
    }

    #[inline]
    pub fn set_source(&mut self, address: &[u8; 6]) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(address);
    }

    /// Sets the payload's EtherType: the one after the VLAN tag for a tagged frame. Never pass a
    /// VLAN TPID for an untagged frame: it would then read as tagged, with a different header.
    #[inline]
    pub fn set_ethertype(&mut self, value: u16) {
        let at = self.header_len() - 2;
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    /// Swaps source and destination, to send a frame back where it came from.
    #[inline]
    pub fn swap_addresses(&mut self) {
        let (destination, source) = self.buffer.as_mut()[..field::SOURCE.end].split_at_mut(6);
        destination.swap_with_slice(source);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures;
    use proptest::prelude::*;

    const POD_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05];
    const GATEWAY_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[test]
    fn untagged_frame() {
        let frame = Frame::new_checked(&fixtures::TCP_SYN[..]).unwrap();
        assert_eq!(frame.destination(), GATEWAY_MAC);
        assert_eq!(frame.source(), POD_MAC);
        assert_eq!(frame.ethertype(), ethertype::IPV4);
        assert_eq!(frame.vlan_id(), None);
        assert_eq!(frame.header_len(), HEADER_LEN);
        assert_eq!(frame.payload(), &fixtures::TCP_SYN[14..]);
        assert_eq!(frame.into_inner(), &fixtures::TCP_SYN[..]);

        let frame = Frame::new_checked(&fixtures::ICMPV6_ECHO[..]).unwrap();
        assert_eq!(frame.ethertype(), ethertype::IPV6);
    }

    #[test]
    fn tagged_frame() {
        let frame = Frame::new_checked(&fixtures::VLAN_UDP[..]).unwrap();
        assert_eq!(frame.destination(), [0xff; 6]);
        assert_eq!(frame.source(), GATEWAY_MAC);
        assert_eq!(frame.ethertype(), ethertype::IPV4);
        assert_eq!(frame.vlan_id(), Some(100));
        assert_eq!(frame.header_len(), TAGGED_HEADER_LEN);
        assert_eq!(frame.payload(), &fixtures::VLAN_UDP[18..]);

        // An 802.1ad outer tag is skipped the same way; a second tag is not.
        let mut qinq = fixtures::VLAN_UDP;
        qinq[12..14].copy_from_slice(&ethertype::QINQ.to_be_bytes());
        qinq[16..18].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        let frame = Frame::new_checked(&qinq[..]).unwrap();
        assert_eq!(frame.vlan_id(), Some(100));
        assert_eq!(frame.ethertype(), ethertype::VLAN);
    }

    #[test]
    fn agrees_with_etherparse() {
        for bytes in [&fixtures::TCP_SYN[..], &fixtures::VLAN_UDP[..]] {
            let frame = Frame::new_checked(bytes).unwrap();
            let sliced = etherparse::SlicedPacket::from_ethernet(bytes).unwrap();
            let Some(etherparse::LinkSlice::Ethernet2(link)) = sliced.link else {
                panic!("not ethernet");
            };
            assert_eq!(frame.destination(), link.destination());
            assert_eq!(frame.source(), link.source());
            let inner = match sliced.vlan {
                Some(etherparse::VlanSlice::SingleVlan(vlan)) => vlan.ether_type(),
                None => link.ether_type(),
                Some(other) => panic!("unexpected {other:?}"),
            };
            assert_eq!(frame.ethertype(), inner.0);
        }
    }

    #[test]
    fn setters() {
        let mut bytes = fixtures::VLAN_UDP;
        let mut frame = Frame::new_checked(&mut bytes[..]).unwrap();
        frame.set_destination(&POD_MAC);
        frame.set_source(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(frame.destination(), POD_MAC);
        assert_eq!(frame.source(), [1, 2, 3, 4, 5, 6]);
        frame.swap_addresses();
        assert_eq!(frame.destination(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(frame.source(), POD_MAC);
        frame.set_ethertype(ethertype::IPV6);
        assert_eq!(frame.ethertype(), ethertype::IPV6);
        assert_eq!(frame.vlan_id(), Some(100));
        frame.payload_mut()[0] = 0x60;
        assert_eq!(bytes[18], 0x60);
        assert_eq!(&bytes[12..14], &[0x81, 0x00]);
    }

    #[test]
    fn truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Frame::new_checked(&fixtures::TCP_SYN[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        assert!(Frame::new_checked(&fixtures::TCP_SYN[..HEADER_LEN]).is_ok());
        for len in 0..TAGGED_HEADER_LEN {
            assert_eq!(
                Frame::new_checked(&fixtures::VLAN_UDP[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        let frame = Frame::new_checked(&fixtures::VLAN_UDP[..TAGGED_HEADER_LEN]).unwrap();
        assert!(frame.payload().is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..40), tag in any::<bool>()) {
            if tag && bytes.len() >= 14 {
                bytes[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
            }
            if let Ok(mut frame) = Frame::new_checked(&mut bytes[..]) {
                let _ = (frame.destination(), frame.source(), frame.ethertype(), frame.vlan_id());
                prop_assert_eq!(frame.payload().len() + frame.header_len(), frame.buffer.len());
                frame.set_ethertype(ethertype::IPV4);
                frame.swap_addresses();
                let _ = frame.payload_mut();
            }
        }
    }
}
