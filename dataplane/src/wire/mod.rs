//! Checked zero-copy views over packet bytes, one file per protocol (the smoltcp shape).
//!
//! Each view wraps `T: AsRef<[u8]>`; `new_checked` validates lengths once, after which no accessor
//! can panic. Mutating accessors need `T: AsMut<[u8]>`.

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    //! Every fixture taken apart layer by layer, the way the pipeline will, with every checksum
    //! verified.

    use super::*;

    fn verify_frame(bytes: &[u8]) -> (u8, usize) {
        let frame = ethernet::Frame::new_checked(bytes).unwrap();
        match frame.ethertype() {
            ethernet::ethertype::IPV4 => {
                let ip = ipv4::Packet::new_checked(frame.payload()).unwrap();
                assert!(ip.verify_checksum());
                let (source, destination) = (ip.source(), ip.destination());
                let payload = ip.payload();
                match ip.protocol() {
                    6 => {
                        let tcp = tcp::Packet::new_checked(payload).unwrap();
                        assert!(tcp.verify_checksum_v4(source, destination));
                    }
                    17 => {
                        let udp = udp::Packet::new_checked(payload).unwrap();
                        assert!(udp.verify_checksum_v4(source, destination));
                    }
                    1 => assert!(icmp::Packet::new_checked(payload)
                        .unwrap()
                        .verify_checksum()),
                    2 => assert_eq!(checksum::fold(checksum::sum(payload)), 0xffff),
                    other => panic!("unexpected protocol {other}"),
                }
                (ip.protocol(), payload.len())
            }
            ethernet::ethertype::IPV6 => {
                let ip = ipv6::Packet::new_checked(frame.payload()).unwrap();
                let upper = ip.upper_layer().unwrap();
                let (source, destination) = (ip.source(), ip.destination());
                let payload = &ip.payload()[upper.offset - ipv6::HEADER_LEN..];
                match upper.protocol {
                    6 => {
                        let tcp = tcp::Packet::new_checked(payload).unwrap();
                        assert!(tcp.verify_checksum_v6(&source, &destination));
                    }
                    58 => {
                        let icmp = icmpv6::Packet::new_checked(payload).unwrap();
                        assert!(icmp.verify_checksum(&source, &destination));
                    }
                    // A first fragment: the datagram is incomplete, nothing to verify.
                    17 => assert!(upper.fragment.is_some()),
                    other => panic!("unexpected next header {other}"),
                }
                (upper.protocol, payload.len())
            }
            other => panic!("unexpected ethertype {other:#06x}"),
        }
    }

    #[test]
    fn every_fixture_parses_and_verifies() {
        let cases: [(&[u8], u8, usize); 9] = [
            (&fixtures::TCP_SYN, 6, 40),
            (&fixtures::DNS_QUERY, 17, 62),
            (&fixtures::ICMP_ECHO, 1, 64),
            (&fixtures::IPV6_HBH_FRAG, 17, 32),
            (&fixtures::VLAN_UDP, 17, 12),
            (&fixtures::ICMPV6_ECHO, 58, 32),
            (&fixtures::ICMP_PORT_UNREACHABLE, 1, 36),
            (&fixtures::IPV4_OPTIONS, 2, 8),
            (&fixtures::IPV6_TCP_SYN, 6, 40),
        ];
        for (bytes, protocol, len) in cases {
            assert_eq!(verify_frame(bytes), (protocol, len));
        }
    }
}
