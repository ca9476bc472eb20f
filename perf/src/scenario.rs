//! The synthetic cluster both the pcap generator and the replay bench use: which services exist, at
//! which addresses, with which backends, and which client flows talk to them.
//!
//! Everything is a pure function of a service index or a seed, so a pcap written by `kxdp-pcap-gen`
//! and a snapshot built by `kxdp-bench-pipeline` for the same `--services` always agree.
//!
//! Layout (one Kubernetes Service `i` is dual-stack, so it becomes two or four kxdp service ports):
//! - ClusterIPs: `10.96.0.0/12` and `fd00:96::/108`, offset by [`FIRST_SERVICE_OFFSET`] + `i`;
//! - every service listens on TCP 80; every [`DNS_EVERY`]th also on UDP 53;
//! - [`BACKENDS_PER_SERVICE`] backends each, pods in `10.244.0.0–10.244.199.255` and
//!   `fd00:244::1:0:0/96`, on port 8080 (TCP) or 53 (UDP);
//! - clients are pods in `10.244.200.0–10.244.255.255` and `fd00:244::2:0:0/96`, so no client is ever
//!   its own backend (hairpin masquerade is a different workload and is not measured here).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kxdp_dataplane::cidr::Cidr;
use kxdp_dataplane::tables::snapshot::{BackendSpec, NodeConfig, ServiceSpec};
use kxdp_dataplane::{FlowKey, Protocol};

use crate::random::Rng;

/// The first few addresses of the service range are left alone, as clusters keep `.1` for the API
/// server and `.10` for DNS.
pub const FIRST_SERVICE_OFFSET: u32 = 16;
/// How many services fit in a /12 (and in the /108 of the IPv6 range).
pub const MAX_SERVICES: usize = (1 << 20) - FIRST_SERVICE_OFFSET as usize;
pub const BACKENDS_PER_SERVICE: usize = 3;
/// Every this-many-th service also has a UDP 53 port, like a DNS service.
pub const DNS_EVERY: usize = 10;

pub const HTTP_PORT: u16 = 80;
pub const HTTP_TARGET_PORT: u16 = 8080;
pub const DNS_PORT: u16 = 53;

/// Backend pods use the first 200 /24s of the pod range, 254 hosts each.
const BACKEND_HOSTS_V4: u32 = 200 * 254;
/// Client pods use the last 56 /24s of the pod range, 254 hosts each.
pub const CLIENT_HOSTS_V4: u32 = 56 * 254;
/// IPv6 clients are drawn from as many hosts as IPv4 ones, so both families see the same fan-in.
pub const CLIENT_HOSTS: u32 = CLIENT_HOSTS_V4;
/// Client source ports: Linux's default ephemeral range.
pub const CLIENT_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

pub const NODE_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);
pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x192, 0, 0, 0, 0, 0, 0x10);

/// An IP family, for command lines and tables.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    pub fn of(address: IpAddr) -> Self {
        if address.is_ipv6() {
            Self::V6
        } else {
            Self::V4
        }
    }
}

pub fn cluster_ip(service: usize, family: Family) -> IpAddr {
    assert!(
        service < MAX_SERVICES,
        "service index {service} does not fit the service CIDR"
    );
    let offset = FIRST_SERVICE_OFFSET + service as u32;
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 96, 0, 0)) + offset,
        )),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(
            u128::from(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0)) + u128::from(offset),
        )),
    }
}

/// The inverse of [`cluster_ip`], for reports.
pub fn service_of_cluster_ip(address: IpAddr) -> Option<usize> {
    let offset = match address {
        IpAddr::V4(v4) => u32::from(v4).checked_sub(u32::from(Ipv4Addr::new(10, 96, 0, 0)))?,
        IpAddr::V6(v6) => {
            let base = u128::from(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0));
            u32::try_from(u128::from(v6).checked_sub(base)?).ok()?
        }
    };
    let index = offset.checked_sub(FIRST_SERVICE_OFFSET)? as usize;
    (index < MAX_SERVICES).then_some(index)
}

pub fn has_dns_port(service: usize) -> bool {
    service % DNS_EVERY == 0
}

/// The address of backend pod `pod` (pods are shared between services once the range runs out, as
/// one pod may back several services; the pipeline keys backends by id, not address).
pub fn backend_address(pod: u32, family: Family) -> IpAddr {
    match family {
        Family::V4 => {
            let host = pod % BACKEND_HOSTS_V4;
            IpAddr::V4(Ipv4Addr::new(
                10,
                244,
                (host / 254) as u8,
                (host % 254 + 1) as u8,
            ))
        }
        Family::V6 => IpAddr::V6(Ipv6Addr::from(
            u128::from(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 1, 0, 0)) | u128::from(pod),
        )),
    }
}

