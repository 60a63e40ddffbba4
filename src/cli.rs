//! Command-line arguments shared by both binaries (`wshub`, `wshub-standalone`).
//!
//! Pure: turns the argument list into a [`Command`] and renders the help
//! text. Reads no environment, prints nothing and never exits; the binaries
//! decide what to do with the result.

use std::fmt;
use std::path::PathBuf;

use crate::config::DEFAULT_CONFIG_PATH;

/// What the binary was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start the server. `None`: use `./config.yaml` if it exists, else defaults.
    Run {
        /// The file named by `--config`, if any.
        config: Option<PathBuf>,
    },
    /// Print [`usage`] and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
}

/// A command line that cannot be obeyed. `Display` is one line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CliError {
    /// An argument starting with `-` that is not a known option.
    UnknownFlag(String),
    /// An option that takes a value was given none.
    MissingValue(String),
    /// A bare argument; the binaries take none.
    UnexpectedArgument(String),
    /// An option that may appear only once appeared again.
    Repeated(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFlag(flag) => write!(f, "unknown option {flag:?} (try --help)"),
            Self::MissingValue(flag) => {
                write!(f, "option {flag:?} needs a value: the path of a YAML file")
            }
            Self::UnexpectedArgument(arg) => {
                write!(
                    f,
                    "unexpected argument {arg:?}: only options are accepted (try --help)"
                )
            }
            Self::Repeated(flag) => write!(f, "option {flag:?} given more than once"),
        }
    }
}

impl std::error::Error for CliError {}

/// Parse the arguments after the program name.
///
/// Accepts `--config PATH`, `--config=PATH`, `-c PATH`, `--help`/`-h` and
/// `--version`/`-V`. Arguments are read left to right and `--help` or
/// `--version` answers at once, so `--config x --help` is [`Command::Help`].
/// A value that starts with `-` is taken for a forgotten value (`-c --help`);
/// such a path can still be given as `--config=-odd.yaml`.
///
/// Callers pass `std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned())`:
/// `std::env::args` would panic on an argument that is not UTF-8.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, CliError> {
    let mut args = args.into_iter();
    let mut config: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-c" | "--config" => match args.next() {
                Some(value) if !value.is_empty() && !value.starts_with('-') => value,
                _ => return Err(CliError::MissingValue(arg)),
            },
            _ => match arg.strip_prefix("--config=") {
                Some("") => return Err(CliError::MissingValue("--config".to_owned())),
                Some(value) => value.to_owned(),
                None if arg.starts_with('-') => return Err(CliError::UnknownFlag(arg)),
                None => return Err(CliError::UnexpectedArgument(arg)),
            },
        };
        if config.replace(PathBuf::from(value)).is_some() {
            return Err(CliError::Repeated("--config".to_owned()));
        }
    }
    Ok(Command::Run { config })
}

/// The `--help` text for `program`, which serves `mode_description`.
pub fn usage(program: &str, mode_description: &str) -> String {
    format!(
        "{program} - {mode_description}

Usage: {program} [--config PATH]

Options:
  -c, --config PATH   YAML configuration file [default: {DEFAULT_CONFIG_PATH}];
                      if the default file does not exist, built-in defaults are used
  -h, --help          print this help and exit
  -V, --version       print the version and exit

The log level is log.level from the configuration file; RUST_LOG set to a
level name (off, error, warn, info, debug, trace) overrides it.
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, CliError> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    fn run_with(path: &str) -> Result<Command, CliError> {
        Ok(Command::Run {
            config: Some(PathBuf::from(path)),
        })
    }

    #[test]
    fn no_arguments_runs_with_default_config() {
        assert_eq!(parse(&[]), Ok(Command::Run { config: None }));
    }

    #[test]
    fn config_in_every_spelling() {
        assert_eq!(parse(&["--config", "a.yaml"]), run_with("a.yaml"));
        assert_eq!(parse(&["--config=a.yaml"]), run_with("a.yaml"));
        assert_eq!(parse(&["-c", "dir/a b.yaml"]), run_with("dir/a b.yaml"));
        assert_eq!(parse(&["--config=-odd.yaml"]), run_with("-odd.yaml"));
        assert_eq!(parse(&["--config=x=y.yaml"]), run_with("x=y.yaml"));
    }

    #[test]
    fn help_and_version() {
        for (args, expected) in [
            (&["--help"][..], Command::Help),
            (&["-h"], Command::Help),
            (&["--version"], Command::Version),
            (&["-V"], Command::Version),
            (&["--config", "a.yaml", "--help"], Command::Help),
            (&["-V", "--bogus"], Command::Version),
        ] {
            assert_eq!(parse(args), Ok(expected), "{args:?}");
        }
    }

    #[test]
    fn unknown_flags() {
        for flag in ["--bogus", "-x", "-", "--", "--conf", "-c=a.yaml", "--HELP"] {
            let e = parse(&[flag]);
            assert_eq!(e, Err(CliError::UnknownFlag(flag.to_owned())));
        }
        assert_eq!(
            parse(&["--port", "80"]).map_err(|e| e.to_string()),
            Err(r#"unknown option "--port" (try --help)"#.to_owned())
        );
    }

    #[test]
    fn missing_values() {
        for (args, flag) in [
            (&["--config"][..], "--config"),
            (&["-c"], "-c"),
            (&["--config="], "--config"),
            (&["--config", ""], "--config"),
            (&["-c", "--help"], "-c"),
        ] {
            assert_eq!(
                parse(args),
                Err(CliError::MissingValue(flag.to_owned())),
                "{args:?}"
            );
        }
        assert_eq!(
            parse(&["--config"]).map_err(|e| e.to_string()),
            Err(r#"option "--config" needs a value: the path of a YAML file"#.to_owned())
        );
    }

    #[test]
    fn positional_arguments_are_refused() {
        assert_eq!(
            parse(&["config.yaml"]),
            Err(CliError::UnexpectedArgument("config.yaml".to_owned()))
        );
        assert_eq!(
            parse(&["-c", "a.yaml", "extra"]).map_err(|e| e.to_string()),
            Err(
                r#"unexpected argument "extra": only options are accepted (try --help)"#.to_owned()
            )
        );
    }

    #[test]
    fn config_given_twice_is_refused() {
        assert_eq!(
            parse(&["-c", "a.yaml", "--config=b.yaml"]).map_err(|e| e.to_string()),
            Err(r#"option "--config" given more than once"#.to_owned())
        );
    }

    #[test]
    fn usage_lists_flags_and_default() {
        let text = usage("wshub-standalone", "standalone WebSocket server");
        assert!(text.starts_with("wshub-standalone - standalone WebSocket server\n"));
        assert!(
            text.contains("Usage: wshub-standalone [--config PATH]\n"),
            "{text}"
        );
        for needle in [
            "-c, --config PATH",
            "-h, --help",
            "-V, --version",
            "./config.yaml",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
