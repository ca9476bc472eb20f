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
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Kept sorted longest prefix first, so the first match is the best one.
    routes: Vec<(Cidr, NextHop)>,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the route for `prefix`.
    pub fn insert(&mut self, prefix: Cidr, next_hop: NextHop) -> &mut Self {
        self.routes.retain(|(existing, _)| *existing != prefix);
        let position = self
            .routes
            .iter()
            .position(|(existing, _)| existing.prefix_len() < prefix.prefix_len())
            .unwrap_or(self.routes.len());
        self.routes.insert(position, (prefix, next_hop));
        self
    }

    pub fn remove(&mut self, prefix: Cidr) -> bool {
        let before = self.routes.len();
        self.routes.retain(|(existing, _)| *existing != prefix);
        self.routes.len() != before
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Fib for RouteTable {
    fn next_hop(&self, destination: IpAddr) -> Option<NextHop> {
        self.routes
            .iter()
            .find(|(prefix, _)| prefix.contains(destination))
            .map(|(_, next_hop)| *next_hop)
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
