//! In-process replay through the real pipeline (DESIGN.md §6.1): the numbers in perf/RESULTS.md.
//!
//! This module owns the bench harness: building the snapshot for a [`scenario`] size, warming
//! conntrack up with real handshakes, feeding batches of [`BATCH`] frames to [`Worker::process`], timing
//! only that call, and checking every verdict so that a broken pipeline fails the run instead of
//! posting a fast number. It also replays a pcap (from `kxdp-pcap-gen`) the same way.
//!
//! What is and is not timed:
//! - timed: one `Worker::process` call per batch, per-batch duration into an hdrhistogram;
//! - not timed: building each packet (etherparse) and copying it into its frame buffer, as a NIC or
//!   the kernel's copy-mode AF_XDP path would have done, and the checks after the call.
//!
//! `now` is virtual: it starts at [`START`] and moves by `BATCH × interarrival` per batch, the clock a
//! worker would read once per batch at the modelled packet rate. The pipeline never sees the wall
//! clock; the bench reads it for timing only.

use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use hdrhistogram::Histogram;
use kxdp_dataplane::pipeline::{Action, Counters, Frame, NextHop, Verdict, Worker, WorkerConfig};
use kxdp_dataplane::tables::affinity::AffinityTable;
use kxdp_dataplane::tables::conntrack::{Config as ConntrackConfig, Conntrack};
use kxdp_dataplane::tables::fib::RouteTable;
use kxdp_dataplane::tables::snapshot::{BuildError, Snapshot, SnapshotBuilder};
use kxdp_dataplane::{DropReason, FlowKey, Timestamp};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::{DataLink, PcapError};

use crate::packets::{self, Segment, Sequence};
use crate::random::{Rng, Zipf};
use crate::report;
use crate::scenario::{self, Family, FlowMix};

