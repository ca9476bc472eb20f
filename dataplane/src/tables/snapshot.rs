//! The immutable service snapshot the workers read: frontends, services, backend pools with their
//! Maglev tables, per-service flags and the node's own addresses.
//!
//! The control thread builds a snapshot with [`SnapshotBuilder`] and publishes it through `arc-swap`;
//! workers load it once per batch. A rebuild starts from the previous snapshot, rebuilds only the
//! services that changed and shares every other [`Service`] through its `Arc`.
//!
//! One [`Service`] is one Kubernetes service port in one IP family, the unit kube-proxy also works in:
//! a dual-stack Service with two ports becomes four. Frontends and backends of a service are therefore
//! always of one family, and the builder refuses specs that mix them.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use hashbrown::HashMap;

use super::maglev::{self, Maglev};
use super::nat::DEFAULT_SNAT_PORTS;
use crate::cidr::Cidr;
use crate::flow::{Protocol, Zone};

/// Identifies a service across snapshots (chosen by the control plane, stable for a service's life).
pub type ServiceId = u32;
/// Identifies a backend across snapshots, so conntrack can drop the flows of a backend that went away.
pub type BackendId = u32;

/// How a frontend address was exposed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl FrontendKind {
    /// NodePort, LoadBalancer and ExternalIP frontends take traffic from outside the cluster.
    pub fn is_external(self) -> bool {
        !matches!(self, Self::ClusterIp)
    }

    pub fn zone(self) -> Zone {
        if self.is_external() {
            Zone::NorthSouth
        } else {
            Zone::EastWest
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalIp => "ExternalIP",
        }
    }
}

/// What a frontend matches on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// One address and port a service is reachable at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    pub address: IpAddr,
    pub port: u16,
    pub kind: FrontendKind,
}

impl FrontendSpec {
    /// What this frontend matches on for a service of `protocol`.
    pub fn key(&self, protocol: Protocol) -> FrontendKey {
        FrontendKey {
            address: self.address,
            port: self.port,
            protocol,
        }
    }
}

/// One endpoint as the control plane resolved it (condition filtering and named ports already applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub id: BackendId,
    pub address: IpAddr,
    pub port: u16,
    /// The endpoint runs on this node (for the traffic policies and masquerade decisions).
    pub node_local: bool,
    /// Topology hints / trafficDistribution say this endpoint is close to this node.
    pub preferred: bool,
}

/// Everything the control plane says about one service port in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub id: ServiceId,
    /// `namespace/name:port` plus the family, for dumps and traces.
    pub name: String,
    pub protocol: Protocol,
    pub frontends: Vec<FrontendSpec>,
    pub backends: Vec<BackendSpec>,
    /// `sessionAffinity: ClientIP` with this idle timeout in seconds.
    pub affinity_timeout_secs: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_traffic_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_traffic_local: bool,
    /// `loadBalancerSourceRanges`; empty allows every source.
    pub source_ranges: Vec<Cidr>,
}

impl ServiceSpec {
    /// A ClusterIP service port with the given backends and default flags; tests and benches use it.
    pub fn cluster_ip(
        id: ServiceId,
        name: impl Into<String>,
        protocol: Protocol,
        address: IpAddr,
        port: u16,
        backends: Vec<BackendSpec>,
    ) -> Self {
        Self {
            id,
            name: name.into(),
            protocol,
            frontends: vec![FrontendSpec {
                address,
                port,
                kind: FrontendKind::ClusterIp,
            }],
            backends,
            affinity_timeout_secs: None,
            external_traffic_local: false,
            internal_traffic_local: false,
            source_ranges: Vec::new(),
        }
    }
}

/// A backend inside a built service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub id: BackendId,
    pub address: IpAddr,
    pub port: u16,
    pub node_local: bool,
    pub preferred: bool,
}

/// What to do with a new flow when a pool has no backend.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WhenEmpty {
    /// The service has no usable endpoint at all: answer with a TCP RST / ICMP unreachable.
    Reject,
    /// Endpoints exist, but none on this node and a traffic policy says Local: drop, as kube-proxy does.
    DropNoLocal,
}

