//! The one error type of the load bench: every module returns [`BenchError`],
//! each variant carrying enough context to say which step and which server failed.

use std::fmt;
use std::io;

/// Why a load-bench step failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BenchError {
    /// A system call failed; `context` says which step made it.
    Io {
        /// The step, e.g. "connect to 127.0.0.1:4000".
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// The server under test could not be prepared, started or reached.
    Server(String),
    /// A scenario could not complete (lost receivers, stalled broadcasts, refused upgrades).
    Scenario(String),
    /// The command line could not be understood.
    Usage(String),
}

impl BenchError {
    /// Wraps an I/O error with the step that produced it.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Io { context, source } => write!(f, "{context}: {source}"),
            BenchError::Server(m) => write!(f, "server: {m}"),
            BenchError::Scenario(m) => write!(f, "scenario: {m}"),
            BenchError::Usage(m) => write!(f, "usage: {m}"),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result alias used across the bench.
pub type Result<T> = std::result::Result<T, BenchError>;
