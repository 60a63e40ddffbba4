//! **Not API.** What the crate's own fuzz tests (tests/fuzz.rs), a few
//! integration tests and the micro-benchmarks (benches/) reach below the
//! public face: parsers, the router, the timer wheel, frame and queue
//! builders, a token signer for test tokens, and the two binaries' shared
//! `main`. It is public only because those are separate crates; it is
//! hidden from the docs, nothing here is stable, and anything may change
//! or go in any release. Embedding code uses the crate root.

pub use crate::app::main;
pub use crate::audience::Audience;

/// Client addresses behind proxies.
pub mod client_ip {
    pub use crate::client_ip::{client_address, proxy, ClientIpHeader, Clients, PerIp, Trusted};
}

/// permessage-deflate.
pub mod deflate {
    pub use crate::deflate::{negotiate, Codec, Encoded, InflateError, Params};
}

/// WebSocket frames.
pub mod frame {
    pub use crate::frame::{encode, encode_compressed, Decoder, Inbound, Kind, Step, Wire};
}

/// HTTP heads.
pub mod http {
    pub use crate::http::{find_head_end, parse_head, Method, Response};
}

/// User id and room name bounds.
pub mod ids {
    pub use crate::ids::check;
}

/// JWT checks, and the HS256 signer tests make tokens with.
pub mod jwt {
    pub use crate::jwt::{sign_hs256, Verifier};
}

/// The JSON message shapes.
pub mod message {
    pub use crate::message::{error_json, parse, Incoming, MessageError, Outgoing};
}

/// One session's outbound queue.
pub mod outbound {
    pub use crate::outbound::{Flushed, Outbound};
}

/// Room admission.
pub mod rooms {
    pub use crate::rooms::Rooms;
}

/// The router's indexes.
pub mod router {
    pub use crate::router::{Change, JoinError, Limits, Route, Router};
}

/// The timer wheel.
pub mod wheel {
    pub use crate::wheel::Wheel;
}