/// Frames per `process` call: the RX batch size of the AF_XDP workers (DESIGN.md §2).
pub const BATCH: usize = 64;
/// One UMEM chunk.
pub const FRAME_SIZE: usize = 2048;
/// The interface client pods' traffic arrives on, and replies to them leave by.
pub const CLIENT_IFINDEX: u32 = 10;
/// The interface backends are reached through, and their replies arrive on.
pub const BACKEND_IFINDEX: u32 = 20;
/// Where the virtual clock starts: far enough from zero that nothing looks expired at birth.
pub const START: Timestamp = Timestamp::from_secs(1_000);

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the snapshot: {0}")]
    Build(#[from] BuildError),
    #[error("{context}: frame {index}: expected {expected}, got {verdict:?} / {action:?}")]
    Verdict {
        context: String,
        index: usize,
        expected: String,
        verdict: Verdict,
        action: Action,
    },
    #[error("{context}: rewritten frame is wrong: {problem}")]
    Rewrite { context: String, problem: String },
    #[error("{context}: counters disagree: {problem}\n{counters:?}")]
    Counters {
        context: String,
        problem: String,
        counters: Box<Counters>,
    },
    #[error("pcap: {0}")]
    Pcap(#[from] PcapError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Which packets a measurement sends.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Data segments of tracked flows, client to service, flows drawn by Zipf popularity.
    Established,
    /// The same, with a share of SYNs of flows never seen before (backend pick + conntrack insert).
    Mixed,
    /// Data segments of tracked flows, backend to client (reverse NAT).
    Reply,
}

impl Traffic {
    pub fn name(self, new_share: f64) -> String {
        match self {
            Self::Established => "established".into(),
            Self::Mixed => format!("{:.0}% new", new_share * 100.0),
            Self::Reply => "reply".into(),
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Settings {
    pub services: Vec<usize>,
    pub flows: Vec<usize>,
    pub families: Vec<Family>,
    /// Packets per measurement (rounded up to whole batches).
    pub packets: usize,
    /// Share of SYNs of fresh flows in the mixed measurement.
    pub new_share: f64,
    pub zipf_exponent: f64,
    /// TCP payload bytes of data segments.
    pub payload: usize,
    /// Virtual time between packets, in nanoseconds.
    pub interarrival_nanos: u64,
    pub seed: u64,
    /// Which measurements each cell runs (all three by default; fewer for profiling).
    pub traffic: Vec<Traffic>,
}

impl Settings {
    /// The full matrix of DESIGN.md §6.1.
    pub fn full() -> Self {
        Self {
            services: vec![10, 1_000, 10_000, 100_000],
            flows: vec![1_000, 100_000, 1_000_000],
            families: vec![Family::V4, Family::V6],
            packets: 1 << 20,
            new_share: 0.1,
            zipf_exponent: 1.0,
            payload: 64,
            interarrival_nanos: 100,
            seed: 1,
            traffic: vec![Traffic::Established, Traffic::Reply, Traffic::Mixed],
        }
    }

    /// A smoke run for CI: every code path, small sizes, seconds even in a debug build.
    pub fn quick() -> Self {
        Self {
            services: vec![10, 1_000],
            flows: vec![1_000, 10_000],
            packets: 16 * BATCH,
            ..Self::full()
        }
    }
}

/// One timed measurement.
pub struct Measurement {
    pub services: usize,
    pub flows: usize,
    pub family: Family,
    pub traffic: Traffic,
    pub packets: u64,
    /// Time spent inside `Worker::process`.
    pub busy: Duration,
    /// Nanoseconds per batch.
    pub batches: Histogram<u64>,
}

impl Measurement {
    pub fn mpps(&self) -> f64 {
        self.packets as f64 / self.busy.as_secs_f64() / 1e6
    }

    pub fn nanos_per_packet(&self) -> f64 {
        self.busy.as_nanos() as f64 / self.packets as f64
    }

    /// The rate the median batch ran at: robust against batches the scheduler preempted, which on a
    /// shared machine inflate the mean.
    pub fn median_mpps(&self) -> f64 {
        1e3 / self.percentile(0.5).max(1e-3)
    }

    /// A per-batch percentile, as nanoseconds per packet.
    pub fn percentile(&self, quantile: f64) -> f64 {
        self.batches.value_at_quantile(quantile) as f64 / BATCH as f64
    }
}

/// What one snapshot cost.
pub struct SnapshotCost {
    pub services: usize,
    pub service_ports: usize,
    pub build: Duration,
    pub resident_bytes: Option<u64>,
}

/// What one warmed-up conntrack cost.
pub struct ConntrackCost {
    pub services: usize,
    pub flows: usize,
    pub family: Family,
    pub capacity: usize,
    pub warmup: Duration,
    pub warmup_packets: u64,
    pub resident_bytes: Option<u64>,
}

/// Everything a run measured.
#[derive(Default)]
pub struct Outcome {
    pub measurements: Vec<Measurement>,
    pub snapshots: Vec<SnapshotCost>,
    pub conntracks: Vec<ConntrackCost>,
    /// `(flows, capacity, RSS)` of each conntrack size, measured by the caller in fresh processes:
    /// inside the bench the allocator hands tables memory earlier cells freed, which RSS cannot see.
    pub conntrack_memory: Vec<(usize, usize, Option<u64>)>,
    pub pinned_core: Option<usize>,
}

/// The routes the bench node has: client pods one way, everything else in the pod range the other.
/// A handful of prefixes, as a node with per-node pod CIDRs has; the pipeline pays a real LPM lookup.
pub fn route_table() -> RouteTable {
    let hop = |ifindex: u32| NextHop {
        ifindex,
        source_mac: packets::NODE_MAC,
        destination_mac: [0x02, 0, 0, 0, 0, ifindex as u8],
    };
    let mut table = RouteTable::new();
    for (prefix, ifindex) in [
        ("10.244.200.0/21", CLIENT_IFINDEX),
        ("10.244.208.0/20", CLIENT_IFINDEX),
        ("10.244.224.0/19", CLIENT_IFINDEX),
        ("10.244.0.0/16", BACKEND_IFINDEX),
        ("fd00:244::2:0:0/96", CLIENT_IFINDEX),
        ("fd00:244::/64", BACKEND_IFINDEX),
    ] {
        table.insert(prefix.parse().expect("valid prefix"), hop(ifindex));
    }
    table
}

/// Builds the snapshot of `services` scenario services, generating the specs one at a time so that
/// nothing but the snapshot itself is left behind in memory.
pub fn build_snapshot(services: usize) -> Result<Snapshot, BuildError> {
    let mut builder = SnapshotBuilder::new(scenario::node_config());
    for spec in scenario::service_ports(services) {
        builder.upsert_service(spec)?;
    }
    Ok(builder.build())
}

/// Pins the calling thread to `core`, or to the last core when `None`: one bench thread is one core.
pub fn pin(core: Option<usize>) -> Option<usize> {
    let cores = core_affinity::get_core_ids()?;
    let chosen = match core {
        Some(wanted) => cores.into_iter().find(|c| c.id == wanted)?,
        None => cores.into_iter().last()?,
    };
    core_affinity::set_for_current(chosen).then_some(chosen.id)
}

/// Runs the whole matrix; `progress` gets a line per step (the bench prints it to stderr).
pub fn run(settings: &Settings, mut progress: impl FnMut(&str)) -> Result<Outcome, Error> {
    let mut outcome = Outcome::default();
    let fib = route_table();
    // Every snapshot is built before any cell runs: an RSS reading is only a fair measure of what a
    // table holds while the allocator has no freed memory to hand back out, and the cells free a lot.
    let mut snapshots = Vec::with_capacity(settings.services.len());
    for &services in &settings.services {
        let before = report::resident_bytes();
        let started = Instant::now();
        let snapshot = build_snapshot(services)?;
        let build = started.elapsed();
        let resident = report::resident_bytes()
            .zip(before)
            .map(|(after, before)| after.saturating_sub(before));
        progress(&format!(
            "{services} services: {} service ports, snapshot built in {:.2} s",
            snapshot.services().count(),
            build.as_secs_f64()
        ));
        outcome.snapshots.push(SnapshotCost {
            services,
            service_ports: snapshot.services().count(),
            build,
            resident_bytes: resident,
        });
        snapshots.push((services, snapshot));
    }
    for (services, snapshot) in &snapshots {
        for &flows in &settings.flows {
            for &family in &settings.families {
                run_cell(
                    settings,
                    snapshot,
                    &fib,
                    *services,
                    flows,
                    family,
                    &mut outcome,
                    &mut progress,
                )?;
            }
        }
    }
    Ok(outcome)
}

/// How many never-seen flows the mixed measurement may open.
fn fresh_flows(settings: &Settings) -> usize {
    let packets = settings.packets.div_ceil(BATCH) * BATCH;
    (packets as f64 * settings.new_share).ceil() as usize + BATCH
}

/// The conntrack capacity of a cell: twice the flows it ever holds, the headroom a node would have.
pub fn conntrack_capacity(settings: &Settings, flows: usize) -> usize {
    2 * (flows + fresh_flows(settings))
}

/// The RSS an empty conntrack of `capacity` adds to this process (it allocates and touches all of its
/// memory up front, so empty and full cost the same). Meant for a fresh process: see
/// [`Outcome::conntrack_memory`].
pub fn probe_conntrack(capacity: usize) -> Option<u64> {
    let before = report::resident_bytes()?;
    let conntrack = Conntrack::new(ConntrackConfig::with_capacity(capacity));
    let after = report::resident_bytes()?;
    drop(conntrack);
    Some(after.saturating_sub(before))
}

/// What a frame must come out as.
#[derive(Copy, Clone, Debug)]
struct Expect {
    ingress: u32,
    ifindex: u32,
    action: Action,
    /// The flow key the rewritten packet must carry, when the bench knows it in advance.
    output: Option<FlowKey>,
}

impl Expect {
    fn original(action: Action, output: Option<FlowKey>) -> Self {
        Self {
            ingress: CLIENT_IFINDEX,
            ifindex: BACKEND_IFINDEX,
            action,
            output,
        }
    }

    fn reply(output: FlowKey) -> Self {
        Self {
            ingress: BACKEND_IFINDEX,
            ifindex: CLIENT_IFINDEX,
            action: Action::Reply,
            output: Some(output),
        }
    }
}

/// Frame buffers and a worker, and the virtual clock they share.
struct Harness<'a> {
    snapshot: &'a Snapshot,
    fib: &'a RouteTable,
    conntrack: Conntrack,
    worker: Worker,
    buffers: Vec<u8>,
    lengths: [usize; BATCH],
    expect: [Option<Expect>; BATCH],
    scratch: Vec<u8>,
    now: Timestamp,
    batch_nanos: u64,
    context: String,
}

impl Harness<'_> {
    /// Fills up to [`BATCH`] frames with `fill`, runs them through the pipeline, checks them, and
    /// returns the time `process` took.
    fn batch(
        &mut self,
        count: usize,
        mut fill: impl FnMut(usize, &mut Vec<u8>) -> Expect,
    ) -> Result<Duration, Error> {
        debug_assert!(count <= BATCH);
        for index in 0..count {
            self.scratch.clear();
            let expect = fill(index, &mut self.scratch);
            let length = self.scratch.len();
            self.buffers[index * FRAME_SIZE..][..length].copy_from_slice(&self.scratch);
            self.lengths[index] = length;
            self.expect[index] = Some(expect);
        }
        let mut frames: Vec<Frame<'_>> = self
            .buffers
            .chunks_exact_mut(FRAME_SIZE)
            .take(count)
            .enumerate()
            .map(|(index, buffer)| {
                let ingress = self.expect[index].map_or(0, |e| e.ingress);
                Frame::new(buffer, self.lengths[index], ingress)
            })
            .collect();
        let started = Instant::now();
        self.worker.process(
            self.now,
            self.snapshot,
            &self.conntrack,
            self.fib,
            &mut frames,
        );
        let elapsed = started.elapsed();
        self.now = Timestamp::from_nanos(self.now.as_nanos() + self.batch_nanos);
        for (index, frame) in frames.iter().enumerate() {
            let expect = self.expect[index].expect("filled above");
            let good = frame.verdict
                == Verdict::Transmit {
                    ifindex: expect.ifindex,
                }
                && frame.trace.action == expect.action;
            if !good {
                return Err(Error::Verdict {
                    context: self.context.clone(),
                    index,
                    expected: format!(
                        "Transmit {{ ifindex: {} }} / {:?}",
                        expect.ifindex, expect.action
                    ),
                    verdict: frame.verdict,
                    action: frame.trace.action,
                });
            }
        }
        // Taking every packet apart again would triple the untimed work; the first of each batch is
        // a fair sample, since every frame of a batch runs the same code.
        if let Some(first) = frames.first() {
            let expect = self.expect[0].expect("filled above");
            check_rewrite(first.packet(), expect.output).map_err(|problem| Error::Rewrite {
                context: self.context.clone(),
                problem,
            })?;
        }
        Ok(elapsed)
    }

    /// Runs `packets` packets in full batches and records them as one measurement.
    fn measure(
        &mut self,
        packets: usize,
        mut fill: impl FnMut(&mut Vec<u8>) -> Expect,
    ) -> Result<(u64, Duration, Histogram<u64>), Error> {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .expect("valid histogram bounds");
        let mut busy = Duration::ZERO;
        let batches = packets.div_ceil(BATCH);
        for _ in 0..batches {
            let elapsed = self.batch(BATCH, |_, out| fill(out))?;
            busy += elapsed;
            histogram.saturating_record(elapsed.as_nanos().max(1) as u64);
        }
        Ok(((batches * BATCH) as u64, busy, histogram))
    }

    fn check_counters(
        &self,
        problem: impl FnOnce(&Counters) -> Option<String>,
    ) -> Result<(), Error> {
        let counters = self.worker.counters();
        match problem(counters) {
            None => Ok(()),
            Some(problem) => Err(Error::Counters {
                context: self.context.clone(),
                problem,
                counters: Box::new(counters.clone()),
            }),
        }
    }
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename the list
fn run_cell(
    settings: &Settings,
    snapshot: &Snapshot,
    fib: &RouteTable,
    services: usize,
    flow_count: usize,
    family: Family,
    outcome: &mut Outcome,
    progress: &mut impl FnMut(&str),
) -> Result<(), Error> {
    let cell_seed =
        settings.seed ^ ((services as u64) << 40) ^ ((flow_count as u64) << 8) ^ family as u64;
    let root = Rng::new(cell_seed);
    let packets = settings.packets.div_ceil(BATCH) * BATCH;
    let fresh_count = fresh_flows(settings);
    let mut warm = scenario::flows(
        services,
        flow_count + fresh_count,
        FlowMix::tcp(family),
        &mut root.fork(1),
    );
    let fresh = warm.split_off(flow_count);
    let zipf = Zipf::new(warm.len(), settings.zipf_exponent);
    let mut replies: Vec<FlowKey> = Vec::with_capacity(warm.len());
    let context = format!(
        "{services} services × {flow_count} flows, {}",
        family.name()
    );

    let before = report::resident_bytes();
    let capacity = conntrack_capacity(settings, flow_count);
    let mut harness = Harness {
        snapshot,
        fib,
        conntrack: Conntrack::new(ConntrackConfig::with_capacity(capacity)),
        worker: Worker::new(
            WorkerConfig { index: 0, count: 1 },
            Arc::new(AffinityTable::new(1024)),
        ),
        buffers: vec![0; BATCH * FRAME_SIZE],
        lengths: [0; BATCH],
        expect: [None; BATCH],
        scratch: Vec::with_capacity(FRAME_SIZE),
        now: START,
        batch_nanos: BATCH as u64 * settings.interarrival_nanos,
        context: format!("{context}, warm-up"),
    };

    let started = Instant::now();
    // Warm-up: a real three-way handshake per flow, so every flow is Established in conntrack and
    // has seen its reply, as the flows of a busy node are.
    for chunk in warm.chunks(BATCH) {
        harness.batch(chunk.len(), |index, out| {
            let key = chunk[index].key;
            packets::tcp_frame(
                out,
                &key,
                Segment::Syn,
                Sequence {
                    sequence: 1,
                    acknowledgment: 0,
                },
                &[],
            );
            Expect::original(Action::NewFlow, None)
        })?;
    }
    for flow in &warm {
        let hit = harness
            .conntrack
            .lookup(&flow.key, harness.now)
            .ok_or_else(|| Error::Counters {
                context: harness.context.clone(),
                problem: format!("flow {:?} is not tracked after its SYN", flow.key),
                counters: Box::new(harness.worker.counters().clone()),
            })?;
        replies.push(hit.flow.reply);
    }
    for (chunk, reply_chunk) in warm.chunks(BATCH).zip(replies.chunks(BATCH)) {
        harness.batch(chunk.len(), |index, out| {
            let sequence = Sequence {
                sequence: 1,
                acknowledgment: 2,
            };
            packets::tcp_frame(out, &reply_chunk[index], Segment::SynAck, sequence, &[]);
            Expect::reply(chunk[index].key.reversed())
        })?;
        harness.batch(chunk.len(), |index, out| {
            let sequence = Sequence {
                sequence: 2,
                acknowledgment: 2,
            };
            packets::tcp_frame(out, &chunk[index].key, Segment::Ack, sequence, &[]);
            Expect::original(Action::Established, Some(reply_chunk[index].reversed()))
        })?;
    }
    let warmup = started.elapsed();
    let warmup_packets = 3 * warm.len() as u64;
    harness.check_counters(|c| {
        (c.new_flows != flow_count as u64 || c.dropped != 0 || c.flow_races_joined != 0)
            .then(|| format!("warm-up of {flow_count} flows"))
    })?;
    let resident = report::resident_bytes()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before));
    progress(&format!(
        "  {context}: warmed up in {:.2} s (conntrack capacity {capacity})",
        warmup.as_secs_f64()
    ));
    outcome.conntracks.push(ConntrackCost {
        services,
        flows: flow_count,
        family,
        capacity,
        warmup,
        warmup_packets,
        resident_bytes: resident,
    });

    let payload = vec![0x61u8; settings.payload];
    let mut record =
        |traffic: Traffic, (packets, busy, batches): (u64, Duration, Histogram<u64>)| {
            let measurement = Measurement {
                services,
                flows: flow_count,
                family,
                traffic,
                packets,
                busy,
                batches,
            };
            progress(&format!(
                "  {context}, {}: {:.2} Mpps, {:.0} ns/packet",
                traffic.name(settings.new_share),
                measurement.mpps(),
                measurement.nanos_per_packet()
            ));
            outcome.measurements.push(measurement);
        };

    let mut sent = warmup_packets;
    if settings.traffic.contains(&Traffic::Established) {
        harness.context = format!("{context}, established");
        let mut order = root.fork(2);
        let established = harness.measure(packets, |out| {
            let index = zipf.sample(&mut order);
            packets::data_frame(out, &warm[index].key, &payload);
            Expect::original(Action::Established, Some(replies[index].reversed()))
        })?;
        sent += established.0;
        record(Traffic::Established, established);
    }

    if settings.traffic.contains(&Traffic::Reply) {
        harness.context = format!("{context}, reply");
        let mut order = root.fork(3);
        let reply = harness.measure(packets, |out| {
            let index = zipf.sample(&mut order);
            packets::data_frame(out, &replies[index], &payload);
            Expect::reply(warm[index].key.reversed())
        })?;
        sent += reply.0;
        record(Traffic::Reply, reply);
    }

    // Last, because it grows the table by the fresh flows it opens.
    let mut opened = 0u64;
    if settings.traffic.contains(&Traffic::Mixed) {
        harness.context = format!("{context}, mixed");
        let mut order = root.fork(4);
        let mut fresh_iter = fresh.iter();
        let mixed = harness.measure(packets, |out| {
            if order.chance(settings.new_share) {
                if let Some(flow) = fresh_iter.next() {
                    opened += 1;
                    packets::tcp_frame(
                        out,
                        &flow.key,
                        Segment::Syn,
                        Sequence {
                            sequence: 1,
                            acknowledgment: 0,
                        },
                        &[],
                    );
                    return Expect::original(Action::NewFlow, None);
                }
            }
            let index = zipf.sample(&mut order);
            packets::data_frame(out, &warm[index].key, &payload);
            Expect::original(Action::Established, Some(replies[index].reversed()))
        })?;
        sent += mixed.0;
        record(Traffic::Mixed, mixed);
    }

    let total = sent;
    harness.check_counters(|c| {
        let expected_new = flow_count as u64 + opened;
        if c.packets != total || c.transmitted != total {
            Some(format!(
                "{total} packets sent, {} counted, {} transmitted",
                c.packets, c.transmitted
            ))
        } else if c.new_flows != expected_new {
            Some(format!(
                "{expected_new} new flows sent, {} counted",
                c.new_flows
            ))
        } else if c.dropped != 0 || c.drops.iter().any(|&d| d != 0) || c.to_host != 0 {
            Some("drops or host hand-offs in a run that should have none".into())
        } else {
            None
        }
    })?;
    Ok(())
}

/// Takes a rewritten frame apart with etherparse (not kxdp's parser) and checks its addresses, ports,
/// TTL and checksums.
fn check_rewrite(packet: &[u8], expected: Option<FlowKey>) -> Result<(), String> {
    let sliced = SlicedPacket::from_ethernet(packet).map_err(|e| format!("does not parse: {e}"))?;
    let (source, destination, hop_limit, payload_checksum) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            let header = ip.header().to_header();
            if header.header_checksum != header.calc_header_checksum() {
                return Err("bad IPv4 header checksum".into());
            }
            let (source, destination) = (
                IpAddr::V4(header.source.into()),
                IpAddr::V4(header.destination.into()),
            );
            let checksum = match &sliced.transport {
                Some(TransportSlice::Tcp(tcp)) => (
                    tcp.checksum(),
                    tcp.to_header()
                        .calc_checksum_ipv4(&header, tcp.payload())
                        .ok(),
                ),
                Some(TransportSlice::Udp(udp)) => (
                    udp.checksum(),
                    udp.to_header()
                        .calc_checksum_ipv4(&header, udp.payload())
                        .ok(),
                ),
                _ => return Err("no TCP or UDP header".into()),
            };
            (source, destination, header.time_to_live, checksum)
        }
        Some(NetSlice::Ipv6(ip)) => {
            let header = ip.header().to_header();
            let (source, destination) = (
                IpAddr::V6(header.source.into()),
                IpAddr::V6(header.destination.into()),
            );
            let checksum = match &sliced.transport {
                Some(TransportSlice::Tcp(tcp)) => (
                    tcp.checksum(),
                    tcp.to_header()
                        .calc_checksum_ipv6(&header, tcp.payload())
                        .ok(),
                ),
                Some(TransportSlice::Udp(udp)) => (
                    udp.checksum(),
                    udp.to_header()
                        .calc_checksum_ipv6(&header, udp.payload())
                        .ok(),
                ),
                _ => return Err("no TCP or UDP header".into()),
            };
            (source, destination, header.hop_limit, checksum)
        }
        _ => return Err("no IP header".into()),
    };
    match payload_checksum {
        (found, Some(computed)) if found == computed => {}
        (found, computed) => {
            return Err(format!("L4 checksum {found:#06x}, recomputed {computed:?}"))
        }
    }
    if hop_limit != packets::HOP_LIMIT - 1 {
        return Err(format!(
            "TTL/hop limit {hop_limit}, expected {}",
            packets::HOP_LIMIT - 1
        ));
    }
    let ports = match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => (tcp.source_port(), tcp.destination_port()),
        Some(TransportSlice::Udp(udp)) => (udp.source_port(), udp.destination_port()),
        _ => unreachable!("checked above"),
    };
    if let Some(expected) = expected {
        let found = (source, ports.0, destination, ports.1);
        let wanted = (
            expected.source,
            expected.source_port,
            expected.destination,
            expected.destination_port,
        );
        if found != wanted {
            return Err(format!("flow {found:?}, expected {wanted:?}"));
        }
    } else if scenario::service_of_cluster_ip(destination).is_some() {
        return Err(format!(
            "destination {destination} is still a ClusterIP: no DNAT"
        ));
    }
    Ok(())
}

