//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, v1 text and
//! v2 binary) that a load balancer writes before anything else on a
//! connection, TLS included, with `app.proxy_protocol: true`.
//!
//! Parsing is the `ppp` crate's: it tells an unfinished header from a bad
//! one, which is what a non-blocking reader needs (the session peeks at
//! what has arrived, calls [`parse`], and consumes exactly the header's
//! bytes once it is whole, so what follows, a TLS ClientHello or an HTTP
//! request, stays in the socket for the transport). Here: the bounds (v1
//! at most 107 bytes as the spec says, v2 at most [`MAX_HEADER`] bytes by
//! its length field, refused as soon as that field is read) and which
//! address counts. Pure.

use std::net::{IpAddr, SocketAddr};

use ppp::v1;
use ppp::v2;
use ppp::PartialResult;

/// Longest header accepted (v2 with its TLVs; v1 is at most 107 bytes).
/// Balancers send tens of bytes of TLVs (AWS's VPC endpoint id, Azure's
/// link id); a length field beyond this is refused before it is read.
pub const MAX_HEADER: usize = 4096;

/// Longest v1 line, CRLF included (the spec's bound).
const V1_MAX: usize = 107;

/// What the bytes at the start of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Could still become a header: wait for more bytes.
    Incomplete,
    /// A whole header of `len` bytes. `source`: the client it names;
    /// `None` for v2 `LOCAL` (the balancer's own health check), v1
    /// `UNKNOWN` and non-IP families, where the connection's own peer
    /// address is the one to use.
    Header {
        /// Bytes to consume.
        len: usize,
        /// The client's address and port, when the header gives one.
        source: Option<SocketAddr>,
    },
    /// Not a PROXY header, or a broken one: close without a response.
    Invalid(&'static str),
}

/// Parses the header at the start of `buf` (the bytes peeked so far).
pub fn parse(buf: &[u8]) -> Parsed {
    let signature = v2::PROTOCOL_PREFIX;
    let prefix = buf.len().min(signature.len());
    if buf[..prefix] == signature[..prefix] && !buf.is_empty() {
        return parse_v2(buf);
    }
    parse_v1(buf)
}

