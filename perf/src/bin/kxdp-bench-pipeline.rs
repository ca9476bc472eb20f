//! `kxdp-bench-pipeline`: the in-process pipeline rate bench (DESIGN.md §6.1), and pcap replay.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kxdp_perf::replay::{self, Settings, Traffic};
use kxdp_perf::scenario::Family;

/// Replay synthetic service traffic through the real kxdp pipeline on one core and report Mpps,
/// ns/packet and per-batch percentiles for services × tracked flows × traffic kind × IP family.
///
/// Every verdict is checked: the run fails if any packet is dropped or mistranslated.
#[derive(Parser, Debug)]
#[command(version)]
struct Arguments {
    /// Small sizes for a CI smoke run (seconds, even in a debug build).
    #[arg(long)]
    quick: bool,
    /// Service counts to measure, comma-separated (default: 10,1000,10000,100000).
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<usize>>,
    /// Tracked-flow counts to measure, comma-separated (default: 1000,100000,1000000).
    #[arg(long, value_delimiter = ',')]
    flows: Option<Vec<usize>>,
    /// Families: v4, v6 or both (default both).
    #[arg(long, value_delimiter = ',')]
    family: Option<Vec<FamilyArgument>>,
    /// Packets per measurement.
    #[arg(long)]
    packets: Option<usize>,
    /// Measurements per cell: established, reply, mixed (default all; fewer for profiling).
    #[arg(long, value_delimiter = ',')]
    traffic: Option<Vec<TrafficArgument>>,
    /// Share of SYNs of new flows in the mixed measurement, 0..=1.
    #[arg(long, default_value_t = 0.1)]
    new_share: f64,
    /// Zipf exponent of flow popularity (0 = uniform, every flow equally likely).
    #[arg(long, default_value_t = 1.0)]
    zipf_exponent: f64,
    /// PRNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Core to pin the bench thread to (default: the last one).
    #[arg(long)]
    core: Option<usize>,
    /// Don't pin the bench thread.
    #[arg(long)]
    no_pin: bool,
    /// Also write the markdown report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Instead of the matrix: replay this pcap (e.g. from kxdp-pcap-gen) and print its verdicts.
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// With --pcap: the scenario service count the capture was generated for.
    #[arg(long, default_value_t = 100)]
    pcap_services: usize,
    /// With --pcap: write the transmitted (rewritten) frames here.
    #[arg(long)]
    pcap_output: Option<PathBuf>,
    /// With --pcap: succeed even if packets were dropped.
    #[arg(long)]
    allow_drops: bool,
    /// Internal: print the RSS an empty conntrack of this capacity adds, and exit.
    #[arg(long, hide = true)]
    probe_conntrack: Option<usize>,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
enum TrafficArgument {
    Established,
    Reply,
    Mixed,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
enum FamilyArgument {
    V4,
    V6,
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    if let Some(capacity) = arguments.probe_conntrack {
        return match replay::probe_conntrack(capacity.max(1)) {
            Some(bytes) => {
                println!("{bytes}");
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        };
    }
    if let Some(pcap) = &arguments.pcap {
        return replay_pcap(&arguments, pcap);
    }
    let mut settings = if arguments.quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    if let Some(services) = &arguments.services {
        settings.services = services.clone();
    }
    if let Some(flows) = &arguments.flows {
        settings.flows = flows.clone();
    }
    if let Some(families) = &arguments.family {
        settings.families = families
            .iter()
            .map(|f| match f {
                FamilyArgument::V4 => Family::V4,
                FamilyArgument::V6 => Family::V6,
            })
            .collect();
    }
    if let Some(traffic) = &arguments.traffic {
        settings.traffic = traffic
            .iter()
            .map(|t| match t {
                TrafficArgument::Established => Traffic::Established,
                TrafficArgument::Reply => Traffic::Reply,
                TrafficArgument::Mixed => Traffic::Mixed,
            })
            .collect();
    }
    if let Some(packets) = arguments.packets {
        settings.packets = packets.max(1);
    }
    settings.new_share = arguments.new_share;
    settings.zipf_exponent = arguments.zipf_exponent;
    settings.seed = arguments.seed;
    if !(0.0..=1.0).contains(&settings.new_share)
        || settings
            .services
            .iter()
            .any(|&s| s == 0 || s > kxdp_perf::scenario::MAX_SERVICES)
        || settings.flows.contains(&0)
    {
        eprintln!(
            "kxdp-bench-pipeline: need --new-share in 0..=1, services in 1..={}, flows > 0",
            kxdp_perf::scenario::MAX_SERVICES
        );
        return ExitCode::FAILURE;
    }
    if cfg!(debug_assertions) && !arguments.quick {
        eprintln!("kxdp-bench-pipeline: warning: a debug build; numbers mean nothing (build with --release)");
    }

    let pinned = if arguments.no_pin {
        None
    } else {
        replay::pin(arguments.core)
    };
    let outcome = replay::run(&settings, |line| eprintln!("{line}"));
    let mut outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("kxdp-bench-pipeline: FAILED: {error}");
            return ExitCode::FAILURE;
        }
    };
    outcome.pinned_core = pinned;
    outcome.conntrack_memory = settings
        .flows
        .iter()
        .map(|&flows| {
            let capacity = replay::conntrack_capacity(&settings, flows);
            (flows, capacity, probe_in_child(capacity))
        })
        .collect();
    let command: Vec<String> = std::env::args().collect();
    let command = command.join(" ");
    let report = replay::render(&settings, &outcome, &command);
    println!("{report}");
    if let Some(output) = &arguments.output {
        if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(error) = std::fs::write(output, &report) {
            eprintln!("kxdp-bench-pipeline: writing {}: {error}", output.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn replay_pcap(arguments: &Arguments, pcap: &std::path::Path) -> ExitCode {
    let pinned = if arguments.no_pin {
        None
    } else {
        replay::pin(arguments.core)
    };
    match replay::replay_pcap(
        pcap,
        arguments.pcap_services,
        arguments.pcap_output.as_deref(),
    ) {
        Ok(result) => {
            println!(
                "Replayed {} through the pipeline ({} scenario services{}):\n",
                pcap.display(),
                arguments.pcap_services,
                pinned.map_or_else(String::new, |core| format!(", pinned to core {core}"))
            );
            println!("{result}");
            if let Some(output) = &arguments.pcap_output {
                println!("Rewritten frames: {}", output.display());
            }
            if result.counters.dropped > 0 && !arguments.allow_drops {
                eprintln!(
                    "kxdp-bench-pipeline: {} packets dropped (pass --allow-drops to accept)",
                    result.counters.dropped
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("kxdp-bench-pipeline: FAILED: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `--probe-conntrack` in a fresh copy of this program: a new process's allocator has no freed
/// memory to recycle, so its RSS growth is the table's true size.
fn probe_in_child(capacity: usize) -> Option<u64> {
    let output = std::process::Command::new(std::env::current_exe().ok()?)
        .arg("--probe-conntrack")
        .arg(capacity.to_string())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}
