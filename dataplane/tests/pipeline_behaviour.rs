//! Behaviour of the pipeline over time and across workers: NAT round trips (property-tested), session
//! affinity and its timeout, UDP re-balancing when a backend leaves, conntrack expiry by moving `now`,
//! and workers racing to create the same flows.

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use kxdp_dataplane::pipeline::{Action, Frame, Verdict, Worker, WorkerConfig};
use kxdp_dataplane::tables::affinity::AffinityTable;
use kxdp_dataplane::tables::conntrack::{Config, Conntrack};
use kxdp_dataplane::tables::snapshot::{BackendSpec, ServiceSpec, Snapshot, SnapshotBuilder};
use kxdp_dataplane::{Protocol, Timestamp};
use proptest::prelude::*;

/// The addresses and ports of a frame, read back with etherparse, plus whether its checksums hold.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Tuple {
    source: IpAddr,
    source_port: u16,
    destination: IpAddr,
    destination_port: u16,
}

fn tuple_of(frame: &[u8]) -> Tuple {
    let packet = SlicedPacket::from_ethernet(frame).expect("output parses");
    let (source, destination) = match packet.net.expect("has IP") {
        NetSlice::Ipv4(v4) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
        ),
        NetSlice::Ipv6(v6) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
        ),
    };
    let (source_port, destination_port) = match packet.transport.expect("has L4") {
        TransportSlice::Tcp(tcp) => (tcp.source_port(), tcp.destination_port()),
        TransportSlice::Udp(udp) => (udp.source_port(), udp.destination_port()),
        other => panic!("unexpected transport {other:?}"),
    };
    Tuple {
        source,
        source_port,
        destination,
        destination_port,
    }
}

/// Verifies the IPv4 header checksum and the TCP/UDP checksum of an untagged frame by summing it.
fn checksums_hold(frame: &[u8]) -> bool {
    fn fold(mut sum: u64) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }
    fn words(bytes: &[u8]) -> u64 {
        bytes
            .chunks(2)
            .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }
    let ipv6 = frame[12] == 0x86;
    let (l4, protocol, pseudo_addresses, ip_ok) = if ipv6 {
        (54, frame[20], words(&frame[22..54]), true)
    } else {
        let header_len = usize::from(frame[14] & 0x0f) * 4;
        (
            14 + header_len,
            frame[23],
            words(&frame[26..34]),
            fold(words(&frame[14..14 + header_len])) == 0xffff,
        )
    };
    let segment = &frame[l4..];
    let sum = pseudo_addresses + u64::from(protocol) + segment.len() as u64 + words(segment);
    ip_ok && fold(sum) == 0xffff
}

fn run_one(harness: &mut Harness, input: &[u8], ingress: u32) -> (Verdict, Vec<u8>, Action) {
    let (verdict, output, trace) = harness.run_traced(input, ingress, false);
    (verdict, output, trace.action)
}

