//! The datapath fixture table (Katran style): each row is a description, an input frame, and the
//! verdict and output frame expected from the real pipeline. Rows run in order against one worker
//! and one conntrack table, so reply rows follow the flows that earlier rows created.
//!
//! Expected frames are built by etherparse with full checksums, so every incremental checksum update
//! in the pipeline is checked against an independent full computation.

mod common;

use common::*;
use kxdp_dataplane::pipeline::Verdict;
use kxdp_dataplane::DropReason;

enum Expect {
    Transmit(u32, Vec<u8>),
    ToHost(Vec<u8>),
    Drop(DropReason),
}

struct Row {
    description: &'static str,
    ingress: u32,
    partial_checksum: bool,
    input: Vec<u8>,
    expect: Expect,
}

fn row(description: &'static str, ingress: u32, input: Vec<u8>, expect: Expect) -> Row {
    Row {
        description,
        ingress,
        partial_checksum: false,
        input,
        expect,
    }
}

/// A row whose input carries only the pseudo-header sum in its L4 checksum (a local veth with TX
/// checksum offload); the output must carry the full, valid checksum.
fn partial_row(
    description: &'static str,
    ingress: u32,
    mut input: Vec<u8>,
    checksum_offset: usize,
    expect: Expect,
) -> Row {
    make_checksum_partial(&mut input, checksum_offset);
    Row {
        description,
        ingress,
        partial_checksum: true,
        input,
        expect,
    }
}

fn transmit(packet: &Packet, egress: u32) -> Expect {
    Expect::Transmit(egress, packet.bytes())
}

/// A reply kxdp builds: from the node's MAC on the ingress interface back to the sender's MAC.
fn reply_from_node(ingress: u32, source: &str, destination: &str, transport: Transport) -> Packet {
    Packet {
        source_mac: node_mac(ingress),
        destination_mac: peer_mac(ingress),
        vlan: None,
        source: ip(source),
        destination: ip(destination),
        ttl: 64,
        transport,
    }
}

fn with_address(mut packet: Packet, source: Option<&str>, destination: Option<&str>) -> Packet {
    if let Some(address) = source {
        packet.source = ip(address);
    }
    if let Some(address) = destination {
        packet.destination = ip(address);
    }
    packet
}

fn rst_reply(
    source: &str,
    source_port: u16,
    destination: &str,
    destination_port: u16,
    sequence: u32,
    ack: Option<u32>,
) -> Packet {
    reply_from_node(
        CLIENT_VETH,
        source,
        destination,
        Transport::Tcp(TcpFields {
            source_port,
            destination_port,
            sequence,
            ack,
            syn: false,
            fin: false,
            rst: true,
            psh: false,
            window: 0,
            payload: Vec::new(),
        }),
    )
}

/// Inserts four bytes of IPv4 options (NOP, NOP, NOP, EOL) into an untagged IPv4 frame.
fn with_ipv4_options(mut frame: Vec<u8>) -> Vec<u8> {
    frame.splice(34..34, [1, 1, 1, 0]);
    frame[14] = 0x46;
    let total = u16::from_be_bytes([frame[16], frame[17]]) + 4;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut frame);
    frame
}

/// Inserts an empty hop-by-hop options header in front of the L4 header of an untagged IPv6 frame.
fn with_hop_by_hop(mut frame: Vec<u8>) -> Vec<u8> {
    let upper = frame[20];
    frame.splice(54..54, [upper, 0, 1, 4, 0, 0, 0, 0]);
    frame[20] = 0;
    let payload_len = u16::from_be_bytes([frame[18], frame[19]]) + 8;
    frame[18..20].copy_from_slice(&payload_len.to_be_bytes());
    frame
}

/// Cuts an untagged IPv4 frame to `l4_len` bytes of L4 and fixes the IP total length to match.
fn truncate_l4_v4(mut frame: Vec<u8>, l4_len: usize) -> Vec<u8> {
    frame.truncate(34 + l4_len);
    frame[16..18].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    fix_ipv4_checksum(&mut frame);
    frame
}

fn icmp_error_frame(ingress: u32, source: &str, destination: &str, quote: Vec<u8>) -> Vec<u8> {
    Packet::arriving(
        ingress,
        source,
        destination,
        Transport::PortUnreachable { quote },
    )
    .bytes()
}

