//! Next-hop selection: the `Fib` trait the pipeline asks "where does this address go?", and a
//! longest-prefix-match route table that implements it for replay, tests and (fed from netlink) nodes.

use std::net::IpAddr;

use crate::cidr::Cidr;

/// Where to send a packet: the egress interface and the Ethernet addresses to write.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub source_mac: [u8; 6],
    pub destination_mac: [u8; 6],
}

/// The caller's routing and neighbour view. `None` means "not resolved here": the pipeline then hands
/// the packet to the host stack (through the host service device) so the kernel routes it.
pub trait Fib {
    fn next_hop(&self, destination: IpAddr) -> Option<NextHop>;
}

/// A small longest-prefix-match table: routes with their resolved next hop.
///
/// Each family keeps its routes as integer network and mask, longest prefix first, so a lookup is a
/// scan of and-compares with no address-enum matching on the packet path.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    v4: Vec<Route<u32>>,
    v6: Vec<Route<u128>>,
}

#[derive(Clone, Debug)]
struct Route<Bits> {
    prefix: Cidr,
    network: Bits,
    mask: Bits,
    next_hop: NextHop,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the route for `prefix`.
    pub fn insert(&mut self, prefix: Cidr, next_hop: NextHop) -> &mut Self {
        self.remove(prefix);
        let length = u32::from(prefix.prefix_len());
        match prefix.network() {
            IpAddr::V4(network) => insert_sorted(
                &mut self.v4,
                Route {
                    prefix,
                    network: network.to_bits(),
                    mask: u32::MAX.checked_shl(32 - length).unwrap_or(0),
                    next_hop,
                },
            ),
            IpAddr::V6(network) => insert_sorted(
                &mut self.v6,
                Route {
                    prefix,
                    network: network.to_bits(),
                    mask: u128::MAX.checked_shl(128 - length).unwrap_or(0),
                    next_hop,
                },
            ),
        }
        self
    }

    pub fn remove(&mut self, prefix: Cidr) -> bool {
        let before = self.len();
        self.v4.retain(|route| route.prefix != prefix);
        self.v6.retain(|route| route.prefix != prefix);
        self.len() != before
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps `routes` longest prefix first, so the first match is the best one.
fn insert_sorted<Bits>(routes: &mut Vec<Route<Bits>>, route: Route<Bits>) {
    let position = routes
        .iter()
        .position(|existing| existing.prefix.prefix_len() < route.prefix.prefix_len())
        .unwrap_or(routes.len());
    routes.insert(position, route);
}

impl Fib for RouteTable {
    #[inline]
    fn next_hop(&self, destination: IpAddr) -> Option<NextHop> {
        match destination {
            IpAddr::V4(address) => {
                let bits = address.to_bits();
                self.v4
                    .iter()
                    .find(|route| bits & route.mask == route.network)
                    .map(|route| route.next_hop)
            }
            IpAddr::V6(address) => {
                let bits = address.to_bits();
                self.v6
                    .iter()
                    .find(|route| bits & route.mask == route.network)
                    .map(|route| route.next_hop)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(ifindex: u32) -> NextHop {
        NextHop {
            ifindex,
            source_mac: [2, 0, 0, 0, 0, 1],
            destination_mac: [2, 0, 0, 0, 0, ifindex as u8],
        }
    }

    #[test]
    fn longest_prefix_wins_regardless_of_insert_order() {
        let mut table = RouteTable::new();
        table.insert("0.0.0.0/0".parse().unwrap(), hop(1));
        table.insert("10.244.1.0/24".parse().unwrap(), hop(3));
        table.insert("10.244.0.0/16".parse().unwrap(), hop(2));
        table.insert("10.244.1.7/32".parse().unwrap(), hop(4));
        let lookup =
            |table: &RouteTable, a: &str| table.next_hop(a.parse().unwrap()).map(|h| h.ifindex);
        assert_eq!(lookup(&table, "10.244.1.7"), Some(4));
        assert_eq!(lookup(&table, "10.244.1.8"), Some(3));
        assert_eq!(lookup(&table, "10.244.9.9"), Some(2));
        assert_eq!(lookup(&table, "192.0.2.1"), Some(1));
        assert_eq!(lookup(&table, "fd00::1"), None);
        assert!(table.remove("0.0.0.0/0".parse().unwrap()));
        assert_eq!(lookup(&table, "192.0.2.1"), None);
    }
}
