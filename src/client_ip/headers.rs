//! The walks over forwarding headers: `X-Forwarded-For`, RFC 7239
//! `Forwarded` and `X-Real-IP`, each from a trusted `peer` leftwards.
//!
//! The contract reads right to left: skip trusted hops, the first untrusted
//! one is the client, a hop that is not an address (`unknown`, an
//! `_obfuscated` name, garbage, an empty entry, a zone id) stops the walk at
//! the proxy that reported it, and when every hop is trusted the leftmost
//! wins. The answer only depends on the rightmost hop that is untrusted or
//! not an address, so one pass left to right with three words of state
//! ([`Walk`]) gives the same answer without collecting the hops: no
//! allocation, however many there are (the head bound keeps them few).
//! `tests/fuzz.rs` checks this against a literal right-to-left walk.

use std::net::{IpAddr, Ipv6Addr};

use super::Trusted;

/// Longest hop looked at; longer cannot be an address with a port.
const MAX_HOP: usize = 64;

/// `X-Forwarded-For`: comma-separated addresses, optionally with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`); several header lines are one
/// list, joined in order by the caller.
pub fn walk_x_forwarded_for(peer: IpAddr, trusted: &Trusted, value: &[u8]) -> IpAddr {
    let mut walk = Walk::default();
    for hop in value.split(|&b| b == b',') {
        walk.hop(node(trim(hop), true), trusted);
    }
    walk.finish(peer)
}

/// RFC 7239 `Forwarded`: comma-separated elements of `;`-separated
/// `name=value` pairs; the hop is the `for=` value (quoted or not, `[v6]`
/// with an optional port). An element without exactly one `for=` is not an
/// address.
pub fn walk_forwarded(peer: IpAddr, trusted: &Trusted, value: &[u8]) -> IpAddr {
    let mut walk = Walk::default();
    for element in Unquoted::new(value, b',') {
        walk.hop(for_value(element), trusted);
    }
    walk.finish(peer)
}

/// `X-Real-IP`: exactly one address, as the last proxy saw it. Several
/// lines (joined with commas) or a list are not an address: the peer.
pub fn walk_x_real_ip(peer: IpAddr, trusted: &Trusted, value: &[u8]) -> IpAddr {
    let mut walk = Walk::default();
    walk.hop(node(trim(value), true), trusted);
    walk.finish(peer)
}

/// The right-to-left walk, computed left to right (see the module doc).
#[derive(Debug, Default)]
struct Walk {
    /// The first hop, when it is an address: the answer if all are trusted.
    leftmost: Option<IpAddr>,
    /// The answer decided by the rightmost hop seen so far that was
    /// untrusted or not an address, if any.
    decided: Decided,
    seen_any: bool,
}

#[derive(Debug, Default)]
enum Decided {
    /// Every hop so far was a trusted address.
    #[default]
    Nothing,
    /// The client, unless a later hop decides again.
    Client(IpAddr),
    /// A hop was not an address: the proxy right of it (the next hop, or
    /// the peer when none follows) reported it and is the answer.
    ProxyAfter,
}

impl Walk {
    fn hop(&mut self, hop: Option<IpAddr>, trusted: &Trusted) {
        if !self.seen_any {
            self.seen_any = true;
            self.leftmost = hop;
        }
        match hop {
            None => self.decided = Decided::ProxyAfter,
            Some(ip) if !trusted.contains(ip) => self.decided = Decided::Client(ip),
            Some(ip) => {
                if matches!(self.decided, Decided::ProxyAfter) {
                    self.decided = Decided::Client(ip);
                }
            }
        }
    }

    fn finish(self, peer: IpAddr) -> IpAddr {
        match self.decided {
            Decided::Client(ip) => ip,
            Decided::ProxyAfter => peer,
            Decided::Nothing => self.leftmost.unwrap_or(peer),
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(start), Some(end)) => &bytes[start..=end],
        _ => &[],
    }
}