/// The backends one kind of traffic may use, with their Maglev table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Indices into [`Service::backends`].
    members: Vec<u16>,
    /// Shared with the other pool of the service when both have the same members.
    maglev: Option<Arc<Maglev>>,
    when_empty: WhenEmpty,
}

impl Pool {
    fn build(
        backends: &[Backend],
        members: Vec<u16>,
        when_empty: WhenEmpty,
        previous_size: Option<u32>,
        max_size: u32,
    ) -> Self {
        let names: Vec<String> = members
            .iter()
            .map(|&m| backend_identity(&backends[usize::from(m)]))
            .collect();
        let size = Maglev::choose_size(names.len(), previous_size, max_size);
        let maglev = Maglev::build(&names, size).map(Arc::new);
        Self {
            members,
            maglev,
            when_empty,
        }
    }

    /// The backend index (into [`Service::backends`]) for a flow hash; `None` when the pool is empty.
    #[inline]
    pub fn pick(&self, flow_hash: u64) -> Option<usize> {
        let maglev = self.maglev.as_ref()?;
        self.members
            .get(maglev.pick(flow_hash))
            .map(|&m| usize::from(m))
    }

    pub fn contains(&self, backend_index: usize) -> bool {
        self.members
            .iter()
            .any(|&m| usize::from(m) == backend_index)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> &[u16] {
        &self.members
    }

    pub fn when_empty(&self) -> WhenEmpty {
        self.when_empty
    }

    pub fn table_size(&self) -> Option<u32> {
        self.maglev.as_ref().map(|maglev| maglev.size())
    }
}

/// A built service: its flags, its backends and the two pools traffic picks from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub id: ServiceId,
    pub name: String,
    pub protocol: Protocol,
    pub frontends: Vec<FrontendSpec>,
    pub backends: Vec<Backend>,
    /// For ClusterIP frontends: `internalTrafficPolicy` and topology preferences applied.
    pub internal: Pool,
    /// For NodePort, LoadBalancer and ExternalIP frontends: `externalTrafficPolicy` applied.
    pub external: Pool,
    pub affinity_timeout_secs: Option<u32>,
    pub external_traffic_local: bool,
    pub internal_traffic_local: bool,
    pub source_ranges: Vec<Cidr>,
}

impl Service {
    pub fn pool(&self, kind: FrontendKind) -> &Pool {
        if kind.is_external() {
            &self.external
        } else {
            &self.internal
        }
    }

    /// Whether `source` may reach this service through a frontend of `kind` (`loadBalancerSourceRanges`
    /// applies to LoadBalancer frontends only, as in kube-proxy).
    pub fn source_allowed(&self, kind: FrontendKind, source: IpAddr) -> bool {
        kind != FrontendKind::LoadBalancer
            || self.source_ranges.is_empty()
            || self
                .source_ranges
                .iter()
                .any(|range| range.contains(source))
    }

    pub fn backend_index(&self, id: BackendId) -> Option<usize> {
        self.backends.iter().position(|b| b.id == id)
    }

    fn build(spec: ServiceSpec, previous: Option<&Service>, max_table_size: u32) -> Self {
        let backends: Vec<Backend> = spec
            .backends
            .iter()
            .map(|b| Backend {
                id: b.id,
                address: b.address,
                port: b.port,
                node_local: b.node_local,
                preferred: b.preferred,
            })
            .collect();
        let all: Vec<u16> = (0..backends.len() as u16).collect();
        let local: Vec<u16> = all
            .iter()
            .copied()
            .filter(|&i| backends[usize::from(i)].node_local)
            .collect();
        let preferred: Vec<u16> = all
            .iter()
            .copied()
            .filter(|&i| backends[usize::from(i)].preferred)
            .collect();
        // Topology hints narrow cluster-wide traffic only when they leave someone to talk to.
        let cluster = if preferred.is_empty() {
            all.clone()
        } else {
            preferred
        };
        let empty_action = |members: &[u16]| {
            if members.is_empty() && !all.is_empty() {
                WhenEmpty::DropNoLocal
            } else {
                WhenEmpty::Reject
            }
        };
        let internal_members = if spec.internal_traffic_local {
            local.clone()
        } else {
            cluster.clone()
        };
        let external_members = if spec.external_traffic_local {
            local
        } else {
            cluster
        };
        let internal = Pool::build(
            &backends,
            internal_members.clone(),
            empty_action(&internal_members),
            previous.and_then(|p| p.internal.table_size()),
            max_table_size,
        );
        // Most services have the same members in both pools: share the pool and its Maglev table.
        let external = if external_members == internal_members {
            internal.clone()
        } else {
            Pool::build(
                &backends,
                external_members.clone(),
                empty_action(&external_members),
                previous.and_then(|p| p.external.table_size()),
                max_table_size,
            )
        };
        Self {
            id: spec.id,
            name: spec.name,
            protocol: spec.protocol,
            frontends: spec.frontends,
            backends,
            internal,
            external,
            affinity_timeout_secs: spec.affinity_timeout_secs,
            external_traffic_local: spec.external_traffic_local,
            internal_traffic_local: spec.internal_traffic_local,
            source_ranges: spec.source_ranges,
        }
    }
}

