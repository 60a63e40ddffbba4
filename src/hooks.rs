//! Application hooks that run on the event-loop thread: connect (may refuse),
//! message (may consume), join (may refuse), disconnect (with the reason).
//!
//! Hooks never touch sessions directly. What they want done (push, broadcast,
//! disconnect) goes into [`Actions`], which the loop applies after the event
//! that ran the hook, never re-entrantly. A hook must not block: it runs on
//! the thread that serves every connection.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::audience::Audience;
use crate::audience::SessionKey;
use crate::handle::Command;
use crate::http::{Request, Response};
use crate::message::{Incoming, Message};

/// Most actions one hook call may request; more are refused (logged), so a
/// hook cannot grow a queue without bound.
pub const MAX_ACTIONS: usize = 1024;

/// The session a hook is called for.
#[derive(Debug, Clone, Copy)]
pub struct SessionInfo<'a> {
    /// Identifies the session for as long as it lives.
    pub key: SessionKey,
    /// Its user id; `None` for anonymous sessions.
    pub user: Option<&'a str>,
    /// The address that connected: the TCP peer, or the source a PROXY
    /// header from a trusted balancer named.
    pub peer: SocketAddr,
    /// The client behind trusted proxies (README "Behind a proxy"); the
    /// peer's address when no proxy is trusted.
    pub client: IpAddr,
}

/// Why a session ended.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent Close (with its code, if any) or dropped the connection.
    Client(Option<u16>),
    /// The client broke the protocol; the server closed with this code.
    Protocol(u16),
    /// Its queue was full (Close 1013).
    SlowConsumer,
    /// Nothing heard from it for `pong_wait`, or the HTTP request timed out.
    Timeout,
    /// A write made no progress for `write_wait`.
    WriteStalled,
    /// The server is shutting down (Close 1001).
    Shutdown,
    /// Closed by the application (`disconnect_user`).
    Server,
    /// A socket error.
    Io(String),
    /// A closing handshake completed.
    Finished,
    /// Sent at over ten times `max_messages_per_second` for 5 s (Close 1008).
    RateLimited,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Client(Some(code)) => write!(f, "client closed ({code})"),
            CloseReason::Client(None) => f.write_str("client closed"),
            CloseReason::Protocol(code) => write!(f, "protocol error ({code})"),
            CloseReason::SlowConsumer => f.write_str("slow consumer (1013)"),
            CloseReason::Timeout => f.write_str("timed out"),
            CloseReason::WriteStalled => f.write_str("write stalled"),
            CloseReason::Shutdown => f.write_str("server shutting down (1001)"),
            CloseReason::Server => f.write_str("disconnected by server"),
            CloseReason::Io(e) => write!(f, "socket error: {e}"),
            CloseReason::Finished => f.write_str("closed"),
            CloseReason::RateLimited => f.write_str("rate limit exceeded (1008)"),
        }
    }
}

/// What `on_message` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the router handle the message as usual.
    Relay,
    /// The hook handled it; the router does nothing.
    Consume,
}

/// What `on_join` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The session joins the room.
    Allow,
    /// Refused: the client gets `not allowed to join "R"`.
    Deny,
}

/// Work a hook asks the loop to do once the current event is handled.
#[derive(Debug, Default)]
pub struct Actions {
    queued: Vec<Command>,
}

impl Actions {
    /// Pushes `message` to every session of `user`. False if refused (too many actions).
    pub fn send_to_user(&mut self, user: &str, message: &Message) -> bool {
        self.add(Command::Push {
            target: Audience::User(user.to_owned()),
            json: message.to_json(),
            reply: None,
        })
    }

    /// Pushes `message` to every chat session.
    pub fn broadcast(&mut self, message: &Message) -> bool {
        self.add(Command::Push {
            target: Audience::EVERYONE,
            json: message.to_json(),
            reply: None,
        })
    }

    /// Pushes `message` to every member of `room`.
    pub fn broadcast_to_room(&mut self, room: &str, message: &Message) -> bool {
        self.add(Command::Push {
            target: Audience::room(room.to_owned()),
            json: message.to_json(),
            reply: None,
        })
    }

    /// Closes every session of `user` with 1000.
    pub fn disconnect_user(&mut self, user: &str) -> bool {
        self.add(Command::DisconnectUser(user.to_owned()))
    }

    fn add(&mut self, command: Command) -> bool {
        if self.queued.len() >= MAX_ACTIONS {
            log::warn!("hook requested more than {MAX_ACTIONS} actions; dropping the rest");
            return false;
        }
        self.queued.push(command);
        true
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    pub(crate) fn take(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.queued)
    }
}

/// Callbacks from the event loop. Every method has a default that does nothing.
pub trait Hooks: Send {
    /// A client is about to be upgraded on `/api/ws/connect`. `Err(reason)`
    /// refuses it with 403 and `{"error": reason}`.
    fn on_connect(
        &mut self,
        _session: &SessionInfo<'_>,
        _actions: &mut Actions,
    ) -> Result<(), String> {
        Ok(())
    }

    /// A valid JSON message arrived from a chat session, before routing.
    fn on_message(
        &mut self,
        _session: &SessionInfo<'_>,
        _message: &Incoming<'_>,
        _actions: &mut Actions,
    ) -> Verdict {
        Verdict::Relay
    }

    /// A client asked to join `room` and `rooms.join` allowed it (in any
    /// mode); return [`Admission::Deny`] to refuse. Joins made by the
    /// server (REST, handle) do not ask.
    fn on_join(
        &mut self,
        _session: &SessionInfo<'_>,
        _room: &str,
        _actions: &mut Actions,
    ) -> Admission {
        Admission::Allow
    }

    /// An HTTP request that is not a WebSocket upgrade, before wshub's own
    /// routes: return a response to serve your own routes next to wshub's
    /// (integrated mode), or `None` to let wshub answer.
    fn on_request(
        &mut self,
        _request: &Request,
        _body: &[u8],
        _actions: &mut Actions,
    ) -> Option<Response> {
        None
    }

    /// A chat session left every index.
    fn on_disconnect(
        &mut self,
        _session: &SessionInfo<'_>,
        _reason: &CloseReason,
        _actions: &mut Actions,
    ) {
    }
}

/// The hooks used when the application sets none.
#[derive(Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}
