//! The kxdp command line. Today it explains the dataplane's frozen drop-reason table; `run`,
//! `services`, `conntrack`, `stats`, `trace` and `replay` arrive with the control plane and node work.

use clap::{Parser, Subcommand};
use kxdp_dataplane::DropReason;

#[derive(Parser)]
#[command(
    name = "kxdp",
    version,
    about = "Kubernetes Service dataplane over XDP and AF_XDP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists every drop reason with its frozen number and metrics label.
    DropReasons,
}

fn main() {
    match Cli::parse().command {
        Command::DropReasons => print!("{}", drop_reason_table()),
    }
}

fn drop_reason_table() -> String {
    let mut out = format!("{:>3}  {}\n", "#", "reason");
    for reason in DropReason::ALL {
        out.push_str(&format!("{:>3}  {}\n", reason as u8, reason.name()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_reason_by_number() {
        let table = drop_reason_table();
        assert_eq!(table.lines().count(), DropReason::ALL.len() + 1);
        assert!(table.contains(" 27  rejected_no_endpoints\n"));
        assert!(table.contains("  1  ethernet_truncated\n"));
    }
}