/// The services a round trip can go through: (frontend address, port, protocol, ingress, backend veth).
const ROUND_TRIP_TARGETS: [(&str, u16, Protocol, u32); 6] = [
    ("10.96.0.10", 80, Protocol::Tcp, CLIENT_VETH),
    ("10.96.0.53", 53, Protocol::Udp, CLIENT_VETH),
    ("fd00:96::10", 80, Protocol::Tcp, CLIENT_VETH),
    ("fd00:96::53", 53, Protocol::Udp, CLIENT_VETH),
    (NODE_V4, 30081, Protocol::Tcp, UPLINK), // masqueraded to a remote backend
    ("10.96.0.77", 80, Protocol::Tcp, CLIENT_VETH), // hairpin, masqueraded
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Forward NAT, then the backend's reply through reverse NAT, hands the client back exactly the
    /// tuple it sent to, with valid checksums both ways.
    #[test]
    fn forward_then_reverse_nat_gives_the_client_its_own_tuple(
        target in 0usize..ROUND_TRIP_TARGETS.len(),
        host in 2u8..250,
        source_port in 1024u16..65535,
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        partial in any::<bool>(),
    ) {
        let (frontend, frontend_port, protocol, ingress) = ROUND_TRIP_TARGETS[target];
        let ipv6 = frontend.contains(':');
        let client = match (ingress, ipv6) {
            (UPLINK, _) => format!("203.0.113.{host}"),
            (_, true) => format!("fd00:244:1::{host:x}"),
            (_, false) if target == 5 => CLIENT.to_string(),
            (_, false) => format!("10.244.1.{host}"),
        };
        let transport = match protocol {
            Protocol::Tcp => data(source_port, frontend_port, &payload),
            _ => udp(source_port, frontend_port, &payload),
        };
        let request = Packet::arriving(ingress, &client, frontend, transport);
        let mut input = request.bytes();
        if partial {
            make_checksum_partial(&mut input, if protocol == Protocol::Tcp { 16 } else { 6 });
        }
        let mut harness = Harness::new();
        let (verdict, forwarded, _) = harness.run_traced(&input, ingress, partial);
        let Verdict::Transmit { ifindex: egress } = verdict else {
            panic!("request not transmitted: {verdict:?}");
        };
        prop_assert!(checksums_hold(&forwarded), "forward checksums");
        let at_backend = tuple_of(&forwarded);
        prop_assert_ne!(at_backend.destination, common::ip(frontend));

        // The backend answers the tuple it saw.
        let reply_transport = match protocol {
            Protocol::Tcp => data(at_backend.destination_port, at_backend.source_port, b"HTTP/1.1 200 OK\r\n\r\n"),
            _ => udp(at_backend.destination_port, at_backend.source_port, b"answer"),
        };
        let mut reply = Packet::arriving(egress, "10.0.0.1", "10.0.0.1", reply_transport);
        reply.source = at_backend.destination;
        reply.destination = at_backend.source;
        let (verdict, back, action) = run_one(&mut harness, &reply.bytes(), egress);
        prop_assert!(matches!(verdict, Verdict::Transmit { .. }), "reply verdict {:?}", verdict);
        prop_assert_eq!(action, Action::Reply);
        prop_assert!(checksums_hold(&back), "reply checksums");
        let at_client = tuple_of(&back);
        prop_assert_eq!(at_client, Tuple {
            source: common::ip(frontend),
            source_port: frontend_port,
            destination: common::ip(&client),
            destination_port: source_port,
        });
    }
}

fn backend(id: u32, address: &str) -> BackendSpec {
    BackendSpec {
        id,
        address: ip(address),
        port: 8080,
        node_local: true,
        preferred: false,
    }
}

fn snapshot_with(service: ServiceSpec) -> Snapshot {
    let mut builder = SnapshotBuilder::new(node_config());
    builder.upsert_service(service).unwrap();
    builder.build()
}

fn sticky_service(backends: usize, timeout: u32) -> ServiceSpec {
    let mut spec = ServiceSpec::cluster_ip(
        1,
        "default/sticky:http",
        Protocol::Tcp,
        ip("10.96.0.10"),
        80,
        (0..backends)
            .map(|i| backend(100 + i as u32, &format!("10.244.3.{}", i + 1)))
            .collect(),
    );
    spec.affinity_timeout_secs = Some(timeout);
    spec
}

fn destination_of(harness: &mut Harness, client: &str, source_port: u16) -> IpAddr {
    let input = Packet::arriving(CLIENT_VETH, client, "10.96.0.10", syn(source_port, 80)).bytes();
    let (verdict, output, _) = run_one(harness, &input, CLIENT_VETH);
    assert!(
        matches!(verdict, Verdict::Transmit { .. } | Verdict::ToHost),
        "{verdict:?}"
    );
    tuple_of(&output).destination
}

