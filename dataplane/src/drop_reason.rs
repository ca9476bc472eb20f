//! Why the pipeline refused a packet. One enum, shared by the workers' counters, metrics and traces.
//!
//! The numbers are part of kxdp's interface (metrics labels, traces, saved captures): once assigned, a
//! number never changes and is never reused. Add new reasons at the end.

/// Every reason a packet can be refused. `#[repr(u8)]` with explicit, frozen discriminants.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than an Ethernet header (or its VLAN tag).
    EthernetTruncated = 1,
    /// Neither IPv4 nor IPv6 after at most one VLAN tag.
    UnsupportedEthertype = 2,
    /// Shorter than a minimal IPv4 header.
    Ipv4Truncated = 3,
    /// Version field is not 4.
    Ipv4BadVersion = 4,
    /// IHL below 5 or beyond the frame.
    Ipv4BadHeaderLength = 5,
    /// Total length below the header length or beyond the frame.
    Ipv4BadTotalLength = 6,
    /// Header checksum does not verify.
    Ipv4BadChecksum = 7,
    /// Shorter than the fixed IPv6 header.
    Ipv6Truncated = 8,
    /// Version field is not 6.
    Ipv6BadVersion = 9,
    /// Payload length beyond the frame.
    Ipv6BadPayloadLength = 10,
    /// An extension header is cut short or malformed, or the chain is too long.
    Ipv6BadExtensionHeader = 11,
    /// A non-first fragment: it carries no ports, so it cannot be matched to a flow.
    NonFirstFragment = 12,
    /// A first fragment of a service flow: kxdp does not reassemble.
    FragmentedServicePacket = 13,
    /// TCP header cut short.
    TcpTruncated = 14,
    /// TCP data offset below 5 or beyond the packet.
    TcpBadDataOffset = 15,
    /// An impossible flag combination (SYN+FIN, SYN+RST, no flags at all).
    TcpBadFlags = 16,
    /// UDP header cut short.
    UdpTruncated = 17,
    /// UDP length field disagrees with the IP payload.
    UdpBadLength = 18,
    /// ICMP or ICMPv6 header cut short.
    IcmpTruncated = 19,
    /// An ICMP error whose quoted packet does not parse.
    IcmpBadQuote = 20,
    /// TTL or hop limit would reach zero.
    TtlExceeded = 21,
    /// `externalTrafficPolicy: Local` and no endpoint on this node.
    NoLocalEndpoints = 22,
    /// Source address outside the service's `loadBalancerSourceRanges`.
    SourceRangeDenied = 23,
    /// The flow's conntrack zone is full and nothing could be evicted.
    ConntrackFull = 24,
    /// No free SNAT port in this worker's slice for the backend.
    SnatPortsExhausted = 25,
    /// A frontend of a protocol the dataplane does not carry yet (SCTP).
    UnsupportedProtocol = 26,
    /// The service has no usable endpoint: the packet was answered with a TCP RST or ICMP unreachable.
    RejectedNoEndpoints = 27,
    /// A TCP RST for a flow kxdp does not track: nothing to reset.
    UntrackedTcpReset = 28,
    /// The frame buffer is too small to build the reply in.
    NoRoomForReply = 29,
    /// The address family of the packet has no node address to masquerade with.
    NoMasqueradeAddress = 30,
}

impl DropReason {
    /// Every reason, in number order. Counters are arrays indexed by `reason as usize`.
    pub const ALL: [DropReason; 30] = [
        Self::EthernetTruncated,
        Self::UnsupportedEthertype,
        Self::Ipv4Truncated,
        Self::Ipv4BadVersion,
        Self::Ipv4BadHeaderLength,
        Self::Ipv4BadTotalLength,
        Self::Ipv4BadChecksum,
        Self::Ipv6Truncated,
        Self::Ipv6BadVersion,
        Self::Ipv6BadPayloadLength,
        Self::Ipv6BadExtensionHeader,
        Self::NonFirstFragment,
        Self::FragmentedServicePacket,
        Self::TcpTruncated,
        Self::TcpBadDataOffset,
        Self::TcpBadFlags,
        Self::UdpTruncated,
        Self::UdpBadLength,
        Self::IcmpTruncated,
        Self::IcmpBadQuote,
        Self::TtlExceeded,
        Self::NoLocalEndpoints,
        Self::SourceRangeDenied,
        Self::ConntrackFull,
        Self::SnatPortsExhausted,
        Self::UnsupportedProtocol,
        Self::RejectedNoEndpoints,
        Self::UntrackedTcpReset,
        Self::NoRoomForReply,
        Self::NoMasqueradeAddress,
    ];

    /// One past the largest discriminant: the length of a per-reason counter array.
    pub const COUNT: usize = 31;

    /// A stable snake_case name for metrics labels and traces.
    pub fn name(self) -> &'static str {
        match self {
            Self::EthernetTruncated => "ethernet_truncated",
            Self::UnsupportedEthertype => "unsupported_ethertype",
            Self::Ipv4Truncated => "ipv4_truncated",
            Self::Ipv4BadVersion => "ipv4_bad_version",
            Self::Ipv4BadHeaderLength => "ipv4_bad_header_length",
            Self::Ipv4BadTotalLength => "ipv4_bad_total_length",
            Self::Ipv4BadChecksum => "ipv4_bad_checksum",
            Self::Ipv6Truncated => "ipv6_truncated",
            Self::Ipv6BadVersion => "ipv6_bad_version",
            Self::Ipv6BadPayloadLength => "ipv6_bad_payload_length",
            Self::Ipv6BadExtensionHeader => "ipv6_bad_extension_header",
            Self::NonFirstFragment => "non_first_fragment",
            Self::FragmentedServicePacket => "fragmented_service_packet",
            Self::TcpTruncated => "tcp_truncated",
            Self::TcpBadDataOffset => "tcp_bad_data_offset",
            Self::TcpBadFlags => "tcp_bad_flags",
            Self::UdpTruncated => "udp_truncated",
            Self::UdpBadLength => "udp_bad_length",
            Self::IcmpTruncated => "icmp_truncated",
            Self::IcmpBadQuote => "icmp_bad_quote",
            Self::TtlExceeded => "ttl_exceeded",
            Self::NoLocalEndpoints => "no_local_endpoints",
            Self::SourceRangeDenied => "source_range_denied",
            Self::ConntrackFull => "conntrack_full",
            Self::SnatPortsExhausted => "snat_ports_exhausted",
            Self::UnsupportedProtocol => "unsupported_protocol",
            Self::RejectedNoEndpoints => "rejected_no_endpoints",
            Self::UntrackedTcpReset => "untracked_tcp_reset",
            Self::NoRoomForReply => "no_room_for_reply",
            Self::NoMasqueradeAddress => "no_masquerade_address",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_frozen_and_dense() {
        // These pairs are an interface: change this test only to append.
        assert_eq!(DropReason::EthernetTruncated as u8, 1);
        assert_eq!(DropReason::RejectedNoEndpoints as u8, 27);
        assert_eq!(DropReason::NoMasqueradeAddress as u8, 30);
        for (index, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index + 1, "{reason:?}");
            assert!((*reason as usize) < DropReason::COUNT);
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }
}
