//! The pure per-packet pipeline every service packet runs through (DESIGN.md §2).
//!
//! [`Worker::process`] takes a batch of frames, the snapshot loaded once for the batch, the shared
//! conntrack table and the caller's next-hop view, and leaves a [`Verdict`] (and a [`Trace`] saying why)
//! on every frame, rewritten in place. It makes no syscalls and reads no clock: `now` comes in, so the
//! same code serves the AF_XDP workers, offline pcap replay and the tests.
//!
//! Per packet, in order:
//! ```text
//! parse (checked views) -> conntrack lookup
//!   hit, original direction  -> the flow's DNAT (and SNAT when masqueraded)
//!   hit, reply direction     -> reverse NAT
//!   miss, frontend match     -> source ranges -> pick backend (affinity, traffic policy, Maglev)
//!                               -> insert the flow (both directions) -> NAT
//!   miss, no usable endpoint -> reject: TCP RST / ICMP(v6) port unreachable back to the client
//!   miss, echo to a service  -> echo reply
//!   miss, ICMP error         -> reverse-translate the quoted flow, if tracked
//!   miss, otherwise          -> forward unchanged (counted)
//! -> checksums (incremental; full L4 recompute when the frame may carry a partial checksum)
//! -> TTL / hop limit - 1 -> next hop -> L2 rewrite
//! ```

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::drop_reason::DropReason;
use crate::flow::{Direction, FlowKey, Protocol, Timestamp};
use crate::tables::affinity::AffinityTable;
use crate::tables::conntrack::{Conntrack, Hit, Insert, NewFlow, Prepared};
use crate::tables::maglev::mix64;
use crate::tables::nat::SnatPorts;
use crate::tables::snapshot::{
    BackendId, Frontend, FrontendKey, FrontendKind, NodeConfig, Pool, Service, ServiceId, Snapshot,
    WhenEmpty,
};
use crate::wire::{checksum, ethernet, icmp, icmpv6, ipv4, ipv6, tcp, udp};

pub use crate::tables::fib::{Fib, NextHop};

/// Frames processed together in the overlapping passes of [`Worker::process`] (an RX batch).
pub const BATCH: usize = 64;

/// TTL / hop limit of packets kxdp originates (rejects and echo replies).
const REPLY_TTL: u8 = 64;
/// RFC 1812: an ICMPv4 error should not exceed 576 bytes, so quote at most this much.
const MAX_QUOTE_V4: usize = 576 - ipv4::MIN_HEADER_LEN - icmp::HEADER_LEN;
/// RFC 4443: an ICMPv6 error must fit the minimum MTU of 1280 bytes.
const MAX_QUOTE_V6: usize = 1280 - ipv6::HEADER_LEN - icmpv6::HEADER_LEN;

/// One packet in a batch: the buffer it lives in (with room to grow for replies), its length, where
/// it came from, and what the pipeline decided.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The whole buffer (e.g. a UMEM chunk); the packet is `buffer[..len]`.
    pub buffer: &'a mut [u8],
    pub len: usize,
    /// The interface index the frame arrived on; rejects and echo replies go back out of it.
    pub ingress: u32,
    /// The L4 checksum may hold only the pseudo-header sum (sent by a local veth with TX checksum
    /// offload): recompute it in full after any rewrite (DESIGN.md §8).
    pub partial_checksum: bool,
    pub verdict: Verdict,
    pub trace: Trace,
}

impl<'a> Frame<'a> {
    pub fn new(buffer: &'a mut [u8], len: usize, ingress: u32) -> Self {
        let len = len.min(buffer.len());
        Self {
            buffer,
            len,
            ingress,
            partial_checksum: false,
            verdict: Verdict::Pending,
            trace: Trace::default(),
        }
    }

    /// The packet bytes as they are now (rewritten once processed).
    pub fn packet(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

/// What to do with a processed frame.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// Not processed yet.
    #[default]
    Pending,
    /// Send the (rewritten) frame out of this interface.
    Transmit {
        ifindex: u32,
    },
    /// No resolved next hop here: hand the frame to the host stack (through the host service device).
    ToHost,
    Drop(DropReason),
}

/// What the pipeline did with a packet, for counters, `kxdp trace` and replay output.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Action {
    #[default]
    None,
    /// First packet of a flow: a backend was picked and the flow inserted.
    NewFlow,
    /// A tracked flow in its original direction: DNAT (and SNAT).
    Established,
    /// A tracked flow in its reply direction: reverse NAT.
    Reply,
    /// No usable endpoint: answered with a TCP RST or ICMP port unreachable.
    Rejected,
    /// An echo request to a service address, answered by kxdp.
    EchoReply,
    /// An ICMP error about a tracked flow, translated with its quoted header.
    IcmpError,
    /// Not a service flow: forwarded unchanged.
    Untracked,
    Dropped,
}

/// The explanation attached to each frame.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    pub action: Action,
    pub service: Option<ServiceId>,
    pub backend: Option<BackendId>,
    /// The flow's source was rewritten to a node address (masquerade or hairpin).
    pub masqueraded: bool,
}

/// Per-worker counters. Only the owning worker writes them, so they are plain integers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// A new flow found its entry already created by another worker (or an earlier packet) and used it.
    pub flow_races_joined: u64,
    pub established: u64,
    pub replies: u64,
    pub rejected: u64,
    pub echo_replies: u64,
    pub icmp_errors_translated: u64,
    pub untracked: u64,
    pub transmitted: u64,
    /// Frames handed to the host stack because no next hop was resolved.
    pub to_host: u64,
    pub dropped: u64,
    /// Refused packets by [`DropReason`] number. Rejections count here too.
    pub drops: [u64; DropReason::COUNT],
}

impl Counters {
    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

/// Which worker this is, for its slice of the SNAT ports.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    pub index: usize,
    pub count: usize,
}

/// One worker's private state: counters and its SNAT port slice; the affinity table is shared.
pub struct Worker {
    config: WorkerConfig,
    snat: SnatPorts,
    snat_range: RangeInclusive<u16>,
    affinity: Arc<AffinityTable>,
    counters: Counters,
}

