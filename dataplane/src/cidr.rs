//! IP prefixes (CIDRs) for cluster ranges and `loadBalancerSourceRanges`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address prefix such as `10.244.0.0/16` or `fd00::/64`. Host bits are cleared on construction.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an address or a prefix (expected e.g. 10.0.0.0/8 or fd00::/64)")]
    Syntax(String),
    #[error("prefix length {length} is too long for {address}")]
    PrefixTooLong { address: IpAddr, length: u8 },
}

impl Cidr {
    pub fn new(address: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(CidrError::PrefixTooLong {
                address,
                length: prefix_len,
            });
        }
        let network = match address {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask32(prefix_len)).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask128(prefix_len)).into()),
        };
        Ok(Self {
            network,
            prefix_len,
        })
    }

    /// A prefix holding exactly one address.
    pub fn host(address: IpAddr) -> Self {
        let prefix_len = if address.is_ipv4() { 32 } else { 128 };
        Self {
            network: address,
            prefix_len,
        }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                u32::from(address) & mask32(self.prefix_len) == u32::from(network)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                u128::from(address) & mask128(self.prefix_len) == u128::from(network)
            }
            _ => false,
        }
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
}

fn mask32(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn mask128(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(text.to_string());
        match text.split_once('/') {
            None => text.parse().map(Self::host).map_err(|_| syntax()),
            Some((address, length)) => {
                let address: IpAddr = address.parse().map_err(|_| syntax())?;
                let length: u8 = length.parse().map_err(|_| syntax())?;
                Self::new(address, length)
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_contains() {
        let cidr: Cidr = "10.244.1.7/16".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.244.0.0/16");
        assert!(cidr.contains("10.244.255.1".parse().unwrap()));
        assert!(!cidr.contains("10.245.0.1".parse().unwrap()));
        assert!(!cidr.contains("fd00::1".parse().unwrap()));
        let v6: Cidr = "fd00:10::/64".parse().unwrap();
        assert!(v6.contains("fd00:10::99".parse().unwrap()));
        assert!(!v6.contains("fd00:11::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let host: Cidr = "192.0.2.1".parse().unwrap();
        assert!(
            host.contains("192.0.2.1".parse().unwrap())
                && !host.contains("192.0.2.2".parse().unwrap())
        );
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "x/1",
            "10.0.0.0/-1",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
