//! JSON Web Token verification (docs/security.md): the
//! `jsonwebtoken` crate checks signatures, algorithms, `iss` and `aud`; this
//! file adapts it to our rules and picks the key.
//!
//! The verifier is built once from `jwt:` at start (reading `public_key`
//! then, never on the loop, through the config's `Files`: not again at
//! bind if `Config::load` read it) and cloned cheaply; keys from
//! `jwks_url` arrive through `jwks`, whose snapshot [`Verifier::verify`]
//! reads under a short lock. Touches nothing else. No clock: callers pass
//! `now_unix`.
//!
//! Our rules, where the crate or RFC 7519 leave room (unchanged from the
//! HS256-only verifier this replaces):
//! - Only the algorithms listed in `jwt.algorithms` pass; `none` never (the
//!   crate has no such algorithm). An HMAC token is checked with
//!   `jwt.secret` only, an asymmetric one with `public_key` or a JWKS key
//!   only, so no key can be used under another family's algorithm.
//! - `typ` is ignored (issuers send `JWT`, `jwt` or `at+jwt`); a `crit`
//!   header is refused: we understand no extensions.
//! - The signature is checked before the claims are looked at.
//! - `exp`/`nbf` are checked here, not by the crate, with [`LEEWAY_SECS`]:
//!   integers or finite floats (floored), any other type (`null` included)
//!   is a bad claim; a token without them does not expire.
//! - `id`, else `sub`, names the user: a non-empty string, or an integer as
//!   its decimal string; `null` and `""` count as absent.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::JwtConfig;
use crate::files::Files;
use crate::jwks::Jwks;

/// Clock skew tolerated on `exp` and `nbf`, in seconds (the contract allows at most 60).
pub const LEEWAY_SECS: u64 = 30;

/// Longest token we look at, in bytes: longer ones are refused unread, so a
/// peer cannot make us decode, hash or parse unbounded input.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest algorithm name kept in [`JwtError::UnsupportedAlgorithm`], so a
/// hostile header cannot blow up log lines.
const MAX_ALG_LEN: usize = 16;

/// Why a token was refused. `Display` gives the short phrase used in 401
/// bodies; it never contains the token or a key.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url segments with a JSON object header and payload,
    /// longer than [`MAX_TOKEN_LEN`], or a `crit` header.
    Malformed,
    /// The header's `alg` is not one of `jwt.algorithms`; holds the
    /// (truncated) name given, empty when `alg` is missing or not a string.
    UnsupportedAlgorithm(String),
    /// No key for this token: its `kid` is not (yet) among the JWKS keys,
    /// the JWKS has not loaded, or no key of the algorithm's family is set.
    UnknownKey,
    /// The signature does not match the key.
    BadSignature,
    /// `iss` is missing or not `jwt.issuer`.
    WrongIssuer,
    /// `aud` is missing or does not contain `jwt.audience`.
    WrongAudience,
    /// `exp` is more than [`LEEWAY_SECS`] in the past.
    Expired,
    /// `nbf` is more than [`LEEWAY_SECS`] in the future.
    NotYetValid,
    /// Neither `id` nor `sub` names a user.
    MissingSubject,
    /// A claim we rely on is missing or has the wrong type; holds its name.
    BadClaim(&'static str),
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed => f.write_str("invalid token"),
            JwtError::UnsupportedAlgorithm(_) => f.write_str("unsupported token algorithm"),
            JwtError::UnknownKey => f.write_str("unknown token key"),
            JwtError::BadSignature => f.write_str("invalid token signature"),
            JwtError::WrongIssuer => f.write_str("invalid token issuer"),
            JwtError::WrongAudience => f.write_str("invalid token audience"),
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not yet valid"),
            JwtError::MissingSubject => f.write_str("token has no id or sub claim"),
            JwtError::BadClaim(claim) => write!(f, "invalid token claim: {claim}"),
        }
    }
}

impl std::error::Error for JwtError {}