impl Worker {
    pub fn new(config: WorkerConfig, affinity: Arc<AffinityTable>) -> Self {
        let snat_range = NodeConfig::default().snat_ports;
        Self {
            snat: SnatPorts::for_worker(snat_range.clone(), config.index, config.count),
            snat_range,
            config,
            affinity,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Runs every frame of the batch through the pipeline. `snapshot` is loaded once per batch.
    pub fn process<F: Fib + ?Sized>(
        &mut self,
        now: Timestamp,
        snapshot: &Snapshot,
        conntrack: &Conntrack,
        fib: &F,
        frames: &mut [Frame<'_>],
    ) {
        if snapshot.node().snat_ports != self.snat_range {
            self.snat_range = snapshot.node().snat_ports.clone();
            self.snat = SnatPorts::for_worker(
                self.snat_range.clone(),
                self.config.index,
                self.config.count,
            );
        }
        let mut context = Context {
            now,
            snapshot,
            conntrack,
            fib,
            snat: &mut self.snat,
            affinity: &self.affinity,
        };
        for chunk in frames.chunks_mut(BATCH) {
            // Passes over the batch, so its cache misses overlap rather than queue: parse and hash
            // every frame; then, in loops tight enough for the CPU to keep many loads in flight,
            // load each conntrack bucket and then each candidate flow slot; then do the work, by
            // which time most of those lines are in cache.
            let mut parsed = [Err(Verdict::Pending); BATCH];
            let mut prepared: [Option<Prepared>; BATCH] = [None; BATCH];
            for ((frame, parsed), prepared) in chunk.iter().zip(&mut parsed).zip(&mut prepared) {
                *parsed = parse(frame.packet());
                if let Ok(Parsed { key: Some(key), .. }) = parsed {
                    *prepared = Some(conntrack.prepare(key));
                }
            }
            for prepared in prepared.iter().flatten() {
                std::hint::black_box(conntrack.load_bucket(prepared));
            }
            for prepared in prepared.iter().flatten() {
                std::hint::black_box(conntrack.load_slot(prepared));
            }
            for ((frame, parsed), prepared) in chunk.iter_mut().zip(parsed).zip(prepared) {
                frame.trace = Trace::default();
                let verdict = match parsed
                    .and_then(|parsed| context.process_parsed(frame, &parsed, prepared.as_ref()))
                {
                    Ok(verdict) | Err(verdict) => verdict,
                };
                frame.verdict = verdict;
                if let Verdict::Drop(_) = verdict {
                    frame.trace.action = Action::Dropped;
                }
                count(&mut self.counters, frame);
            }
        }
    }
}

/// Adds one processed frame to the worker's counters.
fn count(counters: &mut Counters, frame: &Frame<'_>) {
    counters.packets += 1;
    counters.bytes += frame.len as u64;
    match frame.trace.action {
        Action::NewFlow => counters.new_flows += 1,
        Action::Established => counters.established += 1,
        Action::Reply => counters.replies += 1,
        Action::Rejected => counters.rejected += 1,
        Action::EchoReply => counters.echo_replies += 1,
        Action::IcmpError => counters.icmp_errors_translated += 1,
        Action::Untracked => counters.untracked += 1,
        Action::None | Action::Dropped => {}
    }
    match frame.verdict {
        Verdict::Transmit { .. } => counters.transmitted += 1,
        Verdict::ToHost => counters.to_host += 1,
        Verdict::Drop(reason) => {
            counters.dropped += 1;
            counters.drops[reason as usize] += 1;
        }
        Verdict::Pending => {}
    }
    if frame.trace.action == Action::Rejected {
        // The client got an answer, but the packet itself was refused.
        counters.drops[DropReason::RejectedNoEndpoints as usize] += 1;
    }
}

/// Everything one batch needs, borrowed for its length.
struct Context<'b, F: Fib + ?Sized> {
    now: Timestamp,
    snapshot: &'b Snapshot,
    conntrack: &'b Conntrack,
    fib: &'b F,
    snat: &'b mut SnatPorts,
    affinity: &'b AffinityTable,
}

/// The stages return `Err(verdict)` to stop early; `?` then reads like "or stop here".
type Stage<T> = Result<T, Verdict>;

fn drop(reason: DropReason) -> Verdict {
    Verdict::Drop(reason)
}

/// Where a packet is fragmented, if at all.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Fragment {
    None,
    /// Offset zero, more to come: ports are here, the rest of the datagram is not.
    First,
}

/// What the L4 header is, as far as the pipeline cares.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum L4 {
    Tcp {
        flags: u8,
    },
    Udp {
        checksum_present: bool,
    },
    Sctp,
    EchoRequest,
    EchoReply,
    IcmpError,
    /// Anything else (other ICMP types, other protocols): never a service flow.
    Other,
}

/// The parsed layout of a packet: offsets into the frame and the flow key.
#[derive(Copy, Clone, Debug)]
struct Parsed {
    l3: usize,
    l4: usize,
    /// One past the last byte of the IP packet (Ethernet padding excluded).
    end: usize,
    ipv6: bool,
    l4_kind: L4,
    fragment: Fragment,
    /// The flow key for TCP, UDP, SCTP and echo packets.
    key: Option<FlowKey>,
}

