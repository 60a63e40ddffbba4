//! wshub: a WebSocket push and chat server on one `mio` event loop.
//!
//! Browsers connect to `/api/ws/connect?user_id=U` and exchange JSON
//! messages (`{"type", "to", "room", "content"}`) that the server routes to a
//! user, a room or everyone; backends push over REST (`/api/ws/broadcast`,
//! `/api/ws/send`) or, when embedding the crate, through a [`Handle`] from
//! any thread. The contract is PROTOCOL.md; the README says how to run it.
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
//! | [`server`] | the public [`Server`]: bind, handles, hooks, signals, `run` |
//! | `event_loop` | the one thread: poll, accept, read, dispatch, timers, flush, reap |
//! | [`session`] | one connection: socket, phase, unfinished input, queue |
//! | [`http`] | request heads (`httparse`) and responses |
//! | [`rest`] | the HTTP endpoints: answer, upgrade or push |
//! | [`frame`] | WebSocket frames in (validated, reassembled) and out (encoded once) |
//! | [`message`] | the JSON message shapes |
//! | [`router`] | who receives a message: user, room and session indexes |
//! | [`outbound`] | one session's bounded queue of shared frames, written with `writev` |
//! | [`wheel`] | the hashed timer wheel for pings and timeouts |
//! | [`rate`] | the per-session token bucket and flood detector |
//! | [`handle`] | the cross-thread [`Handle`] (bounded channel + waker) |
//! | [`hooks`] | application callbacks on the loop thread |
//! | [`cluster`] | several nodes over Redis: bridge threads, presence, channels |
//! | [`metrics`] | counters and the Prometheus text |
//! | [`config`], [`cli`], [`app`] | settings, arguments, what the binaries run |
//! | [`auth`], [`jwt`] | admin token, origin and JWT checks |
//! | [`ids`] | user id and room name bounds, escaped for logs |
//! | [`alloc`] | the counting allocator behind heap statistics |
#![deny(missing_docs)]

pub mod alloc;
pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
mod event_loop;
pub mod frame;
pub mod handle;
pub mod hooks;
pub mod http;
pub mod ids;
pub mod jwt;
pub mod message;
pub mod metrics;
pub mod outbound;
pub mod rate;
pub mod rest;
pub mod router;
pub mod server;
pub mod session;
pub mod wheel;

pub use config::Config;
pub use handle::{Handle, HandleError};
pub use hooks::{Actions, CloseReason, Hooks, SessionInfo, Verdict};
pub use message::Message;
pub use rest::Mode;
pub use router::SessionKey;
pub use server::{Server, ServerError};
