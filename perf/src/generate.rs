//! Synthetic service traffic as a standard pcap (LINKTYPE_ETHERNET): the input for `tcpreplay`, for
//! `kxdp replay` and for the bench's pcap mode.
//!
//! The capture is what a node would receive from its client pods: `flows` distinct flows over the
//! [`scenario`](crate::scenario) services, whose popularity follows a Zipf law. Each packet slot draws a
//! flow; a TCP flow's first draw is its SYN and later draws are data segments, a UDP flow's draws are
//! DNS-style requests. Every TCP flow that opened is closed with a FIN at the end. The same seed always
//! writes the same bytes (timestamps included), so captures can be regenerated instead of committed.

use std::io::Write;
use std::time::Duration;

use kxdp_dataplane::Protocol;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};

use crate::packets::{self, Segment, Sequence};
use crate::random::{Rng, Zipf};
use crate::scenario::{self, FlowMix};

/// What to generate.
#[derive(Clone, Debug)]
pub struct Config {
    pub services: usize,
    pub flows: usize,
    /// Packet slots drawn by popularity; FINs come on top.
    pub packets: usize,
    pub ipv6_share: f64,
    pub udp_share: f64,
    pub zipf_exponent: f64,
    /// TCP payload bytes per data segment.
    pub payload: usize,
    /// Mean offered rate, for the timestamps.
    pub rate_pps: f64,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            services: 100,
            flows: 1000,
            packets: 10_000,
            ipv6_share: 0.5,
            udp_share: 0.1,
            zipf_exponent: 1.0,
            payload: 64,
            rate_pps: 100_000.0,
            seed: 1,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub packets: u64,
    pub bytes: u64,
    pub flows_seen: u64,
    pub syn: u64,
    pub data: u64,
    pub fin: u64,
    pub udp: u64,
    pub ipv6_packets: u64,
    pub services_seen: u64,
}

/// A fixed epoch (2024-01-01T00:00:00Z) so that captures are byte-for-byte reproducible.
const EPOCH: Duration = Duration::from_secs(1_704_067_200);

/// Writes the capture to `out` and says what it holds.
pub fn generate<W: Write>(config: &Config, out: W) -> Result<Summary, pcap_file::PcapError> {
    let root = Rng::new(config.seed);
    let mix = FlowMix {
        ipv6_share: config.ipv6_share,
        udp_share: config.udp_share,
    };
    let flows = scenario::flows(config.services, config.flows, mix, &mut root.fork(1));
    let zipf = Zipf::new(flows.len(), config.zipf_exponent);
    let mut order = root.fork(2);
    let mut jitter = root.fork(3);

    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(out, header)?;
    let mut summary = Summary::default();
    // Per flow: next sequence number to send, or 0 while the flow has not opened yet.
    let mut next_sequence = vec![0u32; flows.len()];
    let mut services_seen = vec![false; config.services];
    let payload = vec![0x61u8; config.payload];
    let gap_nanos = 1e9 / config.rate_pps.max(1.0);
    let mut clock_nanos = 0.0f64;
    let mut frame = Vec::with_capacity(256);

    let mut emit = |frame: &[u8], ipv6: bool, summary: &mut Summary, clock: &mut f64| {
        // Exponential gaps: arrivals of many independent clients look Poisson.
        *clock += -gap_nanos * (1.0 - jitter.unit()).ln();
        let timestamp = EPOCH + Duration::from_nanos(*clock as u64);
        summary.packets += 1;
        summary.bytes += frame.len() as u64;
        summary.ipv6_packets += u64::from(ipv6);
        writer.write_packet(&PcapPacket::new(timestamp, frame.len() as u32, frame))
    };

    for _ in 0..config.packets {
        let index = zipf.sample(&mut order);
        let flow = &flows[index];
        frame.clear();
        if !services_seen[flow.service as usize] {
            services_seen[flow.service as usize] = true;
            summary.services_seen += 1;
        }
        match flow.key.protocol {
            Protocol::Udp => {
                let query = packets::dns_query(summary.udp as u16, flow.service);
                packets::udp_frame(&mut frame, &flow.key, &query);
                if next_sequence[index] == 0 {
                    next_sequence[index] = 1;
                    summary.flows_seen += 1;
                }
                summary.udp += 1;
            }
            _ => {
                if next_sequence[index] == 0 {
                    // The initial sequence number is any non-zero value; derive it from the flow.
                    let isn = (index as u32).wrapping_mul(2_654_435_761) | 1;
                    packets::tcp_frame(
                        &mut frame,
                        &flow.key,
                        Segment::Syn,
                        Sequence {
                            sequence: isn,
                            acknowledgment: 0,
                        },
                        &[],
                    );
                    next_sequence[index] = isn.wrapping_add(1).max(1);
                    summary.flows_seen += 1;
                    summary.syn += 1;
                } else {
                    let sequence = next_sequence[index];
                    packets::tcp_frame(
                        &mut frame,
                        &flow.key,
                        Segment::Data,
                        Sequence {
                            sequence,
                            acknowledgment: 1,
                        },
                        &payload,
                    );
                    next_sequence[index] = sequence.wrapping_add(payload.len() as u32).max(1);
                    summary.data += 1;
                }
            }
        }
        emit(&frame, flow.key.is_ipv6(), &mut summary, &mut clock_nanos)?;
    }
    for (index, flow) in flows.iter().enumerate() {
        if flow.key.protocol == Protocol::Tcp && next_sequence[index] != 0 {
            frame.clear();
            packets::tcp_frame(
                &mut frame,
                &flow.key,
                Segment::Fin,
                Sequence {
                    sequence: next_sequence[index],
                    acknowledgment: 1,
                },
                &[],
            );
            summary.fin += 1;
            emit(&frame, flow.key.is_ipv6(), &mut summary, &mut clock_nanos)?;
        }
    }
    // Flush here: a buffered writer dropped later would swallow a full disk.
    writer
        .into_writer()
        .flush()
        .map_err(pcap_file::PcapError::IoError)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcap::PcapReader;

    fn small() -> Config {
        Config {
            services: 20,
            flows: 50,
            packets: 400,
            ..Config::default()
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut c = Vec::new();
        generate(&small(), &mut a).unwrap();
        generate(&small(), &mut b).unwrap();
        generate(&Config { seed: 2, ..small() }, &mut c).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn capture_reads_back_with_what_the_summary_says() {
        let mut bytes = Vec::new();
        let summary = generate(&small(), &mut bytes).unwrap();
        assert_eq!(summary.packets, 400 + summary.fin);
        assert_eq!(summary.syn, summary.fin);
        assert_eq!(summary.syn + summary.data + summary.udp, 400);
        assert!(summary.ipv6_packets > 0 && summary.ipv6_packets < summary.packets);
        let mut reader = PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(reader.header().datalink, DataLink::ETHERNET);
        let mut count = 0;
        let mut last = Duration::ZERO;
        while let Some(packet) = reader.next_packet() {
            let packet = packet.unwrap();
            assert!(packet.timestamp >= last, "timestamps never go back");
            last = packet.timestamp;
            etherparse::SlicedPacket::from_ethernet(&packet.data).unwrap();
            count += 1;
        }
        assert_eq!(count, summary.packets);
    }
}