impl<F: Fib + ?Sized> Context<'_, F> {
    fn process_parsed(
        &mut self,
        frame: &mut Frame<'_>,
        parsed: &Parsed,
        prepared: Option<&Prepared>,
    ) -> Stage<Verdict> {
        if parsed.l4_kind == L4::IcmpError {
            return self.icmp_error(frame, parsed);
        }
        let (Some(key), Some(prepared)) = (parsed.key, prepared) else {
            frame.trace.action = Action::Untracked;
            return self.forward(frame, parsed);
        };
        if let Some(hit) = self.conntrack.lookup_prepared(&key, prepared, self.now) {
            return self.tracked(frame, parsed, &key, hit);
        }
        let frontend_key = FrontendKey {
            address: key.destination,
            port: key.destination_port,
            protocol: key.protocol,
        };
        let snapshot = self.snapshot;
        if let Some(frontend) = snapshot.frontend(&frontend_key) {
            return self.new_flow(frame, parsed, &key, frontend);
        }
        if parsed.l4_kind == L4::EchoRequest && self.snapshot.is_service_address(key.destination) {
            return echo_reply(frame, parsed);
        }
        if parsed.fragment == Fragment::First && snapshot.is_service_address(key.destination) {
            return Err(drop(DropReason::FragmentedServicePacket));
        }
        frame.trace.action = Action::Untracked;
        self.forward(frame, parsed)
    }

    /// A packet of a flow conntrack knows: apply its translation for this direction.
    fn tracked(
        &mut self,
        frame: &mut Frame<'_>,
        parsed: &Parsed,
        key: &FlowKey,
        hit: Hit,
    ) -> Stage<Verdict> {
        if parsed.fragment == Fragment::First {
            return Err(drop(DropReason::FragmentedServicePacket));
        }
        let tcp_flags = tcp_flags(parsed);
        self.conntrack.touch(&hit, self.now, tcp_flags);
        frame.trace.service = Some(hit.flow.service);
        frame.trace.backend = Some(hit.flow.backend);
        frame.trace.masqueraded = hit.flow.reply.destination != hit.flow.original.source;
        frame.trace.action = match hit.direction {
            Direction::Original => Action::Established,
            Direction::Reply => Action::Reply,
        };
        rewrite_flow(frame, parsed, key, &translation(&hit));
        self.forward(frame, parsed)
    }

    /// The first packet of a flow to a frontend: pick a backend, track the flow, translate.
    fn new_flow(
        &mut self,
        frame: &mut Frame<'_>,
        parsed: &Parsed,
        key: &FlowKey,
        frontend: &Frontend,
    ) -> Stage<Verdict> {
        let service: &Service = &frontend.service;
        frame.trace.service = Some(service.id);
        if parsed.fragment == Fragment::First {
            return Err(drop(DropReason::FragmentedServicePacket));
        }
        if key.protocol == Protocol::Sctp {
            return Err(drop(DropReason::UnsupportedProtocol));
        }
        if !service.source_allowed(frontend.kind, key.source) {
            return Err(drop(DropReason::SourceRangeDenied));
        }
        let tcp_flags = tcp_flags(parsed);
        if tcp_flags.is_some_and(|flags| flags & tcp::Flags::RST.0 != 0) {
            return Err(drop(DropReason::UntrackedTcpReset));
        }
        let pool = service.pool(frontend.kind);
        let Some(backend_index) = self.pick_backend(service, pool, key) else {
            return match pool.when_empty() {
                WhenEmpty::Reject => {
                    frame.trace.action = Action::Rejected;
                    reject(frame, parsed, key)
                }
                WhenEmpty::DropNoLocal => Err(drop(DropReason::NoLocalEndpoints)),
            };
        };
        let backend = &service.backends[backend_index];
        let snapshot = self.snapshot;
        let node = snapshot.node();
        let masquerade = needs_masquerade(node, frontend.kind, service, backend_index, key.source);
        let source = if masquerade {
            node.masquerade_address(key.is_ipv6())
                .ok_or(drop(DropReason::NoMasqueradeAddress))?
        } else {
            key.source
        };
        // Keep the client's port when its address is kept; fall back to the worker's SNAT slice when
        // that reply tuple is taken (the same client socket reaching one backend through two services).
        let natural_port = (!masquerade).then_some(key.source_port);
        let mut chosen = None;
        for port in natural_port.into_iter().chain(self.snat.candidates()) {
            let reply = FlowKey::new(key.protocol, backend.address, backend.port, source, port);
            let new_flow = NewFlow {
                original: *key,
                reply,
                zone: frontend.kind.zone(),
                service: service.id,
                backend: backend.id,
            };
            match self.conntrack.insert(new_flow, self.now, tcp_flags) {
                Ok(Insert::Created(flow)) => {
                    if service.affinity_timeout_secs.is_some() {
                        self.affinity
                            .record(service.id, key.source, backend.id, self.now);
                    }
                    frame.trace.action = Action::NewFlow;
                    chosen = Some((flow.reply.reversed(), flow.backend));
                    break;
                }
                Ok(Insert::Existing(hit)) if hit.flow.original == *key => {
                    // Another worker created this flow first: join its entry and its backend.
                    frame.trace.action = Action::NewFlow;
                    chosen = Some((translation(&hit), hit.flow.backend));
                    break;
                }
                // The reply tuple belongs to another flow: try the next port.
                Ok(Insert::Existing(_)) => continue,
                Err(_) => return Err(drop(DropReason::ConntrackFull)),
            }
        }
        let Some((translated, backend_id)) = chosen else {
            return Err(drop(DropReason::SnatPortsExhausted));
        };
        frame.trace.backend = Some(backend_id);
        frame.trace.masqueraded = translated.source != key.source;
        rewrite_flow(frame, parsed, key, &translated);
        self.forward(frame, parsed)
    }

    /// Session affinity first (if the remembered backend is still in the pool), then Maglev.
    fn pick_backend(&self, service: &Service, pool: &Pool, key: &FlowKey) -> Option<usize> {
        if let Some(timeout) = service.affinity_timeout_secs {
            let remembered = self
                .affinity
                .lookup(service.id, key.source, self.now, timeout)
                .and_then(|backend| service.backend_index(backend))
                .filter(|&index| pool.contains(index));
            if remembered.is_some() {
                return remembered;
            }
            // Affinity is by client address, so every connection of a client hashes alike.
            return pool.pick(address_hash(key.source));
        }
        pool.pick(flow_hash(key))
    }

    /// An ICMP error: if it quotes a tracked flow, translate the quoted header and the outer addresses
    /// the way that flow's packets are translated, so the sender sees an error about its own packet.
    fn icmp_error(&mut self, frame: &mut Frame<'_>, parsed: &Parsed) -> Stage<Verdict> {
        let quote_at = parsed.l4 + icmp::HEADER_LEN;
        let inner = parse_quote(&frame.buffer[quote_at..parsed.end], parsed.ipv6)?;
        let Some(hit) = self.conntrack.lookup(&inner.key.reversed(), self.now) else {
            frame.trace.action = Action::Untracked;
            return self.forward(frame, parsed);
        };
        frame.trace.action = Action::IcmpError;
        frame.trace.service = Some(hit.flow.service);
        frame.trace.backend = Some(hit.flow.backend);
        // The quoted packet travelled opposite to the error, so it gets the reverse translation.
        let new_inner = translation(&hit).reversed();
        let buffer = &mut frame.buffer[..parsed.end];
        rewrite_quote(&mut buffer[quote_at..], &inner, &new_inner);
        // Outer: the error goes to whoever sent the quoted packet; if the quoted packet's destination
        // generated the error itself, it must appear to come from that destination's translation.
        let (outer_source, outer_destination) = ip_addresses(buffer, parsed);
        let new_source = if outer_source == inner.key.destination {
            new_inner.destination
        } else {
            outer_source
        };
        set_ip_addresses(
            &mut buffer[parsed.l3..],
            parsed.ipv6,
            (outer_source, outer_destination),
            (new_source, new_inner.source),
        );
        let message = parsed.l4..parsed.end;
        if parsed.ipv6 {
            let (source, destination) = (ipv6_of(new_source), ipv6_of(new_inner.source));
            icmpv6::Packet::new_unchecked(&mut buffer[message])
                .fill_checksum(&source, &destination);
        } else {
            icmp::Packet::new_unchecked(&mut buffer[message]).fill_checksum();
        }
        self.forward(frame, parsed)
    }

    /// TTL / hop limit minus one, then the next hop's L2 addresses.
    fn forward(&self, frame: &mut Frame<'_>, parsed: &Parsed) -> Stage<Verdict> {
        let buffer = &mut frame.buffer[..frame.len];
        let alive = if parsed.ipv6 {
            ipv6::Packet::new_unchecked(&mut buffer[parsed.l3..]).decrement_hop_limit()
        } else {
            ipv4::Packet::new_unchecked(&mut buffer[parsed.l3..]).decrement_ttl()
        };
        if !alive {
            return Err(drop(DropReason::TtlExceeded));
        }
        let (_, destination) = ip_addresses(buffer, parsed);
        match self.fib.next_hop(destination) {
            Some(hop) => {
                let mut ethernet = ethernet::Frame::new_unchecked(&mut buffer[..]);
                ethernet.set_source(&hop.source_mac);
                ethernet.set_destination(&hop.destination_mac);
                Ok(Verdict::Transmit {
                    ifindex: hop.ifindex,
                })
            }
            None => Ok(Verdict::ToHost),
        }
    }
}