#[test]
fn session_affinity_holds_until_the_timeout() {
    let mut harness = Harness::new();
    harness.snapshot = snapshot_with(sticky_service(5, 60));
    // Without affinity, 30 connections from one client would spread over 5 backends.
    let mut clients_backends = std::collections::HashSet::new();
    for host in 2..40 {
        let client = format!("10.244.1.{host}");
        let first = destination_of(&mut harness, &client, 30_000);
        for port in 30_001..30_030 {
            assert_eq!(
                destination_of(&mut harness, &client, port),
                first,
                "client {client}"
            );
        }
        clients_backends.insert(first);
    }
    assert!(
        clients_backends.len() >= 3,
        "different clients still spread: {clients_backends:?}"
    );

    // Grow the service so Maglev alone would move some clients; affinity must keep them in place
    // until they have been idle for the timeout.
    harness.snapshot = snapshot_with(sticky_service(10, 60));
    let mut moved_after_timeout = 0;
    for host in 2..40 {
        let client = format!("10.244.1.{host}");
        harness.now = Timestamp::from_secs(1_000);
        let sticky = destination_of(&mut harness, &client, 31_000);
        let first = {
            let mut fresh = Harness::new();
            fresh.snapshot = snapshot_with(sticky_service(5, 60));
            destination_of(&mut fresh, &client, 30_000)
        };
        assert_eq!(
            sticky, first,
            "affinity survives the snapshot change for {client}"
        );
        harness.now = Timestamp::from_secs(1_000 + 61);
        if destination_of(&mut harness, &client, 32_000) != sticky {
            moved_after_timeout += 1;
        }
    }
    assert!(
        moved_after_timeout > 0,
        "after the timeout, Maglev decides again"
    );
}

fn dns_service(backends: &[(u32, &str)]) -> ServiceSpec {
    ServiceSpec::cluster_ip(
        2,
        "kube-system/dns:dns",
        Protocol::Udp,
        ip("10.96.0.53"),
        53,
        backends
            .iter()
            .map(|(id, address)| BackendSpec {
                id: *id,
                address: ip(address),
                port: 53,
                node_local: true,
                preferred: false,
            })
            .collect(),
    )
}

#[test]
fn udp_flows_to_a_removed_backend_are_rebalanced_at_once() {
    let mut harness = Harness::new();
    let backends = [(20, DNS), (21, "10.244.1.31")];
    harness.snapshot = snapshot_with(dns_service(&backends));
    let query = Packet::arriving(
        CLIENT_VETH,
        CLIENT,
        "10.96.0.53",
        udp(5353, 53, &dns_query()),
    )
    .bytes();
    let (_, first, action) = run_one(&mut harness, &query, CLIENT_VETH);
    assert_eq!(action, Action::NewFlow);
    let chosen = tuple_of(&first).destination;
    let (_, again, action) = run_one(&mut harness, &query, CLIENT_VETH);
    assert_eq!(
        (action, tuple_of(&again).destination),
        (Action::Established, chosen)
    );

    // The control plane drops the backend and its UDP flows.
    let (gone_id, _) = *backends.iter().find(|(_, a)| ip(a) == chosen).unwrap();
    let rest: Vec<_> = backends
        .iter()
        .copied()
        .filter(|(id, _)| *id != gone_id)
        .collect();
    harness.snapshot = snapshot_with(dns_service(&rest));
    assert_eq!(
        harness
            .conntrack
            .remove_backend_flows(gone_id, Some(Protocol::Udp)),
        1
    );
    let (verdict, moved, action) = run_one(&mut harness, &query, CLIENT_VETH);
    assert!(matches!(
        verdict,
        Verdict::Transmit { .. } | Verdict::ToHost
    ));
    assert_eq!(action, Action::NewFlow, "the next query is balanced afresh");
    assert_eq!(tuple_of(&moved).destination, ip(rest[0].1));
}

#[test]
fn expired_flows_are_forgotten_when_now_moves_on() {
    let mut harness = Harness::new();
    let query = Packet::arriving(
        CLIENT_VETH,
        CLIENT,
        "10.96.0.53",
        udp(5353, 53, &dns_query()),
    )
    .bytes();
    let answer = Packet::arriving(DNS_VETH, DNS, CLIENT, udp(53, 5353, b"answer")).bytes();
    run_one(&mut harness, &query, CLIENT_VETH);
    let (_, _, action) = run_one(&mut harness, &answer, DNS_VETH);
    assert_eq!(action, Action::Reply);
    let udp_timeout = u64::from(harness.conntrack.timeouts().udp);
    harness.now = harness
        .now
        .saturating_add(Duration::from_secs(udp_timeout + 1));
    let (_, output, action) = run_one(&mut harness, &answer, DNS_VETH);
    assert_eq!(
        action,
        Action::Untracked,
        "an expired flow's reply is no longer translated"
    );
    assert_eq!(tuple_of(&output).source, ip(DNS));
    assert_eq!(harness.conntrack.reclaim(harness.now, usize::MAX), 1);
    assert_eq!(harness.conntrack.occupancy().east_west, 0);
}