/// v1 is one line of at most [`V1_MAX`] bytes. `ppp` takes a line cut
/// right after a space for a bad one (`... 4660 ` has an empty port), so
/// it only ever sees a whole line (up to its CRLF, or to the first CR or LF
/// of a broken one); until then only the signature and the bound are
/// checked.
fn parse_v1(buf: &[u8]) -> Parsed {
    const SIGNATURE: &[u8] = b"PROXY ";
    let start = buf.len().min(SIGNATURE.len());
    if buf[..start] != SIGNATURE[..start] {
        return Parsed::Invalid("no PROXY header (bad signature)");
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Parsed::Invalid("PROXY v1 header over 107 bytes");
        }
        return Parsed::Incomplete;
    };
    // The line ends at CRLF; a CR with nothing after it yet may still be one.
    let line_end = if window[end] == b'\r' {
        end + 2
    } else {
        end + 1
    };
    if line_end > buf.len() {
        return Parsed::Incomplete;
    }
    if line_end > V1_MAX {
        return Parsed::Invalid("PROXY v1 header over 107 bytes");
    }
    let header = v1::Header::try_from(&buf[..line_end]);
    if header.is_incomplete() {
        // A whole line that still reads as unfinished is a broken one.
        return Parsed::Invalid("malformed PROXY v1 header");
    }
    match header {
        Ok(header) => {
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                v1::Addresses::Unknown => None,
            };
            Parsed::Header {
                len: header.header.len(),
                source: source.map(canonical),
            }
        }
        Err(v1::BinaryParseError::Parse(v1::ParseError::InvalidPrefix)) => {
            Parsed::Invalid("no PROXY header (bad signature)")
        }
        Err(v1::BinaryParseError::Parse(v1::ParseError::HeaderTooLong)) => {
            Parsed::Invalid("PROXY v1 header over 107 bytes")
        }
        Err(_) => Parsed::Invalid("malformed PROXY v1 header"),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    // Bytes 14 and 15 hold the length of what follows the 16-byte start.
    if let (Some(&high), Some(&low)) = (buf.get(14), buf.get(15)) {
        if 16 + usize::from(u16::from_be_bytes([high, low])) > MAX_HEADER {
            return Parsed::Invalid("PROXY v2 header over its size bound");
        }
    }
    let header = v2::Header::try_from(buf);
    if header.is_incomplete() {
        return Parsed::Incomplete;
    }
    let Ok(header) = header else {
        return Parsed::Invalid("malformed PROXY v2 header");
    };
    let source = match (header.command, header.addresses) {
        (v2::Command::Local, _) => None,
        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        (v2::Command::Proxy, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => None,
    };
    Parsed::Header {
        len: header.len(),
        source: source.map(canonical),
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut out = v2::PROTOCOL_PREFIX.to_vec();
        out.push(0x20 | command);
        out.push(family);
        let len = (addresses.len() + tlvs.len()) as u16;
        out.extend(len.to_be_bytes());
        out.extend(addresses);
        out.extend(tlvs);
        out
    }

    fn v4_addresses() -> Vec<u8> {
        [[203, 0, 113, 7], [10, 0, 0, 1]]
            .concat()
            .into_iter()
            .chain([0x12, 0x34, 0x01, 0xbb])
            .collect()
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 4660 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line),
            Parsed::Header {
                len: 42,
                source: Some("203.0.113.7:4660".parse().unwrap())
            }
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 4660 443\r\n";
        assert_eq!(
            parse(line),
            Parsed::Header {
                len: line.len(),
                source: Some("[2001:db8::7]:4660".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n\x16\x03\x01"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn v1_every_prefix_is_incomplete() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 4660 443\r\n";
        for end in 0..line.len() {
            assert_eq!(parse(&line[..end]), Parsed::Incomplete, "{end}");
        }
    }

    #[test]
    fn v1_bounds_and_garbage() {
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 100]].concat();
        assert_eq!(
            parse(&long),
            Parsed::Invalid("PROXY v1 header over 107 bytes")
        );
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse(b"G"), Parsed::Invalid(_)));
        // A TLS ClientHello where the header should be.
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00\x01"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 999.2.3.4 5.6.7.8 1 2\r\n"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"),
            Parsed::Invalid(_)
        ));
    }

    #[test]
    fn v2_proxy_local_and_tlvs() {
        let header = v2(1, 0x11, &v4_addresses(), &[0x04, 0x00, 0x02, b'i', b'd']);
        let mut input = header.clone();
        input.extend(b"\x16\x03\x01");
        assert_eq!(
            parse(&input),
            Parsed::Header {
                len: header.len(),
                source: Some("203.0.113.7:4660".parse().unwrap())
            }
        );
        let local = v2(0, 0x00, &[], &[]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
        let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8];
        v6.extend([0; 11]);
        v6.push(7);
        v6.extend([0; 16]);
        v6.extend([0x12, 0x34, 0x01, 0xbb]);
        let header = v2(1, 0x21, &v6, &[]);
        assert_eq!(
            parse(&header),
            Parsed::Header {
                len: header.len(),
                source: Some("[2001:db8::7]:4660".parse().unwrap())
            }
        );
    }

    #[test]
    fn v2_every_prefix_is_incomplete() {
        let header = v2(1, 0x11, &v4_addresses(), &[]);
        for end in 0..header.len() {
            assert_eq!(parse(&header[..end]), Parsed::Incomplete, "{end}");
        }
    }

    #[test]
    fn v2_bounds_and_garbage() {
        let mut huge = v2(1, 0x11, &v4_addresses(), &[]);
        huge[14..16].copy_from_slice(&4081u16.to_be_bytes());
        assert_eq!(
            parse(&huge[..16]),
            Parsed::Invalid("PROXY v2 header over its size bound")
        );
        let mut fits = v2(1, 0x11, &v4_addresses(), &[]);
        fits[14..16].copy_from_slice(&4080u16.to_be_bytes());
        assert_eq!(parse(&fits), Parsed::Incomplete);
        let mut version = v2(1, 0x11, &v4_addresses(), &[]);
        version[12] = 0x31;
        assert!(matches!(parse(&version), Parsed::Invalid(_)));
        // Too short for its address family.
        let short = v2(1, 0x11, &[1, 2, 3], &[]);
        assert!(matches!(parse(&short), Parsed::Invalid(_)));
        let mut signature = v2(1, 0x11, &v4_addresses(), &[]);
        signature[5] = b'X';
        assert!(matches!(parse(&signature), Parsed::Invalid(_)));
    }
}
