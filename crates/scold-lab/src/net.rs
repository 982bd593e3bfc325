//! IPv4 prefixes of the testbed and the address plan's outer bound.
//!
//! Every address the lab uses lies inside [`LAB_RANGE`], 198.18.0.0/15 (RFC 2544, set
//! aside for benchmarking network devices): no real host has it, and it only ever exists
//! inside the lab's own network namespaces.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::LabError;

/// The outer bound of every testbed address (RFC 2544 benchmarking range).
pub const LAB_RANGE: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(198, 18, 0, 0),
    len: 15,
};

/// An IPv4 address with a prefix length, as written `198.18.1.2/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// An address with a prefix length; `len` above 32 is refused.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, LabError> {
        if len > 32 {
            return Err(LabError::BadPrefix {
                input: format!("{addr}/{len}"),
                reason: "prefix length above 32",
            });
        }
        Ok(Ipv4Net { addr, len })
    }

    /// The address as given (may have host bits set, as an interface address does).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len)
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// This prefix with host bits cleared, as a route destination is written.
    pub fn trunc(&self) -> Ipv4Net {
        Ipv4Net {
            addr: self.network(),
            len: self.len,
        }
    }

    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Whether every address of `other` lies inside this prefix.
    pub fn covers(&self, other: &Ipv4Net) -> bool {
        other.len >= self.len && self.contains(other.network())
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Net {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, LabError> {
        let bad = |reason| LabError::BadPrefix {
            input: s.to_string(),
            reason,
        };
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: Ipv4Addr = a.trim().parse().map_err(|_| bad("not an IPv4 address"))?;
        let len = match l {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .map_err(|_| bad("prefix length is not a number"))?,
            None => 32,
        };
        Ipv4Net::new(addr, len).map_err(|_| bad("prefix length above 32"))
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = LabError;
    fn try_from(s: String) -> Result<Self, LabError> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(n: Ipv4Net) -> String {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_contains() {
        let n: Ipv4Net = "198.18.5.2/24".parse().unwrap();
        assert_eq!(n.network(), Ipv4Addr::new(198, 18, 5, 0));
        assert!(n.contains(Ipv4Addr::new(198, 18, 5, 200)));
        assert!(!n.contains(Ipv4Addr::new(198, 18, 6, 1)));
        assert_eq!(n.trunc().to_string(), "198.18.5.0/24");
        assert!(LAB_RANGE.contains(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!LAB_RANGE.contains(Ipv4Addr::new(198, 20, 0, 0)));
        assert!(!LAB_RANGE.contains(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(LAB_RANGE.covers(&n));
        assert!(!n.covers(&LAB_RANGE));
        let host: Ipv4Net = "198.18.0.1".parse().unwrap();
        assert_eq!(host.prefix_len(), 32);
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "1.2.3.4/x",
            "a.b.c.d/8",
            "1.2.3.4/-1",
            "300.1.1.1/8",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad} accepted");
        }
    }
}
