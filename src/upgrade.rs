//! An accepted upgrade: which endpoint a new session serves, whose it is
//! and what it negotiated. The endpoints decide it, a session is opened
//! from it, and in a cluster it waits for the user's channel; a leaf, so
//! all three reach it downward.

use crate::deflate::Params;
use crate::history::position::Since;
use crate::jwt::Claims;
use crate::sse::Open;

/// The WebSocket endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/ws/connect`: routed chat messages.
    Chat,
    /// `/api/ws/echo`: every message echoed back.
    Echo,
    /// `/api/ws/sse`: chat traffic received as Server-Sent Events.
    Sse,
}

/// An accepted upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// The session's user id (chat only; `None` is anonymous).
    pub user: Option<String>,
    /// The connect token's claims, when the user came from a token (the
    /// rooms it grants, say).
    pub claims: Option<Claims>,
    /// The complete 101 response.
    pub response: Vec<u8>,
    /// permessage-deflate, when enabled and a client's offer was accepted.
    pub compression: Option<Params>,
    /// `?recover=1` or `?since=` on a chat upgrade while history is on:
    /// the positions to resume from (none for a fresh start).
    pub(crate) resume: Option<Box<Since>>,
    /// What an SSE stream asked for (`None` for WebSockets); boxed, so an
    /// upgrade stays small.
    pub stream: Option<Box<Open>>,
}
