//! Which node addresses a federation accepts. A node address is where the proxies (and the
//! leader's health checker) connect, so an address a caller chooses must not point them
//! at the machine they run on (loopback), at link-local services such as the cloud
//! metadata endpoint (169.254.169.254), or at addresses that are not a single host
//! (unspecified, multicast, broadcast). Those are refused unless one of the federation's
//! `allowed_networks` contains the address: development setups list `127.0.0.0/8`.
//! When the federation lists networks, every address must be in one of them.
//!
//! Host names cannot be checked without resolving them, and what a name resolves to at
//! validation says nothing about what it resolves to when a proxy connects. So a
//! federation that lists networks accepts IP addresses only; one that lists none accepts
//! names, except `localhost` and `*.localhost`, which always mean loopback (RFC 6761).
//!
//! IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are checked as the IPv4 address they
//! carry. CIDRs are parsed here with `std::net` (no dependency for twenty lines).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use meridian_shared::domain::Federation;

use super::{Invalid, invalid};

/// A network: an address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` (already canonical) is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> u32 {
    u32::from(ip)
        .checked_shr(32 - u32::from(prefix))
        .map_or(0, |high| high << (32 - u32::from(prefix)))
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> u128 {
    u128::from(ip)
        .checked_shr(128 - u32::from(prefix))
        .map_or(0, |high| high << (128 - u32::from(prefix)))
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| format!("{text:?} is not a CIDR such as 10.0.0.0/8 or fd00::/8: {why}");
        let (address, prefix) = text.split_once('/').ok_or_else(|| bad("missing /prefix"))?;
        let network: IpAddr = address.parse().map_err(|_| bad("invalid address"))?;
        let widest = if network.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= widest)
            .ok_or_else(|| bad(&format!("the prefix must be 0 to {widest}")))?;
        let host_bits_zero = match network {
            IpAddr::V4(v4) => mask_v4(v4, prefix) == u32::from(v4),
            IpAddr::V6(v6) => mask_v6(v6, prefix) == u128::from(v6),
        };
        if !host_bits_zero {
            return Err(bad("bits are set after the prefix"));
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// What makes an address unfit for a node unless explicitly allowed; `None` for an
/// ordinary unicast address.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("loopback"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("unspecified"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("multicast"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("loopback"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("unspecified"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("multicast"),
        _ => None,
    }
}

/// The host part of a well-formed `host:port` (brackets of an IPv6 address removed).
fn host(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Checks a well-formed node address against `federation`'s allowed networks.
pub fn check_node_address(
    field: &str,
    address: &str,
    federation: &Federation,
) -> Result<(), Invalid> {
    // Validated when the federation was written; an unreadable entry allows nothing.
    let allowed: Vec<Cidr> = federation
        .allowed_networks
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    let host = host(address);
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical(),
        Err(_) if is_localhost(host) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Err(_) if allowed.is_empty() => return Ok(()),
        Err(_) => {
            return Err(invalid(
                field,
                format!(
                    "{address:?} names a host; federation {:?} lists allowed_networks, and a \
                     host name cannot be checked against them: use an IP address",
                    federation.name
                ),
            ));
        }
    };
    if allowed.iter().any(|n| n.contains(ip)) {
        return Ok(());
    }
    if let Some(kind) = special(ip) {
        return Err(invalid(
            field,
            format!(
                "{address:?} is a {kind} address; refused unless federation {:?} lists a \
                 network containing it in allowed_networks (e.g. 127.0.0.0/8 for development)",
                federation.name
            ),
        ));
    }
    if !allowed.is_empty() {
        return Err(invalid(
            field,
            format!(
                "{address:?} is outside federation {:?}'s allowed_networks ({})",
                federation.name,
                federation.allowed_networks.join(", ")
            ),
        ));
    }
    Ok(())
}

fn is_localhost(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}
