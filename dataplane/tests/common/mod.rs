//! Shared test topology for the datapath tests: the node, its interfaces and services, and a
//! packet builder on top of etherparse, an implementation independent of kxdp's own wire code, so
//! expected frames and their checksums are never computed by the code under test.

#![allow(dead_code)]

use std::net::IpAddr;
use std::sync::Arc;

use etherparse::{icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, IpNumber, Ipv4Header, PacketBuilder};
use kxdp_dataplane::cidr::Cidr;
use kxdp_dataplane::pipeline::{Frame, NextHop, Trace, Verdict, Worker, WorkerConfig};
use kxdp_dataplane::tables::affinity::AffinityTable;
use kxdp_dataplane::tables::conntrack::{Config, Conntrack};
use kxdp_dataplane::tables::fib::RouteTable;
use kxdp_dataplane::tables::snapshot::{
    BackendSpec, FrontendKind, FrontendSpec, NodeConfig, ServiceSpec, Snapshot, SnapshotBuilder,
};
use kxdp_dataplane::{Protocol, Timestamp};

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

// Interfaces of the node: 1 is the uplink, the others are pod veths.
pub const UPLINK: u32 = 1;
pub const CLIENT_VETH: u32 = 2;
pub const WEB_VETH: u32 = 3;
pub const DNS_VETH: u32 = 4;
pub const OTHER_PODS_VETH: u32 = 5;

/// The MAC of the node's side of interface `ifindex`.
pub fn node_mac(ifindex: u32) -> [u8; 6] {
    [0x02, 0xaa, 0, 0, 0, ifindex as u8]
}

/// The MAC of whatever sits at the far end of interface `ifindex` (a pod, node2 or the router).
pub fn peer_mac(ifindex: u32) -> [u8; 6] {
    [0x02, 0xbb, 0, 0, 0, ifindex as u8]
}

pub const NODE_V4: &str = "192.168.1.10";
pub const NODE_V6: &str = "fd00:1::10";
pub const CLIENT: &str = "10.244.1.5";
pub const CLIENT_V6: &str = "fd00:244:1::5";
pub const WEB: &str = "10.244.1.20";
pub const WEB_V6: &str = "fd00:244:1::20";
pub const DNS: &str = "10.244.1.30";
pub const DNS_V6: &str = "fd00:244:1::30";
pub const REMOTE: &str = "10.244.2.40";
pub const EXTERNAL: &str = "203.0.113.7";

pub fn route_table() -> RouteTable {
    let mut routes = RouteTable::new();
    let mut add = |prefix: &str, ifindex: u32| {
        routes.insert(
            prefix.parse::<Cidr>().unwrap(),
            NextHop {
                ifindex,
                source_mac: node_mac(ifindex),
                destination_mac: peer_mac(ifindex),
            },
        );
    };
    add("10.244.1.5/32", CLIENT_VETH);
    add("fd00:244:1::5/128", CLIENT_VETH);
    add("10.244.1.20/32", WEB_VETH);
    add("fd00:244:1::20/128", WEB_VETH);
    add("10.244.1.30/32", DNS_VETH);
    add("fd00:244:1::30/128", DNS_VETH);
    // Other pods of this node sit behind veths the tests do not name individually.
    add("10.244.1.0/24", OTHER_PODS_VETH);
    add("fd00:244:1::/64", OTHER_PODS_VETH);
    add("10.244.3.0/24", OTHER_PODS_VETH);
    add("10.244.2.0/24", UPLINK);
    add("203.0.0.0/8", UPLINK);
    add("198.51.100.0/24", UPLINK);
    routes
}

fn backend(id: u32, address: &str, port: u16, node_local: bool) -> BackendSpec {
    BackendSpec {
        id,
        address: ip(address),
        port,
        node_local,
        preferred: false,
    }
}

fn frontend(address: &str, port: u16, kind: FrontendKind) -> FrontendSpec {
    FrontendSpec {
        address: ip(address),
        port,
        kind,
    }
}

