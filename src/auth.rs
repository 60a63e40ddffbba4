//! Request authorisation policy (docs/protocol.md §2, §3, §6): bearer tokens, the
//! admin token, a connect request's identity, and query-parameter decoding
//! (the Origin allow-list is [`crate::origin`]'s).
//!
//! Pure functions over raw header values and request targets; no I/O, no
//! clock (callers pass `now_unix`). Touches only [`crate::jwt`] (whose
//! verifier reads a shared key snapshot, never the network), `sha2` and
//! `subtle`.
//!
//! Choices made here, where the contract leaves room:
//! - Authentication schemes compare ASCII case-insensitively (RFC 7235 §2.1),
//!   for both the connect token and the admin token; everything else in the
//!   admin header must be exact: one space, then exactly the token.
//! - Query decoding is hand-written (about twenty lines) rather than taken
//!   from `percent-encoding`/`form_urlencoded`: those pass malformed escapes
//!   through verbatim, whereas a malformed escape here must be an error.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::jwt::{Claims, JwtError, Verifier};

/// Extracts the token of an `Authorization: Bearer <t>` header: the scheme
/// matches case-insensitively and may be followed by one space or more; the
/// token must be non-empty and hold no whitespace. Anything else is `None`.
pub fn bearer_token(authorization_header: Option<&[u8]>) -> Option<&str> {
    let value = std::str::from_utf8(authorization_header?).ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ').trim_end_matches([' ', '\t']);
    let well_formed = !token.is_empty() && !token.bytes().any(|b| b.is_ascii_whitespace());
    well_formed.then_some(token)
}

/// Constant-time admin check: only the exact header
/// `Authorization: Bearer <admin_token>` passes (scheme case-insensitive);
/// an empty configured token means "open".
pub fn admin_allowed(configured_token: &str, authorization_header: Option<&[u8]>) -> bool {
    if configured_token.is_empty() {
        return true;
    }
    let Some(header) = authorization_header else {
        return false;
    };
    let (scheme, presented) = header.split_at(header.len().min(7));
    let scheme_ok = scheme.eq_ignore_ascii_case(b"Bearer ");
    // Hashing first makes the comparison independent of both lengths and of
    // where the first differing byte is.
    let presented = Sha256::digest(presented);
    let expected = Sha256::digest(configured_token.as_bytes());
    let token_ok: bool = presented.as_slice().ct_eq(expected.as_slice()).into();
    scheme_ok & token_ok
}

/// Why a connect request has no acceptable identity (answered with 401).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectIdentityError {
    /// A token was given and is not valid.
    Jwt(JwtError),
    /// `jwt.required` is set and no token was given.
    TokenRequired,
}

impl fmt::Display for ConnectIdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectIdentityError::Jwt(e) => e.fmt(f),
            ConnectIdentityError::TokenRequired => f.write_str("token required"),
        }
    }
}

impl std::error::Error for ConnectIdentityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectIdentityError::Jwt(e) => Some(e),
            ConnectIdentityError::TokenRequired => None,
        }
    }
}

/// Who a connect request is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The user id (`None` = anonymous).
    pub user: Option<String>,
    /// The verified token's claims, when the identity came from a token
    /// (the rooms it grants, say).
    pub claims: Option<Claims>,
}

/// Decides the identity of a connect request.
///
/// With a key configured ([`Verifier::enabled`]): a token from the header
/// wins over `?token=`; a valid token's id overrides `query_user_id`; an
/// invalid token is an error even when `query_user_id` is given; with no
/// token, `query_user_id` unless `required`, then
/// [`ConnectIdentityError::TokenRequired`]. Without a key: `query_user_id`
/// as given, tokens and `required` ignored. Empty strings count as absent
/// throughout.
pub fn connect_identity(
    verifier: &Verifier,
    required: bool,
    header_token: Option<&str>,
    query_token: Option<&str>,
    query_user_id: Option<&str>,
    now_unix: u64,
) -> Result<Identity, ConnectIdentityError> {
    let user_id = non_empty(query_user_id).map(str::to_owned);
    let anonymous_or_named = Identity {
        user: user_id,
        claims: None,
    };
    if !verifier.enabled() {
        return Ok(anonymous_or_named);
    }
    match non_empty(header_token).or(non_empty(query_token)) {
        Some(token) => {
            let claims = verifier
                .verify(token, now_unix)
                .map_err(ConnectIdentityError::Jwt)?;
            let user = claims.user().map_err(ConnectIdentityError::Jwt)?;
            Ok(Identity {
                user: Some(user),
                claims: Some(claims),
            })
        }
        None if required => Err(ConnectIdentityError::TokenRequired),
        None => Ok(anonymous_or_named),
    }
}

