//! wshub: a WebSocket push and chat server on one `mio` event loop.
//!
//! Browsers connect to `/api/ws/connect?user_id=U` and exchange JSON
//! messages (`{"type", "to", "room", "content"}`) that the server routes to a
//! user, a room or everyone; backends push over REST (`/api/ws/broadcast`,
//! `/api/ws/send`) or, when embedding the crate, through a [`Handle`] from
//! any thread. The contract is docs/protocol.md in the repository; the README says how to run it.
//!
//! ```no_run
//! use wshub::{Config, Message, Mode, Server};
//!
//! let server = Server::bind(Config::default(), Mode::Integrated)?;
//! let handle = server.handle();
//! std::thread::spawn(move || {
//!     // e.g. a payment callback
//!     let paid = Message::new("order_paid", serde_json::json!({"order_id": 42}));
//!     let _ = handle.send_to_user("user123", &paid);
//! });
//! server.run()?;
//! # Ok::<(), wshub::ServerError>(())
//! ```
//!
//! # Layout
//!
//! Data flows one way: readiness → connection state machine → router →
//! outbound queues → writes.
//!
//! | module | holds |
//! | --- | --- |
//! | [`server`] | the public [`Server`] and [`Mode`]: bind, handles, hooks, signals, `run` |
//! | `event_loop` | the one thread: parts that own its state (setup, clock, admission, connections, hub, lifecycle) and a file per step of a pass (poll, read, dispatch, deliver, accept, commands, timers, cluster, write, close) |
//! | `session` | one connection as a state machine over its transport: phase, input, decoder, queue, deadlines; reports what happened, the loop applies it |
//! | `transport` | the stream under a session: plain TCP or TLS; **a new transport is a variant of `transport::Transport`** |
//! | `tls` | `tls.cert`/`tls.key` → a rustls server config; reload on SIGHUP |
//! | [`client_ip`] | the client behind proxies: trusted blocks, forwarding-header walks, the PROXY header, per-address counts |
//! | [`http`] | request heads (`httparse`) and responses |
//! | `http_slots` | which idle pre-upgrade connection gives up its slot at `max_http_connections` |
//! | `rest` | the HTTP endpoints: answer, upgrade or push |
//! | [`frame`] | WebSocket frames in (validated, reassembled) and out (encoded once) |
//! | `sse` | Server-Sent Events: the stream's head, events (encoded once) and heartbeat |
//! | [`deflate`] | permessage-deflate: negotiation, compress once per broadcast, bounded inflate |
//! | [`message`] | the JSON message shapes |
//! | [`audience`] | who a message is for ([`Audience`]) and [`SessionKey`] |
//! | [`router`] | who receives a message: user, room and session indexes |
//! | [`outbound`] | one session's bounded queue of shared frames, written with `writev` |
//! | [`wheel`] | the hashed timer wheel for pings and timeouts |
//! | `rate` | the per-session token bucket and flood detector |
//! | `handle` | the cross-thread [`Handle`] (bounded channel + waker) |
//! | `history` | the last messages per audience (stream), positions, replay for resuming sessions; in a cluster, resumes waiting for Redis (`remote`) |
//! | `hooks` | application callbacks on the loop thread |
//! | [`rooms`] | who may join a room (join modes, grants, join tokens), presence events |
//! | `cluster` | several nodes over Redis: bridge threads, presence, channels; with history on, the streams in Redis (`history`) |
//! | `webhooks` | presence events for the backend: decided on the loop, batched, signed and POSTed by their own thread |
//! | `metrics` | counters and the Prometheus text |
//! | [`config`], `cli`, [`app`] | settings, arguments, what the binaries run |
//! | `auth`, [`jwt`], `jwks` | admin token, origin and JWT checks (on `jsonwebtoken`); JWKS fetched off the loop |
//! | [`ids`] | user id and room name bounds, escaped for logs |
//! | [`alloc`] | the counting allocator behind heap statistics |
//!
//! Modules shown as links are public (the API, and what tests, benches and
//! examples reach); the rest are `pub(crate)`.
//!
//! # Where a change goes
//!
//! - **A new endpoint**: one row in `ROUTES` in `rest` (path, method, scope,
//!   handler). It needs the admin token unless the row ends in `.public()`,
//!   and a unit test there lists the public routes.
//! - **A new config key**: one line in its section's `section!` block in
//!   [`config`] (doc with the default, type, default, check; checks live in
//!   `config/values.rs`), plus a row in README's config table. A new section
//!   (e.g. `tls:`) is one `section!` block and one line in each of
//!   [`Config`] and its raw mirror.
//! - **A new transport** (say QUIC streams, a Unix socket): a variant of
//!   `transport::Transport` that reads and writes plaintext and keeps the
//!   two promises in that module's doc (reads go to `WouldBlock`, pending
//!   output is reported); `add_session` in `event_loop/accept.rs` picks it
//!   at accept.
//!   Sessions, the router and the queues do not change.
//! - **New state on the loop** (a feature's index, queue or counter): a
//!   field of the part of `event_loop` that owns its kind (see the parts
//!   table in that module: e.g. per-session state in the session, who
//!   gets what in the hub, new-connection policy in admission), or its own
//!   struct held by that part; the steps that need it borrow that part.
//!   `EventLoop` itself gains no field.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unused, dead_code)]

pub mod alloc;
pub mod app;
pub mod audience;
pub(crate) mod auth;
pub(crate) mod cli;
pub mod client_ip;
pub(crate) mod cluster;
pub mod config;
pub mod deflate;
mod event_loop;
pub mod frame;
pub(crate) mod handle;
pub(crate) mod history;
pub(crate) mod hooks;
pub mod http;
pub(crate) mod http_slots;
pub mod ids;
pub(crate) mod jwks;
pub mod jwt;
pub mod message;
pub(crate) mod metrics;
pub(crate) mod mode;
pub(crate) mod origin;
pub mod outbound;
pub(crate) mod rate;
pub(crate) mod rest;
pub mod rooms;
pub mod router;
pub mod server;
pub(crate) mod session;
pub(crate) mod sse;
pub(crate) mod startup;
pub(crate) mod tls;
pub(crate) mod transport;
pub(crate) mod upgrade;
pub(crate) mod webhooks;
pub mod wheel;

pub use audience::{Audience, SessionKey};
pub use config::Config;
pub use handle::{Handle, HandleError};
pub use hooks::{Actions, Admission, CloseReason, Hooks, SessionInfo, Verdict};
pub use message::Message;
pub use mode::Mode;
pub use server::{Server, ServerError};
