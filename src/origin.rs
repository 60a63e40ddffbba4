//! The Origin allow-list (`websocket.allowed_origins`): serialised origins
//! parsed and compared, and the check config loading makes of each entry.
//! Pure; a leaf, so the config's checks and the endpoints both reach it.
//!
//! Choices made here, where the contract leaves room:
//! - Origins compare as (scheme, host, port) tuples: scheme and host ASCII
//!   case-insensitively (RFC 6454 §4 lowercases both), and a missing port
//!   equals the scheme's default (`http`/`ws` 80, `https`/`wss` 443), so a
//!   listed `https://a.example:443` matches the header `https://a.example`.
//!   An entry that is not a serialised origin (say, with a path) never
//!   matches; [`entry_valid`] lets config loading reject it up front.
//! - `Origin: null` matches only a listed `"null"`, byte for byte.

/// Origin policy: an empty list allows everything; an absent `Origin` header
/// (a non-browser client) is allowed; otherwise the header must match a listed
/// origin as a (scheme, host, port) tuple; `null` only if `"null"` is listed.
pub(crate) fn allowed(list: &[String], origin_header: Option<&[u8]>) -> bool {
    if list.is_empty() {
        return true;
    }
    let Some(header) = origin_header else {
        return true;
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return false;
    };
    if header == "null" {
        return list.iter().any(|entry| entry == "null");
    }
    let Some(origin) = Origin::parse(header) else {
        return false;
    };
    list.iter()
        .any(|entry| Origin::parse(entry).is_some_and(|listed| listed == origin))
}

/// Whether `entry` can ever match in [`allowed`]: `"null"` or a
/// serialised origin `scheme://host[:port]` without path, query or userinfo.
pub(crate) fn entry_valid(entry: &str) -> bool {
    entry == "null" || Origin::parse(entry).is_some()
}

/// A parsed serialised origin (RFC 6454 §6.2), normalised for comparison.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.split_once("://")?;
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        let authority_ok = !authority.is_empty()
            && !authority
                .bytes()
                .any(|b| b"/?#@\\".contains(&b) || b <= b' ' || b == 0x7f);
        if !scheme_ok || !authority_ok {
            return None;
        }
        let (host, port) = split_host_port(authority)?;
        let scheme = scheme.to_ascii_lowercase();
        let port = port.or(match scheme.as_str() {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        });
        Some(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 literal.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let (host, rest) = authority.split_at(end);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || (host.contains(['[', ']']) && !host.starts_with('[')) {
        return None;
    }
    match port {
        None => Some((host, None)),
        // u16::from_str accepts a leading '+', which an origin never has.
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some((host, Some(p.parse().ok()?)))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn origin_policy() {
        let listed = list(&["https://app.example.com", "http://localhost:3000"]);
        let check = |h: &[u8]| allowed(&listed, Some(h));
        assert!(check(b"https://app.example.com"));
        assert!(check(b"HTTPS://App.Example.COM"));
        assert!(check(b"https://app.example.com:443"));
        assert!(check(b"http://localhost:3000"));
        assert!(!check(b"http://localhost:3001"));
        assert!(!check(b"http://localhost"));
        assert!(!check(b"http://app.example.com"));
        assert!(!check(b"https://evil.example.com"));
        assert!(!check(b"https://app.example.com.evil.net"));
        assert!(!check(b"https://app.example.com/path"));
        assert!(!check(b"https://user@app.example.com"));
        assert!(!check(b"null"));
        assert!(!check(b""));
        assert!(!check(b"\xff"));
        assert!(allowed(&listed, None));
        assert!(allowed(&[], Some(b"https://anything.example")));
        assert!(allowed(&[], Some(b"null")));
    }

    #[test]
    fn null_origin_only_when_listed() {
        let with_null = list(&["null"]);
        assert!(allowed(&with_null, Some(b"null")));
        assert!(!allowed(&with_null, Some(b"NULL")));
        assert!(!allowed(&with_null, Some(b"https://a.example")));
        assert!(!allowed(&list(&["https://a.example"]), Some(b"null")));
    }

    #[test]
    fn listed_default_port_and_ipv6() {
        let listed = list(&["https://a.example:443", "http://[::1]:8080", "custom://h"]);
        assert!(allowed(&listed, Some(b"https://a.example")));
        assert!(allowed(&listed, Some(b"http://[::1]:8080")));
        assert!(!allowed(&listed, Some(b"http://[::1]")));
        assert!(allowed(&listed, Some(b"custom://h")));
        assert!(!allowed(&listed, Some(b"custom://h:80")));
    }

    #[test]
    fn origin_entry_validation() {
        for ok in [
            "null",
            "https://a.example",
            "http://localhost:3000",
            "http://[::1]:1",
        ] {
            assert!(entry_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "a.example",
            "https://",
            "https://a.example/",
            "https://a:",
            "https://a:+1",
            "https://a:99999",
            "https://[::1",
            "https://a]b",
            "https://a b",
            "1http://a",
            "NULL",
        ] {
            assert!(!entry_valid(bad), "{bad}");
        }
    }
}