/// Why a query parameter could not be decoded (answered with 400).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// A `%` not followed by two hex digits; holds the parameter's name.
    BadEscape(String),
    /// The decoded bytes are not UTF-8; holds the parameter's name.
    NotUtf8(String),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::BadEscape(name) => {
                write!(f, "query parameter {name}: invalid percent-escape")
            }
            QueryError::NotUtf8(name) => write!(f, "query parameter {name}: not UTF-8"),
        }
    }
}

impl std::error::Error for QueryError {}

/// Returns the first value of query parameter `name` in a request target
/// (`"/api/ws/connect?user_id=a%20b&token=..."`), decoded (`+` as space,
/// `%XX`); `Ok(None)` if absent; a key without `=` has the value `""`.
/// Keys are decoded before comparison; a key that does not decode is skipped.
/// An invalid escape or non-UTF-8 result in the value is an error.
pub fn query_param(target: &str, name: &str) -> Result<Option<String>, QueryError> {
    let Some((_, query)) = target.split_once('?') else {
        return Ok(None);
    };
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Only a key with an escape can decode to another text: the others
        // are compared as they are, without decoding (an allocation each).
        let escaped = key.contains(['%', '+']);
        if key != name && !(escaped && percent_decode(key).ok().as_deref() == Some(name.as_bytes()))
        {
            continue;
        }
        let bytes = percent_decode(value).map_err(|()| QueryError::BadEscape(name.to_owned()))?;
        return String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| QueryError::NotUtf8(name.to_owned()));
    }
    Ok(None)
}

/// One percent-encoded path segment (`/api/ws/rooms/chat%3A1`), decoded;
/// `+` stays `+` in a path. `None` for a malformed escape or non-UTF-8.
pub fn path_segment(text: &str) -> Option<String> {
    String::from_utf8(decode(text, false).ok()?).ok()
}

/// `application/x-www-form-urlencoded` decoding of one key or value.
fn percent_decode(text: &str) -> Result<Vec<u8>, ()> {
    decode(text, true)
}