/// Renders the measurements as the markdown RESULTS.md carries.
pub fn render(settings: &Settings, outcome: &Outcome, command: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Pipeline rate (in-process replay)\n");
    let _ = writeln!(out, "{}", report::machine().trim_end());
    let _ = writeln!(out, "- command: `{command}`");
    let _ = writeln!(
        out,
        "- one worker thread{}; batches of {BATCH} frames; {} packets per measurement; flow popularity Zipf(s = {}); \
         TCP data segments with {} B payload; virtual clock at {:.0} Mpps",
        outcome.pinned_core.map_or_else(|| " (not pinned)".to_string(), |core| format!(" pinned to core {core}")),
        settings.packets.div_ceil(BATCH) * BATCH,
        settings.zipf_exponent,
        settings.payload,
        1e3 / settings.interarrival_nanos.max(1) as f64,
    );
    let _ = writeln!(
        out,
        "- services = Kubernetes Services, each dual-stack TCP/80 (+ UDP/53 on every 10th), 3 backends; \
         flows = tracked flows of the measured family, warmed up with a full handshake"
    );
    let _ = writeln!(
        out,
        "- timed: `Worker::process` only; percentiles are per-batch time / {BATCH} (ns per packet); \
         Mpps @p50 = 1000 / p50, the rate of the median batch\n"
    );
    let _ = writeln!(
        out,
        "| services | flows | family | traffic | Mpps/core | ns/pkt | Mpps @p50 | p50 | p90 | p99 | p99.9 |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for m in &outcome.measurements {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} |",
            count(m.services),
            count(m.flows),
            m.family.name(),
            m.traffic.name(settings.new_share),
            m.mpps(),
            m.nanos_per_packet(),
            m.median_mpps(),
            m.percentile(0.5),
            m.percentile(0.9),
            m.percentile(0.99),
            m.percentile(0.999),
        );
    }
    let _ = writeln!(out, "\n### Memory\n");
    let _ = writeln!(
        out,
        "RSS growth of the process while each table was built (`VmRSS` before and after).\n"
    );
    let _ = writeln!(
        out,
        "| services | service ports | snapshot build | snapshot RSS | per service port |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
    for s in &outcome.snapshots {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} s | {} | {} |",
            count(s.services),
            s.service_ports,
            s.build.as_secs_f64(),
            s.resident_bytes
                .map_or("n/a".into(), |b| format!("{:.1} MiB", report::mebibytes(b))),
            s.resident_bytes.map_or("n/a".into(), |b| format!(
                "{:.0} B",
                b as f64 / s.service_ports.max(1) as f64
            )),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Conntrack, measured alone in a fresh process (capacity = 2 × (flows + the mixed run's new flows)); \
         warm-up = a three-way handshake per flow at the largest service count, IPv4:\n"
    );
    let _ = writeln!(
        out,
        "| flows | capacity | RSS | bytes/slot | bytes/flow | warm-up |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
    let largest = settings.services.iter().max().copied();
    for &(flows, capacity, resident) in &outcome.conntrack_memory {
        let warmup = outcome
            .conntracks
            .iter()
            .find(|c| Some(c.services) == largest && c.flows == flows && c.family == Family::V4);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            count(flows),
            count(capacity),
            resident.map_or("n/a".into(), |b| format!("{:.1} MiB", report::mebibytes(b))),
            resident.map_or("n/a".into(), |b| format!(
                "{:.0}",
                b as f64 / capacity as f64
            )),
            resident.map_or("n/a".into(), |b| format!("{:.0}", b as f64 / flows as f64)),
            warmup.map_or("n/a".into(), |c| format!(
                "{:.2} s ({:.0} ns/pkt)",
                c.warmup.as_secs_f64(),
                c.warmup.as_nanos() as f64 / c.warmup_packets.max(1) as f64
            )),
        );
    }
    if let Some(peak) = report::peak_resident_bytes() {
        let _ = writeln!(
            out,
            "\nPeak RSS of the run: {:.0} MiB.",
            report::mebibytes(peak)
        );
    }
    let _ = writeln!(out, "\n### Targets\n");
    let _ = write!(out, "{}", targets(outcome));
    out
}

/// The two targets of the brief, checked against whatever cells were measured.
fn targets(outcome: &Outcome) -> String {
    let mut out = String::new();
    let find = |services: usize, flows: usize, family: Family| {
        outcome.measurements.iter().find(|m| {
            m.services == services
                && m.flows == flows
                && m.family == family
                && m.traffic == Traffic::Established
        })
    };
    // Verdicts use the median batch: on a shared machine a few preempted batches (milliseconds each)
    // move the mean by more than the pipeline's own variation. Both are shown.
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    for family in [Family::V4, Family::V6] {
        if let Some(m) = find(10_000, 100_000, family) {
            let _ = writeln!(
                out,
                "- {} established, 10k services × 100k flows: {:.2} Mpps/core at the median batch \
                 ({:.2} mean); target ≥ 10: {}",
                family.name(),
                m.median_mpps(),
                m.mpps(),
                verdict(m.median_mpps() >= 10.0)
            );
        }
        if let (Some(small), Some(large)) =
            (find(10, 100_000, family), find(100_000, 100_000, family))
        {
            let ratio = large.median_mpps() / small.median_mpps();
            let _ = writeln!(
                out,
                "- {} established at 100k flows: 100k services run at {:.0}% of the 10-service rate at the \
                 median batch ({:.0}% by the means); target ≥ 80%: {}",
                family.name(),
                ratio * 100.0,
                large.mpps() / small.mpps() * 100.0,
                verdict(ratio >= 0.8)
            );
        }
    }
    if out.is_empty() {
        out.push_str("- (the target cells were not part of this run)\n");
    }
    out
}

fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// What replaying a capture did.
#[derive(Debug, Default)]
pub struct PcapReplay {
    pub packets: u64,
    pub busy: Duration,
    pub counters: Counters,
}

impl fmt::Display for PcapReplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        writeln!(f, "| packets | new flows | established | replies | untracked | transmitted | to host | dropped | Mpps |")?;
        writeln!(f, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        writeln!(
            f,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            c.packets,
            c.new_flows,
            c.established,
            c.replies,
            c.untracked,
            c.transmitted,
            c.to_host,
            c.dropped,
            self.packets as f64 / self.busy.as_secs_f64().max(1e-9) / 1e6
        )?;
        for reason in DropReason::ALL {
            let drops = c.drops_for(reason);
            if drops > 0 {
                writeln!(f, "\n- dropped, {}: {drops}", reason.name())?;
            }
        }
        Ok(())
    }
}

