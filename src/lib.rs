//! wshub: a WebSocket push and chat server on one `mio` event loop, run as
//! a binary (`wshub`, `wshub-standalone`) or embedded in your program.
//!
//! Browsers connect to `/api/ws/connect?user_id=U` (or read
//! `/api/ws/sse` as Server-Sent Events) and exchange JSON messages
//! (`{"type", "to", "room", "content"}`) that the server routes to a user,
//! a room or everyone. Backends push over REST (`/api/ws/send`,
//! `/api/ws/broadcast`, ...) or, embedded, through a [`Handle`] from any
//! thread. Several nodes act as one over Redis when `cluster.redis` is set.
//!
//! # Embedding
//!
//! ```no_run
//! use wshub::{Config, Message, Mode, Server};
//!
//! let server = Server::bind(Config::default(), Mode::Integrated)?;
//! let handle = server.handle(); // Clone + Send + Sync
//! std::thread::spawn(move || {
//!     // e.g. a payment callback
//!     let paid = Message::new("order_paid", serde_json::json!({"order_id": 42}));
//!     let _ = handle.send_to_user("user123", &paid);
//! });
//! server.run()?; // on this thread, until a shutdown completes
//! # Ok::<(), wshub::ServerError>(())
//! ```
//!
//! # The main types
//!
//! - [`Server`] binds ([`Server::bind`], or [`Server::from_listener`] for
//!   a socket you bound), hands out [`Handle`]s, installs [`Hooks`] and
//!   runs the loop; [`Mode`] says which port and routes it serves;
//!   [`ServerError`] (with [`TlsError`] and [`KeyError`] for the files a
//!   config names) why it could not start or stopped.
//! - [`Config`] holds every setting with its default;
//!   [`Config::load`] reads `config.yaml` and the files it names, once:
//!   the server builds from what it read ([`ConfigError`] names the file
//!   and key at fault). Its sections and their value types are in
//!   [`config`].
//! - [`Handle`] pushes to a user, a room or everyone, moves a user's
//!   sessions into or out of a room, asks who is online and shuts the
//!   server down, from any thread and without blocking: a full queue is
//!   [`HandleError::QueueFull`]. At most [`COMMAND_QUEUE_CAPACITY`]
//!   commands wait.
//! - [`Message`] is what you push; [`Incoming`] what a client sent.
//! - [`Hooks`] are your callbacks on the loop thread: on connect, on each
//!   message (answered with a [`Verdict`]), on a join (an [`Admission`]),
//!   on an HTTP request to a route of yours ([`Request`], [`Method`],
//!   answered with a [`Response`]) and on disconnect (with a
//!   [`CloseReason`]). They see the session as [`SessionInfo`] (with its
//!   [`SessionKey`]) and ask for pushes through [`Actions`].
//! - [`alloc::Counting`] is an optional global allocator that makes heap
//!   figures exact in `/metrics`.
//!
//! # Further reading, in the repository
//!
//! README.md is the starting page (the two binaries, a five-minute tour).
//! docs/embedding.md covers embedding and the browser client,
//! docs/configuration.md every key, docs/protocol.md the wire contract
//! (endpoints, messages, close codes); docs/ has a page per feature
//! (rooms, history, SSE, TLS, proxies, webhooks, cluster, security).
//! examples/order_status.rs and examples/custom_routes.rs embed the crate.
//!
//! # Layout, for contributors
//!
//! Data flows one way: readiness → connection state machine → router →
//! outbound queues → writes. Every module but [`config`] and [`alloc`] is
//! `pub(crate)`; the names above are re-exported from them.
//!
//! | module | holds |
//! | --- | --- |
//! | `server` | [`Server`]: bind, handles, hooks, signals, `run` |
//! | `startup` | [`Config::load`]: `config.yaml`, then the files it names (TLS pair, JWT key), checked by building their runtime objects; the server builds them again from the bytes read |
//! | `files` | what a config's files held, read once and kept by path ([`Config::files`]) |
//! | `event_loop` | the one thread: its parts (setup, clock, admission, connections, hub, lifecycle), each owning its state, and a file per step of a pass: poll, read, dispatch, deliver, accept, commands, timers, cluster, write, close; steps that deliver borrow the parts through `Delivery`, steps that keep connections going through `Upkeep` |
//! | `session` | one connection as a state machine over its transport: phase, input, decoder, queue, deadlines; reports what happened, the loop applies it |
//! | `transport` | the stream under a session: plain TCP or TLS; **a new transport is a variant of `transport::Transport`** |
//! | `tls` | `tls.cert`/`tls.key` → a rustls server config; reload on SIGHUP |
//! | `client_ip` | the client behind proxies: trusted blocks, forwarding-header walks, the PROXY header, per-address counts |
//! | `http` | request heads (`httparse`) and responses |
//! | `http_slots` | which idle pre-upgrade connection gives up its slot at `max_http_connections` |
//! | `rest` | the HTTP endpoints: answer, upgrade or push |
//! | `upgrade`, `mode` | leaves: an accepted upgrade (endpoint, user, what it negotiated); which binary's routes |
//! | `frame` | WebSocket frames in (validated, reassembled) and out (encoded once) |
//! | `sse` | Server-Sent Events: the stream's head, events (encoded once) and heartbeat |
//! | `deflate` | permessage-deflate: negotiation, compress once per broadcast, bounded inflate |
//! | `message` | the JSON message shapes |
//! | `audience` | who a message is for (`Audience`) and [`SessionKey`] |
//! | `router` | who receives a message: user, room and session indexes |
//! | `outbound` | one session's bounded queue of shared frames, written with `writev` |
//! | `wheel` | the hashed timer wheel for pings and timeouts |
//! | `rate` | the per-session token bucket and flood detector |
//! | `handle` | the cross-thread [`Handle`] (bounded channel + waker) |
//! | `history` | the last messages per audience (stream), positions, replay for resuming sessions; in a cluster, resumes waiting for Redis (`remote`) |
//! | `hooks` | application callbacks on the loop thread |
//! | `rooms` | who may join a room (join modes, grants, join tokens), presence events |
//! | `cluster` | several nodes over Redis: bridge threads, presence, channels; with history on, the streams in Redis (`history`) |
//! | `webhooks` | presence events for the backend: decided on the loop, batched, signed and POSTed by their own thread |
//! | `metrics` | counters and the Prometheus text |
//! | [`config`], `cli`, `app` | settings (plain values), arguments, what the binaries run |
//! | `auth`, `origin`, `jwt`, `jwks` | admin token, Origin allow-list and JWT checks (on `jsonwebtoken`); JWKS fetched off the loop |
//! | `ids` | user id and room name bounds, escaped for logs |
//! | [`alloc`] | the counting allocator behind heap statistics |
//!
//! Imports run downward only: the leaves (`mode`, `upgrade`, `audience`,
//! ...) at the bottom, then `config`, the features, the `cluster`, the
//! endpoints, the session, the loop and the server on top.
//!
//! # Where a change goes
//!
//! - **A new endpoint**: one row in `ROUTES` in `rest` (path, method, scope,
//!   handler). It needs the admin token unless the row ends in `.public()`,
//!   and a unit test there lists the public routes.
//! - **A new config key**: one line in its section's `section!` block in
//!   [`config`] (doc with the default, type, default, check; checks live in
//!   `config/values.rs`), plus a row in docs/configuration.md. A new
//!   section (e.g. `tls:`) is one `section!` block and one line in each of
//!   [`Config`] and its raw mirror.
//! - **A new transport** (say QUIC streams, a Unix socket): a variant of
//!   `transport::Transport` that reads and writes plaintext and keeps the
//!   two promises in that module's doc (reads go to `WouldBlock`, pending
//!   output is reported); `add_session` in `event_loop/accept.rs` picks it
//!   at accept.
//!   Sessions, the router and the queues do not change.
//! - **New per-connection or per-message state** (a rate, a flag, a
//!   counter): a session's own state goes in the session; what the loop
//!   keeps goes in the one part that owns its kind (table in
//!   `event_loop/mod.rs`). A step that only delivers works through
//!   `Delivery`, one that keeps connections going through `Upkeep`: if the
//!   new state is not in its view, the compiler says so, and the choice of
//!   part is made there, not by a field added to the loop.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unused, dead_code)]