fn decode(text: &str, plus_is_space: bool) -> Result<Vec<u8>, ()> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' if plus_is_space => b' ',
            b'%' => {
                let hi = bytes.next().and_then(hex_value).ok_or(())?;
                let lo = bytes.next().and_then(hex_value).ok_or(())?;
                (hi << 4) | lo
            }
            other => other,
        });
    }
    Ok(out)
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::sign_hs256;
    use serde_json::json;

    const SECRET: &str = "s3cret";
    const NOW: u64 = 1_700_000_000;

    fn token(claims: serde_json::Value) -> String {
        sign_hs256(&claims, SECRET.as_bytes())
    }

    fn verifier(secret: &str) -> Verifier {
        let config = crate::config::JwtConfig {
            secret: secret.into(),
            ..Default::default()
        };
        Verifier::from_config(&config).unwrap()
    }

    fn user_of(
        secret: &str,
        required: bool,
        header: Option<&str>,
        query: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<Option<String>, ConnectIdentityError> {
        connect_identity(&verifier(secret), required, header, query, user_id, NOW)
            .map(|identity| identity.user)
    }

    fn identity(
        header: Option<&str>,
        query: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<Option<String>, ConnectIdentityError> {
        user_of(SECRET, false, header, query, user_id)
    }

    #[test]
    fn bearer_token_extraction() {
        let cases: [(&[u8], Option<&str>); 12] = [
            (b"Bearer abc.def.ghi", Some("abc.def.ghi")),
            (b"bearer abc", Some("abc")),
            (b"BEARER   abc", Some("abc")),
            (b"Bearer abc  ", Some("abc")),
            (b"Bearer", None),
            (b"Bearer ", None),
            (b"Bearer    ", None),
            (b"Basic dXNlcjpwYXNz", None),
            (b"Bearerabc", None),
            (b"Bearer a b", None),
            (b"Bearer\tabc", None),
            (b"Bearer \xff\xfe", None),
        ];
        for (header, expected) in cases {
            assert_eq!(
                bearer_token(Some(header)),
                expected,
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
        assert_eq!(bearer_token(None), None);
    }

    #[test]
    fn identity_from_header_and_query() {
        let t = token(json!({"id": "alice"}));
        assert_eq!(identity(Some(&t), None, None), Ok(Some("alice".into())));
        assert_eq!(identity(None, Some(&t), None), Ok(Some("alice".into())));
    }

    #[test]
    fn header_token_wins_over_query_token() {
        let alice = token(json!({"id": "alice"}));
        let bob = token(json!({"id": "bob"}));
        assert_eq!(
            identity(Some(&alice), Some(&bob), None),
            Ok(Some("alice".into()))
        );
        // Only the header token is looked at, so a bad one is not rescued.
        let bad = sign_hs256(&json!({"id": "x"}), b"wrong");
        assert_eq!(
            identity(Some(&bad), Some(&bob), None),
            Err(ConnectIdentityError::Jwt(JwtError::BadSignature))
        );
    }

    #[test]
    fn token_id_overrides_user_id() {
        let t = token(json!({"sub": 7}));
        assert_eq!(
            identity(Some(&t), None, Some("mallory")),
            Ok(Some("7".into()))
        );
    }

    #[test]
    fn invalid_token_is_an_error_even_with_user_id() {
        let expired = token(json!({"id": "a", "exp": NOW - 3600}));
        assert_eq!(
            identity(None, Some(&expired), Some("a")),
            Err(ConnectIdentityError::Jwt(JwtError::Expired))
        );
        let early = token(json!({"id": "a", "nbf": NOW + 3600}));
        assert_eq!(
            identity(Some(&early), None, None),
            Err(ConnectIdentityError::Jwt(JwtError::NotYetValid))
        );
        let within_leeway = token(json!({"id": "a", "exp": NOW - 10}));
        assert_eq!(
            identity(Some(&within_leeway), None, None),
            Ok(Some("a".into()))
        );
    }

    #[test]
    fn no_token_falls_back_to_user_id_unless_required() {
        assert_eq!(identity(None, None, Some("u")), Ok(Some("u".into())));
        assert_eq!(identity(None, Some(""), Some("u")), Ok(Some("u".into())));
        assert_eq!(identity(None, None, None), Ok(None));
        assert_eq!(identity(None, None, Some("")), Ok(None));
        assert_eq!(
            user_of(SECRET, true, None, None, Some("u")),
            Err(ConnectIdentityError::TokenRequired)
        );
        assert_eq!(
            user_of(SECRET, true, None, Some(""), None),
            Err(ConnectIdentityError::TokenRequired)
        );
        let t = token(json!({"id": "r"}));
        assert_eq!(
            user_of(SECRET, true, None, Some(&t), None),
            Ok(Some("r".into()))
        );
    }

    #[test]
    fn without_secret_tokens_are_ignored() {
        let garbage = Some("not-a-token");
        assert_eq!(
            user_of("", false, garbage, garbage, Some("u")),
            Ok(Some("u".into()))
        );
        assert_eq!(user_of("", true, garbage, None, None), Ok(None));
        assert_eq!(user_of("", false, None, None, Some("")), Ok(None));
    }

    #[test]
    fn identity_error_display() {
        assert_eq!(
            ConnectIdentityError::TokenRequired.to_string(),
            "token required"
        );
        assert_eq!(
            ConnectIdentityError::Jwt(JwtError::Expired).to_string(),
            "token expired"
        );
    }

    #[test]
    fn admin_token_check() {
        let admin = "adm1n";
        assert!(!admin_allowed(admin, None));
        assert!(!admin_allowed(admin, Some(b"Bearer wrong")));
        assert!(!admin_allowed(admin, Some(b"Bearer adm1")));
        assert!(!admin_allowed(admin, Some(b"Bearer adm1n2")));
        assert!(admin_allowed(admin, Some(b"Bearer adm1n")));
        assert!(admin_allowed(admin, Some(b"bearer adm1n")));
        assert!(!admin_allowed(admin, Some(b"Basic adm1n")));
        assert!(!admin_allowed(admin, Some(b"Token adm1n")));
        assert!(!admin_allowed(admin, Some(b"adm1n")));
        assert!(!admin_allowed(admin, Some(b"Bearer  adm1n")));
        assert!(!admin_allowed(admin, Some(b"Bearer adm1n ")));
        assert!(!admin_allowed(admin, Some(b"Bearer")));
        assert!(!admin_allowed(admin, Some(b"")));
        assert!(admin_allowed("", None));
        assert!(admin_allowed("", Some(b"Bearer anything")));
    }

    #[test]
    fn query_param_decoding() {
        let target = "/api/ws/connect?user_id=a%20b+c&token=x.y.z&empty=&flag&user_id=second";
        assert_eq!(query_param(target, "user_id"), Ok(Some("a b c".into())));
        assert_eq!(query_param(target, "token"), Ok(Some("x.y.z".into())));
        assert_eq!(query_param(target, "empty"), Ok(Some(String::new())));
        assert_eq!(query_param(target, "flag"), Ok(Some(String::new())));
        assert_eq!(query_param(target, "missing"), Ok(None));
        assert_eq!(query_param("/api/ws/connect", "user_id"), Ok(None));
        assert_eq!(
            query_param("/x?user%5Fid=k", "user_id"),
            Ok(Some("k".into()))
        );
        assert_eq!(query_param("/x?a=1#user_id=2", "user_id"), Ok(None));
        assert_eq!(
            query_param("/x?u=%E4%BD%A0%e5%a5%bd", "u"),
            Ok(Some("你好".into()))
        );
        assert_eq!(query_param("/x?u=100%25", "u"), Ok(Some("100%".into())));
    }

    #[test]
    fn query_param_errors() {
        for bad in ["/x?u=%", "/x?u=%2", "/x?u=%zz", "/x?u=a%2x", "/x?u=%+1"] {
            assert_eq!(
                query_param(bad, "u"),
                Err(QueryError::BadEscape("u".into())),
                "{bad}"
            );
        }
        assert_eq!(
            query_param("/x?u=%ff", "u"),
            Err(QueryError::NotUtf8("u".into()))
        );
        // A bad escape elsewhere does not spoil the parameter asked for.
        assert_eq!(query_param("/x?v=%zz&u=1", "u"), Ok(Some("1".into())));
        assert_eq!(
            QueryError::BadEscape("token".into()).to_string(),
            "query parameter token: invalid percent-escape"
        );
    }

    #[test]
    fn random_headers_never_panic_and_parse_as_specified() {
        // Few symbols, so whitespace, dots and invalid UTF-8 meet often.
        const SYMBOLS: &[u8] = b"aZ09.-_ \t\xff%=";
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..10_000 {
            let len = (next() % 64) as usize;
            let mut header: Vec<u8> = (0..len)
                .map(|_| match i % 2 {
                    0 => SYMBOLS[(next() % SYMBOLS.len() as u64) as usize],
                    _ => next() as u8,
                })
                .collect();
            if i % 4 == 0 {
                header.splice(0..0, b"Bearer ".iter().copied());
            }
            let got = bearer_token(Some(&header));
            match header.strip_prefix(b"Bearer ") {
                Some(rest) => assert_eq!(got, expected_token(rest), "{header:?}"),
                None if !header.to_ascii_lowercase().starts_with(b"bearer ") => {
                    assert_eq!(got, None, "{header:?}")
                }
                None => {}
            }
            assert!(
                !admin_allowed("the-admin-token", Some(&header)),
                "{header:?}"
            );
            let listed = ["https://a.example".to_string()];
            assert!(
                !crate::origin::allowed(&listed, Some(&header)),
                "{header:?}"
            );
            let _ = query_param(&String::from_utf8_lossy(&header), "u");
        }
    }

    /// The spec of `bearer_token` after its scheme, written independently:
    /// drop leading spaces and trailing SP/HTAB; the rest must be a
    /// non-empty, whitespace-free UTF-8 string.
    fn expected_token(rest: &[u8]) -> Option<&str> {
        let start = rest.iter().position(|&b| b != b' ')?;
        let end = rest.iter().rposition(|&b| b != b' ' && b != b'\t')? + 1;
        let token = std::str::from_utf8(&rest[start..end]).ok()?;
        // `rest` must be UTF-8 as a whole, not only its trimmed middle.
        std::str::from_utf8(rest).ok()?;
        (!token.contains(char::is_whitespace)).then_some(token)
    }
}