/// The stable name Maglev hashes a backend by: the same endpoint lands on the same slots on every node.
fn backend_identity(backend: &Backend) -> String {
    match backend.address {
        IpAddr::V4(a) => format!("{a}:{}", backend.port),
        IpAddr::V6(a) => format!("[{a}]:{}", backend.port),
    }
}

/// A frontend entry: the service it leads to and how it was exposed.
#[derive(Clone, Debug)]
pub struct Frontend {
    pub service: Arc<Service>,
    pub kind: FrontendKind,
}

/// What the node itself contributes: its addresses, masquerade addresses and SNAT range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    /// Addresses of this node (NodePorts listen on these; SNAT replies come back to them).
    pub addresses: Vec<IpAddr>,
    /// The source address masqueraded IPv4 flows get.
    pub masquerade_ipv4: Option<Ipv4Addr>,
    /// The source address masqueraded IPv6 flows get.
    pub masquerade_ipv6: Option<Ipv6Addr>,
    pub snat_ports: RangeInclusive<u16>,
    /// `--cluster-cidr`: ClusterIP traffic from outside these ranges is masqueraded. Empty: never.
    pub cluster_cidrs: Vec<Cidr>,
    /// The ceiling on Maglev table sizes (a prime).
    pub maglev_max_size: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            addresses: Vec::new(),
            masquerade_ipv4: None,
            masquerade_ipv6: None,
            snat_ports: DEFAULT_SNAT_PORTS,
            cluster_cidrs: Vec::new(),
            maglev_max_size: maglev::DEFAULT_MAX_SIZE,
        }
    }
}

impl NodeConfig {
    pub fn masquerade_address(&self, ipv6: bool) -> Option<IpAddr> {
        if ipv6 {
            self.masquerade_ipv6.map(IpAddr::V6)
        } else {
            self.masquerade_ipv4.map(IpAddr::V4)
        }
    }

    pub fn in_cluster(&self, address: IpAddr) -> bool {
        self.cluster_cidrs.iter().any(|c| c.contains(address))
    }
}

/// Why the builder refused a service. A refused service leaves the rest of the snapshot untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("service {service}: frontend {address} is not of the same IP family as the service's first frontend")]
    MixedFamilies { service: String, address: IpAddr },
    #[error("service {service}: backend {address} is not of the service's IP family")]
    BackendFamily { service: String, address: IpAddr },
    #[error("service {service}: frontend {address}:{port}/{protocol} already belongs to service {owner}")]
    FrontendTaken {
        service: String,
        address: IpAddr,
        port: u16,
        protocol: &'static str,
        owner: String,
    },
    #[error("service {service}: {count} backends is more than the {max} one service can hold")]
    TooManyBackends {
        service: String,
        count: usize,
        max: usize,
    },
    #[error("service {service}: port 0 is not a valid {what} port")]
    ZeroPort { service: String, what: &'static str },
}

