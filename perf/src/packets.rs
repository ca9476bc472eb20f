//! Ethernet frames for synthetic flows, built with etherparse so every length and checksum is right
//! independently of kxdp's own wire code (the bench must not grade the pipeline with its own ruler).

use std::net::IpAddr;

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep, TcpHeader};
use kxdp_dataplane::{FlowKey, Protocol};

/// The MAC of the sending pod (or backend, for replies): locally administered.
pub const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// The MAC of the node's side of the veth the packet arrives on.
pub const NODE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
/// Pods send with Linux's default TTL/hop limit.
pub const HOP_LIMIT: u8 = 64;

/// The TCP segments a synthetic flow is made of.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Syn,
    SynAck,
    Ack,
    /// ACK + PSH with payload.
    Data,
    /// FIN + ACK.
    Fin,
}

/// Sequence numbers of a segment; the generator advances them, the bench keeps them fixed (kxdp does
/// not track TCP windows, like kube-proxy's conntrack in its default loose mode).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Sequence {
    pub sequence: u32,
    pub acknowledgment: u32,
}

fn ip_step(key: &FlowKey) -> PacketBuilderStep<IpHeaders> {
    let ethernet = PacketBuilder::ethernet2(PEER_MAC, NODE_MAC);
    match (key.source, key.destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            ethernet.ipv4(source.octets(), destination.octets(), HOP_LIMIT)
        }
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            ethernet.ipv6(source.octets(), destination.octets(), HOP_LIMIT)
        }
        _ => panic!("flow key mixes address families: {key:?}"),
    }
}

/// Appends one TCP frame of `key`'s direction to `out`.
pub fn tcp_frame(
    out: &mut Vec<u8>,
    key: &FlowKey,
    segment: Segment,
    sequence: Sequence,
    payload: &[u8],
) {
    let mut header = TcpHeader::new(
        key.source_port,
        key.destination_port,
        sequence.sequence,
        64240,
    );
    let payload = match segment {
        Segment::Syn => {
            header.syn = true;
            &[][..]
        }
        Segment::SynAck => {
            header.syn = true;
            header.ack = true;
            &[][..]
        }
        Segment::Ack => {
            header.ack = true;
            &[][..]
        }
        Segment::Data => {
            header.ack = true;
            header.psh = true;
            payload
        }
        Segment::Fin => {
            header.fin = true;
            header.ack = true;
            &[][..]
        }
    };
    if header.ack {
        header.acknowledgment_number = sequence.acknowledgment;
    }
    ip_step(key)
        .tcp_header(header)
        .write(out, payload)
        .expect("writing to a Vec cannot fail");
}

/// Appends one UDP frame of `key`'s direction to `out`.
pub fn udp_frame(out: &mut Vec<u8>, key: &FlowKey, payload: &[u8]) {
    ip_step(key)
        .udp(key.source_port, key.destination_port)
        .write(out, payload)
        .expect("writing to a Vec cannot fail");
}

/// Appends the frame a flow's steady state sends: a data segment for TCP, a datagram for UDP.
pub fn data_frame(out: &mut Vec<u8>, key: &FlowKey, payload: &[u8]) {
    match key.protocol {
        Protocol::Udp => udp_frame(out, key, payload),
        _ => tcp_frame(out, key, Segment::Data, Sequence::default(), payload),
    }
}

/// A small DNS query for `service`'s name: enough to look like port-53 traffic in a capture.
pub fn dns_query(id: u16, service: u32) -> Vec<u8> {
    let mut query = Vec::with_capacity(64);
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    let name = format!("svc-{service}");
    for label in [name.as_str(), "bench", "svc", "cluster", "local"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    query
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn key(source: &str, destination: &str, protocol: Protocol) -> FlowKey {
        FlowKey::new(
            protocol,
            source.parse().unwrap(),
            40000,
            destination.parse().unwrap(),
            80,
        )
    }

    #[test]
    fn tcp_frames_parse_back_with_valid_checksums() {
        for (source, destination) in [
            ("10.244.200.1", "10.96.0.16"),
            ("fd00:244::2:0:1", "fd00:96::10"),
        ] {
            let key = key(source, destination, Protocol::Tcp);
            let mut out = Vec::new();
            tcp_frame(
                &mut out,
                &key,
                Segment::Data,
                Sequence {
                    sequence: 7,
                    acknowledgment: 9,
                },
                b"hello",
            );
            let packet = SlicedPacket::from_ethernet(&out).unwrap();
            let Some(TransportSlice::Tcp(tcp)) = packet.transport else {
                panic!("not TCP")
            };
            assert!(tcp.psh() && tcp.ack() && !tcp.syn());
            assert_eq!((tcp.sequence_number(), tcp.acknowledgment_number()), (7, 9));
            assert_eq!(tcp.payload(), b"hello");
            let expected = match packet.net {
                Some(NetSlice::Ipv4(ip)) => {
                    assert_eq!(ip.header().ttl(), HOP_LIMIT);
                    assert_eq!(
                        ip.header().header_checksum(),
                        ip.header().to_header().calc_header_checksum()
                    );
                    tcp.to_header()
                        .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
                        .unwrap()
                }
                Some(NetSlice::Ipv6(ip)) => tcp
                    .to_header()
                    .calc_checksum_ipv6(&ip.header().to_header(), tcp.payload())
                    .unwrap(),
                _ => panic!("no IP"),
            };
            assert_eq!(tcp.checksum(), expected);
        }
    }

    #[test]
    fn udp_frames_carry_the_ports_and_payload() {
        let key = FlowKey::new(
            Protocol::Udp,
            "10.244.200.1".parse().unwrap(),
            5000,
            "10.96.0.16".parse().unwrap(),
            53,
        );
        let mut out = Vec::new();
        data_frame(&mut out, &key, &dns_query(1, 0));
        let packet = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(TransportSlice::Udp(udp)) = packet.transport else {
            panic!("not UDP")
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (5000, 53));
        assert_ne!(udp.checksum(), 0);
    }
}
