//! Start-up's reading of files: `config.yaml` into a [`Config`], then the
//! files that config names (the TLS certificate and key, the JWT public
//! key) into their runtime objects. Every failure is a [`ConfigError`]
//! naming the file and the key, so the binary prints one line and exits 1
//! before anything starts.
//!
//! Above `config` (plain values), `tls` and `jwt` (which turn their
//! sections into a rustls config and a verifier); below the server, which
//! takes what was built here, so the binary reads each file once.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::config::{Config, ConfigError, ConfigSource, DEFAULT_CONFIG_PATH};
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
    /// Reads the TLS pair, then the JWT public key, named in `config`.
    pub(crate) fn from_config(config: &Config) -> Result<Built, FileError> {
        let tls = tls::load(&config.tls).map_err(FileError::Tls)?;
        let jwt = Verifier::from_config(&config.jwt).map_err(FileError::Jwt)?;
        Ok(Built { tls, jwt })
    }
}

/// A configuration, where it came from, and what its files became.
pub(crate) struct Loaded {
    pub(crate) config: Config,
    pub(crate) source: ConfigSource,
    pub(crate) built: Built,
}

/// Reads `explicit`, or `default` when none is given (a missing `default`
/// means built-in defaults), then the files it names.
pub(crate) fn load(explicit: Option<&Path>, default: &Path) -> Result<Loaded, ConfigError> {
    let path = explicit.unwrap_or(default);
    let origin = path.display().to_string();
    let (config, source) = match std::fs::read_to_string(path) {
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
    let built = Built::from_config(&config).map_err(|e| {
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
    Ok(Loaded {
        config,
        source,
        built,
    })
}

impl Config {
    /// Load the configuration. `Some(path)`: that file must exist.
    /// `None`: [`DEFAULT_CONFIG_PATH`] if it exists, else built-in defaults.
    ///
    /// The files it names (the TLS pair, the JWT public key) are read too,
    /// so a bad one is a config error naming its key here, before anything
    /// starts; [`Server::bind`](crate::Server::bind) reads them again.
    /// Logs nothing: the caller logs the returned [`ConfigSource`] once its
    /// logger runs at the configured level.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
        Config::load_from(explicit, Path::new(DEFAULT_CONFIG_PATH))
    }

    /// [`Config::load`] with the default path passed in, so tests need not
    /// depend on the working directory.
    pub(crate) fn load_from(
        explicit: Option<&Path>,
        default: &Path,
    ) -> Result<(Config, ConfigSource), ConfigError> {
        load(explicit, default).map(|loaded| (loaded.config, loaded.source))
    }
}