/// Why `jwt:` cannot be used; names the key, for the one-line config error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The dotted config key at fault.
    pub key: &'static str,
    /// What is wrong (never key material).
    pub message: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for KeyError {}

/// The verified claims of a token, as the issuer wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims(Map<String, Value>);

impl Claims {
    /// Every claim, for callers that read their own (`rooms`, `room`).
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// One claim.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The user id: claim `id`, else `sub` (a numeric id as its decimal
    /// string; an empty string counts as absent).
    pub fn user(&self) -> Result<String, JwtError> {
        if let Some(id) = user_claim(&self.0, "id")? {
            return Ok(id);
        }
        user_claim(&self.0, "sub")?.ok_or(JwtError::MissingSubject)
    }
}

/// What a join token (docs/rooms.md) grants: one room to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGrant {
    /// Claim `room`.
    pub room: String,
    /// Claim `sub` (a numeric one as its decimal string).
    pub sub: String,
}

/// The key material a token can be checked against, shared by every clone.
struct Keys {
    algorithms: Vec<Algorithm>,
    secret: Option<DecodingKey>,
    public_key: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
    issuer: String,
    audience: String,
}

/// Checks tokens against `jwt:`; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<Keys>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.keys.algorithms)
            .field("enabled", &self.enabled())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds the verifier, reading `public_key` now. Starts no thread:
    /// [`Verifier::start_refresh`] does, once the server runs.
    pub fn from_config(config: &JwtConfig) -> Result<Verifier, KeyError> {
        Verifier::build(config, &mut Files::default())
    }

    /// [`Verifier::from_config`], reading `public_key` through `files`:
    /// not again if `files` read it before.
    pub(crate) fn build(config: &JwtConfig, files: &mut Files) -> Result<Verifier, KeyError> {
        let algorithms = parse_algorithms(&config.algorithms)?;
        let secret = (!config.secret.is_empty())
            .then(|| DecodingKey::from_secret(config.secret.expose().as_bytes()))
            .transpose()
            .map_err(|e| KeyError {
                key: "jwt.secret",
                message: format!("unusable: {e}"),
            })?;
        let public_key = match config.public_key.as_str() {
            "" => None,
            path => Some(load_public_key(path, files)?),
        };
        let jwks = (!config.jwks_url.is_empty()).then(|| Arc::new(Jwks::new(&config.jwks_url)));
        let has = |family| algorithms.iter().any(|a| a.family() == family);
        let asymmetric = [
            AlgorithmFamily::Rsa,
            AlgorithmFamily::Ec,
            AlgorithmFamily::Ed,
        ];
        if let Some(key) = &public_key {
            if !has(key.family()) {
                return Err(KeyError {
                    key: "jwt.algorithms",
                    message: format!(
                        "lists no algorithm for the {:?} key in jwt.public_key",
                        key.family()
                    ),
                });
            }
        }
        if jwks.is_some() && !asymmetric.into_iter().any(has) {
            return Err(KeyError {
                key: "jwt.algorithms",
                message: "lists no asymmetric algorithm for the keys of jwt.jwks_url".to_owned(),
            });
        }
        Ok(Verifier {
            keys: Arc::new(Keys {
                algorithms,
                secret,
                public_key,
                jwks,
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
            }),
        })
    }

    /// Whether any key is configured (a secret, a public key or a JWKS):
    /// only then are tokens looked at.
    pub fn enabled(&self) -> bool {
        let keys = &*self.keys;
        keys.secret.is_some() || keys.public_key.is_some() || keys.jwks.is_some()
    }

    /// Fetches `jwks_url` now and keeps it fresh, on a thread of its own
    /// that ends when the last clone of this verifier is dropped. Does
    /// nothing without a JWKS URL.
    pub fn start_refresh(&self) {
        if let Some(jwks) = &self.keys.jwks {
            Jwks::start(jwks);
        }
    }

    /// Verifies a token: algorithm, key, signature, `iss`/`aud` when set,
    /// `exp`/`nbf` when present. Never panics, never blocks on I/O.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header = decode_object(header)?;
        let algorithm = self.algorithm(&header)?;
        if header.contains_key("crit") {
            return Err(JwtError::Malformed);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(JwtError::Malformed),
        };
        let claims = match algorithm.family() {
            AlgorithmFamily::Hmac => {
                let key = self.keys.secret.as_ref().ok_or(JwtError::UnknownKey)?;
                self.decode(token, key, algorithm)?
            }
            _ => match self.asymmetric_key(kid, algorithm)? {
                Found::Public => {
                    let key = self.keys.public_key.as_ref().ok_or(JwtError::UnknownKey)?;
                    self.decode(token, key, algorithm)?
                }
                Found::Jwks(set, index) => self.decode(token, set.key(index), algorithm)?,
            },
        };
        check_time(&claims, now_unix)?;
        Ok(Claims(claims))
    }

    /// Verifies a join token for `room` and `user`: as [`Verifier::verify`],
    /// and besides `exp` is required, `room` must equal `room` and `sub`
    /// must name `user`.
    pub fn verify_join(
        &self,
        token: &str,
        room: &str,
        user: &str,
        now_unix: u64,
    ) -> Result<JoinGrant, JwtError> {
        let claims = self.verify(token, now_unix)?;
        if claims.get("exp").is_none() {
            return Err(JwtError::BadClaim("exp"));
        }
        let granted_room = match claims.get("room") {
            Some(Value::String(r)) if r == room => r.clone(),
            _ => return Err(JwtError::BadClaim("room")),
        };
        match user_claim(claims.as_map(), "sub")? {
            Some(sub) if sub == user => Ok(JoinGrant {
                room: granted_room,
                sub,
            }),
            Some(_) => Err(JwtError::BadClaim("sub")),
            None => Err(JwtError::MissingSubject),
        }
    }

    /// The header's `alg`, when it is one we accept.
    fn algorithm(&self, header: &Map<String, Value>) -> Result<Algorithm, JwtError> {
        let Some(Value::String(name)) = header.get("alg") else {
            return Err(JwtError::UnsupportedAlgorithm(String::new()));
        };
        name.parse::<Algorithm>()
            .ok()
            .filter(|a| self.keys.algorithms.contains(a))
            .ok_or_else(|| JwtError::UnsupportedAlgorithm(name.chars().take(MAX_ALG_LEN).collect()))
    }

    /// Which asymmetric key checks a token: by `kid` among the JWKS keys
    /// (an unknown one asks for a refetch), else `public_key`, else the one
    /// JWKS key of the algorithm's family when there is exactly one.
    fn asymmetric_key(&self, kid: Option<&str>, algorithm: Algorithm) -> Result<Found, JwtError> {
        let keys = &*self.keys;
        let public = keys
            .public_key
            .as_ref()
            .is_some_and(|k| k.family() == algorithm.family());
        let Some(jwks) = &keys.jwks else {
            return if public {
                Ok(Found::Public)
            } else {
                Err(JwtError::UnknownKey)
            };
        };
        let set = jwks.snapshot();
        let found = match kid {
            Some(kid) => set.by_kid(kid, algorithm),
            None => set.only_key_for(algorithm),
        };
        match found {
            Some(index) => Ok(Found::Jwks(set, index)),
            None if public => Ok(Found::Public),
            None => {
                if kid.is_some() {
                    jwks.request_refresh();
                }
                Err(JwtError::UnknownKey)
            }
        }
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        algorithm: Algorithm,
    ) -> Result<Map<String, Value>, JwtError> {
        let keys = &*self.keys;
        let mut validation = Validation::new(algorithm);
        // Time is ours (check_time): the crate's rounding and u64-only dates differ.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = !keys.audience.is_empty();
        if !keys.audience.is_empty() {
            validation.set_audience(&[&keys.audience]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        if !keys.issuer.is_empty() {
            validation.set_issuer(&[&keys.issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.into_kind() {
                ErrorKind::InvalidSignature => JwtError::BadSignature,
                ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
                ErrorKind::InvalidAudience => JwtError::WrongAudience,
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => JwtError::WrongIssuer,
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => JwtError::WrongAudience,
                ErrorKind::Json(_) if keys.issuer.is_empty() && keys.audience.is_empty() => {
                    return signed_payload(token, key, algorithm);
                }
                _ => JwtError::Malformed,
            }),
        }
    }
}

/// The payload of a token the crate could not read, when its signature
/// holds. The crate reads the registered claims into typed fields before
/// anything else, and some wrong types there (an array for `nbf`, say)
/// fail as a whole; our own reading then names the claim, as the
/// hand-written verifier did. Used only when no `iss`/`aud` check is
/// configured, because those are the crate's to make.
fn signed_payload(
    token: &str,
    key: &DecodingKey,
    algorithm: Algorithm,
) -> Result<Map<String, Value>, JwtError> {
    let (message, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, algorithm) {
        Ok(true) => {}
        Ok(false) => return Err(JwtError::BadSignature),
        Err(_) => return Err(JwtError::Malformed),
    }
    let payload = message.split_once('.').map_or("", |(_, p)| p);
    decode_object(payload)
}

/// Where [`Verifier::asymmetric_key`] found the key.
enum Found {
    Public,
    Jwks(Arc<crate::jwks::KeySet>, usize),
}

/// Names in `jwt.algorithms`, as the crate's algorithms.
fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, KeyError> {
    names
        .iter()
        .map(|name| {
            name.parse::<Algorithm>().map_err(|_| KeyError {
                key: "jwt.algorithms",
                message: format!("unknown algorithm {name:?}"),
            })
        })
        .collect()
}

/// Reads a PEM public key (RSA, EC or Ed25519); its type decides its family.
fn load_public_key(path: &str, files: &mut Files) -> Result<DecodingKey, KeyError> {
    let error = |message: String| KeyError {
        key: "jwt.public_key",
        message,
    };
    let pem = files
        .read(path)
        .map_err(|e| error(format!("cannot read {path}: {e}")))?;
    DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| {
            error(format!(
                "{path} holds no PEM public key of type RSA, EC or Ed25519"
            ))
        })
}

/// Signs `claims` (normally a JSON object) with HS256 under a
/// `{"typ":"JWT","alg":"HS256"}` header. Used by tests and examples to make tokens.
///
/// # Panics
///
/// When `secret` is empty (the crate refuses an empty HMAC key).
pub fn sign_hs256(claims: &Value, secret: &[u8]) -> String {
    let header = jsonwebtoken::Header::new(Algorithm::HS256);
    jsonwebtoken::EncodingKey::from_secret(secret)
        .and_then(|key| jsonwebtoken::encode(&header, claims, &key))
        .expect("HS256 signing needs a non-empty secret")
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

fn check_time(claims: &Map<String, Value>, now_unix: u64) -> Result<(), JwtError> {
    let now = i128::from(now_unix);
    let leeway = i128::from(LEEWAY_SECS);
    if let Some(exp) = numeric_date(claims, "exp")? {
        // RFC 7519 §4.1.4: valid only while now is before exp.
        if now >= exp + leeway {
            return Err(JwtError::Expired);
        }
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now + leeway < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(())
}

/// Reads a NumericDate claim as whole seconds; i128 so no value can overflow
/// the comparisons above.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i128>, JwtError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let Value::Number(number) = value else {
        return Err(JwtError::BadClaim(name));
    };
    if let Some(n) = number.as_i64() {
        return Ok(Some(i128::from(n)));
    }
    if let Some(n) = number.as_u64() {
        return Ok(Some(i128::from(n)));
    }
    match number.as_f64() {
        // The cast saturates, and ±1e38 seconds is past any real deadline.
        Some(f) if f.is_finite() => Ok(Some(f.floor() as i128)),
        _ => Err(JwtError::BadClaim(name)),
    }
}

fn user_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<String>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err(JwtError::BadClaim(name)),
    }
}

#[cfg(test)]
mod tests;