/// One hop as an address: `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]`,
/// `[2001:db8::1]:80`, or (`bare_v6`) `2001:db8::1`. Anything else, a zone
/// id (`fe80::1%eth0`) included, is not an address: a zone only means
/// something on the host that wrote it.
fn node(hop: &[u8], bare_v6: bool) -> Option<IpAddr> {
    if hop.is_empty() || hop.len() > MAX_HOP {
        return None;
    }
    let text = std::str::from_utf8(hop).ok()?;
    if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || port(after)) {
            return None;
        }
        return v6
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        if ip.is_ipv6() && !bare_v6 {
            return None;
        }
        return Some(ip.to_canonical());
    }
    let (v4, digits) = text.split_once(':')?;
    if !port_digits(digits) {
        return None;
    }
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// `:` and a port.
fn port(s: &str) -> bool {
    s.strip_prefix(':').is_some_and(port_digits)
}

/// 1–5 digits (the value is not used, only its shape).
fn port_digits(d: &str) -> bool {
    (1..=5).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
}

/// The address in one `Forwarded` element's only `for=` pair.
fn for_value(element: &[u8]) -> Option<IpAddr> {
    let mut found = None;
    for pair in Unquoted::new(element, b';') {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (trim(&pair[..eq]), trim(&pair[eq + 1..]));
        if !name.eq_ignore_ascii_case(b"for") {
            continue;
        }
        if found.is_some() {
            return None;
        }
        found = Some(value);
    }
    let value = found?;
    let value = match value.strip_prefix(b"\"") {
        Some(quoted) => quoted.strip_suffix(b"\"")?,
        None => value,
    };
    // Escapes are legal in a quoted-string but never part of an address.
    if value.contains(&b'\\') || value.contains(&b'"') {
        return None;
    }
    // `unknown` and `_obfuscated` identifiers are names, not addresses.
    node(value, true)
}

/// Splits on `sep` outside double quotes (a backslash escapes the next
/// byte inside them), so `for="[::1]:80";ext="a,b"` stays one element.
struct Unquoted<'a> {
    rest: Option<&'a [u8]>,
    sep: u8,
}

