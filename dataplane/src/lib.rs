//! kxdp-dataplane: everything a service packet touches.
//!
//! - [`wire`]: checked zero-copy views of Ethernet, IPv4, IPv6, TCP, UDP, ICMP, ICMPv6 and checksums.
//! - [`tables`]: the immutable service snapshot, Maglev, conntrack, SNAT ports and session affinity.
//! - [`pipeline`]: the pure per-packet function the AF_XDP workers, pcap replay and tests all run.
//!
//! Nothing in this crate makes a syscall or reads a clock: callers pass `now` in.

pub mod cidr;
pub mod drop_reason;
pub mod flow;
pub mod pipeline;

pub mod tables;
pub mod wire;

pub use drop_reason::DropReason;
pub use flow::{Direction, FlowKey, Protocol, Timestamp, Zone};