/// Replays a capture (Ethernet link type) through the pipeline against the snapshot of `services`
/// scenario services, in capture order, with `now` following the capture's timestamps. Frames from a
/// client pod arrive on [`CLIENT_IFINDEX`], all others on [`BACKEND_IFINDEX`]. Transmitted frames are
/// written to `output`, rewritten, when asked.
pub fn replay_pcap(
    path: &Path,
    services: usize,
    output: Option<&Path>,
) -> Result<PcapReplay, Error> {
    let io_error = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    let file = File::open(path).map_err(io_error(path))?;
    let mut reader = PcapReader::new(BufReader::new(file))?;
    if reader.header().datalink != DataLink::ETHERNET {
        return Err(Error::Pcap(PcapError::InvalidField(
            "link type is not Ethernet",
        )));
    }
    let mut captured: Vec<(Duration, Vec<u8>)> = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet?;
        captured.push((packet.timestamp, packet.data.into_owned()));
    }
    let mut writer = match output {
        Some(output) => {
            let file = File::create(output).map_err(io_error(output))?;
            let header = PcapHeader {
                datalink: DataLink::ETHERNET,
                ..PcapHeader::default()
            };
            Some(PcapWriter::with_header(BufWriter::new(file), header)?)
        }
        None => None,
    };

    let snapshot = build_snapshot(services)?;
    let fib = route_table();
    let conntrack = Conntrack::new(ConntrackConfig::with_capacity(
        (captured.len() * 2).max(1024),
    ));
    let mut worker = Worker::new(
        WorkerConfig { index: 0, count: 1 },
        Arc::new(AffinityTable::new(1024)),
    );
    let mut buffers = vec![0u8; BATCH * FRAME_SIZE];
    let first = captured
        .first()
        .map_or(Duration::ZERO, |(timestamp, _)| *timestamp);
    let mut replay = PcapReplay::default();
    for chunk in captured.chunks(BATCH) {
        let mut frames: Vec<Frame<'_>> = buffers
            .chunks_exact_mut(FRAME_SIZE)
            .zip(chunk)
            .map(|(buffer, (_, data))| {
                let length = data.len().min(FRAME_SIZE);
                buffer[..length].copy_from_slice(&data[..length]);
                let ingress = match SlicedPacket::from_ethernet(data).ok().and_then(|p| p.net) {
                    Some(NetSlice::Ipv4(ip))
                        if scenario::is_client_address(IpAddr::V4(ip.header().source_addr())) =>
                    {
                        CLIENT_IFINDEX
                    }
                    Some(NetSlice::Ipv6(ip))
                        if scenario::is_client_address(IpAddr::V6(ip.header().source_addr())) =>
                    {
                        CLIENT_IFINDEX
                    }
                    _ => BACKEND_IFINDEX,
                };
                Frame::new(buffer, length, ingress)
            })
            .collect();
        let offset = chunk[0].0.saturating_sub(first);
        let now = START.saturating_add(offset);
        let started = Instant::now();
        worker.process(now, &snapshot, &conntrack, &fib, &mut frames);
        replay.busy += started.elapsed();
        replay.packets += frames.len() as u64;
        if let Some(writer) = writer.as_mut() {
            for (frame, (timestamp, _)) in frames.iter().zip(chunk) {
                if let Verdict::Transmit { .. } = frame.verdict {
                    writer.write_packet(&PcapPacket::new(
                        *timestamp,
                        frame.len as u32,
                        frame.packet(),
                    ))?;
                }
            }
        }
    }
    replay.counters = worker.counters().clone();
    Ok(replay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_send_clients_and_backends_their_own_ways() {
        use kxdp_dataplane::tables::fib::Fib;
        let table = route_table();
        let hop = |a: IpAddr| table.next_hop(a).map(|h| h.ifindex);
        for family in [Family::V4, Family::V6] {
            assert_eq!(
                hop(scenario::client_address(0, family)),
                Some(CLIENT_IFINDEX)
            );
            assert_eq!(
                hop(scenario::client_address(scenario::CLIENT_HOSTS - 1, family)),
                Some(CLIENT_IFINDEX)
            );
            assert_eq!(
                hop(scenario::backend_address(0, family)),
                Some(BACKEND_IFINDEX)
            );
            assert_eq!(
                hop(scenario::backend_address(299_999, family)),
                Some(BACKEND_IFINDEX)
            );
        }
    }

    #[test]
    fn a_tiny_matrix_runs_clean() {
        let settings = Settings {
            services: vec![10],
            flows: vec![100],
            packets: 4 * BATCH,
            ..Settings::full()
        };
        let outcome = run(&settings, |_| {}).unwrap();
        assert_eq!(outcome.measurements.len(), 6);
        assert!(outcome
            .measurements
            .iter()
            .all(|m| m.packets == 4 * BATCH as u64 && m.mpps() > 0.0));
        let text = render(&settings, &outcome, "test");
        assert!(text.contains("| 10 | 100 | IPv6 | reply |"), "{text}");
    }

    #[test]
    fn a_generated_capture_replays_without_drops() {
        let directory = std::env::temp_dir().join(format!("kxdp-perf-test-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let input = directory.join("in.pcap");
        let output = directory.join("out.pcap");
        let config = crate::generate::Config {
            services: 30,
            flows: 200,
            packets: 2_000,
            ..crate::generate::Config::default()
        };
        let summary = crate::generate::generate(&config, File::create(&input).unwrap()).unwrap();
        let replay = replay_pcap(&input, 30, Some(&output)).unwrap();
        std::fs::remove_dir_all(&directory).ok();
        assert_eq!(replay.packets, summary.packets);
        assert_eq!(replay.counters.dropped, 0, "{replay}");
        assert_eq!(replay.counters.transmitted, summary.packets, "{replay}");
        assert_eq!(replay.counters.new_flows, summary.flows_seen, "{replay}");
    }
}
