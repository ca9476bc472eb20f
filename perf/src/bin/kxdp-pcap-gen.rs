//! `kxdp-pcap-gen`: writes a pcap of synthetic client-to-service traffic for the scenario cluster.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kxdp_perf::generate::{self, Config};

/// Write a pcap (LINKTYPE_ETHERNET) of Zipf-popular client flows to the bench's synthetic services.
///
/// Replay it with `kxdp-bench-pipeline --pcap FILE --services N` (same N) or with tcpreplay.
#[derive(Parser, Debug)]
#[command(version)]
struct Arguments {
    /// Output file.
    #[arg(short, long, default_value = "perf/out/traffic.pcap")]
    output: PathBuf,
    /// Kubernetes services in the cluster (each dual-stack TCP/80, every 10th also UDP/53).
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Distinct client flows.
    #[arg(long, default_value_t = 1000)]
    flows: usize,
    /// Packets drawn by flow popularity (FINs closing the TCP flows come on top).
    #[arg(long, default_value_t = 10_000)]
    packets: usize,
    /// Share of flows that are IPv6, 0..=1.
    #[arg(long, default_value_t = 0.5)]
    ipv6_share: f64,
    /// Share of flows that are UDP (DNS-style), 0..=1.
    #[arg(long, default_value_t = 0.1)]
    udp_share: f64,
    /// Zipf exponent of flow popularity (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf_exponent: f64,
    /// TCP payload bytes per data segment.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Mean packet rate the timestamps model, packets per second.
    #[arg(long, default_value_t = 100_000.0)]
    rate: f64,
    /// PRNG seed: the same seed writes the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    for (name, share) in [
        ("--ipv6-share", arguments.ipv6_share),
        ("--udp-share", arguments.udp_share),
    ] {
        if !(0.0..=1.0).contains(&share) {
            eprintln!("kxdp-pcap-gen: {name} must be between 0 and 1, not {share}");
            return ExitCode::FAILURE;
        }
    }
    if arguments.services == 0
        || arguments.services > kxdp_perf::scenario::MAX_SERVICES
        || arguments.flows == 0
    {
        eprintln!(
            "kxdp-pcap-gen: need 1..={} services and at least one flow",
            kxdp_perf::scenario::MAX_SERVICES
        );
        return ExitCode::FAILURE;
    }
    let config = Config {
        services: arguments.services,
        flows: arguments.flows,
        packets: arguments.packets,
        ipv6_share: arguments.ipv6_share,
        udp_share: arguments.udp_share,
        zipf_exponent: arguments.zipf_exponent,
        payload: arguments.payload,
        rate_pps: arguments.rate,
        seed: arguments.seed,
    };
    if let Some(parent) = arguments
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        if let Err(error) = std::fs::create_dir_all(parent) {
            eprintln!("kxdp-pcap-gen: cannot create {}: {error}", parent.display());
            return ExitCode::FAILURE;
        }
    }
    let file = match File::create(&arguments.output) {
        Ok(file) => file,
        Err(error) => {
            eprintln!(
                "kxdp-pcap-gen: cannot create {}: {error}",
                arguments.output.display()
            );
            return ExitCode::FAILURE;
        }
    };
    match generate::generate(&config, BufWriter::new(file)) {
        Ok(summary) => {
            println!(
                "{}: {} packets ({} bytes), {} flows over {} services: {} SYN, {} data, {} FIN, {} UDP; {} IPv6 packets",
                arguments.output.display(),
                summary.packets,
                summary.bytes,
                summary.flows_seen,
                summary.services_seen,
                summary.syn,
                summary.data,
                summary.fin,
                summary.udp,
                summary.ipv6_packets
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "kxdp-pcap-gen: writing {}: {error}",
                arguments.output.display()
            );
            ExitCode::FAILURE
        }
    }
}
