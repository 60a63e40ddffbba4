//! [`Mode`]: which of the two binaries a server runs as. A leaf: the server
//! starts with it, the endpoints and the loop read it.

/// Which port the server was started on, which decides what it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `wshub`: the app port; `/api/ws/*` only while `websocket.enable`.
    Integrated,
    /// `wshub-standalone`: the WebSocket port; `/api/ws/*` always.
    Standalone,
}