/// Whether a new flow's source must become a node address (DESIGN.md §4, "masquerade").
fn needs_masquerade(
    node: &NodeConfig,
    kind: FrontendKind,
    service: &Service,
    backend_index: usize,
    client: IpAddr,
) -> bool {
    let backend = &service.backends[backend_index];
    // Hairpin: a pod reaching itself through its Service would otherwise answer itself directly.
    if backend.address == client {
        return true;
    }
    if kind.is_external() {
        // From outside with externalTrafficPolicy: Cluster, a remote backend must reply through us.
        return !service.external_traffic_local && !backend.node_local;
    }
    // A ClusterIP reached from outside the cluster ranges (the host itself, an off-cluster client).
    !node.cluster_cidrs.is_empty() && !node.in_cluster(client)
}

/// The key a packet of this hit is rewritten to: the other direction's key, reversed.
#[inline]
fn translation(hit: &Hit) -> FlowKey {
    match hit.direction {
        Direction::Original => hit.flow.reply.reversed(),
        Direction::Reply => hit.flow.original.reversed(),
    }
}

/// The Maglev hash of a flow: the same on every worker and node, so racing workers pick alike.
#[inline]
fn flow_hash(key: &FlowKey) -> u64 {
    let words = key.to_words();
    mix64(words[0] ^ mix64(words[1] ^ mix64(words[2] ^ mix64(words[3] ^ mix64(words[4])))))
}

fn address_hash(address: IpAddr) -> u64 {
    let bits = match address {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    };
    mix64((bits >> 64) as u64 ^ mix64(bits as u64))
}

