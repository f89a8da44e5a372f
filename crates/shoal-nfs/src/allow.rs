//! Which clients may talk to the NFS server (`NFS_ALLOW`).
//!
//! NFS has no authentication worth the name (AUTH_UNIX is a claim), so the client's address is the
//! access control, as in `/etc/exports`. The gate in `lib.rs` checks it on every connection.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// One allowed IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Network {
    fn mask(self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p)),
        }
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// At most this many networks (a list longer than this is a mistake, not a policy).
pub const MAX_NETWORKS: usize = 64;

/// Whether a client at `ip` may connect (IPv4, or IPv4 mapped into IPv6).
pub fn allows(networks: &[Network], ip: IpAddr) -> bool {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return false,
        },
    };
    networks.iter().any(|n| n.contains(v4))
}

/// Loopback and the private ranges: a cluster's own networks, never the world.
pub fn private_networks() -> Vec<Network> {
    [
        ([127, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([172, 16, 0, 0], 12),
        ([192, 168, 0, 0], 16),
        // Carrier-grade NAT space, used by overlay networks (Tailscale, some CNIs).
        ([100, 64, 0, 0], 10),
    ]
    .into_iter()
    .map(|(a, prefix)| Network {
        addr: Ipv4Addr::from(a),
        prefix,
    })
    .collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{0:?} is not an IPv4 network (write it as 10.0.0.0/8, 192.168.1.7 or `any`)")]
    Invalid(String),
    #[error("NFS_ALLOW lists no network; to refuse every client, turn NFS off with NFS=0")]
    Empty,
    #[error("NFS_ALLOW lists more than {MAX_NETWORKS} networks")]
    TooMany,
}

/// Parses `NFS_ALLOW`: networks separated by commas or spaces (`10.0.0.0/8, 192.168.1.7`);
/// `private` stands for [`private_networks`], `any` for the whole IPv4 space.
pub fn parse(text: &str) -> Result<Vec<Network>, ParseError> {
    let mut out = Vec::new();
    for word in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        match word {
            "private" => out.extend(private_networks()),
            "any" | "all" | "*" => out.push(Network {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix: 0,
            }),
            _ => {
                let (ip, prefix) = word.split_once('/').unwrap_or((word, "32"));
                let addr: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| ParseError::Invalid(word.to_owned()))?;
                let prefix: u8 = prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| ParseError::Invalid(word.to_owned()))?;
                out.push(Network { addr, prefix });
            }
        }
    }
    if out.is_empty() {
        return Err(ParseError::Empty);
    }
    if out.len() > MAX_NETWORKS {
        return Err(ParseError::TooMany);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]
mod tests {
    use super::*;

    #[test]
    fn parses_networks_and_keywords() {
        let nets = parse("10.0.0.0/8, 192.168.1.7 private").unwrap();
        assert_eq!(nets[0].to_string(), "10.0.0.0/8");
        assert_eq!(nets[1].to_string(), "192.168.1.7/32");
        assert_eq!(nets.len(), 2 + private_networks().len());
        assert_eq!(parse("any").unwrap()[0].prefix, 0);
        for bad in ["10.0.0.0/33", "example.com", "10.0.0/8", "::1"] {
            assert!(matches!(parse(bad), Err(ParseError::Invalid(_))), "{bad}");
        }
        assert_eq!(parse(" , "), Err(ParseError::Empty));
    }

    #[test]
    fn contains_respects_the_prefix() {
        let net = parse("172.16.0.0/12").unwrap()[0];
        assert!(net.contains("172.31.255.1".parse().unwrap()));
        assert!(!net.contains("172.32.0.1".parse().unwrap()));
        assert!(parse("any").unwrap()[0].contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn allows_checks_every_network_and_mapped_addresses() {
        let nets = parse("127.0.0.2/32, 10.0.0.0/8").unwrap();
        assert!(allows(&nets, "127.0.0.2".parse().unwrap()));
        assert!(allows(&nets, "10.9.8.7".parse().unwrap()));
        assert!(allows(&nets, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(!allows(&nets, "127.0.0.3".parse().unwrap()));
        assert!(!allows(&nets, "::1".parse().unwrap()));
    }
}
