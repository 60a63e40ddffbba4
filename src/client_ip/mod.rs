//! The client's address behind proxies (docs/proxies.md): which
//! peers are trusted (`app.trusted_proxies`), which header they speak
//! (`app.client_ip_header`), the PROXY protocol header
//! (`app.proxy_protocol`, in [`proxy`]) and the per-address connection
//! count (`websocket.max_connections_per_ip`, in [`limit`]).
//!
//! Trust nothing by default: the client is the TCP peer (or what a PROXY
//! header from a trusted peer says), and a forwarding header is read only
//! when that peer is inside `trusted_proxies`. Then the header's hops are
//! walked right to left, trusted hops skipped, and the first untrusted one
//! is the client; a hop that is not an address stops the walk at the proxy
//! that reported it. Pure: no sockets, no clock; the event loop's
//! `event_loop/clients.rs` applies it to connections.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

mod headers;
pub mod limit;
pub mod proxy;

pub use headers::{walk_forwarded, walk_x_forwarded_for, walk_x_real_ip};
pub use limit::PerIp;

use crate::http::Request;

/// What the event loop keeps for client addresses: the policy read from
/// the config and the one per-address count ([`PerIp`]).
#[derive(Debug)]
pub struct Clients {
    /// `app.trusted_proxies`.
    pub trusted: Trusted,
    /// `app.client_ip_header`.
    pub header: ClientIpHeader,
    /// `app.proxy_protocol`.
    pub proxy_protocol: bool,
    /// `websocket.max_connections_per_ip`'s counts.
    pub per_ip: PerIp,
}

impl Clients {
    /// The policy of `app.trusted_proxies`, `app.client_ip_header` and
    /// `app.proxy_protocol`, with at most `max_per_ip` connections per
    /// address (`websocket.max_connections_per_ip`) and none counted yet.
    pub fn new(
        trusted: Trusted,
        header: ClientIpHeader,
        proxy_protocol: bool,
        max_per_ip: usize,
    ) -> Clients {
        Clients {
            trusted,
            header,
            proxy_protocol,
            per_ip: PerIp::new(max_per_ip),
        }
    }

    /// Whether requests from `peer` carry the client in a header, so the
    /// client is known only once a head is parsed.
    pub fn reads_headers_from(&self, peer: IpAddr) -> bool {
        !self.trusted.is_empty() && self.trusted.contains(peer)
    }

    /// The client behind `peer` for this request.
    pub fn client_of(&self, peer: IpAddr, request: &Request) -> IpAddr {
        let value = request
            .forwarding
            .as_deref()
            .and_then(|f| match self.header {
                ClientIpHeader::XForwardedFor => f.x_forwarded_for.as_deref(),
                ClientIpHeader::Forwarded => f.forwarded.as_deref(),
                ClientIpHeader::XRealIp => f.x_real_ip.as_deref(),
            });
        client_address(peer, &self.trusted, self.header, value)
    }
}

/// The CIDR blocks whose forwarding headers and PROXY headers are believed
/// (`app.trusted_proxies`); empty: none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trusted {
    nets: Vec<IpNet>,
}

impl Trusted {
    /// Parses CIDR blocks (`"10.0.0.0/8"`, `"::1/128"`) or single addresses
    /// (`"192.0.2.7"`, as `/32` or `/128`); the error names the bad entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Trusted, String> {
        let nets = entries
            .iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("{entry:?} is not a CIDR block or an IP address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trusted { nets })
    }

    /// No proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 form)
    /// is inside one of the blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

impl fmt::Display for Trusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// The forwarding header a trusted proxy sets (`app.client_ip_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, most balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
    /// `X-Real-IP: client`: one address, set by the last proxy.
    XRealIp,
}

impl ClientIpHeader {
    /// The header's name as the config spells it (lower case).
    pub fn name(self) -> &'static str {
        match self {
            ClientIpHeader::XForwardedFor => "x-forwarded-for",
            ClientIpHeader::Forwarded => "forwarded",
            ClientIpHeader::XRealIp => "x-real-ip",
        }
    }

    /// The header for a config value (any case).
    pub fn from_name(name: &str) -> Option<ClientIpHeader> {
        [
            ClientIpHeader::XForwardedFor,
            ClientIpHeader::Forwarded,
            ClientIpHeader::XRealIp,
        ]
        .into_iter()
        .find(|h| h.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// The client behind `peer`: `peer` itself unless it is trusted, else the
/// walk of `value` (every line of the configured header, joined by commas
/// in order; `None` when absent) from `peer` leftwards.
pub fn client_address(
    peer: IpAddr,
    trusted: &Trusted,
    header: ClientIpHeader,
    value: Option<&[u8]>,
) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let Some(value) = value else {
        return peer;
    };
    match header {
        ClientIpHeader::XForwardedFor => walk_x_forwarded_for(peer, trusted, value),
        ClientIpHeader::Forwarded => walk_forwarded(peer, trusted, value),
        ClientIpHeader::XRealIp => walk_x_real_ip(peer, trusted, value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trusted_blocks_v4_v6_single_addresses_and_mapped_peers() {
        let t = Trusted::parse(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7", " ::1 "]).unwrap();
        assert!(t.contains(ip("10.200.0.1")));
        assert!(
            t.contains(ip("::ffff:10.1.2.3")),
            "a dual-stack socket's v4 peer"
        );
        assert!(t.contains(ip("2001:db8:ffff::1")));
        assert!(t.contains(ip("192.0.2.7")));
        assert!(t.contains(ip("::1")));
        assert!(!t.contains(ip("192.0.2.8")));
        assert!(!t.contains(ip("11.0.0.1")));
        // A block written with host bits set means the block.
        assert!(Trusted::parse(&["10.1.2.3/8"])
            .unwrap()
            .contains(ip("10.9.9.9")));
        assert_eq!(
            t.to_string(),
            "10.0.0.0/8, 2001:db8::/32, 192.0.2.7/32, ::1/128"
        );
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "10.0.0.0/33",
            "localhost",
            "",
            "10.0.0.0/8/8",
            "fe80::1%eth0",
        ] {
            let e = Trusted::parse(&[bad]).unwrap_err();
            assert!(e.contains(&format!("{:?}", bad.trim())), "{e}");
        }
    }

    #[test]
    fn nothing_is_trusted_by_default() {
        let xff = Some(&b"1.2.3.4"[..]);
        let t = Trusted::default();
        let h = ClientIpHeader::default();
        assert_eq!(client_address(ip("127.0.0.1"), &t, h, xff), ip("127.0.0.1"));
    }

    #[test]
    fn untrusted_peer_header_ignored_trusted_peer_header_read() {
        let t = Trusted::parse(&["127.0.0.2"]).unwrap();
        let h = ClientIpHeader::XForwardedFor;
        let xff = Some(&b"1.2.3.4"[..]);
        assert_eq!(client_address(ip("127.0.0.3"), &t, h, xff), ip("127.0.0.3"));
        assert_eq!(client_address(ip("127.0.0.2"), &t, h, xff), ip("1.2.3.4"));
        assert_eq!(
            client_address(ip("127.0.0.2"), &t, h, None),
            ip("127.0.0.2")
        );
        assert_eq!(
            client_address(ip("::ffff:127.0.0.2"), &t, h, xff),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn header_names() {
        assert_eq!(
            ClientIpHeader::from_name("X-Real-IP"),
            Some(ClientIpHeader::XRealIp)
        );
        assert_eq!(
            ClientIpHeader::from_name("forwarded"),
            Some(ClientIpHeader::Forwarded)
        );
        assert_eq!(ClientIpHeader::from_name("x-client-ip"), None);
    }
}