pub fn client_address(client: u32, family: Family) -> IpAddr {
    let host = client % CLIENT_HOSTS;
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(
            10,
            244,
            200 + (host / 254) as u8,
            (host % 254 + 1) as u8,
        )),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(
            u128::from(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 2, 0, 0)) | u128::from(host),
        )),
    }
}

/// Whether an address is one of the client pods (the bench's FIB sends those one way, backends another).
pub fn is_client_address(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 10 && o[1] == 244 && o[2] >= 200
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0xfd00 && s[1] == 0x244 && s[5] == 2
        }
    }
}

/// The node the bench pretends to be: pod CIDRs set as `--cluster-cidr`, so pod-to-ClusterIP traffic is
/// DNAT-only, as kube-proxy does it.
pub fn node_config() -> NodeConfig {
    NodeConfig {
        name: "bench-node".into(),
        addresses: vec![IpAddr::V4(NODE_IPV4), IpAddr::V6(NODE_IPV6)],
        masquerade_ipv4: Some(NODE_IPV4),
        masquerade_ipv6: Some(NODE_IPV6),
        cluster_cidrs: vec![
            "10.244.0.0/16".parse::<Cidr>().expect("valid CIDR"),
            "fd00:244::/64".parse::<Cidr>().expect("valid CIDR"),
        ],
        ..NodeConfig::default()
    }
}

/// The kxdp service id of Kubernetes service `service`'s port in one family and protocol.
pub fn service_id(service: usize, family: Family, protocol: Protocol) -> u32 {
    let lane = match (family, protocol) {
        (Family::V4, Protocol::Udp) => 2,
        (Family::V6, Protocol::Udp) => 3,
        (Family::V4, _) => 0,
        (Family::V6, _) => 1,
    };
    service as u32 * 4 + lane + 1
}

/// The service ports of `count` Kubernetes services, both families: `2 × count` TCP ports plus
/// `2 × ⌈count / DNS_EVERY⌉` UDP ports.
pub fn services(count: usize) -> Vec<ServiceSpec> {
    service_ports(count).collect()
}

/// [`services`], one spec at a time (100k services' specs take ~100 MB held all at once).
pub fn service_ports(count: usize) -> impl Iterator<Item = ServiceSpec> {
    (0..count).flat_map(|service| {
        [Family::V4, Family::V6]
            .into_iter()
            .flat_map(move |family| {
                let dns =
                    has_dns_port(service).then(|| service_port(service, family, Protocol::Udp));
                std::iter::once(service_port(service, family, Protocol::Tcp)).chain(dns)
            })
    })
}

/// One service port: a ClusterIP frontend and its backends.
pub fn service_port(service: usize, family: Family, protocol: Protocol) -> ServiceSpec {
    let id = service_id(service, family, protocol);
    let (port, target_port, port_name) = match protocol {
        Protocol::Udp => (DNS_PORT, DNS_PORT, "dns"),
        _ => (HTTP_PORT, HTTP_TARGET_PORT, "http"),
    };
    let backends = (0..BACKENDS_PER_SERVICE as u32)
        .map(|k| {
            // Both protocols of a service run on the same pods, as a DNS server's TCP and UDP ports do.
            let pod = service as u32 * BACKENDS_PER_SERVICE as u32 + k;
            BackendSpec {
                // Ids must be unique per backend (address, port), and stable across snapshots.
                id: id * 4 + k,
                address: backend_address(pod, family),
                port: target_port,
                node_local: k == 0,
                preferred: false,
            }
        })
        .collect();
    ServiceSpec::cluster_ip(
        id,
        format!("bench/svc-{service}:{port_name}/{}", family.name()),
        protocol,
        cluster_ip(service, family),
        port,
        backends,
    )
}

/// One client flow to a service, in the direction the client sends.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The Kubernetes service index.
    pub service: u32,
    pub key: FlowKey,
}

/// What share of flows are IPv6 and UDP.
#[derive(Copy, Clone, Debug)]
pub struct FlowMix {
    pub ipv6_share: f64,
    pub udp_share: f64,
}

impl FlowMix {
    pub const TCP_V4: Self = Self {
        ipv6_share: 0.0,
        udp_share: 0.0,
    };
    pub const TCP_V6: Self = Self {
        ipv6_share: 1.0,
        udp_share: 0.0,
    };

