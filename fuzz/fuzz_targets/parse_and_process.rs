//! Fuzzes the whole receive path: arbitrary bytes as frames, through parse and the real pipeline,
//! with flows, NAT, rejects and ICMP errors reachable. Any panic is a bug; so is a frame that grows
//! past its buffer or a verdict left pending.
//!
//! Input layout: byte 0 picks the ingress interface and the partial-checksum flag, byte 1 the clock
//! step; the rest is split on 0xff 0xfe 0xfd 0xfc into up to eight frames processed as one batch, so
//! one input can create a flow and then hit it.

#![no_main]

use std::sync::{Arc, OnceLock};

use kxdp_dataplane::pipeline::{Frame, NextHop, Verdict, Worker, WorkerConfig};
use kxdp_dataplane::tables::affinity::AffinityTable;
use kxdp_dataplane::tables::conntrack::{Config, Conntrack};
use kxdp_dataplane::tables::fib::RouteTable;
use kxdp_dataplane::tables::snapshot::{
    BackendSpec, FrontendKind, FrontendSpec, NodeConfig, ServiceSpec, Snapshot, SnapshotBuilder,
};
use kxdp_dataplane::{Protocol, Timestamp};
use libfuzzer_sys::fuzz_target;

const SEPARATOR: [u8; 4] = [0xff, 0xfe, 0xfd, 0xfc];

struct World {
    snapshot: Snapshot,
    conntrack: Conntrack,
    routes: RouteTable,
    affinity: Arc<AffinityTable>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let backend = |id, address: &str, node_local| BackendSpec {
            id,
            address: address.parse().unwrap(),
            port: 8080,
            node_local,
            preferred: false,
        };
        let node = NodeConfig {
            addresses: vec![
                "192.168.1.10".parse().unwrap(),
                "fd00:1::10".parse().unwrap(),
            ],
            masquerade_ipv4: Some("192.168.1.10".parse().unwrap()),
            masquerade_ipv6: Some("fd00:1::10".parse().unwrap()),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..NodeConfig::default()
        };
        let mut builder = SnapshotBuilder::new(node);
        for (id, protocol) in [(1, Protocol::Tcp), (2, Protocol::Udp), (3, Protocol::Sctp)] {
            let mut spec = ServiceSpec::cluster_ip(
                id,
                format!("fuzz/{id}"),
                protocol,
                "10.96.0.10".parse().unwrap(),
                80,
                vec![
                    backend(id * 10, "10.244.1.20", true),
                    backend(id * 10 + 1, "10.244.2.20", false),
                ],
            );
            spec.frontends.push(FrontendSpec {
                address: "192.168.1.10".parse().unwrap(),
                port: 30080,
                kind: FrontendKind::NodePort,
            });
            spec.affinity_timeout_secs = (id == 2).then_some(60);
            builder.upsert_service(spec).unwrap();
        }
        for (id, protocol) in [(4, Protocol::Tcp), (5, Protocol::Udp)] {
            let mut spec = ServiceSpec::cluster_ip(
                id,
                format!("fuzz/v6-{id}"),
                protocol,
                "fd00:96::10".parse().unwrap(),
                80,
                vec![],
            );
            spec.backends.push(BackendSpec {
                address: "fd00:244::20".parse().unwrap(),
                ..backend(id * 10, "10.244.1.20", true)
            });
            builder.upsert_service(spec).unwrap();
        }
        let empty = ServiceSpec::cluster_ip(
            6,
            "fuzz/empty",
            Protocol::Udp,
            "10.96.0.99".parse().unwrap(),
            53,
            vec![],
        );
        builder.upsert_service(empty).unwrap();
        let mut routes = RouteTable::new();
        routes.insert(
            "10.0.0.0/8".parse().unwrap(),
            NextHop {
                ifindex: 3,
                source_mac: [2, 0, 0, 0, 0, 3],
                destination_mac: [2, 0, 0, 0, 1, 3],
            },
        );
        World {
            snapshot: builder.build(),
            conntrack: Conntrack::new(Config::with_capacity(1024)),
            routes,
            affinity: Arc::new(AffinityTable::new(256)),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [control, clock, rest @ ..] = data else {
        return;
    };
    let world = world();
    let mut worker = Worker::new(WorkerConfig { index: 0, count: 1 }, world.affinity.clone());
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut rest = rest;
    while pieces.len() < 8 {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                pieces.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => {
                pieces.push(rest);
                break;
            }
        }
    }
    // Odd frames get a buffer exactly their size, so replies that need room take the "no room" path.
    let mut buffers: Vec<Vec<u8>> = pieces
        .iter()
        .enumerate()
        .map(|(index, piece)| {
            let capacity = if index % 2 == 0 {
                piece.len().max(2048)
            } else {
                piece.len()
            };
            let mut buffer = vec![0u8; capacity];
            buffer[..piece.len()].copy_from_slice(piece);
            buffer
        })
        .collect();
    let mut frames: Vec<Frame<'_>> = buffers
        .iter_mut()
        .zip(&pieces)
        .map(|(buffer, piece)| {
            let mut frame = Frame::new(buffer, piece.len(), u32::from(control & 0x7));
            frame.partial_checksum = control & 0x80 != 0;
            frame
        })
        .collect();
    let now = Timestamp::from_secs(1_000 + u64::from(*clock) * 7);
    worker.process(
        now,
        &world.snapshot,
        &world.conntrack,
        &world.routes,
        &mut frames,
    );
    for frame in &frames {
        assert_ne!(frame.verdict, Verdict::Pending);
        assert!(frame.len <= frame.buffer.len());
    }
    world.conntrack.reclaim(now, 64);
});
