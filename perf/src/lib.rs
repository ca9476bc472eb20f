//! kxdp-perf: the measurements of DESIGN.md §6 that run in process.
//!
//! - [`scenario`]: the synthetic cluster (services, backends, client flows) every tool here shares;
//! - [`packets`]: frames for those flows, built with etherparse;
//! - [`generate`]: synthetic service traffic written as pcap (`kxdp-pcap-gen`);
//! - [`replay`]: the in-process pipeline bench and pcap replay (`kxdp-bench-pipeline`);
//! - [`report`]: machine description and memory readings for the reports;
//! - [`random`]: the seeded PRNG and Zipf sampler that make all of it reproducible.

pub mod generate;
pub mod packets;
pub mod random;
pub mod replay;
pub mod report;
pub mod scenario;