/// An immutable, shareable view of every service on this node.
#[derive(Clone, Debug)]
pub struct Snapshot {
    generation: u64,
    node: Arc<NodeConfig>,
    frontends: HashMap<FrontendKey, Frontend>,
    services: BTreeMap<ServiceId, Arc<Service>>,
    /// Counts of frontends per address, for "is this a service address" (ICMP echo) checks.
    service_addresses: HashMap<IpAddr, u32>,
}

impl Snapshot {
    /// A snapshot with no services.
    pub fn empty(node: NodeConfig) -> Self {
        Self {
            generation: 0,
            node: Arc::new(node),
            frontends: HashMap::new(),
            services: BTreeMap::new(),
            service_addresses: HashMap::new(),
        }
    }

    #[inline]
    pub fn frontend(&self, key: &FrontendKey) -> Option<&Frontend> {
        self.frontends.get(key)
    }

    /// Whether any frontend listens on this address (any port, any protocol).
    #[inline]
    pub fn is_service_address(&self, address: IpAddr) -> bool {
        self.service_addresses.contains_key(&address)
    }

    pub fn node(&self) -> &NodeConfig {
        &self.node
    }

    pub fn service(&self, id: ServiceId) -> Option<&Arc<Service>> {
        self.services.get(&id)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    pub fn frontend_count(&self) -> usize {
        self.frontends.len()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A builder that starts from this snapshot: unchanged services stay shared.
    pub fn to_builder(&self) -> SnapshotBuilder {
        SnapshotBuilder {
            generation: self.generation + 1,
            node: self.node.clone(),
            frontends: self.frontends.clone(),
            services: self.services.clone(),
            service_addresses: self.service_addresses.clone(),
        }
    }

    /// A sorted, stable, human-readable listing: every frontend with its service's backends and flags.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let node = &self.node;
        let _ = writeln!(
            out,
            "node {}",
            if node.name.is_empty() {
                "-"
            } else {
                &node.name
            }
        );
        let mut addresses: Vec<_> = node.addresses.iter().map(|a| a.to_string()).collect();
        addresses.sort();
        let _ = writeln!(out, "  addresses: {}", addresses.join(" "));
        let masquerade: Vec<String> = [
            node.masquerade_address(false),
            node.masquerade_address(true),
        ]
        .into_iter()
        .flatten()
        .map(|a| a.to_string())
        .collect();
        let _ = writeln!(out, "  masquerade: {}", masquerade.join(" "));
        let _ = writeln!(
            out,
            "  snat ports: {}-{}",
            node.snat_ports.start(),
            node.snat_ports.end()
        );
        let mut frontends: Vec<(&FrontendKey, &Frontend)> = self.frontends.iter().collect();
        frontends.sort_by(|a, b| {
            (a.1.service.name.as_str(), a.0).cmp(&(b.1.service.name.as_str(), b.0))
        });
        for (key, frontend) in frontends {
            let service = &frontend.service;
            let _ = writeln!(
                out,
                "{} {} {} -> {}",
                format_endpoint(key.address, key.port),
                key.protocol.name(),
                frontend.kind.name(),
                service.name
            );
            let mut flags = Vec::new();
            if let Some(timeout) = service.affinity_timeout_secs {
                flags.push(format!("affinity=ClientIP/{timeout}s"));
            }
            if service.external_traffic_local {
                flags.push("externalTrafficPolicy=Local".into());
            }
            if service.internal_traffic_local {
                flags.push("internalTrafficPolicy=Local".into());
            }
            if !service.source_ranges.is_empty() && frontend.kind == FrontendKind::LoadBalancer {
                let ranges: Vec<String> = service
                    .source_ranges
                    .iter()
                    .map(|r| r.to_string())
                    .collect();
                flags.push(format!("sourceRanges={}", ranges.join(",")));
            }
            if !flags.is_empty() {
                let _ = writeln!(out, "  flags: {}", flags.join(" "));
            }
            let pool = service.pool(frontend.kind);
            if pool.is_empty() {
                let action = match pool.when_empty() {
                    WhenEmpty::Reject => "reject",
                    WhenEmpty::DropNoLocal => "drop (no local endpoints)",
                };
                let _ = writeln!(out, "  no backends: {action}");
            }
            let slots = pool
                .maglev
                .as_ref()
                .map(|m| m.slot_counts(pool.members.len()))
                .unwrap_or_default();
            let mut lines: Vec<String> = pool
                .members
                .iter()
                .zip(slots.iter().chain(std::iter::repeat(&0)))
                .map(|(&m, &slot_count)| {
                    let backend = &service.backends[usize::from(m)];
                    let mut line = format!(
                        "  backend {} weight={}/{}",
                        format_endpoint(backend.address, backend.port),
                        slot_count,
                        pool.table_size().unwrap_or(0)
                    );
                    if backend.node_local {
                        line.push_str(" local");
                    }
                    if backend.preferred {
                        line.push_str(" preferred");
                    }
                    line
                })
                .collect();
            lines.sort();
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

fn format_endpoint(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Builds the next snapshot. Start from [`SnapshotBuilder::new`] or [`Snapshot::to_builder`].
pub struct SnapshotBuilder {
    generation: u64,
    node: Arc<NodeConfig>,
    frontends: HashMap<FrontendKey, Frontend>,
    services: BTreeMap<ServiceId, Arc<Service>>,
    service_addresses: HashMap<IpAddr, u32>,
}

impl SnapshotBuilder {
    pub fn new(node: NodeConfig) -> Self {
        Snapshot::empty(node).to_builder()
    }

    /// Replaces the node configuration. Services are kept; their masquerade decisions read the node at
    /// packet time, so nothing has to be rebuilt.
    pub fn set_node(&mut self, node: NodeConfig) -> &mut Self {
        self.node = Arc::new(node);
        self
    }

    /// Adds a service, or replaces the one with the same id. On error nothing changes.
    pub fn upsert_service(&mut self, spec: ServiceSpec) -> Result<&mut Self, BuildError> {
        self.validate(&spec)?;
        let previous = self.remove_service(spec.id);
        let service = Arc::new(Service::build(
            spec,
            previous.as_deref(),
            self.node.maglev_max_size,
        ));
        for frontend in &service.frontends {
            let key = frontend.key(service.protocol);
            self.frontends.insert(
                key,
                Frontend {
                    service: service.clone(),
                    kind: frontend.kind,
                },
            );
            *self.service_addresses.entry(frontend.address).or_insert(0) += 1;
        }
        self.services.insert(service.id, service);
        Ok(self)
    }

    /// Removes a service and its frontends; returns it if it was there.
    pub fn remove_service(&mut self, id: ServiceId) -> Option<Arc<Service>> {
        let service = self.services.remove(&id)?;
        for frontend in &service.frontends {
            let key = frontend.key(service.protocol);
            if self.frontends.get(&key).is_some_and(|f| f.service.id == id) {
                self.frontends.remove(&key);
            }
            if let Some(count) = self.service_addresses.get_mut(&frontend.address) {
                *count -= 1;
                if *count == 0 {
                    self.service_addresses.remove(&frontend.address);
                }
            }
        }
        Some(service)
    }

    pub fn contains_service(&self, id: ServiceId) -> bool {
        self.services.contains_key(&id)
    }

    pub fn build(self) -> Snapshot {
        Snapshot {
            generation: self.generation,
            node: self.node,
            frontends: self.frontends,
            services: self.services,
            service_addresses: self.service_addresses,
        }
    }

    fn validate(&self, spec: &ServiceSpec) -> Result<(), BuildError> {
        let max = usize::from(u16::MAX) - 1;
        if spec.backends.len() > max {
            return Err(BuildError::TooManyBackends {
                service: spec.name.clone(),
                count: spec.backends.len(),
                max,
            });
        }
        let family = spec.frontends.first().map(|f| f.address.is_ipv6());
        let mut seen = HashSet::new();
        for frontend in &spec.frontends {
            if Some(frontend.address.is_ipv6()) != family {
                return Err(BuildError::MixedFamilies {
                    service: spec.name.clone(),
                    address: frontend.address,
                });
            }
            if frontend.port == 0 {
                return Err(BuildError::ZeroPort {
                    service: spec.name.clone(),
                    what: "frontend",
                });
            }
            let key = frontend.key(spec.protocol);
            if let Some(owner) = self.frontends.get(&key) {
                if owner.service.id != spec.id {
                    return Err(BuildError::FrontendTaken {
                        service: spec.name.clone(),
                        address: key.address,
                        port: key.port,
                        protocol: key.protocol.name(),
                        owner: owner.service.name.clone(),
                    });
                }
            }
            seen.insert(key);
        }
        for backend in &spec.backends {
            if family.is_some_and(|v6| backend.address.is_ipv6() != v6) {
                return Err(BuildError::BackendFamily {
                    service: spec.name.clone(),
                    address: backend.address,
                });
            }
            if backend.port == 0 {
                return Err(BuildError::ZeroPort {
                    service: spec.name.clone(),
                    what: "backend",
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: u32, address: &str, local: bool) -> BackendSpec {
        BackendSpec {
            id,
            address: address.parse().unwrap(),
            port: 8080,
            node_local: local,
            preferred: false,
        }
    }

    fn web(id: u32, backends: Vec<BackendSpec>) -> ServiceSpec {
        ServiceSpec::cluster_ip(
            id,
            format!("default/web{id}:http"),
            Protocol::Tcp,
            format!("10.96.0.{id}").parse().unwrap(),
            80,
            backends,
        )
    }

    #[test]
    fn frontends_lead_to_their_service() {
        let mut builder = SnapshotBuilder::new(NodeConfig::default());
        builder
            .upsert_service(web(1, vec![backend(1, "10.244.1.1", true)]))
            .unwrap();
        let snapshot = builder.build();
        let key = FrontendKey {
            address: "10.96.0.1".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let frontend = snapshot.frontend(&key).unwrap();
        assert_eq!(frontend.service.id, 1);
        assert_eq!(frontend.kind, FrontendKind::ClusterIp);
        assert!(snapshot
            .frontend(&FrontendKey {
                protocol: Protocol::Udp,
                ..key
            })
            .is_none());
        assert!(snapshot.is_service_address("10.96.0.1".parse().unwrap()));
        assert!(!snapshot.is_service_address("10.96.0.2".parse().unwrap()));
    }

    #[test]
    fn rebuild_shares_unchanged_services_and_replaces_changed_ones() {
        let mut builder = SnapshotBuilder::new(NodeConfig::default());
        builder
            .upsert_service(web(1, vec![backend(1, "10.244.1.1", true)]))
            .unwrap();
        builder
            .upsert_service(web(2, vec![backend(2, "10.244.1.2", true)]))
            .unwrap();
        let first = builder.build();
        let mut builder = first.to_builder();
        builder
            .upsert_service(web(2, vec![backend(3, "10.244.1.3", true)]))
            .unwrap();
        let second = builder.build();
        assert!(Arc::ptr_eq(
            first.service(1).unwrap(),
            second.service(1).unwrap()
        ));
        assert!(!Arc::ptr_eq(
            first.service(2).unwrap(),
            second.service(2).unwrap()
        ));
        assert_eq!(second.service(2).unwrap().backends[0].id, 3);
        assert_eq!(second.generation(), first.generation() + 1);
        let mut builder = second.to_builder();
        builder.remove_service(1);
        let third = builder.build();
        assert!(!third.is_service_address("10.96.0.1".parse().unwrap()));
        assert_eq!(third.frontend_count(), 1);
    }

    #[test]
    fn refused_service_changes_nothing() {
        let mut builder = SnapshotBuilder::new(NodeConfig::default());
        builder
            .upsert_service(web(1, vec![backend(1, "10.244.1.1", true)]))
            .unwrap();
        let mut thief = web(2, vec![]);
        thief.frontends[0].address = "10.96.0.1".parse().unwrap();
        assert!(matches!(
            builder.upsert_service(thief),
            Err(BuildError::FrontendTaken { .. })
        ));
        let mut mixed = web(3, vec![backend(4, "fd00::1", true)]);
        assert!(matches!(
            builder.upsert_service(mixed.clone()),
            Err(BuildError::BackendFamily { .. })
        ));
        mixed.backends.clear();
        mixed.frontends.push(FrontendSpec {
            address: "fd00::3".parse().unwrap(),
            port: 80,
            kind: FrontendKind::ClusterIp,
        });
        assert!(matches!(
            builder.upsert_service(mixed),
            Err(BuildError::MixedFamilies { .. })
        ));
        let snapshot = builder.build();
        assert_eq!(snapshot.services().count(), 1);
        assert_eq!(snapshot.frontend_count(), 1);
    }

    #[test]
    fn traffic_policies_shape_the_pools() {
        let mut spec = web(
            1,
            vec![
                backend(1, "10.244.1.1", true),
                backend(2, "10.244.2.1", false),
            ],
        );
        spec.frontends.push(FrontendSpec {
            address: "192.0.2.10".parse().unwrap(),
            port: 30080,
            kind: FrontendKind::NodePort,
        });
        spec.external_traffic_local = true;
        let service = Service::build(spec.clone(), None, maglev::DEFAULT_MAX_SIZE);
        assert_eq!(service.external.members(), &[0]);
        assert_eq!(service.internal.members(), &[0, 1]);
        spec.backends[0].node_local = false;
        let service = Service::build(spec.clone(), None, maglev::DEFAULT_MAX_SIZE);
        assert!(service.external.is_empty());
        assert_eq!(service.external.when_empty(), WhenEmpty::DropNoLocal);
        spec.backends.clear();
        let service = Service::build(spec.clone(), None, maglev::DEFAULT_MAX_SIZE);
        assert_eq!(service.external.when_empty(), WhenEmpty::Reject);
        assert_eq!(service.internal.when_empty(), WhenEmpty::Reject);
    }

    #[test]
    fn topology_preference_applies_when_someone_is_preferred() {
        let mut spec = web(
            1,
            vec![
                backend(1, "10.244.1.1", false),
                backend(2, "10.244.2.1", false),
            ],
        );
        spec.backends[1].preferred = true;
        let service = Service::build(spec.clone(), None, maglev::DEFAULT_MAX_SIZE);
        assert_eq!(service.internal.members(), &[1]);
        for hash in 0..1000u64 {
            assert_eq!(service.internal.pick(maglev::mix64(hash)), Some(1));
        }
        spec.internal_traffic_local = true;
        spec.backends[0].node_local = true;
        let service = Service::build(spec, None, maglev::DEFAULT_MAX_SIZE);
        assert_eq!(
            service.internal.members(),
            &[0],
            "internalTrafficPolicy=Local wins over hints"
        );
    }

    #[test]
    fn source_ranges_guard_load_balancer_frontends_only() {
        let mut spec = web(1, vec![backend(1, "10.244.1.1", true)]);
        spec.source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
        let service = Service::build(spec, None, maglev::DEFAULT_MAX_SIZE);
        let inside = "203.0.113.9".parse().unwrap();
        let outside = "198.51.100.1".parse().unwrap();
        assert!(service.source_allowed(FrontendKind::LoadBalancer, inside));
        assert!(!service.source_allowed(FrontendKind::LoadBalancer, outside));
        assert!(service.source_allowed(FrontendKind::NodePort, outside));
    }

    #[test]
    fn dump_is_sorted_and_stable() {
        let mut builder = SnapshotBuilder::new(NodeConfig {
            name: "node-a".into(),
            ..NodeConfig::default()
        });
        builder
            .upsert_service(web(2, vec![backend(2, "10.244.1.2", false)]))
            .unwrap();
        builder
            .upsert_service(web(
                1,
                vec![
                    backend(1, "10.244.1.1", true),
                    backend(3, "10.244.1.3", false),
                ],
            ))
            .unwrap();
        let dump = builder.build().dump();
        let expected = "node node-a\n  addresses: \n  masquerade: \n  snat ports: 61000-65535\n\
10.96.0.1:80 TCP ClusterIP -> default/web1:http\n  backend 10.244.1.1:8080 weight=126/251 local\n  backend 10.244.1.3:8080 weight=125/251\n\
10.96.0.2:80 TCP ClusterIP -> default/web2:http\n  backend 10.244.1.2:8080 weight=251/251\n";
        assert_eq!(dump, expected);
    }
}
