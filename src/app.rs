//! What both binaries do: parse the command line, load the config, start
//! logging, raise the descriptor limit, and run the server until a signal.
//!
//! Kept out of `src/bin/` so the two binaries are one line each.

use std::path::Path;
use std::process::ExitCode;

use log::{info, warn};

use crate::cli::{self, Command};
use crate::config::{Config, ConfigSource, DEFAULT_CONFIG_PATH};
use crate::mode::Mode;
use crate::server::Server;

/// Runs a binary in `mode` with the process's arguments; returns its exit code.
pub fn main(mode: Mode) -> ExitCode {
    let (program, what) = match mode {
        Mode::Integrated => (
            "wshub",
            "WebSocket push and chat server (integrated mode, on app.port)",
        ),
        Mode::Standalone => (
            "wshub-standalone",
            "WebSocket push and chat server (standalone mode, on websocket.port)",
        ),
    };
    // args_os: a non-UTF-8 argument must not panic.
    let args = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    let config_path = match cli::parse_args(args) {
        Ok(Command::Help) => {
            eprint!("{}", cli::usage(program, what));
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            eprintln!("{program} {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run { config }) => config,
        Err(e) => {
            eprintln!("{program}: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    let default = Path::new(DEFAULT_CONFIG_PATH);
    let (config, source) = match Config::load_from(config_path.as_deref(), default) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let level = config.effective_log_level(std::env::var("RUST_LOG").ok().as_deref());
    // simple_logger writes to stderr (feature "stderr"); stdout stays empty.
    let _ = simple_logger::SimpleLogger::new().with_level(level).init();
    match source {
        ConfigSource::File(path) => info!("config: {}", path.display()),
        ConfigSource::BuiltInDefaults => {
            info!("config: ./config.yaml not found, using built-in defaults")
        }
    }
    raise_descriptor_limit();
    warn_if_push_api_open(&config, mode);
    let server = Server::bind(config, mode).and_then(Server::shutdown_on_signals);
    match server.and_then(Server::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Every connection is a descriptor: lift the soft limit to the hard one.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            warn!("cannot read the open-file limit");
            return;
        }
        let wanted = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if limit.rlim_cur < limit.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    info!(
        "open-file limit: {} (each connection uses one)",
        limit.rlim_cur
    );
}

fn warn_if_push_api_open(config: &Config, mode: Mode) {
    let api = mode == Mode::Standalone || config.websocket.enable;
    let loopback = matches!(config.app.host.as_str(), "127.0.0.1" | "localhost" | "::1");
    if api && !loopback && config.websocket.admin_token.is_empty() {
        warn!(
            "the push API (/api/ws/broadcast, /api/ws/send, /api/ws/status) is open to anyone who can reach {}: set websocket.admin_token",
            config.app.host
        );
    }
}