    pub fn tcp(family: Family) -> Self {
        match family {
            Family::V4 => Self::TCP_V4,
            Family::V6 => Self::TCP_V6,
        }
    }
}

/// `count` distinct client flows spread uniformly over `services` services: random client pod, random
/// ephemeral port. UDP flows go to the nearest service with a DNS port. No two flows share a 5-tuple,
/// so every flow the bench warms up is a flow of its own in conntrack.
pub fn flows(services: usize, count: usize, mix: FlowMix, rng: &mut Rng) -> Vec<Flow> {
    assert!(services > 0, "flows need at least one service");
    let mut seen: HashSet<FlowKey> = HashSet::with_capacity(count);
    let mut flows = Vec::with_capacity(count);
    let ports = u64::from(CLIENT_PORTS.end() - CLIENT_PORTS.start()) + 1;
    while flows.len() < count {
        let family = if rng.chance(mix.ipv6_share) {
            Family::V6
        } else {
            Family::V4
        };
        let mut service = rng.below(services as u64) as usize;
        let protocol = if rng.chance(mix.udp_share) {
            service -= service % DNS_EVERY;
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let client = rng.below(u64::from(CLIENT_HOSTS)) as u32;
        let source_port = CLIENT_PORTS.start() + rng.below(ports) as u16;
        let destination_port = if protocol == Protocol::Udp {
            DNS_PORT
        } else {
            HTTP_PORT
        };
        let key = FlowKey::new(
            protocol,
            client_address(client, family),
            source_port,
            cluster_ip(service, family),
            destination_port,
        );
        if seen.insert(key) {
            flows.push(Flow {
                service: service as u32,
                key,
            });
        }
    }
    flows
}

#[cfg(test)]
mod tests {
    use super::*;
    use kxdp_dataplane::tables::snapshot::SnapshotBuilder;

    #[test]
    fn addresses_stay_in_their_ranges_and_round_trip() {
        for service in [0, 1, 9_999, 99_999, MAX_SERVICES - 1] {
            let v4 = cluster_ip(service, Family::V4);
            let v6 = cluster_ip(service, Family::V6);
            assert!("10.96.0.0/12".parse::<Cidr>().unwrap().contains(v4), "{v4}");
            assert!(
                "fd00:96::/108".parse::<Cidr>().unwrap().contains(v6),
                "{v6}"
            );
            assert_eq!(service_of_cluster_ip(v4), Some(service));
            assert_eq!(service_of_cluster_ip(v6), Some(service));
        }
        for pod in [0, 1, 50_799, 50_800, 299_999] {
            assert!(!is_client_address(backend_address(pod, Family::V4)));
            assert!(!is_client_address(backend_address(pod, Family::V6)));
        }
        for client in [0, 1, CLIENT_HOSTS - 1] {
            assert!(is_client_address(client_address(client, Family::V4)));
            assert!(is_client_address(client_address(client, Family::V6)));
        }
        assert_eq!(
            client_address(CLIENT_HOSTS - 1, Family::V4),
            "10.244.255.254".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn services_build_into_a_snapshot_with_every_frontend() {
        let specs = services(25);
        assert_eq!(specs.len(), 25 * 2 + 3 * 2);
        let mut builder = SnapshotBuilder::new(node_config());
        for spec in specs {
            builder.upsert_service(spec).unwrap();
        }
        let snapshot = builder.build();
        assert_eq!(snapshot.frontend_count(), 56);
        assert_eq!(snapshot.services().count(), 56);
    }

    #[test]
    fn flows_are_distinct_reproducible_and_follow_the_mix() {
        let mix = FlowMix {
            ipv6_share: 0.5,
            udp_share: 0.2,
        };
        let a = flows(100, 2000, mix, &mut Rng::new(5));
        let b = flows(100, 2000, mix, &mut Rng::new(5));
        assert_eq!(a, b);
        let distinct: HashSet<_> = a.iter().map(|f| f.key).collect();
        assert_eq!(distinct.len(), a.len());
        let v6 = a.iter().filter(|f| f.key.is_ipv6()).count();
        let udp = a.iter().filter(|f| f.key.protocol == Protocol::Udp).count();
        assert!((800..1200).contains(&v6), "{v6}");
        assert!((250..550).contains(&udp), "{udp}");
        for flow in &a {
            assert_eq!(
                service_of_cluster_ip(flow.key.destination),
                Some(flow.service as usize)
            );
            if flow.key.protocol == Protocol::Udp {
                assert!(has_dns_port(flow.service as usize));
            }
        }
    }
}
