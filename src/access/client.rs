//! The client's address: the TCP peer, or, when the peer is a trusted proxy, the address the
//! proxy says it forwarded for, in the one header the proxies are configured to write
//! (`X-Forwarded-For` by default, or RFC 7239 `Forwarded`): a proxy that sets one passes the
//! other through as the client sent it, so only the configured one is read. Headers from any
//! other peer are ignored: anyone can write them.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

pub struct Proxies {
    nets: Vec<IpNet>,
    /// Read `Forwarded` instead of `X-Forwarded-For`.
    forwarded: bool,
}

/// The address of a client a trusted proxy named in a way we cannot read (`for=_hidden`,
/// `unknown`): it is no address an allowlist or the loopback rule can let in.
const UNREADABLE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

impl Proxies {
    pub fn new(nets: Vec<IpNet>, forwarded: bool) -> Self {
        Proxies { nets, forwarded }
    }

    fn trusted(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.nets.iter().any(|net| net.contains(&addr))
    }

    /// The client behind `peer`. Each trusted proxy appends the address it received from, so
    /// the list is read from the right, past every trusted proxy, to the first address that is
    /// not one: the nearest hop nobody trusted could forge. An entry that cannot be read on the
    /// way stops there, as an address nothing lets in.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted(peer) {
            return peer.to_canonical();
        }
        let forwarded: Vec<Option<IpAddr>> = if self.forwarded {
            headers.get_all("forwarded").iter().filter_map(|v| v.to_str().ok()).flat_map(forwarded_for).collect()
        } else {
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|a| parse_addr(a.trim()))
                .collect()
        };
        let mut client = peer;
        for addr in forwarded.into_iter().rev() {
            let Some(addr) = addr else { return UNREADABLE };
            client = addr;
            if !self.trusted(addr) {
                break;
            }
        }
        client.to_canonical()
    }
}

/// The `for=` addresses of a `Forwarded` header value, in order (`None` for one that names no
/// address we can read).
fn forwarded_for(value: &str) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    value.split(',').map(|element| {
        element.split(';').find_map(|pair| {
            let (key, v) = pair.split_once('=')?;
            key.trim().eq_ignore_ascii_case("for").then(|| parse_addr(v.trim().trim_matches('"'))).flatten()
        })
    })
}

/// `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:443`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(addr) = s.parse() {
        return Some(addr);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_from_a_trusted_proxy() {
        let nets = vec!["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let proxies = Proxies::new(nets.clone(), false);
        let xff = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.2, 10.1.1.1")]);
        // Right to left past the trusted proxies: 198.51.100.2 (203.0.113.9 could be forged by it).
        assert_eq!(proxies.client(ip("127.0.0.1"), &xff), ip("198.51.100.2"));
        assert_eq!(proxies.client(ip("192.0.2.5"), &xff), ip("192.0.2.5"), "an untrusted peer's header is ignored");
        assert_eq!(proxies.client(ip("::ffff:127.0.0.1"), &xff), ip("198.51.100.2"), "IPv4-mapped peer");
        assert_eq!(proxies.client(ip("127.0.0.1"), &headers(&[])), ip("127.0.0.1"), "no header: the proxy itself");
        let all_trusted = headers(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(proxies.client(ip("127.0.0.1"), &all_trusted), ip("10.0.0.1"));
        // What cannot be read is no address: never the proxy's own (loopback) one.
        let garbage = headers(&[("x-forwarded-for", "unknown, nonsense")]);
        assert_eq!(proxies.client(ip("127.0.0.1"), &garbage), UNREADABLE);
        let fwd = headers(&[
            ("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43, for=\"[2001:db8:cafe::17]:4711\""),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        // A proxy that writes X-Forwarded-For passes a client's own Forwarded through: not read.
        assert_eq!(proxies.client(ip("127.0.0.1"), &fwd), ip("1.2.3.4"));
        let spoofed = headers(&[("forwarded", "for=127.0.0.1"), ("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(proxies.client(ip("127.0.0.1"), &spoofed), ip("203.0.113.9"));
        let rfc = Proxies::new(nets, true);
        assert_eq!(rfc.client(ip("127.0.0.1"), &fwd), ip("2001:db8:cafe::17"), "Forwarded when configured, IPv6 with a port");
        let hidden = headers(&[("forwarded", "for=127.0.0.1, for=_hidden")]);
        assert_eq!(rfc.client(ip("127.0.0.1"), &hidden), UNREADABLE, "an obfuscated hop is not skipped");
        let two_headers = headers(&[("x-forwarded-for", "198.51.100.7"), ("x-forwarded-for", "10.2.2.2")]);
        assert_eq!(proxies.client(ip("127.0.0.1"), &two_headers), ip("198.51.100.7"), "repeated headers are one list");
    }
}