fn table() -> Vec<Row> {
    use Expect::Drop as Dropped;
    let mut rows = Vec::new();
    let get = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n";

    // --- ClusterIP, TCP, IPv4 ---------------------------------------------------------------
    let syn_in = Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", syn(40000, 80));
    rows.push(row(
        "ClusterIP TCP SYN is DNATed to the backend and routed to its veth",
        CLIENT_VETH,
        syn_in.bytes(),
        transmit(
            &syn_in.leaving(WEB_VETH).with_destination(WEB, 8080),
            WEB_VETH,
        ),
    ));
    let syn_ack_in = Packet::arriving(WEB_VETH, WEB, CLIENT, syn_ack(8080, 40000));
    rows.push(row(
        "ClusterIP TCP SYN-ACK from the backend is reverse-NATed to the ClusterIP",
        WEB_VETH,
        syn_ack_in.bytes(),
        transmit(
            &syn_ack_in
                .leaving(CLIENT_VETH)
                .with_source("10.96.0.10", 80),
            CLIENT_VETH,
        ),
    ));
    let data_in = Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", data(40000, 80, get));
    rows.push(row(
        "ClusterIP TCP data follows the established flow",
        CLIENT_VETH,
        data_in.bytes(),
        transmit(
            &data_in.leaving(WEB_VETH).with_destination(WEB, 8080),
            WEB_VETH,
        ),
    ));
    rows.push(partial_row(
        "ClusterIP TCP data with a partial checksum leaves with a full one",
        CLIENT_VETH,
        data_in.bytes(),
        16,
        transmit(
            &data_in.leaving(WEB_VETH).with_destination(WEB, 8080),
            WEB_VETH,
        ),
    ));
    let fin_in = Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", fin(40000, 80));
    rows.push(row(
        "ClusterIP TCP FIN follows the flow",
        CLIENT_VETH,
        fin_in.bytes(),
        transmit(
            &fin_in.leaving(WEB_VETH).with_destination(WEB, 8080),
            WEB_VETH,
        ),
    ));
    let partial_syn = Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", syn(40002, 80));
    rows.push(partial_row(
        "ClusterIP TCP SYN of a new flow with a partial checksum leaves with a full one",
        CLIENT_VETH,
        partial_syn.bytes(),
        16,
        transmit(
            &partial_syn.leaving(WEB_VETH).with_destination(WEB, 8080),
            WEB_VETH,
        ),
    ));
    let tagged = Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", syn(40060, 80)).with_vlan(100);
    rows.push(row(
        "A VLAN-tagged SYN is translated and keeps its tag",
        CLIENT_VETH,
        tagged.bytes(),
        transmit(
            &tagged.leaving(WEB_VETH).with_destination(WEB, 8080),
            WEB_VETH,
        ),
    ));
    let optioned = Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", syn(40061, 80));
    rows.push(row(
        "IPv4 options are kept through DNAT",
        CLIENT_VETH,
        with_ipv4_options(optioned.bytes()),
        Expect::Transmit(
            WEB_VETH,
            with_ipv4_options(
                optioned
                    .leaving(WEB_VETH)
                    .with_destination(WEB, 8080)
                    .bytes(),
            ),
        ),
    ));

    // --- ClusterIP, UDP, IPv4 ---------------------------------------------------------------
    let query = Packet::arriving(
        CLIENT_VETH,
        CLIENT,
        "10.96.0.53",
        udp(5353, 53, &dns_query()),
    );
    let query_at_backend = query.leaving(DNS_VETH).with_destination(DNS, 53);
    rows.push(row(
        "ClusterIP UDP DNS query is DNATed to the DNS backend",
        CLIENT_VETH,
        query.bytes(),
        transmit(&query_at_backend, DNS_VETH),
    ));
    let answer = Packet::arriving(
        DNS_VETH,
        DNS,
        CLIENT,
        udp(
            53,
            5353,
            &[
                dns_query(),
                vec![0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 93, 184, 216, 34],
            ]
            .concat(),
        ),
    );
    rows.push(row(
        "ClusterIP UDP DNS answer is reverse-NATed",
        DNS_VETH,
        answer.bytes(),
        transmit(
            &answer.leaving(CLIENT_VETH).with_source("10.96.0.53", 53),
            CLIENT_VETH,
        ),
    ));
    let partial_query = Packet::arriving(
        CLIENT_VETH,
        CLIENT,
        "10.96.0.53",
        udp(5354, 53, &dns_query()),
    );
    rows.push(partial_row(
        "ClusterIP UDP with a partial checksum leaves with a full one",
        CLIENT_VETH,
        partial_query.bytes(),
        6,
        transmit(
            &partial_query.leaving(DNS_VETH).with_destination(DNS, 53),
            DNS_VETH,
        ),
    ));
    let unchecked = Packet::arriving(
        CLIENT_VETH,
        CLIENT,
        "10.96.0.53",
        udp(5355, 53, &dns_query()),
    );
    let zero_checksum = |mut frame: Vec<u8>| {
        frame[40] = 0;
        frame[41] = 0;
        frame
    };
    rows.push(row(
        "IPv4 UDP without a checksum stays without one",
        CLIENT_VETH,
        zero_checksum(unchecked.bytes()),
        Expect::Transmit(
            DNS_VETH,
            zero_checksum(
                unchecked
                    .leaving(DNS_VETH)
                    .with_destination(DNS, 53)
                    .bytes(),
            ),
        ),
    ));

    // --- ClusterIP, IPv6 --------------------------------------------------------------------
    let syn6 = Packet::arriving(CLIENT_VETH, CLIENT_V6, "fd00:96::10", syn(40000, 80));
    rows.push(row(
        "IPv6 ClusterIP TCP SYN is DNATed",
        CLIENT_VETH,
        syn6.bytes(),
        transmit(
            &syn6.leaving(WEB_VETH).with_destination(WEB_V6, 8080),
            WEB_VETH,
        ),
    ));
    let syn_ack6 = Packet::arriving(WEB_VETH, WEB_V6, CLIENT_V6, syn_ack(8080, 40000));
    rows.push(row(
        "IPv6 ClusterIP TCP SYN-ACK is reverse-NATed",
        WEB_VETH,
        syn_ack6.bytes(),
        transmit(
            &syn_ack6.leaving(CLIENT_VETH).with_source("fd00:96::10", 80),
            CLIENT_VETH,
        ),
    ));
    let partial6 = Packet::arriving(CLIENT_VETH, CLIENT_V6, "fd00:96::10", syn(40003, 80));
    rows.push(partial_row(
        "IPv6 TCP SYN with a partial checksum leaves with a full one",
        CLIENT_VETH,
        partial6.bytes(),
        16,
        transmit(
            &partial6.leaving(WEB_VETH).with_destination(WEB_V6, 8080),
            WEB_VETH,
        ),
    ));
    let hop_by_hop = Packet::arriving(CLIENT_VETH, CLIENT_V6, "fd00:96::10", syn(40004, 80));
    rows.push(row(
        "IPv6 with a hop-by-hop header: the L4 header is found and translated",
        CLIENT_VETH,
        with_hop_by_hop(hop_by_hop.bytes()),
        Expect::Transmit(
            WEB_VETH,
            with_hop_by_hop(
                hop_by_hop
                    .leaving(WEB_VETH)
                    .with_destination(WEB_V6, 8080)
                    .bytes(),
            ),
        ),
    ));
    let query6 = Packet::arriving(
        CLIENT_VETH,
        CLIENT_V6,
        "fd00:96::53",
        udp(5353, 53, &dns_query()),
    );
    let query6_at_backend = query6.leaving(DNS_VETH).with_destination(DNS_V6, 53);
    rows.push(row(
        "IPv6 ClusterIP UDP DNS query is DNATed",
        CLIENT_VETH,
        query6.bytes(),
        transmit(&query6_at_backend, DNS_VETH),
    ));
    let answer6 = Packet::arriving(DNS_VETH, DNS_V6, CLIENT_V6, udp(53, 5353, &dns_query()));
    rows.push(row(
        "IPv6 ClusterIP UDP DNS answer is reverse-NATed",
        DNS_VETH,
        answer6.bytes(),
        transmit(
            &answer6.leaving(CLIENT_VETH).with_source("fd00:96::53", 53),
            CLIENT_VETH,
        ),
    ));
    let partial_query6 = Packet::arriving(
        CLIENT_VETH,
        CLIENT_V6,
        "fd00:96::53",
        udp(5354, 53, &dns_query()),
    );
    rows.push(partial_row(
        "IPv6 UDP with a partial checksum leaves with a full one",
        CLIENT_VETH,
        partial_query6.bytes(),
        6,
        transmit(
            &partial_query6
                .leaving(DNS_VETH)
                .with_destination(DNS_V6, 53),
            DNS_VETH,
        ),
    ));

    // --- NodePort, LoadBalancer, traffic policies --------------------------------------------
    let nodeport = Packet::arriving(UPLINK, EXTERNAL, NODE_V4, syn(5555, 30080));
    rows.push(row(
        "NodePort to a local backend keeps the client address",
        UPLINK,
        nodeport.bytes(),
        transmit(
            &nodeport.leaving(WEB_VETH).with_destination(WEB, 8080),
            WEB_VETH,
        ),
    ));
    let nodeport_reply = Packet::arriving(WEB_VETH, WEB, EXTERNAL, syn_ack(8080, 5555));
    rows.push(row(
        "NodePort reply from the local backend is reverse-NATed to the node address",
        WEB_VETH,
        nodeport_reply.bytes(),
        transmit(
            &nodeport_reply.leaving(UPLINK).with_source(NODE_V4, 30080),
            UPLINK,
        ),
    ));
    let masqueraded = Packet::arriving(UPLINK, EXTERNAL, NODE_V4, syn(5556, 30081));
    rows.push(row(
        "NodePort to a backend on another node is masqueraded to the node address",
        UPLINK,
        masqueraded.bytes(),
        transmit(
            &masqueraded
                .leaving(UPLINK)
                .with_source(NODE_V4, 61000)
                .with_destination(REMOTE, 8080),
            UPLINK,
        ),
    ));
    let masqueraded_reply = Packet::arriving(UPLINK, REMOTE, NODE_V4, syn_ack(8080, 61000));
    rows.push(row(
        "The remote backend's reply to the SNAT port goes back to the outside client",
        UPLINK,
        masqueraded_reply.bytes(),
        transmit(
            &masqueraded_reply
                .leaving(UPLINK)
                .with_source(NODE_V4, 30081)
                .with_destination(EXTERNAL, 5556),
            UPLINK,
        ),
    ));
    rows.push(row(
        "externalTrafficPolicy=Local without a local endpoint drops",
        UPLINK,
        Packet::arriving(UPLINK, EXTERNAL, NODE_V4, syn(5557, 30082)).bytes(),
        Dropped(DropReason::NoLocalEndpoints),
    ));
    let local_policy = Packet::arriving(UPLINK, EXTERNAL, NODE_V4, syn(5558, 30083));
    rows.push(row(
        "externalTrafficPolicy=Local uses the local endpoint and keeps the client address",
        UPLINK,
        local_policy.bytes(),
        transmit(
            &local_policy.leaving(WEB_VETH).with_destination(WEB, 8082),
            WEB_VETH,
        ),
    ));
    let allowed = Packet::arriving(UPLINK, "198.51.100.9", "203.0.113.50", syn(6000, 443));
    rows.push(row(
        "LoadBalancer IP from a source inside loadBalancerSourceRanges is translated",
        UPLINK,
        allowed.bytes(),
        transmit(
            &allowed.leaving(WEB_VETH).with_destination(WEB, 8443),
            WEB_VETH,
        ),
    ));
    rows.push(row(
        "LoadBalancer IP from a source outside loadBalancerSourceRanges drops",
        UPLINK,
        Packet::arriving(UPLINK, EXTERNAL, "203.0.113.50", syn(6001, 443)).bytes(),
        Dropped(DropReason::SourceRangeDenied),
    ));
    let cluster_ip_of_lb = Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.30", syn(40010, 443));
    rows.push(row(
        "The ClusterIP of a LoadBalancer service ignores its source ranges",
        CLIENT_VETH,
        cluster_ip_of_lb.bytes(),
        transmit(
            &cluster_ip_of_lb
                .leaving(WEB_VETH)
                .with_destination(WEB, 8443),
            WEB_VETH,
        ),
    ));

    // --- No endpoints: reject at once ---------------------------------------------------------
    rows.push(row(
        "SYN to a service without endpoints is answered with RST+ACK",
        CLIENT_VETH,
        Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.99", syn(40020, 80)).bytes(),
        transmit(
            &rst_reply("10.96.0.99", 80, CLIENT, 40020, 0, Some(1_001)),
            CLIENT_VETH,
        ),
    ));
    rows.push(row(
        "An ACK to a service without endpoints is answered with RST seq=ack",
        CLIENT_VETH,
        Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.99", tcp(40021, 80, "A")).bytes(),
        transmit(
            &rst_reply("10.96.0.99", 80, CLIENT, 40021, 5_001, None),
            CLIENT_VETH,
        ),
    ));
    let refused_query = Packet::arriving(
        CLIENT_VETH,
        CLIENT,
        "10.96.0.99",
        udp(5360, 53, &dns_query()),
    );
    rows.push(row(
        "UDP to a service without endpoints gets ICMP port unreachable quoting it",
        CLIENT_VETH,
        refused_query.bytes(),
        transmit(
            &reply_from_node(
                CLIENT_VETH,
                "10.96.0.99",
                CLIENT,
                Transport::PortUnreachable {
                    quote: refused_query.ip_bytes(),
                },
            ),
            CLIENT_VETH,
        ),
    ));
    rows.push(row(
        "IPv6 SYN to a service without endpoints is answered with RST+ACK",
        CLIENT_VETH,
        Packet::arriving(CLIENT_VETH, CLIENT_V6, "fd00:96::99", syn(40022, 80)).bytes(),
        transmit(
            &rst_reply("fd00:96::99", 80, CLIENT_V6, 40022, 0, Some(1_001)),
            CLIENT_VETH,
        ),
    ));
    let refused_query6 = Packet::arriving(
        CLIENT_VETH,
        CLIENT_V6,
        "fd00:96::99",
        udp(5361, 53, &dns_query()),
    );
    rows.push(row(
        "IPv6 UDP to a service without endpoints gets ICMPv6 port unreachable quoting it",
        CLIENT_VETH,
        refused_query6.bytes(),
        transmit(
            &reply_from_node(
                CLIENT_VETH,
                "fd00:96::99",
                CLIENT_V6,
                Transport::PortUnreachable {
                    quote: refused_query6.ip_bytes(),
                },
            ),
            CLIENT_VETH,
        ),
    ));

    // --- Hairpin ---------------------------------------------------------------------------
    let hairpin = Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.77", syn(40030, 80));
    rows.push(row(
        "A pod reaching itself through its Service is masqueraded (hairpin)",
        CLIENT_VETH,
        hairpin.bytes(),
        transmit(
            &hairpin
                .leaving(CLIENT_VETH)
                .with_source(NODE_V4, 61001)
                .with_destination(CLIENT, 80),
            CLIENT_VETH,
        ),
    ));
    let hairpin_reply = Packet::arriving(CLIENT_VETH, CLIENT, NODE_V4, syn_ack(80, 61001));
    rows.push(row(
        "The hairpin reply is turned back into the Service's answer",
        CLIENT_VETH,
        hairpin_reply.bytes(),
        transmit(
            &hairpin_reply
                .leaving(CLIENT_VETH)
                .with_source("10.96.0.77", 80)
                .with_destination(CLIENT, 40030),
            CLIENT_VETH,
        ),
    ));

    // --- ICMP errors about tracked flows ------------------------------------------------------
    let query_as_sent = query.leaving(DNS_VETH); // what the client's quote must look like again
    let error = Packet::arriving(
        DNS_VETH,
        DNS,
        CLIENT,
        Transport::PortUnreachable {
            quote: query_at_backend.ip_bytes(),
        },
    );
    rows.push(row(
        "ICMP port unreachable from the DNS backend is translated, quote included",
        DNS_VETH,
        error.bytes(),
        transmit(
            &with_address(
                Packet {
                    transport: Transport::PortUnreachable {
                        quote: query_as_sent.ip_bytes(),
                    },
                    ..error.leaving(CLIENT_VETH)
                },
                Some("10.96.0.53"),
                None,
            ),
            CLIENT_VETH,
        ),
    ));
    let router_error = Packet::arriving(
        DNS_VETH,
        "10.244.1.1",
        CLIENT,
        Transport::PortUnreachable {
            quote: query_at_backend.ip_bytes(),
        },
    );
    rows.push(row(
        "An ICMP error from a router on the path keeps the router's address",
        DNS_VETH,
        router_error.bytes(),
        transmit(
            &Packet {
                transport: Transport::PortUnreachable {
                    quote: query_as_sent.ip_bytes(),
                },
                ..router_error.leaving(CLIENT_VETH)
            },
            CLIENT_VETH,
        ),
    ));
    let error6 = Packet::arriving(
        DNS_VETH,
        DNS_V6,
        CLIENT_V6,
        Transport::PortUnreachable {
            quote: query6_at_backend.ip_bytes(),
        },
    );
    rows.push(row(
        "ICMPv6 port unreachable from the IPv6 DNS backend is translated, quote included",
        DNS_VETH,
        error6.bytes(),
        transmit(
            &with_address(
                Packet {
                    transport: Transport::PortUnreachable {
                        quote: query6.leaving(DNS_VETH).ip_bytes(),
                    },
                    ..error6.leaving(CLIENT_VETH)
                },
                Some("fd00:96::53"),
                None,
            ),
            CLIENT_VETH,
        ),
    ));
    let masqueraded_at_backend = masqueraded
        .leaving(UPLINK)
        .with_source(NODE_V4, 61000)
        .with_destination(REMOTE, 8080);
    let remote_error = Packet::arriving(
        UPLINK,
        REMOTE,
        NODE_V4,
        Transport::PortUnreachable {
            quote: masqueraded_at_backend.ip_bytes()[..28].to_vec(),
        },
    );
    rows.push(row(
        "An ICMP error about a masqueraded flow goes back to the outside client (8-byte quote)",
        UPLINK,
        remote_error.bytes(),
        transmit(
            &with_address(
                Packet {
                    transport: Transport::PortUnreachable {
                        quote: masqueraded.leaving(UPLINK).ip_bytes()[..28].to_vec(),
                    },
                    ..remote_error.leaving(UPLINK)
                },
                Some(NODE_V4),
                Some(EXTERNAL),
            ),
            UPLINK,
        ),
    ));
    let stranger =
        Packet::arriving(CLIENT_VETH, CLIENT, DNS, udp(9999, 53, b"x")).leaving(DNS_VETH);
    let untracked_error = Packet::arriving(
        DNS_VETH,
        DNS,
        CLIENT,
        Transport::PortUnreachable {
            quote: stranger.ip_bytes(),
        },
    );
    rows.push(row(
        "An ICMP error about a flow kxdp does not track is forwarded unchanged",
        DNS_VETH,
        untracked_error.bytes(),
        transmit(&untracked_error.leaving(CLIENT_VETH), CLIENT_VETH),
    ));
    rows.push(row(
        "An ICMP error quoting ten bytes of garbage drops",
        DNS_VETH,
        icmp_error_frame(
            DNS_VETH,
            DNS,
            CLIENT,
            vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 17],
        ),
        Dropped(DropReason::IcmpBadQuote),
    ));
    let mut bad_ihl_quote = query_at_backend.ip_bytes();
    bad_ihl_quote[0] = 0x43;
    rows.push(row(
        "An ICMP error quoting a header with IHL 3 drops",
        DNS_VETH,
        icmp_error_frame(DNS_VETH, DNS, CLIENT, bad_ihl_quote),
        Dropped(DropReason::IcmpBadQuote),
    ));
    rows.push(row(
        "An ICMP error quoting an IP header without 8 bytes of L4 drops",
        DNS_VETH,
        icmp_error_frame(
            DNS_VETH,
            DNS,
            CLIENT,
            query_at_backend.ip_bytes()[..24].to_vec(),
        ),
        Dropped(DropReason::IcmpBadQuote),
    ));

    // --- ICMP echo and plain forwarding --------------------------------------------------------
    let ping = Transport::EchoRequest {
        id: 7,
        sequence: 1,
        payload: b"kxdp ping".to_vec(),
    };
    let pong = Transport::EchoReply {
        id: 7,
        sequence: 1,
        payload: b"kxdp ping".to_vec(),
    };
    rows.push(row(
        "Echo request to a ClusterIP is answered by kxdp",
        CLIENT_VETH,
        Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", ping.clone()).bytes(),
        transmit(
            &reply_from_node(CLIENT_VETH, "10.96.0.10", CLIENT, pong.clone()),
            CLIENT_VETH,
        ),
    ));
    rows.push(row(
        "IPv6 echo request to a ClusterIP is answered by kxdp",
        CLIENT_VETH,
        Packet::arriving(CLIENT_VETH, CLIENT_V6, "fd00:96::10", ping.clone()).bytes(),
        transmit(
            &reply_from_node(CLIENT_VETH, "fd00:96::10", CLIENT_V6, pong),
            CLIENT_VETH,
        ),
    ));
    let pod_ping = Packet::arriving(CLIENT_VETH, CLIENT, WEB, ping);
    rows.push(row(
        "Echo between pods passes through unchanged",
        CLIENT_VETH,
        pod_ping.bytes(),
        transmit(&pod_ping.leaving(WEB_VETH), WEB_VETH),
    ));
    let pod_to_pod = Packet::arriving(CLIENT_VETH, CLIENT, WEB, syn(40040, 8080));
    rows.push(row(
        "Pod-to-pod TCP that is not a service flow is forwarded unchanged",
        CLIENT_VETH,
        pod_to_pod.bytes(),
        transmit(&pod_to_pod.leaving(WEB_VETH), WEB_VETH),
    ));
    let unroutable = Packet::arriving(CLIENT_VETH, CLIENT, "192.0.2.99", syn(40041, 80));
    rows.push(row(
        "Traffic without a resolved next hop goes to the host stack, TTL lowered",
        CLIENT_VETH,
        unroutable.bytes(),
        Expect::ToHost(unroutable.clone().with_ttl(63).bytes()),
    ));
    rows.push(row(
        "TTL 1 to a service drops",
        CLIENT_VETH,
        Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", syn(40050, 80))
            .with_ttl(1)
            .bytes(),
        Dropped(DropReason::TtlExceeded),
    ));

    // --- Malformed and refused input ------------------------------------------------------------
    let valid = Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", syn(40080, 80)).bytes();
    let mutate = |change: &dyn Fn(&mut Vec<u8>)| {
        let mut frame = valid.clone();
        change(&mut frame);
        frame
    };
    rows.push(row(
        "Ethernet header cut short",
        CLIENT_VETH,
        valid[..10].to_vec(),
        Dropped(DropReason::EthernetTruncated),
    ));
    rows.push(row(
        "ARP is not service traffic",
        CLIENT_VETH,
        mutate(&|f| f[12..14].copy_from_slice(&[0x08, 0x06])),
        Dropped(DropReason::UnsupportedEthertype),
    ));
    rows.push(row(
        "IPv4 header cut short",
        CLIENT_VETH,
        valid[..26].to_vec(),
        Dropped(DropReason::Ipv4Truncated),
    ));
    rows.push(row(
        "IPv4 version 5",
        CLIENT_VETH,
        mutate(&|f| f[14] = 0x55),
        Dropped(DropReason::Ipv4BadVersion),
    ));
    rows.push(row(
        "IPv4 IHL below 5",
        CLIENT_VETH,
        mutate(&|f| f[14] = 0x44),
        Dropped(DropReason::Ipv4BadHeaderLength),
    ));
    rows.push(row(
        "IPv4 IHL past the frame",
        CLIENT_VETH,
        mutate(&|f| f[14] = 0x4f),
        Dropped(DropReason::Ipv4BadHeaderLength),
    ));
    rows.push(row(
        "IPv4 total length past the frame",
        CLIENT_VETH,
        mutate(&|f| {
            f[16..18].copy_from_slice(&1000u16.to_be_bytes());
            fix_ipv4_checksum(f);
        }),
        Dropped(DropReason::Ipv4BadTotalLength),
    ));
    rows.push(row(
        "IPv4 total length below the header length",
        CLIENT_VETH,
        mutate(&|f| {
            f[16..18].copy_from_slice(&10u16.to_be_bytes());
            fix_ipv4_checksum(f);
        }),
        Dropped(DropReason::Ipv4BadTotalLength),
    ));
    rows.push(row(
        "IPv4 header checksum wrong",
        CLIENT_VETH,
        mutate(&|f| f[25] ^= 0x5a),
        Dropped(DropReason::Ipv4BadChecksum),
    ));
    rows.push(row(
        "Non-first IPv4 fragment",
        CLIENT_VETH,
        ipv4_fragment(CLIENT, "10.96.0.10", 6, false, 4, &[0xab; 16]),
        Dropped(DropReason::NonFirstFragment),
    ));
    let mut udp_head = vec![0x13, 0xc4, 0x00, 0x35, 0x05, 0xdc, 0x00, 0x00];
    udp_head.extend_from_slice(&[0u8; 24]);
    rows.push(row(
        "First IPv4 fragment of a service flow",
        CLIENT_VETH,
        ipv4_fragment(CLIENT, "10.96.0.53", 17, true, 0, &udp_head),
        Dropped(DropReason::FragmentedServicePacket),
    ));
    let valid6 = Packet::arriving(CLIENT_VETH, CLIENT_V6, "fd00:96::10", syn(40081, 80)).bytes();
    rows.push(row(
        "IPv6 header cut short",
        CLIENT_VETH,
        valid6[..40].to_vec(),
        Dropped(DropReason::Ipv6Truncated),
    ));
    let mut long6 = valid6.clone();
    long6[18..20].copy_from_slice(&500u16.to_be_bytes());
    rows.push(row(
        "IPv6 payload length past the frame",
        CLIENT_VETH,
        long6,
        Dropped(DropReason::Ipv6BadPayloadLength),
    ));
    let mut runaway = valid6[..54].to_vec();
    runaway.extend_from_slice(&[6, 4, 1, 2]); // hop-by-hop claiming 40 bytes, 4 present
    runaway[18..20].copy_from_slice(&4u16.to_be_bytes());
    runaway[20] = 0;
    rows.push(row(
        "IPv6 extension header running past the packet",
        CLIENT_VETH,
        runaway,
        Dropped(DropReason::Ipv6BadExtensionHeader),
    ));
    rows.push(row(
        "Non-first IPv6 fragment",
        CLIENT_VETH,
        ipv6_fragment(CLIENT_V6, "fd00:96::10", 6, false, 4, &[0xcd; 16]),
        Dropped(DropReason::NonFirstFragment),
    ));
    rows.push(row(
        "TCP header cut short",
        CLIENT_VETH,
        truncate_l4_v4(valid.clone(), 10),
        Dropped(DropReason::TcpTruncated),
    ));
    rows.push(row(
        "TCP data offset 4",
        CLIENT_VETH,
        mutate(&|f| f[46] = 0x40),
        Dropped(DropReason::TcpBadDataOffset),
    ));
    rows.push(row(
        "TCP SYN+FIN",
        CLIENT_VETH,
        Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", tcp(40082, 80, "SF")).bytes(),
        Dropped(DropReason::TcpBadFlags),
    ));
    rows.push(row(
        "TCP without any flag",
        CLIENT_VETH,
        Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", tcp(40083, 80, "")).bytes(),
        Dropped(DropReason::TcpBadFlags),
    ));
    rows.push(row(
        "A RST to a service with no flow",
        CLIENT_VETH,
        Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", tcp(40084, 80, "R")).bytes(),
        Dropped(DropReason::UntrackedTcpReset),
    ));
    let valid_udp = Packet::arriving(
        CLIENT_VETH,
        CLIENT,
        "10.96.0.53",
        udp(5370, 53, &dns_query()),
    )
    .bytes();
    rows.push(row(
        "UDP header cut short",
        CLIENT_VETH,
        truncate_l4_v4(valid_udp.clone(), 4),
        Dropped(DropReason::UdpTruncated),
    ));
    let mut short_udp = valid_udp.clone();
    let udp_len = u16::from_be_bytes([short_udp[38], short_udp[39]]) - 2;
    short_udp[38..40].copy_from_slice(&udp_len.to_be_bytes());
    rows.push(row(
        "UDP length disagreeing with the IP length",
        CLIENT_VETH,
        short_udp,
        Dropped(DropReason::UdpBadLength),
    ));
    let echo = Packet::arriving(
        CLIENT_VETH,
        CLIENT,
        "10.96.0.10",
        Transport::EchoRequest {
            id: 1,
            sequence: 1,
            payload: vec![],
        },
    )
    .bytes();
    let mut short_icmp = truncate_l4_v4(echo, 4);
    short_icmp[23] = 1;
    fix_ipv4_checksum(&mut short_icmp);
    rows.push(row(
        "ICMP header cut short",
        CLIENT_VETH,
        short_icmp,
        Dropped(DropReason::IcmpTruncated),
    ));
    let mut sctp = truncate_l4_v4(valid.clone(), 12);
    sctp[23] = 132;
    sctp[34..38].copy_from_slice(&[0x13, 0x88, 0x0f, 0x1c]); // 5000 -> 3868
    sctp[30..34].copy_from_slice(&[10, 96, 0, 40]);
    fix_ipv4_checksum(&mut sctp);
    rows.push(row(
        "SCTP to an SCTP service is refused as unsupported",
        CLIENT_VETH,
        sctp,
        Dropped(DropReason::UnsupportedProtocol),
    ));
    rows
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn datapath_fixture_table() {
    let rows = table();
    // `KXDP_WRITE_FUZZ_SEEDS=dir` turns the table's real frames into the fuzzer's seed corpus
    // (first byte: ingress and partial-checksum flag, second: clock step; see fuzz/).
    if let Ok(directory) = std::env::var("KXDP_WRITE_FUZZ_SEEDS") {
        std::fs::create_dir_all(&directory).unwrap();
        for (index, row) in rows.iter().enumerate() {
            let control = row.ingress as u8 | if row.partial_checksum { 0x80 } else { 0 };
            let seed = [&[control, 0][..], &row.input].concat();
            std::fs::write(format!("{directory}/row-{index:03}"), seed).unwrap();
        }
    }
    assert!(
        rows.len() >= 40,
        "the table must keep at least 40 rows, has {}",
        rows.len()
    );
    let mut harness = Harness::new();
    let mut failures = Vec::new();
    let mut expected_drops = [0u64; DropReason::COUNT];
    for (index, row) in rows.iter().enumerate() {
        let (verdict, output) = harness.run(&row.input, row.ingress, row.partial_checksum);
        let problem = match &row.expect {
            Expect::Transmit(ifindex, bytes) => {
                if verdict != (Verdict::Transmit { ifindex: *ifindex }) {
                    Some(format!(
                        "verdict {verdict:?}, expected Transmit to {ifindex}"
                    ))
                } else if &output != bytes {
                    Some(format!(
                        "output differs\n   got {}\n  want {}",
                        hex(&output),
                        hex(bytes)
                    ))
                } else {
                    None
                }
            }
            Expect::ToHost(bytes) => {
                if verdict != Verdict::ToHost {
                    Some(format!("verdict {verdict:?}, expected ToHost"))
                } else if &output != bytes {
                    Some(format!(
                        "output differs\n   got {}\n  want {}",
                        hex(&output),
                        hex(bytes)
                    ))
                } else {
                    None
                }
            }
            Expect::Drop(reason) => {
                expected_drops[*reason as usize] += 1;
                (verdict != Verdict::Drop(*reason))
                    .then(|| format!("verdict {verdict:?}, expected Drop({reason:?})"))
            }
        };
        if let Some(problem) = problem {
            failures.push(format!("row {index}: {}: {problem}", row.description));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    // Every refusal is counted under its reason, and nothing else was refused.
    let counters = harness.worker.counters();
    for reason in DropReason::ALL {
        if reason == DropReason::RejectedNoEndpoints {
            continue;
        }
        assert_eq!(
            counters.drops_for(reason),
            expected_drops[reason as usize],
            "{reason:?}"
        );
    }
    assert_eq!(counters.rejected, 5);
    assert_eq!(counters.drops_for(DropReason::RejectedNoEndpoints), 5);
    assert_eq!(counters.packets, rows.len() as u64);
}
