//! The tables the workers read: the service snapshot (with Maglev), conntrack, SNAT ports and affinity.

pub mod affinity;
pub mod conntrack;
pub mod fib;
pub mod maglev;
pub mod nat;
pub mod snapshot;