#[test]
fn traces_name_the_service_and_backend() {
    let mut harness = Harness::new();
    let input = Packet::arriving(CLIENT_VETH, CLIENT, "10.96.0.10", syn(41000, 80)).bytes();
    let (_, _, trace) = harness.run_traced(&input, CLIENT_VETH, false);
    assert_eq!(trace.action, Action::NewFlow);
    assert_eq!(trace.service, Some(1));
    assert_eq!(trace.backend, Some(10));
    assert!(!trace.masqueraded);
    assert_eq!(harness.worker.counters().new_flows, 1);
}

/// Two workers on different snapshot generations (one saw an update, one did not yet) race to create
/// the same UDP flows — the DNS "A and AAAA from one socket" pattern behind kubernetes#56903. Each pair
/// must end on one conntrack entry and one backend, and no packet may be dropped.
#[test]
fn racing_workers_agree_on_one_entry_and_one_backend() {
    let old = snapshot_with(dns_service(&[(20, "10.244.1.30"), (21, "10.244.1.31")]));
    let new = snapshot_with(dns_service(&[
        (20, "10.244.1.30"),
        (21, "10.244.1.31"),
        (22, "10.244.1.32"),
        (23, "10.244.1.33"),
    ]));
    let conntrack = Conntrack::new(Config::with_capacity(1 << 16));
    let affinity = Arc::new(AffinityTable::new(1024));
    let routes = route_table();
    let pairs = 4_000u16;
    let rounds = 20;
    let per_round = pairs / rounds;
    let barrier = Barrier::new(2);
    let now = Timestamp::from_secs(10);
    let outputs: Vec<Vec<(u16, Verdict, IpAddr)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = [(0usize, &old, b'A'), (1usize, &new, b'Q')]
            .into_iter()
            .map(|(index, snapshot, query_type)| {
                let (conntrack, affinity, routes, barrier) =
                    (&conntrack, affinity.clone(), &routes, &barrier);
                scope.spawn(move || {
                    let mut worker = Worker::new(WorkerConfig { index, count: 2 }, affinity);
                    let mut results = Vec::new();
                    for round in 0..rounds {
                        let ports =
                            (round * per_round..(round + 1) * per_round).map(|p| 20_000 + p);
                        let mut inputs: Vec<(u16, Vec<u8>)> = ports
                            .map(|port| {
                                let mut question = dns_query();
                                let type_at = question.len() - 3;
                                question[type_at] = query_type;
                                (
                                    port,
                                    Packet::arriving(
                                        CLIENT_VETH,
                                        CLIENT,
                                        "10.96.0.53",
                                        udp(port, 53, &question),
                                    )
                                    .bytes(),
                                )
                            })
                            .collect();
                        if index == 1 {
                            inputs.reverse(); // meet in the middle of each round
                        }
                        barrier.wait();
                        for (port, input) in inputs {
                            let mut buffer = vec![0u8; 2048];
                            buffer[..input.len()].copy_from_slice(&input);
                            let mut frames = [Frame::new(&mut buffer, input.len(), CLIENT_VETH)];
                            worker.process(now, snapshot, conntrack, routes, &mut frames);
                            let destination = tuple_of(frames[0].packet()).destination;
                            results.push((port, frames[0].verdict, destination));
                        }
                    }
                    assert_eq!(worker.counters().dropped, 0);
                    results
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut by_port = std::collections::HashMap::new();
    for (port, verdict, destination) in outputs.iter().flatten() {
        assert!(
            matches!(verdict, Verdict::Transmit { .. }),
            "port {port}: {verdict:?}"
        );
        by_port
            .entry(*port)
            .or_insert_with(Vec::new)
            .push(*destination);
    }
    assert_eq!(by_port.len(), usize::from(pairs));
    for (port, destinations) in &by_port {
        assert_eq!(destinations.len(), 2);
        assert_eq!(
            destinations[0], destinations[1],
            "port {port}: the pair split over two backends"
        );
    }
    assert_eq!(
        conntrack.occupancy().east_west,
        usize::from(pairs),
        "one entry per pair"
    );
}
