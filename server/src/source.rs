//! Where a request comes from: the TCP peer, or — when the peer is a proxy
//! the operator trusts — the client that proxy names in `X-Forwarded-For`.
//! The source is telemetry (rate limits, audit), never identity.

use std::net::IpAddr;

/// Networks of the proxies allowed to name the client (`ONEPROTECT_TRUSTED_PROXIES`,
/// comma-separated addresses or CIDR blocks). Empty: no proxy is trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, prefix) = match item.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (item, None),
            };
            let ip: IpAddr =
                addr.parse().map_err(|_| format!("`{item}` is not an IP address or CIDR block"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("`{item}`: the prefix must be 0 to {max}"))?,
                None => max,
            };
            nets.push((ip, prefix));
        }
        Ok(Self(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|(net, prefix)| match (canonical(*net), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u128::from(u32::from(n)), *prefix, 32) == masked(u128::from(u32::from(a)), *prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), *prefix, 128) == masked(u128::from(a), *prefix, 128)
            }
            _ => false,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = u32::from(width - prefix);
    (bits >> shift) << shift
}

/// The most `X-Forwarded-For` entries read (a longer header is judged by its last ones).
const MAX_HOPS: usize = 16;

/// The request's source: the peer, unless the peer is a trusted proxy; then
/// the right-most `X-Forwarded-For` entry that is not itself a trusted proxy
/// (entries to its left were written by the client and prove nothing). A
/// malformed entry ends the walk at the last address known.
pub fn source_address(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &TrustedProxies,
) -> Option<IpAddr> {
    let peer = peer.map(canonical)?;
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let mut source = peer;
    for hop in forwarded_for.unwrap_or_default().rsplit(',').take(MAX_HOPS) {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
        source = canonical(ip);
        if !trusted.contains(source) {
            break;
        }
    }
    Some(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("fixture address")
    }

    #[test]
    fn an_untrusted_peer_is_the_source_whatever_it_forwards() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").expect("parses");
        assert_eq!(
            source_address(Some(ip("198.51.100.7")), Some("203.0.113.1"), &trusted),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            source_address(Some(ip("198.51.100.7")), None, &TrustedProxies::default()),
            Some(ip("198.51.100.7"))
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_right_most_untrusted_hop() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.0.2.10").expect("parses");
        // The client may prepend anything; only what the proxies appended counts.
        let header = "1.2.3.4, 203.0.113.9, 10.1.2.3";
        assert_eq!(source_address(Some(ip("192.0.2.10")), Some(header), &trusted), Some(ip("203.0.113.9")));
        assert_eq!(
            source_address(Some(ip("10.0.0.1")), None, &trusted),
            Some(ip("10.0.0.1")),
            "no header: the proxy itself"
        );
        assert_eq!(
            source_address(Some(ip("10.0.0.1")), Some("203.0.113.9, garbage"), &trusted),
            Some(ip("10.0.0.1")),
            "a malformed hop ends the walk"
        );
        assert_eq!(
            source_address(Some(ip("::ffff:10.0.0.1")), Some("203.0.113.9"), &trusted),
            Some(ip("203.0.113.9")),
            "IPv4-mapped peers match"
        );
    }

    #[test]
    fn cidr_blocks_match_by_prefix_and_bad_entries_are_refused() {
        let trusted = TrustedProxies::parse("10.0.0.0/8,2001:db8::/32,127.0.0.1").expect("parses");
        assert!(trusted.contains(ip("10.255.0.1")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(trusted.contains(ip("2001:db8:1::5")));
        assert!(!trusted.contains(ip("2001:db9::5")));
        assert!(trusted.contains(ip("127.0.0.1")) && !trusted.contains(ip("127.0.0.2")));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.internal").is_err());
        assert!(TrustedProxies::parse("").expect("empty").is_empty());
    }
}