/// The services of the fixture node. Backend ids are unique across services.
pub fn services() -> Vec<ServiceSpec> {
    let mut web = ServiceSpec::cluster_ip(
        1,
        "default/web:http",
        Protocol::Tcp,
        ip("10.96.0.10"),
        80,
        vec![backend(10, WEB, 8080, true)],
    );
    web.frontends
        .push(frontend(NODE_V4, 30080, FrontendKind::NodePort));
    let dns = ServiceSpec::cluster_ip(
        2,
        "kube-system/dns:dns",
        Protocol::Udp,
        ip("10.96.0.53"),
        53,
        vec![backend(20, DNS, 53, true)],
    );
    let dns6 = ServiceSpec::cluster_ip(
        3,
        "kube-system/dns:dns (IPv6)",
        Protocol::Udp,
        ip("fd00:96::53"),
        53,
        vec![backend(30, DNS_V6, 53, true)],
    );
    let web6 = ServiceSpec::cluster_ip(
        4,
        "default/web:http (IPv6)",
        Protocol::Tcp,
        ip("fd00:96::10"),
        80,
        vec![backend(40, WEB_V6, 8080, true)],
    );
    let mut remote = ServiceSpec::cluster_ip(
        5,
        "default/remote:http",
        Protocol::Tcp,
        ip("10.96.0.20"),
        80,
        vec![backend(50, REMOTE, 8080, false)],
    );
    remote
        .frontends
        .push(frontend(NODE_V4, 30081, FrontendKind::NodePort));
    let mut local_only_remote = ServiceSpec::cluster_ip(
        6,
        "default/etp-local-remote:http",
        Protocol::Tcp,
        ip("10.96.0.21"),
        80,
        vec![backend(60, REMOTE, 8081, false)],
    );
    local_only_remote
        .frontends
        .push(frontend(NODE_V4, 30082, FrontendKind::NodePort));
    local_only_remote.external_traffic_local = true;
    let mut local_only = ServiceSpec::cluster_ip(
        7,
        "default/etp-local:http",
        Protocol::Tcp,
        ip("10.96.0.22"),
        80,
        vec![
            backend(70, WEB, 8082, true),
            backend(71, REMOTE, 8082, false),
        ],
    );
    local_only
        .frontends
        .push(frontend(NODE_V4, 30083, FrontendKind::NodePort));
    local_only.external_traffic_local = true;
    let empty_tcp = ServiceSpec::cluster_ip(
        8,
        "default/empty:http",
        Protocol::Tcp,
        ip("10.96.0.99"),
        80,
        vec![],
    );
    let empty_udp = ServiceSpec::cluster_ip(
        9,
        "default/empty:dns",
        Protocol::Udp,
        ip("10.96.0.99"),
        53,
        vec![],
    );
    let empty_tcp6 = ServiceSpec::cluster_ip(
        10,
        "default/empty:http (IPv6)",
        Protocol::Tcp,
        ip("fd00:96::99"),
        80,
        vec![],
    );
    let empty_udp6 = ServiceSpec::cluster_ip(
        11,
        "default/empty:dns (IPv6)",
        Protocol::Udp,
        ip("fd00:96::99"),
        53,
        vec![],
    );
    let mut load_balancer = ServiceSpec::cluster_ip(
        12,
        "default/lb:https",
        Protocol::Tcp,
        ip("10.96.0.30"),
        443,
        vec![backend(120, WEB, 8443, true)],
    );
    load_balancer
        .frontends
        .push(frontend("203.0.113.50", 443, FrontendKind::LoadBalancer));
    load_balancer.source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
    let hairpin = ServiceSpec::cluster_ip(
        13,
        "default/client-self:http",
        Protocol::Tcp,
        ip("10.96.0.77"),
        80,
        vec![backend(130, CLIENT, 80, true)],
    );
    let sctp = ServiceSpec::cluster_ip(
        14,
        "default/signalling:sctp",
        Protocol::Sctp,
        ip("10.96.0.40"),
        3868,
        vec![backend(140, WEB, 3868, true)],
    );
    vec![
        web,
        dns,
        dns6,
        web6,
        remote,
        local_only_remote,
        local_only,
        empty_tcp,
        empty_udp,
        empty_tcp6,
        empty_udp6,
        load_balancer,
        hairpin,
        sctp,
    ]
}

pub fn node_config() -> NodeConfig {
    NodeConfig {
        name: "node-a".into(),
        addresses: vec![ip(NODE_V4), ip(NODE_V6)],
        masquerade_ipv4: Some(NODE_V4.parse().unwrap()),
        masquerade_ipv6: Some(NODE_V6.parse().unwrap()),
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/32".parse().unwrap(),
        ],
        ..NodeConfig::default()
    }
}

pub fn snapshot() -> Snapshot {
    let mut builder = SnapshotBuilder::new(node_config());
    for spec in services() {
        builder.upsert_service(spec).unwrap();
    }
    builder.build()
}

/// A worker, its tables and the clock, as one AF_XDP worker would have them.
pub struct Harness {
    pub snapshot: Snapshot,
    pub conntrack: Conntrack,
    pub routes: RouteTable,
    pub worker: Worker,
    pub now: Timestamp,
}