fn tcp_flags(parsed: &Parsed) -> Option<u8> {
    match parsed.l4_kind {
        L4::Tcp { flags } => Some(flags),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

fn parse(data: &[u8]) -> Stage<Parsed> {
    let ethernet =
        ethernet::Frame::new_checked(data).map_err(|_| drop(DropReason::EthernetTruncated))?;
    let l3 = ethernet.header_len();
    match ethernet.ethertype() {
        ethernet::ethertype::IPV4 => parse_ipv4(data, l3),
        ethernet::ethertype::IPV6 => parse_ipv6(data, l3),
        _ => Err(drop(DropReason::UnsupportedEthertype)),
    }
}

fn parse_ipv4(data: &[u8], l3: usize) -> Stage<Parsed> {
    let ip = ipv4::Packet::new_checked(&data[l3..]).map_err(|error| {
        drop(match error {
            ipv4::Error::Truncated => DropReason::Ipv4Truncated,
            ipv4::Error::BadVersion => DropReason::Ipv4BadVersion,
            ipv4::Error::BadHeaderLength => DropReason::Ipv4BadHeaderLength,
            ipv4::Error::BadTotalLength => DropReason::Ipv4BadTotalLength,
        })
    })?;
    if !ip.verify_checksum() {
        return Err(drop(DropReason::Ipv4BadChecksum));
    }
    if ip.fragment_offset() != 0 {
        return Err(drop(DropReason::NonFirstFragment));
    }
    let fragment = if ip.more_fragments() {
        Fragment::First
    } else {
        Fragment::None
    };
    let l4 = l3 + ip.header_len();
    let end = l3 + usize::from(ip.total_len());
    let addresses = (IpAddr::V4(ip.source()), IpAddr::V4(ip.destination()));
    parse_l4(data, l3, l4, end, false, ip.protocol(), fragment, addresses)
}

fn parse_ipv6(data: &[u8], l3: usize) -> Stage<Parsed> {
    let ip = ipv6::Packet::new_checked(&data[l3..]).map_err(|error| {
        drop(match error {
            ipv6::Error::Truncated => DropReason::Ipv6Truncated,
            ipv6::Error::BadVersion => DropReason::Ipv6BadVersion,
            ipv6::Error::BadPayloadLength => DropReason::Ipv6BadPayloadLength,
            ipv6::Error::BadExtensionHeader => DropReason::Ipv6BadExtensionHeader,
        })
    })?;
    let upper = ip
        .upper_layer()
        .map_err(|_| drop(DropReason::Ipv6BadExtensionHeader))?;
    let fragment = match upper.fragment {
        Some(f) if f.offset_bytes != 0 => return Err(drop(DropReason::NonFirstFragment)),
        Some(f) if f.more => Fragment::First,
        _ => Fragment::None,
    };
    let end = l3 + ipv6::HEADER_LEN + usize::from(ip.payload_len());
    let addresses = (IpAddr::V6(ip.source()), IpAddr::V6(ip.destination()));
    parse_l4(
        data,
        l3,
        l3 + upper.offset,
        end,
        true,
        upper.protocol,
        fragment,
        addresses,
    )
}

#[allow(clippy::too_many_arguments)]
fn parse_l4(
    data: &[u8],
    l3: usize,
    l4: usize,
    end: usize,
    ipv6: bool,
    protocol: u8,
    fragment: Fragment,
    (source, destination): (IpAddr, IpAddr),
) -> Stage<Parsed> {
    let segment = &data[l4.min(end)..end];
    let mut parsed = Parsed {
        l3,
        l4,
        end,
        ipv6,
        l4_kind: L4::Other,
        fragment,
        key: None,
    };
    let key = |protocol, source_port, destination_port| {
        Some(FlowKey::new(
            protocol,
            source,
            source_port,
            destination,
            destination_port,
        ))
    };
    // A first fragment holds the ports but not the whole datagram: length checks would be wrong.
    if fragment == Fragment::First {
        if let (Some(protocol @ (Protocol::Tcp | Protocol::Udp | Protocol::Sctp)), Some(ports)) =
            (Protocol::from_number(protocol), segment.get(..4))
        {
            let source_port = u16::from_be_bytes([ports[0], ports[1]]);
            let destination_port = u16::from_be_bytes([ports[2], ports[3]]);
            parsed.key = key(protocol, source_port, destination_port);
        }
        return Ok(parsed);
    }
    match (protocol, ipv6) {
        (6, _) => {
            let tcp = tcp::Packet::new_checked(segment).map_err(|error| {
                drop(match error {
                    tcp::Error::Truncated => DropReason::TcpTruncated,
                    tcp::Error::BadDataOffset => DropReason::TcpBadDataOffset,
                })
            })?;
            let flags = tcp.flags().0;
            let syn = flags & tcp::Flags::SYN.0 != 0;
            let impossible = flags
                & (tcp::Flags::SYN.0 | tcp::Flags::FIN.0 | tcp::Flags::RST.0 | tcp::Flags::ACK.0)
                == 0
                || (syn && flags & (tcp::Flags::FIN.0 | tcp::Flags::RST.0) != 0);
            if impossible {
                return Err(drop(DropReason::TcpBadFlags));
            }
            parsed.l4_kind = L4::Tcp { flags };
            parsed.key = key(Protocol::Tcp, tcp.source_port(), tcp.destination_port());
        }
        (17, _) => {
            let udp = udp::Packet::new_checked(segment).map_err(|error| {
                drop(match error {
                    udp::Error::Truncated => DropReason::UdpTruncated,
                    udp::Error::BadLength => DropReason::UdpBadLength,
                })
            })?;
            if usize::from(udp.length()) != segment.len() {
                return Err(drop(DropReason::UdpBadLength));
            }
            parsed.l4_kind = L4::Udp {
                checksum_present: ipv6 || udp.checksum() != 0,
            };
            parsed.key = key(Protocol::Udp, udp.source_port(), udp.destination_port());
        }
        (132, _) => {
            let ports = segment
                .get(..4)
                .ok_or(drop(DropReason::UnsupportedProtocol))?;
            parsed.l4_kind = L4::Sctp;
            parsed.key = key(
                Protocol::Sctp,
                u16::from_be_bytes([ports[0], ports[1]]),
                u16::from_be_bytes([ports[2], ports[3]]),
            );
        }
        (1, false) => {
            let message =
                icmp::Packet::new_checked(segment).map_err(|_| drop(DropReason::IcmpTruncated))?;
            let echo = |kind| {
                (
                    kind,
                    key(
                        Protocol::Icmp,
                        message.echo_identifier(),
                        message.echo_identifier(),
                    ),
                )
            };
            (parsed.l4_kind, parsed.key) = match message.msg_type() {
                icmp::message::ECHO_REQUEST => echo(L4::EchoRequest),
                icmp::message::ECHO_REPLY => echo(L4::EchoReply),
                _ if message.is_error() => (L4::IcmpError, None),
                _ => (L4::Other, None),
            };
        }
        (58, true) => {
            let message = icmpv6::Packet::new_checked(segment)
                .map_err(|_| drop(DropReason::IcmpTruncated))?;
            let echo = |kind| {
                (
                    kind,
                    key(
                        Protocol::Icmpv6,
                        message.echo_identifier(),
                        message.echo_identifier(),
                    ),
                )
            };
            (parsed.l4_kind, parsed.key) = match message.msg_type() {
                icmpv6::message::ECHO_REQUEST => echo(L4::EchoRequest),
                icmpv6::message::ECHO_REPLY => echo(L4::EchoReply),
                _ if message.is_error() => (L4::IcmpError, None),
                _ => (L4::Other, None),
            };
        }
        _ => {}
    }
    Ok(parsed)
}

/// The packet quoted inside an ICMP error: usually cut short, so it is checked field by field
/// rather than with the receive-side length rules.
struct Quote {
    /// Offset of the quoted L4 header within the quote.
    l4: usize,
    len: usize,
    ipv6: bool,
    key: FlowKey,
}

fn parse_quote(quote: &[u8], outer_ipv6: bool) -> Stage<Quote> {
    let bad = || drop(DropReason::IcmpBadQuote);
    let (l4, protocol, source, destination) = if outer_ipv6 {
        if quote.len() < ipv6::HEADER_LEN || quote[0] >> 4 != 6 {
            return Err(bad());
        }
        let ip = ipv6::Packet::new_unchecked(quote);
        // Extension headers in quotes are rare; kxdp only translates quotes with a plain L4 header.
        (
            ipv6::HEADER_LEN,
            ip.next_header(),
            IpAddr::V6(ip.source()),
            IpAddr::V6(ip.destination()),
        )
    } else {
        if quote.len() < ipv4::MIN_HEADER_LEN || quote[0] >> 4 != 4 {
            return Err(bad());
        }
        let header_len = usize::from(quote[0] & 0x0f) * 4;
        if header_len < ipv4::MIN_HEADER_LEN || header_len > quote.len() {
            return Err(bad());
        }
        let ip = ipv4::Packet::new_unchecked(quote);
        (
            header_len,
            ip.protocol(),
            IpAddr::V4(ip.source()),
            IpAddr::V4(ip.destination()),
        )
    };
    // RFC 792 guarantees 8 bytes of the quoted L4 header: both ports, or the echo identifier.
    let l4_bytes = quote.get(l4..l4 + 8).ok_or_else(bad)?;
    let port = |at: usize| u16::from_be_bytes([l4_bytes[at], l4_bytes[at + 1]]);
    let key = match (protocol, outer_ipv6) {
        (6, _) => FlowKey::new(Protocol::Tcp, source, port(0), destination, port(2)),
        (17, _) => FlowKey::new(Protocol::Udp, source, port(0), destination, port(2)),
        (1, false)
            if l4_bytes[0] == icmp::message::ECHO_REQUEST
                || l4_bytes[0] == icmp::message::ECHO_REPLY =>
        {
            FlowKey::new(Protocol::Icmp, source, port(4), destination, port(4))
        }
        (58, true)
            if l4_bytes[0] == icmpv6::message::ECHO_REQUEST
                || l4_bytes[0] == icmpv6::message::ECHO_REPLY =>
        {
            FlowKey::new(Protocol::Icmpv6, source, port(4), destination, port(4))
        }
        _ => return Err(bad()),
    };
    Ok(Quote {
        l4,
        len: quote.len(),
        ipv6: outer_ipv6,
        key,
    })
}

// ---------------------------------------------------------------------------------------------
// Rewriting

fn ipv6_of(address: IpAddr) -> std::net::Ipv6Addr {
    match address {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    }
}

fn ipv4_of(address: IpAddr) -> std::net::Ipv4Addr {
    match address {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
    }
}

fn ip_addresses(buffer: &[u8], parsed: &Parsed) -> (IpAddr, IpAddr) {
    if parsed.ipv6 {
        let ip = ipv6::Packet::new_unchecked(&buffer[parsed.l3..]);
        (IpAddr::V6(ip.source()), IpAddr::V6(ip.destination()))
    } else {
        let ip = ipv4::Packet::new_unchecked(&buffer[parsed.l3..]);
        (IpAddr::V4(ip.source()), IpAddr::V4(ip.destination()))
    }
}

/// The checksum change of replacing both addresses (what the IPv4 header and every L4 pseudo-header
/// covers).
#[inline]
fn address_delta(old: (IpAddr, IpAddr), new: (IpAddr, IpAddr)) -> checksum::Delta {
    let mut delta = checksum::Delta::default();
    delta.address(old.0, new.0);
    delta.address(old.1, new.1);
    delta
}

/// Writes new IP addresses, keeping the IPv4 header checksum right incrementally; returns the
/// address delta for the L4 checksum.
fn set_ip_addresses(
    header: &mut [u8],
    ipv6: bool,
    old: (IpAddr, IpAddr),
    (source, destination): (IpAddr, IpAddr),
) -> checksum::Delta {
    let delta = address_delta(old, (source, destination));
    if ipv6 {
        let mut ip = ipv6::Packet::new_unchecked(header);
        ip.set_source(ipv6_of(source));
        ip.set_destination(ipv6_of(destination));
    } else {
        let mut ip = ipv4::Packet::new_unchecked(header);
        let sum = delta.apply(ip.header_checksum());
        ip.set_source(ipv4_of(source));
        ip.set_destination(ipv4_of(destination));
        ip.set_header_checksum(sum);
    }
    delta
}

/// Rewrites a TCP/UDP/SCTP/echo packet from `old` to `new` addresses and ports, with its checksums.
fn rewrite_flow(frame: &mut Frame<'_>, parsed: &Parsed, old: &FlowKey, new: &FlowKey) {
    let partial = frame.partial_checksum;
    let buffer = &mut frame.buffer[..parsed.end];
    let addresses = set_ip_addresses(
        &mut buffer[parsed.l3..],
        parsed.ipv6,
        (old.source, old.destination),
        (new.source, new.destination),
    );
    let (source, destination) = (new.source, new.destination);
    let mut ports = addresses;
    ports.word(old.source_port, new.source_port);
    ports.word(old.destination_port, new.destination_port);
    let segment = &mut buffer[parsed.l4..];
    match parsed.l4_kind {
        L4::Tcp { .. } => {
            let mut tcp = tcp::Packet::new_unchecked(segment);
            tcp.set_source_port(new.source_port);
            tcp.set_destination_port(new.destination_port);
            if partial {
                fill_l4_checksum(&mut tcp, parsed.ipv6, source, destination);
            } else {
                let sum = ports.apply(tcp.checksum());
                tcp.set_checksum(sum);
            }
        }
        L4::Udp { checksum_present } => {
            let mut udp = udp::Packet::new_unchecked(segment);
            udp.set_source_port(new.source_port);
            udp.set_destination_port(new.destination_port);
            if partial {
                fill_l4_checksum(&mut udp, parsed.ipv6, source, destination);
            } else if checksum_present {
                let sum = ports.apply(udp.checksum());
                udp.set_checksum(udp::transmitted(sum));
            }
        }
        L4::Sctp => {
            // SCTP's CRC32c covers ports only, never addresses; SCTP flows are refused before NAT.
        }
        L4::EchoRequest | L4::EchoReply => {
            // The identifier stands in for both ports but sits in the header once.
            let mut identifier = if parsed.ipv6 {
                addresses
            } else {
                checksum::Delta::default()
            };
            identifier.word(old.source_port, new.source_port);
            if parsed.ipv6 {
                let mut message = icmpv6::Packet::new_unchecked(segment);
                message.set_echo_identifier(new.source_port);
                let sum = identifier.apply(message.checksum());
                message.set_checksum(sum);
            } else {
                let mut message = icmp::Packet::new_unchecked(segment);
                message.set_echo_identifier(new.source_port);
                let sum = identifier.apply(message.checksum());
                message.set_checksum(sum);
            }
        }
        L4::IcmpError | L4::Other => {}
    }
}

/// Full L4 checksum recompute, for frames whose checksum field may hold only a partial sum.
trait FillChecksum {
    fn fill_v4(&mut self, source: std::net::Ipv4Addr, destination: std::net::Ipv4Addr);
    fn fill_v6(&mut self, source: &std::net::Ipv6Addr, destination: &std::net::Ipv6Addr);
}

impl FillChecksum for tcp::Packet<&mut [u8]> {
    fn fill_v4(&mut self, source: std::net::Ipv4Addr, destination: std::net::Ipv4Addr) {
        self.fill_checksum_v4(source, destination);
    }
    fn fill_v6(&mut self, source: &std::net::Ipv6Addr, destination: &std::net::Ipv6Addr) {
        self.fill_checksum_v6(source, destination);
    }
}

impl FillChecksum for udp::Packet<&mut [u8]> {
    fn fill_v4(&mut self, source: std::net::Ipv4Addr, destination: std::net::Ipv4Addr) {
        self.fill_checksum_v4(source, destination);
    }
    fn fill_v6(&mut self, source: &std::net::Ipv6Addr, destination: &std::net::Ipv6Addr) {
        self.fill_checksum_v6(source, destination);
    }
}

fn fill_l4_checksum(
    packet: &mut impl FillChecksum,
    ipv6: bool,
    source: IpAddr,
    destination: IpAddr,
) {
    if ipv6 {
        packet.fill_v6(&ipv6_of(source), &ipv6_of(destination));
    } else {
        packet.fill_v4(ipv4_of(source), ipv4_of(destination));
    }
}

/// Rewrites the packet quoted in an ICMP error: addresses, ports and whatever checksums the quote holds.
fn rewrite_quote(quote: &mut [u8], inner: &Quote, new: &FlowKey) {
    let old = &inner.key;
    let addresses = set_ip_addresses(
        quote,
        inner.ipv6,
        (old.source, old.destination),
        (new.source, new.destination),
    );
    let l4 = &mut quote[inner.l4..inner.len];
    match old.protocol {
        Protocol::Tcp | Protocol::Udp => {
            l4[0..2].copy_from_slice(&new.source_port.to_be_bytes());
            l4[2..4].copy_from_slice(&new.destination_port.to_be_bytes());
            let mut ports = addresses;
            ports.word(old.source_port, new.source_port);
            ports.word(old.destination_port, new.destination_port);
            let (checksum_at, udp) = match old.protocol {
                Protocol::Tcp => (tcp::CHECKSUM_OFFSET, false),
                _ => (udp::CHECKSUM_OFFSET, true),
            };
            // The quoted L4 checksum is only there if the quote is long enough (TCP's sits at 16).
            if let Some(field) = l4.get_mut(checksum_at..checksum_at + 2) {
                let old_sum = u16::from_be_bytes([field[0], field[1]]);
                if !(udp && old_sum == 0) {
                    let sum = ports.apply(old_sum);
                    let sum = if udp { udp::transmitted(sum) } else { sum };
                    field.copy_from_slice(&sum.to_be_bytes());
                }
            }
        }
        Protocol::Icmp | Protocol::Icmpv6 => {
            // ICMPv6 checksums cover the pseudo-header; ICMPv4 checksums do not.
            let mut identifier = if inner.ipv6 {
                addresses
            } else {
                checksum::Delta::default()
            };
            identifier.word(old.source_port, new.source_port);
            let old_sum = u16::from_be_bytes([l4[2], l4[3]]);
            l4[2..4].copy_from_slice(&identifier.apply(old_sum).to_be_bytes());
            l4[4..6].copy_from_slice(&new.source_port.to_be_bytes());
        }
        Protocol::Sctp => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Replies kxdp builds itself

/// Turns the frame into a reply to its sender: TCP RST for TCP, ICMP(v6) port unreachable otherwise.
fn reject(frame: &mut Frame<'_>, parsed: &Parsed, key: &FlowKey) -> Stage<Verdict> {
    match parsed.l4_kind {
        L4::Tcp { flags } => tcp_reset(frame, parsed, key, flags),
        _ => port_unreachable(frame, parsed, key),
    }
}

fn tcp_reset(frame: &mut Frame<'_>, parsed: &Parsed, key: &FlowKey, flags: u8) -> Stage<Verdict> {
    let segment = tcp::Packet::new_unchecked(&frame.buffer[parsed.l4..parsed.end]);
    let payload_len = (parsed.end - parsed.l4 - segment.header_len()) as u32;
    // RFC 9293 §3.10.7.1: answer an ACK with RST seq=ACK; otherwise RST+ACK acknowledging the segment.
    let (sequence, acknowledgement, reply_flags) = if flags & tcp::Flags::ACK.0 != 0 {
        (segment.acknowledgement_number(), 0, tcp::Flags::RST)
    } else {
        let length = payload_len
            + u32::from(flags & tcp::Flags::SYN.0 != 0)
            + u32::from(flags & tcp::Flags::FIN.0 != 0);
        (
            0,
            segment.sequence_number().wrapping_add(length),
            tcp::Flags::RST | tcp::Flags::ACK,
        )
    };
    let l4 = write_reply_ip_header(frame, parsed, key, Protocol::Tcp.number(), tcp::HEADER_LEN)?;
    let end = l4 + tcp::HEADER_LEN;
    let mut reset = tcp::Packet::new_unchecked(&mut frame.buffer[l4..end]);
    reset.set_source_port(key.destination_port);
    reset.set_destination_port(key.source_port);
    reset.set_sequence_number(sequence);
    reset.set_acknowledgement_number(acknowledgement);
    reset.set_header_len(tcp::HEADER_LEN);
    reset.set_flags(reply_flags);
    reset.set_window(0);
    reset.set_urgent_pointer(0);
    fill_l4_checksum(&mut reset, parsed.ipv6, key.destination, key.source);
    finish_reply(frame, end)
}

fn port_unreachable(frame: &mut Frame<'_>, parsed: &Parsed, key: &FlowKey) -> Stage<Verdict> {
    let (header_len, max_quote, protocol) = if parsed.ipv6 {
        (ipv6::HEADER_LEN, MAX_QUOTE_V6, Protocol::Icmpv6.number())
    } else {
        (ipv4::MIN_HEADER_LEN, MAX_QUOTE_V4, Protocol::Icmp.number())
    };
    let quote_at = parsed.l3 + header_len + icmp::HEADER_LEN;
    let room = frame.buffer.len().saturating_sub(quote_at);
    let quote_len = (parsed.end - parsed.l3).min(max_quote).min(room);
    // At least the offending IP header and 8 bytes of its payload (RFC 792 / RFC 4443).
    if quote_len < parsed.l4 - parsed.l3 + 8 {
        return Err(drop(DropReason::NoRoomForReply));
    }
    frame
        .buffer
        .copy_within(parsed.l3..parsed.l3 + quote_len, quote_at);
    let l4 = write_reply_ip_header(frame, parsed, key, protocol, icmp::HEADER_LEN + quote_len)?;
    let end = quote_at + quote_len;
    let message = &mut frame.buffer[l4..end];
    if parsed.ipv6 {
        let mut error = icmpv6::Packet::new_unchecked(message);
        error.set_msg_type(icmpv6::message::DESTINATION_UNREACHABLE);
        error.set_code(icmpv6::unreachable::PORT);
        error.set_rest_of_header(0);
        error.fill_checksum(&ipv6_of(key.destination), &ipv6_of(key.source));
    } else {
        let mut error = icmp::Packet::new_unchecked(message);
        error.set_msg_type(icmp::message::DESTINATION_UNREACHABLE);
        error.set_code(icmp::unreachable::PORT);
        error.set_rest_of_header(0);
        error.fill_checksum();
    }
    finish_reply(frame, end)
}

/// Writes a fresh IP header from the service (the packet's destination) back to the client at the
/// frame's L3 offset and returns where the L4 header starts. Options and extension headers go.
fn write_reply_ip_header(
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    key: &FlowKey,
    protocol: u8,
    payload_len: usize,
) -> Stage<usize> {
    let header_len = if parsed.ipv6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::MIN_HEADER_LEN
    };
    let l4 = parsed.l3 + header_len;
    if l4 + payload_len > frame.buffer.len() {
        return Err(drop(DropReason::NoRoomForReply));
    }
    let payload_len = u16::try_from(payload_len).map_err(|_| drop(DropReason::NoRoomForReply))?;
    let header = &mut frame.buffer[parsed.l3..l4];
    if parsed.ipv6 {
        ipv6::Header {
            source: ipv6_of(key.destination),
            destination: ipv6_of(key.source),
            next_header: protocol,
            hop_limit: REPLY_TTL,
            payload_len,
        }
        .emit(header);
    } else {
        ipv4::Header {
            source: ipv4_of(key.destination),
            destination: ipv4_of(key.source),
            protocol,
            ttl: REPLY_TTL,
            payload_len,
        }
        .emit(header);
    }
    Ok(l4)
}

/// A reply kxdp built goes back out of the interface the packet came in on, to the sender's MAC.
fn finish_reply(frame: &mut Frame<'_>, end: usize) -> Stage<Verdict> {
    frame.len = end;
    ethernet::Frame::new_unchecked(&mut frame.buffer[..end]).swap_addresses();
    Ok(Verdict::Transmit {
        ifindex: frame.ingress,
    })
}

/// Answers an echo request to a service address in place, like a host owning the address would.
fn echo_reply(frame: &mut Frame<'_>, parsed: &Parsed) -> Stage<Verdict> {
    frame.trace.action = Action::EchoReply;
    let buffer = &mut frame.buffer[..parsed.end];
    let (source, destination) = ip_addresses(buffer, parsed);
    if parsed.ipv6 {
        let mut ip = ipv6::Packet::new_unchecked(&mut buffer[parsed.l3..]);
        ip.set_source(ipv6_of(destination));
        ip.set_destination(ipv6_of(source));
        ip.set_hop_limit(REPLY_TTL);
        // Swapping addresses leaves the pseudo-header sum as it was; only the type changes.
        let mut message = icmpv6::Packet::new_unchecked(&mut buffer[parsed.l4..]);
        let code = u16::from(message.code());
        let sum = checksum::update_u16(
            message.checksum(),
            u16::from(icmpv6::message::ECHO_REQUEST) << 8 | code,
            u16::from(icmpv6::message::ECHO_REPLY) << 8 | code,
        );
        message.set_msg_type(icmpv6::message::ECHO_REPLY);
        message.set_checksum(sum);
    } else {
        let mut ip = ipv4::Packet::new_unchecked(&mut buffer[parsed.l3..]);
        ip.set_source(ipv4_of(destination));
        ip.set_destination(ipv4_of(source));
        ip.set_ttl(REPLY_TTL);
        ip.fill_checksum();
        let mut message = icmp::Packet::new_unchecked(&mut buffer[parsed.l4..]);
        let code = u16::from(message.code());
        let sum = checksum::update_u16(
            message.checksum(),
            u16::from(icmp::message::ECHO_REQUEST) << 8 | code,
            u16::from(icmp::message::ECHO_REPLY) << 8 | code,
        );
        message.set_msg_type(icmp::message::ECHO_REPLY);
        message.set_checksum(sum);
    }
    let end = parsed.end;
    finish_reply(frame, end)
}
