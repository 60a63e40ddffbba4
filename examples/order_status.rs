//! Example: an "order service" thread pushes `order_status` updates to one
//! user through a [`wshub::Handle`] while wshub serves on the main thread —
//! the seed guide's queue-consumer pattern (`wsManager.SendToUser(order.UserID, ...)`).
//!
//! ```text
//! cargo run --example order_status            # port from ./config.yaml (default 8889)
//! cargo run --example order_status -- 9000    # or WSHUB_PORT=9000
//! ```
//!
//! Then connect as `user123`: the demo page at `http://127.0.0.1:8889/`, or
//! any WebSocket client on `ws://127.0.0.1:8889/api/ws/connect?user_id=user123`.
//! The service waits until `user123` is online, then pushes `ORDER_UPDATES`
//! updates (default 10) every `ORDER_INTERVAL_MS` (default 1000) and stops;
//! the server keeps serving until Ctrl-C (Close 1001 to every client, exit 0).
//! Settings come from `./config.yaml` when present, else the built-in defaults.
//!
//! Uses only wshub's public API; logs to stderr.

use std::error::Error;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use serde_json::json;
use wshub::config::ConfigSource;
use wshub::{Config, Handle, HandleError, Message, Mode, Server};

/// The user the service pushes to.
const USER: &str = "user123";
/// An order goes through these states, one update each.
const STATUSES: [&str; 3] = ["paid", "shipped", "delivered"];
/// How often the service asks whether the user is online yet.
const ONLINE_POLL: Duration = Duration::from_millis(100);

/// What the order service does, from the environment.
#[derive(Debug, Clone, Copy)]
struct Plan {
    updates: usize,
    interval: Duration,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("order_status: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let (mut config, source) = Config::load(None)?;
    if let Some(port) = port_override(std::env::args().nth(1))? {
        config.app.port = port;
    }
    let plan = Plan {
        updates: env_number("ORDER_UPDATES", 10)?,
        interval: Duration::from_millis(env_number("ORDER_INTERVAL_MS", 1000)?),
    };
    let level = config.effective_log_level(std::env::var("RUST_LOG").ok().as_deref());
    simple_logger::SimpleLogger::new()
        .with_level(level)
        .init()?;
    if let ConfigSource::File(path) = source {
        log::info!("config: {}", path.display());
    }
    let server = Server::bind(config, Mode::Integrated)?.shutdown_on_signals()?;
    log::info!(
        "connect as {USER}: ws://{}/api/ws/connect?user_id={USER}",
        server.local_addr()
    );
    let handle = server.handle();
    let service = thread::Builder::new()
        .name("order-service".into())
        .spawn(move || order_service(&handle, plan))?;
    server.run()?;
    // The service sees `Closed` on its next call and returns.
    if service.join().is_err() {
        return Err("the order service thread panicked".into());
    }
    Ok(())
}

/// The port from the first argument, else `WSHUB_PORT`, else none.
fn port_override(arg: Option<String>) -> Result<Option<u16>, String> {
    let (name, text) = match (arg, std::env::var("WSHUB_PORT").ok()) {
        (Some(arg), _) => ("the first argument", arg),
        (None, Some(env)) => ("WSHUB_PORT", env),
        (None, None) => return Ok(None),
    };
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| format!("{name}: {text:?} is not a port number"))
}

/// A non-negative integer from the environment, or `default` when unset.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{name}: {text:?} is not a non-negative integer")),
        Err(_) => Ok(default),
    }
}

/// The business thread: waits for the user, pushes the updates, stops.
fn order_service(handle: &Handle, plan: Plan) {
    if !wait_until_online(handle) {
        return;
    }
    for n in 0..plan.updates {
        if n > 0 {
            thread::sleep(plan.interval);
        }
        // Three updates per order: ORD100001 paid, shipped, delivered; ORD100002 ...
        let order_id = format!("ORD{}", 100_001 + n / STATUSES.len());
        let status = STATUSES[n % STATUSES.len()];
        let update = Message::new(
            "order_status",
            json!({ "order_id": order_id, "status": status }),
        );
        match handle.send_to_user_counted(USER, &update) {
            Ok(sessions) => log::info!(
                "pushed order_status {order_id} {status} to {USER}: {sessions} session(s)"
            ),
            Err(HandleError::Closed) => return,
            // A push that cannot be queued now is dropped, as a consumer
            // that must not stall would do; the next update follows.
            Err(e) => log::warn!("order_status {order_id} {status} not pushed: {e}"),
        }
    }
    log::info!(
        "order service: all {} updates pushed; Ctrl-C stops the server",
        plan.updates
    );
}

/// Polls until `USER` is online; false when the server stopped first.
fn wait_until_online(handle: &Handle) -> bool {
    log::info!("order service: waiting for {USER} to connect");
    loop {
        match handle.online_users() {
            Ok(users) if users.iter().any(|u| u == USER) => return true,
            Ok(_) | Err(HandleError::QueueFull) | Err(HandleError::Timeout) => {}
            Err(_) => return false,
        }
        thread::sleep(ONLINE_POLL);
    }
}
