//! Start-up's reading of files: `config.yaml` into a [`Config`], then the
//! files that config names (the TLS certificate and key, the JWT public
//! key), built into their runtime objects. Every failure is a
//! [`ConfigError`] naming the file and the key, so the binary prints one
//! line and exits 1 before anything starts, and an embedder learns it from
//! [`Config::load`].
//!
//! Each file is read once: what the load read stays in the config's
//! [`Files`], and the server builds from those bytes at bind
//! ([`Built::from_config`]); a config made in code has its files read
//! there (docs/embedding.md, "When the files are read").
//!
//! Above `config` (plain values), `tls` and `jwt` (which turn their
//! sections into a rustls config and a verifier); below the server.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::config::{Config, ConfigError, ConfigSource, Files, DEFAULT_CONFIG_PATH};
use crate::jwt::{KeyError, Verifier};
use crate::tls::{self, TlsError};

/// What the files a config names became.
pub(crate) struct Built {
    /// `tls:`'s server config; `None` while TLS is off.
    pub(crate) tls: Option<Arc<ServerConfig>>,
    /// `jwt:`'s verifier (its JWKS refresh starts with the server).
    pub(crate) jwt: Verifier,
}

/// Why a file a config names cannot be used.
pub(crate) enum FileError {
    /// `tls.cert` or `tls.key`.
    Tls(TlsError),
    /// `jwt.public_key`, or a key no listed algorithm can use.
    Jwt(KeyError),
}

impl Built {
    /// Builds the TLS pair, then the JWT public key, named in `config`,
    /// reading each file through `files`: one it holds is not read again.
    pub(crate) fn from_config(config: &Config, files: &mut Files) -> Result<Built, FileError> {
        let tls = tls::build(&config.tls, files).map_err(FileError::Tls)?;
        let jwt = Verifier::build(&config.jwt, files).map_err(FileError::Jwt)?;
        Ok(Built { tls, jwt })
    }
}

impl Config {
    /// Load the configuration. `Some(path)`: that file must exist.
    /// `None`: [`DEFAULT_CONFIG_PATH`] if it exists, else built-in defaults.
    ///
    /// The files it names (the TLS pair, the JWT public key) are read too,
    /// so a bad one is a config error naming its key here, before anything
    /// starts. What was read stays in [`Config::files`]:
    /// [`Server::bind`](crate::Server::bind) and
    /// [`Server::from_listener`](crate::Server::from_listener) build from
    /// it and do not read those files again.
    /// Logs nothing: the caller logs the returned [`ConfigSource`] once its
    /// logger runs at the configured level.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
        Config::load_from(explicit, Path::new(DEFAULT_CONFIG_PATH))
    }

    /// [`Config::load`] with the default path passed in (the binaries and
    /// tests): reads `explicit`, or `default` when none is given (a missing
    /// `default` means built-in defaults), then the files it names, which
    /// the returned config carries in [`Config::files`].
    pub(crate) fn load_from(
        explicit: Option<&Path>,
        default: &Path,
    ) -> Result<(Config, ConfigSource), ConfigError> {
        let path = explicit.unwrap_or(default);
        let origin = path.display().to_string();
        let (mut config, source) = match std::fs::read_to_string(path) {
            Ok(text) => (
                Config::from_yaml_str(&text, &origin)?,
                ConfigSource::File(path.to_path_buf()),
            ),
            Err(e) if explicit.is_none() && e.kind() == io::ErrorKind::NotFound => {
                (Config::default(), ConfigSource::BuiltInDefaults)
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    file: origin,
                    source,
                })
            }
        };
        // Built here only to check the files now; the server builds again from
        // the bytes kept, which costs a parse, not a read.
        let mut files = Files::default();
        Built::from_config(&config, &mut files).map_err(|e| {
            let (key, message) = match e {
                FileError::Tls(e) => (e.key, e.message),
                FileError::Jwt(e) => (e.key, e.message),
            };
            ConfigError::Invalid {
                file: origin,
                key: key.to_owned(),
                message,
            }
        })?;
        config.files = files;
        Ok((config, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Ed25519 public key of RFC 8410's examples.
    const PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn load_leaves_what_it_read_in_the_config_and_bind_builds_from_it() {
        let dir = std::env::temp_dir();
        let key = dir.join(format!("wshub-startup-{}-key.pem", std::process::id()));
        let yaml = dir.join(format!("wshub-startup-{}.yaml", std::process::id()));
        std::fs::write(&key, PUBLIC_KEY).expect("write key");
        let text = format!(
            "jwt: {{algorithms: [EdDSA], public_key: \"{}\"}}\n",
            key.display()
        );
        std::fs::write(&yaml, &text).expect("write config");
        let loaded = Config::load(Some(&yaml)).map(|(config, _)| config);
        std::fs::remove_file(&key).expect("remove key");
        std::fs::remove_file(&yaml).expect("remove config");
        let loaded = loaded.expect("load");
        let parsed = Config::from_yaml_str(&text, "config.yaml").expect("parse");
        assert_eq!(loaded, parsed, "files are not settings");
        let shown = format!("{:?}", loaded.files);
        assert!(shown.contains(&*key.to_string_lossy()), "{shown}");
        assert!(!shown.contains("MCow"), "no contents: {shown}");
        // The key file is gone: what the load read still builds; a config
        // that read nothing must read it, and cannot.
        let built = Built::from_config(&loaded, &mut loaded.files.clone());
        assert!(built.is_ok_and(|b| b.jwt.enabled()));
        let fresh = Built::from_config(&parsed, &mut Files::default());
        assert!(
            matches!(&fresh, Err(FileError::Jwt(e)) if e.key == "jwt.public_key"),
            "read at bind"
        );
    }
}
