//! The vocabulary shared by the tables and the pipeline: flow keys, protocols, zones and time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// A transport protocol kxdp knows about. The discriminant is the IP protocol number.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Protocol {
    /// ICMP echo (IPv4); the echo identifier stands in for both ports.
    Icmp = 1,
    Tcp = 6,
    Udp = 17,
    /// ICMPv6 echo; the echo identifier stands in for both ports.
    Icmpv6 = 58,
    Sctp = 132,
}

impl Protocol {
    /// The protocol for an IP protocol / next-header number, if kxdp handles it.
    #[inline]
    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            1 => Some(Self::Icmp),
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            58 => Some(Self::Icmpv6),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Icmp => "ICMP",
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Icmpv6 => "ICMPv6",
            Self::Sctp => "SCTP",
        }
    }
}

/// One direction of a flow: source and destination address and port, and the protocol.
///
/// For ICMP echo both ports hold the echo identifier. Both addresses are always of one family.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub source_port: u16,
    pub destination_port: u16,
    pub protocol: Protocol,
}

impl FlowKey {
    pub fn new(
        protocol: Protocol,
        source: IpAddr,
        source_port: u16,
        destination: IpAddr,
        destination_port: u16,
    ) -> Self {
        Self {
            source,
            destination,
            source_port,
            destination_port,
            protocol,
        }
    }

    /// The same flow seen from the other end.
    pub fn reversed(&self) -> Self {
        Self {
            source: self.destination,
            destination: self.source,
            source_port: self.destination_port,
            destination_port: self.source_port,
            protocol: self.protocol,
        }
    }

    pub fn is_ipv6(&self) -> bool {
        self.source.is_ipv6()
    }

    /// Packs the key into five words for tables that store keys in atomics.
    ///
    /// IPv4 addresses are stored as IPv4-mapped IPv6 addresses; the family bit in the last word keeps
    /// `::ffff:a.b.c.d` (IPv6) and `a.b.c.d` (IPv4) apart.
    #[inline]
    pub fn to_words(&self) -> [u64; 5] {
        let (source, destination) = (address_bits(self.source), address_bits(self.destination));
        let family = u64::from(self.is_ipv6());
        [
            (source >> 64) as u64,
            source as u64,
            (destination >> 64) as u64,
            destination as u64,
            u64::from(self.source_port)
                | (u64::from(self.destination_port) << 16)
                | (u64::from(self.protocol.number()) << 32)
                | (family << 40)
                | (1 << 48), // never all-zero, so an empty slot is never a valid key
        ]
    }

    /// The inverse of [`FlowKey::to_words`]; `None` for words no key packs to.
    #[inline]
    pub fn from_words(words: [u64; 5]) -> Option<Self> {
        let last = words[4];
        if last >> 48 != 1 {
            return None;
        }
        let protocol = Protocol::from_number((last >> 32) as u8)?;
        let ipv6 = (last >> 40) & 1 == 1;
        let source = (u128::from(words[0]) << 64) | u128::from(words[1]);
        let destination = (u128::from(words[2]) << 64) | u128::from(words[3]);
        Some(Self {
            source: address_from_bits(source, ipv6)?,
            destination: address_from_bits(destination, ipv6)?,
            source_port: last as u16,
            destination_port: (last >> 16) as u16,
            protocol,
        })
    }
}

/// The IPv4-mapped prefix `::ffff:0:0/96`, as the high bits of a mapped address.
const V4_MAPPED: u128 = 0xffff << 32;

#[inline]
fn address_bits(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => V4_MAPPED | u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

#[inline]
fn address_from_bits(bits: u128, ipv6: bool) -> Option<IpAddr> {
    if ipv6 {
        Some(IpAddr::V6(Ipv6Addr::from_bits(bits)))
    } else if bits >> 32 == V4_MAPPED >> 32 {
        Some(IpAddr::V4(Ipv4Addr::from_bits(bits as u32)))
    } else {
        None
    }
}

/// Which direction of a flow a packet travels in.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to service: the direction that created the flow.
    Original,
    /// Backend back to the client.
    Reply,
}

/// Conntrack eviction zone. Each has its own budget, so a flood from outside cannot evict in-cluster flows.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Zone {
    /// Pod or host to a ClusterIP.
    EastWest = 0,
    /// Outside to a NodePort, LoadBalancer IP or ExternalIP.
    NorthSouth = 1,
}

/// A point on the caller's monotonic clock. The pipeline never reads a clock; tests move this by hand.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    nanos: u64,
}

impl Timestamp {
    pub const ZERO: Self = Self { nanos: 0 };

    pub const fn from_nanos(nanos: u64) -> Self {
        Self { nanos }
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self {
            nanos: secs.saturating_mul(1_000_000_000),
        }
    }

    pub const fn as_nanos(self) -> u64 {
        self.nanos
    }

    /// Whole seconds; tables store these as `u32`, enough for 136 years of uptime.
    pub const fn as_secs(self) -> u64 {
        self.nanos / 1_000_000_000
    }

    pub fn saturating_add(self, duration: Duration) -> Self {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Self {
            nanos: self.nanos.saturating_add(nanos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_both_families() {
        let v4 = FlowKey::new(
            Protocol::Udp,
            "10.0.0.1".parse().unwrap(),
            5353,
            "10.96.0.10".parse().unwrap(),
            53,
        );
        let v6 = FlowKey::new(
            Protocol::Tcp,
            "fd00::1".parse().unwrap(),
            40000,
            "fd00:96::1".parse().unwrap(),
            443,
        );
        let mapped = FlowKey::new(
            Protocol::Tcp,
            "::ffff:10.0.0.1".parse().unwrap(),
            1,
            "::ffff:10.0.0.2".parse().unwrap(),
            2,
        );
        for key in [v4, v6, mapped] {
            assert_eq!(FlowKey::from_words(key.to_words()), Some(key));
        }
        assert_ne!(
            mapped.to_words(),
            FlowKey::new(
                Protocol::Tcp,
                "10.0.0.1".parse().unwrap(),
                1,
                "10.0.0.2".parse().unwrap(),
                2
            )
            .to_words()
        );
        assert_eq!(FlowKey::from_words([0; 5]), None);
    }

    #[test]
    fn reversed_swaps_ends() {
        let key = FlowKey::new(
            Protocol::Tcp,
            "1.1.1.1".parse().unwrap(),
            1,
            "2.2.2.2".parse().unwrap(),
            2,
        );
        let back = key.reversed();
        assert_eq!(
            (back.source, back.source_port),
            (key.destination, key.destination_port)
        );
        assert_eq!(back.reversed(), key);
    }
}