pub mod alloc;
pub(crate) mod app;
pub(crate) mod audience;
pub(crate) mod auth;
pub(crate) mod cli;
pub(crate) mod client_ip;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod deflate;
mod event_loop;
pub(crate) mod files;
pub(crate) mod frame;
pub(crate) mod handle;
pub(crate) mod history;
pub(crate) mod hooks;
pub(crate) mod http;
pub(crate) mod http_slots;
pub(crate) mod ids;
#[doc(hidden)]
pub mod internals;
pub(crate) mod jwks;
pub(crate) mod jwt;
pub(crate) mod message;
pub(crate) mod metrics;
pub(crate) mod mode;
pub(crate) mod origin;
pub(crate) mod outbound;
pub(crate) mod rate;
pub(crate) mod rest;
pub(crate) mod rooms;
pub(crate) mod router;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod sse;
pub(crate) mod startup;
pub(crate) mod tls;
pub(crate) mod transport;
pub(crate) mod upgrade;
pub(crate) mod webhooks;
pub(crate) mod wheel;

pub use audience::SessionKey;
pub use config::{Config, ConfigError};
pub use handle::{Handle, HandleError};
pub use hooks::{Actions, Admission, CloseReason, Hooks, SessionInfo, Verdict};
pub use http::{Method, Request, Response};
pub use jwt::KeyError;
pub use message::{Incoming, Message};
pub use mode::Mode;
pub use server::{Server, ServerError, COMMAND_QUEUE_CAPACITY};
pub use tls::TlsError;
