//! IPv4 / IPv6 prefixes (`10.89.0.0/16`) as the IPAM and the rules need them.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::error::NetworkError;

/// An IPv4 network: address with no host bits set, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// An IPv6 network: address with no host bits set, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Net {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

fn split(s: &str) -> Result<(&str, u8), NetworkError> {
    let (a, p) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| NetworkError::Config(format!("{s:?} is not a CIDR (address/prefix)")))?;
    let p = p
        .parse::<u8>()
        .map_err(|_| NetworkError::Config(format!("{s:?}: bad prefix length")))?;
    Ok((a, p))
}

impl Ipv4Net {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    /// The number of addresses in the network.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }
    /// The address at `offset` from the network address.
    pub fn nth(&self, offset: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(offset as u32))
    }
    /// The first host address: the gateway on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
    /// Offsets handed to pods: 2 ..= size-2 (not the network, gateway or broadcast).
    pub fn pod_offsets(&self) -> (u64, u64) {
        (2, self.size() - 2)
    }
}

impl Ipv6Net {
    fn mask(&self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - self.prefix)
        }
    }
    pub fn nth(&self, offset: u64) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr).wrapping_add(offset as u128))
    }
    pub fn gateway(&self) -> Ipv6Addr {
        self.nth(1)
    }
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr)
    }
    /// Offsets handed to pods: 2 ..= min(size-1, 2^32) (a /64 is never exhausted in practice).
    pub fn pod_offsets(&self) -> (u64, u64) {
        let bits = 128 - self.prefix as u32;
        let last = if bits >= 32 {
            u32::MAX as u64
        } else {
            (1u64 << bits) - 1
        };
        (2, last)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        let (a, prefix) = split(s)?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| NetworkError::Config(format!("{s:?}: not an IPv4 address")))?;
        if prefix > 32 {
            return Err(NetworkError::Config(format!(
                "{s:?}: prefix longer than 32"
            )));
        }
        let n = Ipv4Net { addr, prefix };
        if u32::from(addr) & !n.mask() != 0 {
            return Err(NetworkError::Config(format!("{s:?}: host bits are set")));
        }
        Ok(n)
    }
}

impl FromStr for Ipv6Net {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        let (a, prefix) = split(s)?;
        let addr: Ipv6Addr = a
            .parse()
            .map_err(|_| NetworkError::Config(format!("{s:?}: not an IPv6 address")))?;
        if prefix > 128 {
            return Err(NetworkError::Config(format!(
                "{s:?}: prefix longer than 128"
            )));
        }
        let n = Ipv6Net { addr, prefix };
        if u128::from(addr) & !n.mask() != 0 {
            return Err(NetworkError::Config(format!("{s:?}: host bits are set")));
        }
        Ok(n)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4() {
        let n: Ipv4Net = "10.89.0.0/16".parse().unwrap();
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 89, 0, 1));
        assert_eq!(n.pod_offsets(), (2, 65534));
        assert_eq!(n.nth(65534), Ipv4Addr::new(10, 89, 255, 254));
        assert!(n.contains(Ipv4Addr::new(10, 89, 3, 4)));
        assert!(!n.contains(Ipv4Addr::new(10, 90, 0, 1)));
        assert!("10.89.0.1/16".parse::<Ipv4Net>().is_err());
        assert!("10.89.0.0".parse::<Ipv4Net>().is_err());
        assert!("x/8".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn v6() {
        let n: Ipv6Net = "fd89:1::/64".parse().unwrap();
        assert_eq!(n.gateway(), "fd89:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(n.nth(2).to_string(), "fd89:1::2");
        assert!(n.contains("fd89:1::ffff".parse().unwrap()));
        assert!(!n.contains("fd89:2::1".parse().unwrap()));
        let small: Ipv6Net = "fd89:1::/120".parse().unwrap();
        assert_eq!(small.pod_offsets(), (2, 255));
        assert!("fd89:1::1/64".parse::<Ipv6Net>().is_err());
    }
}
