//! permessage-deflate negotiation (RFC 7692 section 7.1): picks the first
//! offer in `Sec-WebSocket-Extensions` that the server can honour and writes
//! the response parameters.
//!
//! The server always answers `server_no_context_takeover` and compresses
//! with the full window: every message it sends is compressed from a fresh
//! context, so one compressed copy of a broadcast is valid for every
//! session, whatever it negotiated. It also always answers
//! `client_no_context_takeover` (RFC 7692 7.1.1.2 lets a server add it to any
//! offer), so it keeps no inflate history for any session. An offer that
//! limits the server's window (`server_max_window_bits` below 15; browsers
//! never send one) is accepted, but that session is sent every message
//! uncompressed (RFC 7692 section 6 lets a sender leave any message
//! uncompressed): a second window size would mean a second compression of
//! every broadcast. Declining it instead would leave such a client without
//! compressed uploads, and conformance suites count that as unimplemented.
//! Offers the server cannot honour are declined one by one (RFC 7692
//! section 5): unknown or repeated parameters, bad values, and
//! `server_max_window_bits=8` (zlib cannot write raw deflate with a 256-byte
//! window). When none is left the connection proceeds uncompressed.
//!
//! Pure: header text in, parameters out.

/// What one session agreed to, beyond what every session agrees to (no
/// context takeover either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Window (log2) the client compresses with: 8..=15. The inflater's
    /// full window reads any of them.
    pub client_window_bits: u8,
    /// The client limited the server's window below 15: it is sent every
    /// message uncompressed, so the one compressed copy of a message (full
    /// window) serves every other session.
    pub plain_output: bool,
}

/// The largest LZ77 window, and the default on both sides.
pub const MAX_WINDOW_BITS: u8 = 15;

/// An accepted offer: the parameters and the response header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// What the session uses.
    pub params: Params,
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub response: String,
}

/// The first offer in `header` (every `Sec-WebSocket-Extensions` value,
/// joined by commas) that the server accepts, or `None` to proceed
/// uncompressed.
pub fn negotiate(header: &str) -> Option<Agreement> {
    split_outside_quotes(header, ',')
        .into_iter()
        .find_map(accept)
}

/// Parameters of one `permessage-deflate` offer, or `None` to decline it.
fn accept(offer: &str) -> Option<Agreement> {
    let mut parts = split_outside_quotes(offer, ';').into_iter();
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("permessage-deflate")
    {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut server_bits = None;
    // `Some(None)`: offered without a value.
    let mut client_bits: Option<Option<u8>> = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param.trim(), None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) | ("client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => server_bits = Some(window_bits(v)?),
            ("client_max_window_bits", None) => client_bits = Some(None),
            ("client_max_window_bits", Some(v)) => client_bits = Some(Some(window_bits(v)?)),
            _ => return None,
        }
        seen.push(name);
    }
    // 8 stays declined as before: the agreement promises a window zlib can write.
    if server_bits.is_some_and(|bits| bits < 9) {
        return None;
    }
    let plain_output = server_bits.is_some_and(|bits| bits < MAX_WINDOW_BITS);
    let mut response =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = server_bits {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    // Offered with a value: confirm it. Without one, the client accepts any
    // limit; none is asked for, so it keeps the default window.
    let client_window_bits = match client_bits {
        Some(Some(bits)) => {
            response.push_str(&format!("; client_max_window_bits={bits}"));
            bits
        }
        _ => MAX_WINDOW_BITS,
    };
    Some(Agreement {
        params: Params {
            client_window_bits,
            plain_output,
        },
        response,
    })
}

/// A window size: a decimal 8..=15 without leading zeros (RFC 7692 7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (8..=MAX_WINDOW_BITS).contains(&bits).then_some(bits)
}

/// A token, or a quoted string holding a token (RFC 6455 9.1).
fn unquote(value: &str) -> Option<&str> {
    let inner = match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        None => value,
    };
    (!inner.is_empty() && !inner.contains(['"', '\\'])).then_some(inner)
}

/// Splits on `sep` except inside double quotes.
fn split_outside_quotes(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(header: &str) -> Option<(Params, String)> {
        negotiate(header).map(|a| (a.params, a.response))
    }

    const BOTH: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn a_browser_offer_gets_no_context_takeover_both_ways() {
        let (params, response) = agreed("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(response, BOTH);
        assert_eq!(
            params,
            Params {
                client_window_bits: 15,
                plain_output: false
            }
        );
        let (_, response) = agreed("permessage-deflate").unwrap();
        assert_eq!(response, BOTH, "asked for or not");
    }

    #[test]
    fn client_window_limits_are_honoured_and_a_full_server_window_confirmed() {
        let (params, response) = agreed(
            "permessage-deflate; client_no_context_takeover; client_max_window_bits=\"10\"; server_max_window_bits=15",
        )
        .unwrap();
        assert_eq!(
            response,
            format!("{BOTH}; server_max_window_bits=15; client_max_window_bits=10")
        );
        assert_eq!(
            params,
            Params {
                client_window_bits: 10,
                plain_output: false
            }
        );
    }

    #[test]
    fn a_limited_server_window_is_agreed_and_answered_with_plain_frames() {
        for bits in 9..=14 {
            let (params, response) = agreed(&format!(
                "permessage-deflate; server_max_window_bits={bits}"
            ))
            .unwrap();
            assert!(params.plain_output, "{bits}");
            assert_eq!(response, format!("{BOTH}; server_max_window_bits={bits}"));
        }
    }

    #[test]
    fn offers_that_cannot_be_honoured_are_declined_in_turn() {
        for bad in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery_param",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(agreed(bad), None, "{bad}");
        }
        // The next acceptable offer in the list is taken.
        let (params, response) = agreed(
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits=12",
        )
        .unwrap();
        assert_eq!(params.client_window_bits, 12);
        assert_eq!(response, format!("{BOTH}; client_max_window_bits=12"));
    }

    #[test]
    fn names_are_case_insensitive_and_spacing_is_free() {
        let (params, response) = agreed(
            "foo, PerMessage-Deflate ;Client_No_Context_Takeover ;server_max_window_bits=\"15\";client_max_window_bits=9",
        )
        .unwrap();
        assert_eq!(params.client_window_bits, 9);
        assert!(response.starts_with(BOTH));
    }
}
