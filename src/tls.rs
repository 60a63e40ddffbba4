//! TLS on the listener (docs/protocol.md section 8): turns `tls.cert` and
//! `tls.key` into a rustls [`ServerConfig`] (the `ring` provider, TLS 1.2
//! and 1.3, ALPN `http/1.1`), with errors that name the key at fault.
//!
//! Reads the two files and nothing else; the connections themselves are
//! [`crate::transport`]'s. Built once at start ([`build`], reading through
//! the config's [`Files`]: `Config::load` reads the pair and the server
//! builds from what it read; a config made in code has them read at bind)
//! and on SIGHUP ([`load`], which reads both files again): a reload builds
//! a new config that only new connections use.

use std::fmt;
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::ServerConfig;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::files::Files;

/// Why a certificate and key could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The config key whose file is at fault: `tls.cert` or `tls.key`.
    pub key: &'static str,
    /// What is wrong, with the file name.
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for TlsError {}

/// The server config for `tls`, or `None` when TLS is off (both keys
/// empty), from both files as they are now (a SIGHUP reload).
pub fn load(tls: &TlsConfig) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    build(tls, &mut Files::default())
}

/// [`load`], reading the files through `files`: one it read before is not
/// read again.
pub(crate) fn build(
    tls: &TlsConfig,
    files: &mut Files,
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    if tls.cert.is_empty() && tls.key.is_empty() {
        return Ok(None);
    }
    if tls.cert.is_empty() || tls.key.is_empty() {
        let key = if tls.cert.is_empty() {
            "tls.cert"
        } else {
            "tls.key"
        };
        return Err(TlsError {
            key,
            message: "tls.cert and tls.key must be set together".to_owned(),
        });
    }
    let certs = read_certs(&tls.cert, files)?;
    let private_key = files
        .read(&tls.key)
        .map_err(pem::Error::Io)
        .and_then(|pem| PrivateKeyDer::from_pem_slice(&pem))
        .map_err(|e| TlsError {
            key: "tls.key",
            message: format!("cannot read a PEM private key from {:?}: {e}", tls.key),
        })?;
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError {
            key: "tls.cert",
            message: format!("TLS setup failed: {e}"),
        })?;
    let mut config = builder
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError {
                key: "tls.key",
                message: format!(
                    "the key in {:?} does not match the certificate in {:?}",
                    tls.key, tls.cert
                ),
            },
            e => TlsError {
                key: "tls.key",
                message: format!("unusable private key in {:?}: {e}", tls.key),
            },
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn read_certs(path: &str, files: &mut Files) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError {
        key: "tls.cert",
        message,
    };
    let pem = files
        .read(path)
        .map_err(|e| error(format!("cannot read {path:?}: {}", pem::Error::Io(e))))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("bad PEM certificate in {path:?}: {e}")))?;
    if certs.is_empty() {
        return Err(error(format!("no PEM certificate in {path:?}")));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_when_both_empty_and_named_when_one_is_missing() {
        assert_eq!(load(&TlsConfig::default()).map(|c| c.is_none()), Ok(true));
        let half = TlsConfig {
            cert: "cert.pem".to_owned(),
            key: String::new(),
        };
        assert_eq!(load(&half).err().map(|e| e.key), Some("tls.key"));
    }

    #[test]
    fn unreadable_file_names_its_key() {
        let missing = TlsConfig {
            cert: "/nonexistent/wshub-cert.pem".to_owned(),
            key: "/nonexistent/wshub-key.pem".to_owned(),
        };
        let e = load(&missing).err();
        assert_eq!(e.as_ref().map(|e| e.key), Some("tls.cert"), "{e:?}");
    }
}