impl Harness {
    pub fn new() -> Self {
        Self {
            snapshot: snapshot(),
            conntrack: Conntrack::new(Config::with_capacity(4096)),
            routes: route_table(),
            worker: Worker::new(
                WorkerConfig { index: 0, count: 1 },
                Arc::new(AffinityTable::new(1024)),
            ),
            now: Timestamp::from_secs(1_000),
        }
    }

    /// Runs one frame through the pipeline; returns the verdict and the bytes that came out.
    pub fn run(
        &mut self,
        input: &[u8],
        ingress: u32,
        partial_checksum: bool,
    ) -> (Verdict, Vec<u8>) {
        let (verdict, output, _) = self.run_traced(input, ingress, partial_checksum);
        (verdict, output)
    }

    /// [`Harness::run`], also returning the frame's trace.
    pub fn run_traced(
        &mut self,
        input: &[u8],
        ingress: u32,
        partial_checksum: bool,
    ) -> (Verdict, Vec<u8>, Trace) {
        let mut buffer = vec![0u8; 2048];
        buffer[..input.len()].copy_from_slice(input);
        let mut frames = [Frame::new(&mut buffer, input.len(), ingress)];
        frames[0].partial_checksum = partial_checksum;
        self.worker.process(
            self.now,
            &self.snapshot,
            &self.conntrack,
            &self.routes,
            &mut frames,
        );
        (
            frames[0].verdict,
            frames[0].packet().to_vec(),
            frames[0].trace,
        )
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// The transport part of a test packet.
#[derive(Clone, Debug)]
pub enum Transport {
    Tcp(TcpFields),
    Udp {
        source_port: u16,
        destination_port: u16,
        payload: Vec<u8>,
    },
    EchoRequest {
        id: u16,
        sequence: u16,
        payload: Vec<u8>,
    },
    EchoReply {
        id: u16,
        sequence: u16,
        payload: Vec<u8>,
    },
    /// ICMPv4 destination unreachable / port, or ICMPv6 destination unreachable / port.
    PortUnreachable {
        quote: Vec<u8>,
    },
}

/// A TCP header's fields; `ack: Some(n)` sets ACK with acknowledgement number n.
#[derive(Clone, Debug)]
pub struct TcpFields {
    pub source_port: u16,
    pub destination_port: u16,
    pub sequence: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
    pub window: u16,
    pub payload: Vec<u8>,
}

/// A test packet: Ethernet, optional VLAN, IPv4 or IPv6, transport. `bytes()` serialises it with
/// etherparse, checksums included.
#[derive(Clone, Debug)]
pub struct Packet {
    pub source_mac: [u8; 6],
    pub destination_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub ttl: u8,
    pub transport: Transport,
}

impl Packet {
    /// A packet arriving at the node on `ingress` from the peer there.
    pub fn arriving(ingress: u32, source: &str, destination: &str, transport: Transport) -> Self {
        Self {
            source_mac: peer_mac(ingress),
            destination_mac: node_mac(ingress),
            vlan: None,
            source: ip(source),
            destination: ip(destination),
            ttl: 64,
            transport,
        }
    }

    /// The same packet as the node sends it out of `egress` after routing (TTL - 1, new MACs).
    pub fn leaving(&self, egress: u32) -> Self {
        Self {
            source_mac: node_mac(egress),
            destination_mac: peer_mac(egress),
            ttl: self.ttl - 1,
            ..self.clone()
        }
    }

    pub fn with_source(mut self, address: &str, port: u16) -> Self {
        self.source = ip(address);
        self.set_ports(Some(port), None);
        self
    }

    pub fn with_destination(mut self, address: &str, port: u16) -> Self {
        self.destination = ip(address);
        self.set_ports(None, Some(port));
        self
    }

    pub fn with_ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn with_vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    fn set_ports(&mut self, source: Option<u16>, destination: Option<u16>) {
        match &mut self.transport {
            Transport::Tcp(TcpFields {
                source_port,
                destination_port,
                ..
            })
            | Transport::Udp {
                source_port,
                destination_port,
                ..
            } => {
                if let Some(port) = source {
                    *source_port = port;
                }
                if let Some(port) = destination {
                    *destination_port = port;
                }
            }
            _ => {}
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(self.source_mac, self.destination_mac);
        let mut out = Vec::new();
        macro_rules! finish {
            ($ip:expr) => {{
                let ip = $ip;
                match &self.transport {
                    Transport::Tcp(TcpFields {
                        source_port,
                        destination_port,
                        sequence,
                        ack,
                        syn,
                        fin,
                        rst,
                        psh,
                        window,
                        payload,
                    }) => {
                        let mut tcp = ip.tcp(*source_port, *destination_port, *sequence, *window);
                        if *syn {
                            tcp = tcp.syn();
                        }
                        if *fin {
                            tcp = tcp.fin();
                        }
                        if *rst {
                            tcp = tcp.rst();
                        }
                        if *psh {
                            tcp = tcp.psh();
                        }
                        if let Some(number) = ack {
                            tcp = tcp.ack(*number);
                        }
                        tcp.write(&mut out, payload).unwrap();
                    }
                    Transport::Udp {
                        source_port,
                        destination_port,
                        payload,
                    } => ip
                        .udp(*source_port, *destination_port)
                        .write(&mut out, payload)
                        .unwrap(),
                    Transport::EchoRequest {
                        id,
                        sequence,
                        payload,
                    } => {
                        if self.source.is_ipv6() {
                            ip.icmpv6_echo_request(*id, *sequence)
                                .write(&mut out, payload)
                                .unwrap()
                        } else {
                            ip.icmpv4_echo_request(*id, *sequence)
                                .write(&mut out, payload)
                                .unwrap()
                        }
                    }
                    Transport::EchoReply {
                        id,
                        sequence,
                        payload,
                    } => {
                        if self.source.is_ipv6() {
                            ip.icmpv6_echo_reply(*id, *sequence)
                                .write(&mut out, payload)
                                .unwrap()
                        } else {
                            ip.icmpv4_echo_reply(*id, *sequence)
                                .write(&mut out, payload)
                                .unwrap()
                        }
                    }
                    Transport::PortUnreachable { quote } => {
                        if self.source.is_ipv6() {
                            ip.icmpv6(Icmpv6Type::DestinationUnreachable(
                                icmpv6::DestUnreachableCode::Port,
                            ))
                            .write(&mut out, quote)
                            .unwrap()
                        } else {
                            ip.icmpv4(Icmpv4Type::DestinationUnreachable(
                                icmpv4::DestUnreachableHeader::Port,
                            ))
                            .write(&mut out, quote)
                            .unwrap()
                        }
                    }
                }
            }};
        }
        match (self.source, self.destination, self.vlan) {
            (IpAddr::V4(s), IpAddr::V4(d), None) => {
                finish!(builder.ipv4(s.octets(), d.octets(), self.ttl))
            }
            (IpAddr::V4(s), IpAddr::V4(d), Some(id)) => finish!(builder
                .single_vlan(id.try_into().unwrap())
                .ipv4(s.octets(), d.octets(), self.ttl)),
            (IpAddr::V6(s), IpAddr::V6(d), None) => {
                finish!(builder.ipv6(s.octets(), d.octets(), self.ttl))
            }
            (IpAddr::V6(s), IpAddr::V6(d), Some(id)) => finish!(builder
                .single_vlan(id.try_into().unwrap())
                .ipv6(s.octets(), d.octets(), self.ttl)),
            _ => panic!("mixed address families in a test packet"),
        }
        out
    }

    /// The IP packet without its Ethernet header (what an ICMP error quotes).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let header = if self.vlan.is_some() { 18 } else { 14 };
        self.bytes()[header..].to_vec()
    }
}

fn tcp_template(source_port: u16, destination_port: u16) -> TcpFields {
    TcpFields {
        source_port,
        destination_port,
        sequence: 1_000,
        ack: None,
        syn: false,
        fin: false,
        rst: false,
        psh: false,
        window: 64_240,
        payload: Vec::new(),
    }
}

/// A TCP segment with the given flags: any of "SFRPA" (ACK acknowledges 5001).
pub fn tcp(source_port: u16, destination_port: u16, flags: &str) -> Transport {
    Transport::Tcp(TcpFields {
        syn: flags.contains('S'),
        fin: flags.contains('F'),
        rst: flags.contains('R'),
        psh: flags.contains('P'),
        ack: flags.contains('A').then_some(5_001),
        ..tcp_template(source_port, destination_port)
    })
}

pub fn syn(source_port: u16, destination_port: u16) -> Transport {
    tcp(source_port, destination_port, "S")
}

pub fn syn_ack(source_port: u16, destination_port: u16) -> Transport {
    Transport::Tcp(TcpFields {
        syn: true,
        ack: Some(1_001),
        sequence: 5_000,
        ..tcp_template(source_port, destination_port)
    })
}

pub fn data(source_port: u16, destination_port: u16, payload: &[u8]) -> Transport {
    Transport::Tcp(TcpFields {
        ack: Some(5_001),
        psh: true,
        sequence: 1_001,
        payload: payload.to_vec(),
        ..tcp_template(source_port, destination_port)
    })
}

pub fn fin(source_port: u16, destination_port: u16) -> Transport {
    Transport::Tcp(TcpFields {
        ack: Some(5_001),
        fin: true,
        sequence: 1_001,
        ..tcp_template(source_port, destination_port)
    })
}

pub fn udp(source_port: u16, destination_port: u16, payload: &[u8]) -> Transport {
    Transport::Udp {
        source_port,
        destination_port,
        payload: payload.to_vec(),
    }
}

/// A DNS query for example.com A, as dig sends it.
pub fn dns_query() -> Vec<u8> {
    vec![
        0x12, 0x34, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, b'e', b'x',
        b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00, 0x00, 0x01, 0x00, 0x01,
    ]
}

/// Builds an IPv4 header with a fragment offset / MF flag and a payload, for fragment rows.
pub fn ipv4_fragment(
    source: &str,
    destination: &str,
    protocol: u8,
    more_fragments: bool,
    offset_units: u16,
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(source), ip(destination)) else {
        panic!("IPv4 only");
    };
    let mut header = Ipv4Header::new(
        payload.len() as u16,
        64,
        IpNumber(protocol),
        s.octets(),
        d.octets(),
    )
    .unwrap();
    header.more_fragments = more_fragments;
    header.dont_fragment = false;
    header.fragment_offset = offset_units.try_into().unwrap();
    header.identification = 0x4242;
    header.header_checksum = header.calc_header_checksum();
    let mut out = Vec::new();
    out.extend_from_slice(&node_mac(CLIENT_VETH));
    out.extend_from_slice(&peer_mac(CLIENT_VETH));
    out.extend_from_slice(&[0x08, 0x00]);
    header.write(&mut out).unwrap();
    out.extend_from_slice(payload);
    // Ethernet addresses above are destination, then source.
    out
}

/// An IPv6 packet with a fragment extension header in front of `payload` (an L4 header and data).
pub fn ipv6_fragment(
    source: &str,
    destination: &str,
    protocol: u8,
    more_fragments: bool,
    offset_units: u16,
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (ip(source), ip(destination)) else {
        panic!("IPv6 only");
    };
    let mut out = Vec::new();
    out.extend_from_slice(&node_mac(CLIENT_VETH));
    out.extend_from_slice(&peer_mac(CLIENT_VETH));
    out.extend_from_slice(&[0x86, 0xdd]);
    let payload_len = (8 + payload.len()) as u16;
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.push(44);
    out.push(64);
    out.extend_from_slice(&s.octets());
    out.extend_from_slice(&d.octets());
    // RFC 8200 §4.5: next header, reserved, offset (13 bits, 8-byte units) | 2 reserved bits | M, id.
    let offset_flags = (offset_units << 3) | u16::from(more_fragments);
    out.extend_from_slice(&[protocol, 0]);
    out.extend_from_slice(&offset_flags.to_be_bytes());
    out.extend_from_slice(&0x4242_u32.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Recomputes the IPv4 header checksum of a frame (at the untagged offset) after a test corrupts it.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let header_len = usize::from(frame[14] & 0x0f) * 4;
    frame[24] = 0;
    frame[25] = 0;
    let mut sum = 0u32;
    for chunk in frame[14..14 + header_len].chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !(sum as u16);
    frame[24..26].copy_from_slice(&checksum.to_be_bytes());
}

/// What Linux leaves in the L4 checksum of a CHECKSUM_PARTIAL packet: the folded pseudo-header sum.
pub fn make_checksum_partial(frame: &mut [u8], checksum_offset_in_l4: usize) {
    let ipv6 = frame[12] == 0x86;
    let (l4, pseudo) = if ipv6 {
        let payload_len = u32::from(u16::from_be_bytes([frame[18], frame[19]]));
        let mut sum = 0u32;
        for chunk in frame[22..54].chunks(2) {
            sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
        }
        sum += u32::from(frame[20]) + payload_len;
        (54, sum)
    } else {
        let header_len = usize::from(frame[14] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        let mut sum = 0u32;
        for chunk in frame[26..34].chunks(2) {
            sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
        }
        sum += u32::from(frame[23]) + (total - header_len) as u32;
        (14 + header_len, sum)
    };
    let mut folded = pseudo;
    while folded > 0xffff {
        folded = (folded & 0xffff) + (folded >> 16);
    }
    let at = l4 + checksum_offset_in_l4;
    frame[at..at + 2].copy_from_slice(&(folded as u16).to_be_bytes());
}