impl<'a> Unquoted<'a> {
    fn new(bytes: &'a [u8], sep: u8) -> Unquoted<'a> {
        Unquoted {
            rest: Some(bytes),
            sep,
        }
    }
}

impl<'a> Iterator for Unquoted<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let bytes = self.rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &b) in bytes.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if b == self.sep && !quoted {
                self.rest = Some(&bytes[i + 1..]);
                return Some(&bytes[..i]);
            }
        }
        self.rest = None;
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> Trusted {
        Trusted::parse(&["10.0.0.0/8", "127.0.0.2", "2001:db8:ffff::/48"]).unwrap()
    }

    const PEER: &str = "127.0.0.2";

    fn xff(value: &str) -> IpAddr {
        walk_x_forwarded_for(ip(PEER), &trusted(), value.as_bytes())
    }

    fn fwd(value: &str) -> IpAddr {
        walk_forwarded(ip(PEER), &trusted(), value.as_bytes())
    }

    #[test]
    fn xff_right_to_left_skipping_trusted_hops() {
        assert_eq!(xff("1.2.3.4"), ip("1.2.3.4"));
        // A spoofed leftmost entry never wins past the real client.
        assert_eq!(xff("6.6.6.6, 1.2.3.4, 10.0.0.9"), ip("1.2.3.4"));
        assert_eq!(xff("6.6.6.6,1.2.3.4,10.0.0.9,10.0.0.8"), ip("1.2.3.4"));
        // All trusted: the leftmost.
        assert_eq!(xff("10.0.0.7, 10.0.0.9"), ip("10.0.0.7"));
        assert_eq!(xff("\t1.2.3.4 "), ip("1.2.3.4"));
    }

    #[test]
    fn xff_ports_brackets_and_v6() {
        assert_eq!(xff("1.2.3.4:4711"), ip("1.2.3.4"));
        assert_eq!(xff("[2001:db8::1]:4711"), ip("2001:db8::1"));
        assert_eq!(xff("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(xff("2001:db8::1"), ip("2001:db8::1"));
        assert_eq!(xff("::ffff:1.2.3.4"), ip("1.2.3.4"));
        assert_eq!(xff("1.2.3.4, 2001:db8:ffff::1"), ip("1.2.3.4"));
    }

    #[test]
    fn xff_garbage_stops_at_the_proxy_that_reported_it() {
        for bad in [
            "",
            " ",
            "garbage",
            "unknown",
            "1.2.3.4,",
            "1.2.3.4, ,",
            "1.2.3.4:99999999",
            "1.2.3.4:",
            "[2001:db8::1]x",
            "[2001:db8::1",
            "fe80::1%eth0",
            "[fe80::1%25eth0]:80",
            "256.1.1.1",
            "1.2.3.4 5.6.7.8",
        ] {
            assert_eq!(xff(bad), ip(PEER), "{bad:?}");
        }
        // Stopped at the trusted hop right of the garbage.
        assert_eq!(xff("1.2.3.4, junk, 10.0.0.9"), ip("10.0.0.9"));
        assert_eq!(xff("1.2.3.4, junk, 10.0.0.9, 10.0.0.8"), ip("10.0.0.9"));
        // Garbage left of the client is never reached.
        assert_eq!(xff("junk, 1.2.3.4, 10.0.0.9"), ip("1.2.3.4"));
        let long = format!("1.2.3.4, {}", "9".repeat(10_000));
        assert_eq!(xff(&long), ip(PEER));
        assert_eq!(xff(&"x".repeat(100)), ip(PEER));
    }

    #[test]
    fn xff_non_utf8_is_not_an_address() {
        let value = b"1.2.3.4, \xff\xfe";
        assert_eq!(walk_x_forwarded_for(ip(PEER), &trusted(), value), ip(PEER));
    }

    #[test]
    fn forwarded_rfc_7239_forms() {
        assert_eq!(
            fwd("for=192.0.2.60;proto=http;by=203.0.113.43"),
            ip("192.0.2.60")
        );
        assert_eq!(
            fwd("For=\"[2001:db8:cafe::17]:4711\""),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(fwd("for=\"[2001:db8:cafe::17]\""), ip("2001:db8:cafe::17"));
        assert_eq!(fwd("for=\"192.0.2.60:8080\""), ip("192.0.2.60"));
        assert_eq!(
            fwd("for=192.0.2.43, for=198.51.100.17;by=10.0.0.1, for=10.0.0.5"),
            ip("198.51.100.17")
        );
        assert_eq!(
            fwd("proto=https;for=192.0.2.43;host=\"a,b;c\""),
            ip("192.0.2.43")
        );
        assert_eq!(fwd("for=10.0.0.5, for=10.0.0.6"), ip("10.0.0.5"));
    }

    #[test]
    fn forwarded_unknown_obfuscated_and_garbage_stop_at_the_proxy() {
        for bad in [
            "for=unknown",
            "for=_hidden",
            "for=\"_SEVKISEK:4711\"",
            "for=\"unknown:4711\"",
            "proto=http",
            "for=1.2.3.4;for=5.6.7.8",
            "for=\"1.2.3.4",
            "for=\"[fe80::1%25eth0]\"",
            "for=\"1.2\\.3.4\"",
            "for=",
            "=1.2.3.4",
            "",
        ] {
            assert_eq!(fwd(bad), ip(PEER), "{bad:?}");
        }
        assert_eq!(
            fwd("for=1.2.3.4, for=unknown, for=10.0.0.9"),
            ip("10.0.0.9")
        );
        assert_eq!(fwd("for=_x, for=1.2.3.4"), ip("1.2.3.4"));
    }

    #[test]
    fn x_real_ip_is_one_address() {
        let t = trusted();
        let real = |v: &str| walk_x_real_ip(ip(PEER), &t, v.as_bytes());
        assert_eq!(real("1.2.3.4"), ip("1.2.3.4"));
        assert_eq!(real(" 2001:db8::1 "), ip("2001:db8::1"));
        assert_eq!(real("10.0.0.9"), ip("10.0.0.9"));
        assert_eq!(real("1.2.3.4, 5.6.7.8"), ip(PEER));
        assert_eq!(real("unknown"), ip(PEER));
        assert_eq!(real(""), ip(PEER));
    }
}
