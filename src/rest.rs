//! The HTTP endpoints of docs/protocol.md section 3: decides, for one complete
//! request, what the loop does — answer, upgrade, or push and then answer.
//!
//! Pure: reads the config and the router's indexes, returns an [`Outcome`].
//! No sockets, no clock (the Unix time for token checks is passed in).
//! Rejection order for upgrades: method/path → upgrade headers → Origin →
//! JWT → capacity.

use crate::audience::Audience;
use crate::auth;
use crate::cluster::view::View;
use crate::config::{Config, WebSocketConfig};
use crate::deflate;
use crate::history::position::Since;
use crate::http::{switching_protocols, Method, Request, Response};
use crate::ids;
use crate::jwt;
use crate::message::{self, Incoming, Outgoing};
use crate::metrics::HandshakeFailure;
use crate::router::Router;
use crate::server::Mode;

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
    pub claims: Option<jwt::Claims>,
    /// The complete 101 response.
    pub response: Vec<u8>,
    /// permessage-deflate, when enabled and a client's offer was accepted.
    pub compression: Option<deflate::Params>,
    /// `?recover=1` or `?since=` on a chat upgrade while history is on:
    /// the positions to resume from (none for a fresh start).
    pub(crate) resume: Option<Box<Since>>,
    /// What an SSE stream asked for (`None` for WebSockets); boxed, so an
    /// upgrade stays small.
    pub stream: Option<Box<crate::sse::Open>>,
}

/// What the loop does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send this response.
    Respond(Response),
    /// Refuse an upgrade with this response, counted under this reason.
    Refuse(Response, HandshakeFailure),
    /// Switch the connection to WebSocket.
    Upgrade(Upgrade),
    /// Deliver `json` to `target`, then answer `{"sent": n}`.
    Push {
        /// The audience.
        target: Audience<String>,
        /// The message, serialized once.
        json: Vec<u8>,
    },
    /// Answer with the metrics text (admin already checked).
    Metrics,
}

/// What a request may look at.
#[derive(Debug)]
pub struct Context<'a> {
    /// Settings.
    pub config: &'a Config,
    /// Integrated or standalone.
    pub mode: Mode,
    /// The indexes, for status.
    pub router: &'a Router,
    /// Open sessions (chat, echo and SSE), for `max_connections`.
    pub open_websockets: usize,
    /// Seconds since the Unix epoch, for token expiry.
    pub now_unix: u64,
    /// Checks connect tokens against `jwt:`.
    pub jwt: &'a jwt::Verifier,
    /// How this node sees the cluster (`Off` unless `cluster.redis` is set).
    pub cluster: Cluster<'a>,
}

/// The cluster as the REST endpoints see it.
#[derive(Debug, Clone, Copy)]
pub enum Cluster<'a> {
    /// `cluster.redis` is not set: a single node.
    Off,
    /// Set, but Redis is unreachable: only this node is known.
    Down,
    /// Up, with the other live nodes.
    Up(&'a View),
}

/// The demo page and its files: `(path, content type, body)`.
const STATIC_FILES: [(&str, &str, &str); 4] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("demo/index.html"),
    ),
    (
        "/demo.js",
        "application/javascript",
        include_str!("demo/demo.js"),
    ),
    ("/demo.css", "text/css", include_str!("demo/demo.css")),
    (
        "/wshub.js",
        "application/javascript",
        include_str!("../clients/js/wshub.js"),
    ),
];

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone (health checks, browsers upgrading).
    Public,
    /// Only with `Authorization: Bearer <admin_token>` when one is set.
    Admin,
}

/// Where a route exists at all; elsewhere its path is 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Always served.
    Always,
    /// `/api/ws/*`: standalone mode, or integrated while `websocket.enable`.
    Api,
    /// `/api/ws/echo`: like `Api`, and only while `websocket.echo`.
    Echo,
}

/// The methods routes are declared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
}

impl Verb {
    fn matches(self, method: &Method) -> bool {
        matches!(
            (self, method),
            (Verb::Get, Method::Get) | (Verb::Post, Method::Post)
        )
    }

    /// For the `Allow` header of a 405.
    fn name(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
        }
    }
}

/// What answers a route, once its scope, method and access are checked.
type Handler = fn(&Request, &[u8], &Context<'_>) -> Outcome;

/// One endpoint: a row of [`ROUTES`].
#[derive(Debug)]
struct Route {
    path: &'static str,
    verb: Verb,
    scope: Scope,
    access: Access,
    handler: Handler,
}

impl Route {
    /// A route that needs the admin token: safe by default, so a new push
    /// endpoint cannot be left open by forgetting a check.
    const fn new(verb: Verb, path: &'static str, scope: Scope, handler: Handler) -> Route {
        Route {
            path,
            verb,
            scope,
            access: Access::Admin,
            handler,
        }
    }

    /// Opens the route to anyone: say so only for health and upgrades.
    const fn public(self) -> Route {
        Route {
            access: Access::Public,
            ..self
        }
    }
}

/// Every endpoint but the demo page's files (docs/protocol.md sections 3 and 6).
/// A new endpoint is one row here; it needs the admin token unless the row
/// says `.public()`. A wrong method gets 405 before the token is looked at.
const ROUTES: [Route; 8] = [
    Route::new(Verb::Get, "/health", Scope::Always, |r, _, ctx| {
        health(r, ctx)
    })
    .public(),
    Route::new(Verb::Get, "/metrics", Scope::Always, |_, _, _| {
        Outcome::Metrics
    }),
    Route::new(
        Verb::Get,
        "/api/ws/connect",
        Scope::Api,
        |request, _, ctx| upgrade(request, ctx, Endpoint::Chat),
    )
    .public(),
    Route::new(Verb::Get, "/api/ws/echo", Scope::Echo, |request, _, ctx| {
        upgrade(request, ctx, Endpoint::Echo)
    })
    .public(),
    Route::new(Verb::Get, "/api/ws/sse", Scope::Api, |request, _, ctx| {
        sse(request, ctx)
    })
    .public(),
    Route::new(Verb::Get, "/api/ws/status", Scope::Api, |_, _, ctx| {
        status(ctx)
    }),
    Route::new(
        Verb::Post,
        "/api/ws/broadcast",
        Scope::Api,
        |_, body, ctx| broadcast(body, &ctx.config.websocket),
    ),
    Route::new(Verb::Post, "/api/ws/send", Scope::Api, |_, body, ctx| {
        send(body, &ctx.config.websocket)
    }),
];

/// Decides what to do with one complete request and its body.
pub fn handle(request: &Request, body: &[u8], ctx: &Context<'_>) -> Outcome {
    let path = request.path.as_str();
    let Some(route) = ROUTES.iter().find(|r| r.path == path) else {
        return static_file(path, request.method == Method::Get, ctx).unwrap_or_else(not_found);
    };
    let ws = &ctx.config.websocket;
    let api_enabled = ctx.mode == Mode::Standalone || ws.enable;
    let in_scope = match route.scope {
        Scope::Always => true,
        Scope::Api => api_enabled,
        Scope::Echo => api_enabled && ws.echo,
    };
    if !in_scope {
        return not_found();
    }
    if !route.verb.matches(&request.method) {
        return wrong_method(route.verb.name());
    }
    if route.access == Access::Admin {
        if let Some(refused) = admin(request, ctx) {
            return refused;
        }
    }
    (route.handler)(request, body, ctx)
}

fn ok(value: serde_json::Value) -> Outcome {
    Outcome::Respond(Response::json(200, &value))
}

fn not_found() -> Outcome {
    Outcome::Respond(Response::error(404, "not found"))
}

fn wrong_method(allowed: &str) -> Outcome {
    Outcome::Respond(
        Response::error(405, "method not allowed").with_header("Allow", allowed.to_owned()),
    )
}

fn bad_request(reason: &str) -> Outcome {
    Outcome::Respond(Response::error(400, reason))
}

/// `Some(401)` unless the admin token (when configured) was presented.
fn admin(request: &Request, ctx: &Context<'_>) -> Option<Outcome> {
    let token = &ctx.config.websocket.admin_token;
    if auth::admin_allowed(token.expose(), request.authorization.as_deref()) {
        None
    } else {
        Some(Outcome::Respond(
            Response::error(401, "admin token required")
                .with_header("WWW-Authenticate", "Bearer".to_owned()),
        ))
    }
}

fn static_file(path: &str, get: bool, ctx: &Context<'_>) -> Option<Outcome> {
    let served = ctx.mode == Mode::Integrated && ctx.config.app.demo && ctx.config.websocket.enable;
    let (_, content_type, body) = STATIC_FILES.iter().find(|(p, _, _)| *p == path)?;
    if !served {
        return None;
    }
    if !get {
        return Some(wrong_method("GET"));
    }
    Some(Outcome::Respond(Response::raw(
        200,
        content_type,
        body.as_bytes().to_vec(),
    )))
}

/// Cut off from Redis the node still serves its own sessions, so plain
/// `/health` stays 200 (degraded): a shared Redis outage must not make a
/// load balancer drain every node at once. `?cluster=required` answers 503
/// then, for balancers that should drain a node cut off alone.
fn health(request: &Request, ctx: &Context<'_>) -> Outcome {
    match ctx.cluster {
        Cluster::Down => {
            let required = auth::query_param(&request.target, "cluster")
                .ok()
                .flatten()
                .is_some_and(|v| v == "required");
            Outcome::Respond(Response::json(
                if required { 503 } else { 200 },
                &serde_json::json!({ "status": "degraded", "cluster": "down" }),
            ))
        }
        _ => ok(serde_json::json!({ "status": "ok" })),
    }
}

fn status(ctx: &Context<'_>) -> Outcome {
    let local_count = ctx.router.online_count();
    let local_users = ctx.router.online_users();
    match ctx.cluster {
        Cluster::Off => ok(serde_json::json!({
            "online_count": local_count,
            "online_users": local_users,
        })),
        Cluster::Up(view) => ok(serde_json::json!({
            "online_count": local_count + view.sessions(),
            "online_users": view.merged_users(local_users),
            "nodes": 1 + view.nodes(),
        })),
        // Cut off: only what this node knows for sure.
        Cluster::Down => ok(serde_json::json!({
            "online_count": local_count,
            "online_users": local_users,
            "nodes": 1,
            "cluster": "down",
        })),
    }
}

/// A push body: JSON within `max_json_depth`, ids within `max_id_bytes`.
fn push_message<'b>(body: &'b [u8], ws: &WebSocketConfig) -> Result<Incoming<'b>, Outcome> {
    let message =
        message::parse_limited(body, ws.max_json_depth).map_err(|e| bad_request(&e.to_string()))?;
    let fields = [
        ("to", message.to()),
        ("room", message.room()),
        ("from", message.from()),
    ];
    ids::check_fields(fields, ws.max_id_bytes).map_err(|e| bad_request(&e.to_string()))?;
    Ok(message)
}

fn broadcast(body: &[u8], ws: &WebSocketConfig) -> Outcome {
    let message = match push_message(body, ws) {
        Ok(message) => message,
        Err(outcome) => return outcome,
    };
    let room = message.room();
    let outgoing = Outgoing {
        kind: &message.kind,
        to: None,
        from: None,
        room,
        content: message.content,
    };
    Outcome::Push {
        target: room.map_or(Audience::EVERYONE, |r| Audience::room(r.to_owned())),
        json: outgoing.to_json(),
    }
}

fn send(body: &[u8], ws: &WebSocketConfig) -> Outcome {
    let message = match push_message(body, ws) {
        Ok(message) => message,
        Err(outcome) => return outcome,
    };
    let Some(to) = message.to() else {
        return bad_request("message needs a non-empty string \"to\"");
    };
    let outgoing = Outgoing {
        kind: &message.kind,
        to: Some(to),
        from: message.from(),
        room: None,
        content: message.content,
    };
    Outcome::Push {
        target: Audience::User(to.to_owned()),
        json: outgoing.to_json(),
    }
}

fn refuse(status: u16, reason: &str, why: HandshakeFailure) -> Outcome {
    Outcome::Refuse(Response::error(status, reason), why)
}

fn upgrade(request: &Request, ctx: &Context<'_>, endpoint: Endpoint) -> Outcome {
    let ws = &ctx.config.websocket;
    if !request.upgrade_websocket || !request.connection_upgrade {
        return refuse(
            400,
            "WebSocket upgrade required",
            HandshakeFailure::BadRequest,
        );
    }
    if request.websocket_version.as_deref() != Some("13") {
        return Outcome::Refuse(
            Response::error(426, "unsupported Sec-WebSocket-Version: use 13")
                .with_header("Sec-WebSocket-Version", "13".to_owned()),
            HandshakeFailure::BadRequest,
        );
    }
    let Some(key) = request.websocket_key.as_deref().filter(|k| valid_key(k)) else {
        return refuse(
            400,
            "invalid Sec-WebSocket-Key",
            HandshakeFailure::BadRequest,
        );
    };
    if !auth::origin_allowed(&ws.allowed_origins, request.origin.as_deref()) {
        return refuse(403, "origin not allowed", HandshakeFailure::Origin);
    }
    let (identity, resume) = match endpoint {
        Endpoint::Echo => (auth::Identity::default(), None),
        Endpoint::Chat | Endpoint::Sse => {
            match identity(request, ctx).and_then(|i| Ok((i, resume(request, ctx)?))) {
                Ok(found) => found,
                Err(outcome) => return outcome,
            }
        }
    };
    if ctx.open_websockets >= ws.max_connections {
        return refuse(503, "server at capacity", HandshakeFailure::Capacity);
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    // Never negotiated unless enabled; an offer we cannot honour is declined
    // and the session proceeds uncompressed.
    let agreement = request
        .websocket_extensions
        .as_deref()
        .filter(|_| ws.compression)
        .and_then(deflate::negotiate);
    Outcome::Upgrade(Upgrade {
        endpoint,
        user: identity.user,
        claims: identity.claims,
        response: switching_protocols(&accept, agreement.as_ref().map(|a| a.response.as_str())),
        compression: agreement.map(|a| a.params),
        resume,
        stream: None,
    })
}

/// `GET /api/ws/sse`: the same checks as a chat upgrade (Origin, identity,
/// capacity), answered with the head of an event stream.
fn sse(request: &Request, ctx: &Context<'_>) -> Outcome {
    let ws = &ctx.config.websocket;
    if !auth::origin_allowed(&ws.allowed_origins, request.origin.as_deref()) {
        return refuse(403, "origin not allowed", HandshakeFailure::Origin);
    }
    let rooms = match auth::query_param(&request.target, "rooms") {
        Ok(list) => crate::sse::rooms(list.as_deref().unwrap_or_default()),
        Err(e) => return refuse(400, &e.to_string(), HandshakeFailure::BadRequest),
    };
    let last_event_id = match request.last_event_id.as_deref() {
        Some(id) => Some(id.to_owned()),
        None => match auth::query_param(&request.target, "last_event_id") {
            Ok(id) => id,
            Err(e) => return refuse(400, &e.to_string(), HandshakeFailure::BadRequest),
        },
    };
    let identity = match identity(request, ctx) {
        Ok(identity) => identity,
        Err(outcome) => return outcome,
    };
    if ctx.open_websockets >= ws.max_connections {
        return refuse(503, "server at capacity", HandshakeFailure::Capacity);
    }
    // Echoed for cross-origin EventSource; only a plain header value is.
    let origin = request
        .origin
        .as_deref()
        .filter(|o| !o.is_empty() && o.iter().all(u8::is_ascii_graphic))
        .and_then(|o| std::str::from_utf8(o).ok());
    Outcome::Upgrade(Upgrade {
        endpoint: Endpoint::Sse,
        user: identity.user,
        claims: identity.claims,
        response: crate::sse::response_head(origin),
        compression: None,
        resume: None,
        stream: Some(Box::new(crate::sse::Open {
            rooms,
            last_event_id,
        })),
    })
}

/// `?recover=1` / `?since=P1,P2`, read only while history is on (off, the
/// parameters are ignored as before). A `since` that does not parse: 400.
fn resume(request: &Request, ctx: &Context<'_>) -> Result<Option<Box<Since>>, Outcome> {
    if !ctx.config.history.enabled() {
        return Ok(None);
    }
    let query = |name: &str| {
        auth::query_param(&request.target, name)
            .map_err(|e| refuse(400, &e.to_string(), HandshakeFailure::BadRequest))
    };
    let recover = matches!(query("recover")?.as_deref(), Some("1" | "true"));
    match query("since")? {
        Some(text) => Since::parse(&text).map(|s| Some(Box::new(s))).map_err(|e| {
            refuse(
                400,
                &format!("invalid since: {e}"),
                HandshakeFailure::BadRequest,
            )
        }),
        None => Ok(recover.then(Box::default)),
    }
}

fn identity(request: &Request, ctx: &Context<'_>) -> Result<auth::Identity, Outcome> {
    let query = |name: &str| {
        auth::query_param(&request.target, name)
            .map_err(|e| refuse(400, &e.to_string(), HandshakeFailure::BadRequest))
    };
    let user_id = query("user_id")?;
    let query_token = query("token")?;
    let identity = auth::connect_identity(
        ctx.jwt,
        ctx.config.jwt.required,
        auth::bearer_token(request.authorization.as_deref()),
        query_token.as_deref(),
        user_id.as_deref(),
        ctx.now_unix,
    )
    .map_err(|e| refuse(401, &e.to_string(), HandshakeFailure::Auth))?;
    if let Some(user) = &identity.user {
        ids::check(user, ctx.config.websocket.max_id_bytes).map_err(|e| {
            refuse(
                400,
                &format!("invalid user id: {e}"),
                HandshakeFailure::BadRequest,
            )
        })?;
    }
    Ok(identity)
}

/// A key is the base64 of 16 bytes: 24 characters ending in "==".
fn valid_key(key: &str) -> bool {
    use base64::Engine as _;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|raw| raw.len() == 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::SessionKey;
    use crate::http::parse_head;
    use std::rc::Rc;

    fn request(text: &str) -> Request {
        parse_head(text.as_bytes(), 16384, 1 << 20)
            .unwrap()
            .unwrap()
    }

    fn run(config: &Config, mode: Mode, text: &str, body: &str) -> Outcome {
        let mut router = Router::default();
        router.add_session(
            SessionKey {
                index: 0,
                generation: 1,
            },
            Some(&Rc::from("zed")),
        );
        router.add_session(
            SessionKey {
                index: 1,
                generation: 1,
            },
            Some(&Rc::from("amy")),
        );
        let ctx = Context {
            config,
            mode,
            router: &router,
            open_websockets: 2,
            now_unix: 1_700_000_000,
            jwt: &jwt::Verifier::from_config(&config.jwt).unwrap(),
            cluster: Cluster::Off,
        };
        handle(&request(text), body.as_bytes(), &ctx)
    }

    #[test]
    fn routes_need_the_admin_token_unless_declared_public() {
        let public: Vec<&str> = ROUTES
            .iter()
            .filter(|r| r.access == Access::Public)
            .map(|r| r.path)
            .collect();
        // Widening this list is a security decision: docs/protocol.md section 6.
        assert_eq!(
            public,
            ["/health", "/api/ws/connect", "/api/ws/echo", "/api/ws/sse"]
        );
        let mut config = Config::default();
        config.websocket.admin_token = "adm".into();
        config.websocket.echo = true;
        for route in ROUTES.iter().filter(|r| r.access == Access::Admin) {
            let text = format!(
                "{} {} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n",
                route.verb.name(),
                route.path
            );
            match run(&config, Mode::Standalone, &text, "{}") {
                Outcome::Respond(response) => assert_eq!(response.status, 401, "{}", route.path),
                other => panic!("{}: {other:?}", route.path),
            }
        }
    }

    fn status_and_body(outcome: Outcome) -> (u16, String) {
        match outcome {
            Outcome::Respond(r) | Outcome::Refuse(r, _) => {
                (r.status, String::from_utf8(r.body).unwrap())
            }
            other => panic!("not a response: {other:?}"),
        }
    }

    const UPGRADE: &str = "GET /api/ws/connect?user_id=u1 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn upgrade_answers_with_the_rfc_accept_key() {
        let Outcome::Upgrade(up) = run(&Config::default(), Mode::Integrated, UPGRADE, "") else {
            panic!("no upgrade")
        };
        assert_eq!(up.user.as_deref(), Some("u1"));
        let text = String::from_utf8(up.response).unwrap();
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn status_lists_sorted_users() {
        let out = run(
            &Config::default(),
            Mode::Integrated,
            "GET /api/ws/status HTTP/1.1\r\n\r\n",
            "",
        );
        assert_eq!(
            status_and_body(out),
            (
                200,
                r#"{"online_count":2,"online_users":["amy","zed"]}"#.into()
            )
        );
    }

    #[test]
    fn cluster_status_adds_the_other_nodes_and_health_degrades_when_cut_off() {
        use crate::cluster::view::Entry;
        let config = Config::default();
        let router = Router::default();
        let entry: Entry =
            serde_json::from_str(r#"{"sessions":2,"users":{"bo":2},"rooms":{}}"#).unwrap();
        let view = View::new(vec![("n2".into(), entry)]);
        let get = |path: &str, view: Option<&View>| {
            let ctx = Context {
                config: &config,
                mode: Mode::Integrated,
                router: &router,
                open_websockets: 0,
                now_unix: 0,
                jwt: &jwt::Verifier::from_config(&config.jwt).unwrap(),
                cluster: view.map_or(Cluster::Down, Cluster::Up),
            };
            status_and_body(handle(
                &request(&format!("GET {path} HTTP/1.1\r\n\r\n")),
                b"",
                &ctx,
            ))
        };
        assert_eq!(
            get("/api/ws/status", Some(&view)),
            (
                200,
                r#"{"nodes":2,"online_count":2,"online_users":["bo"]}"#.into()
            )
        );
        assert_eq!(
            get("/health", Some(&view)),
            (200, r#"{"status":"ok"}"#.into())
        );
        assert_eq!(
            get("/health", None),
            (200, r#"{"cluster":"down","status":"degraded"}"#.into())
        );
        assert_eq!(
            get("/health?cluster=required", None),
            (503, r#"{"cluster":"down","status":"degraded"}"#.into())
        );
        assert_eq!(
            get("/health?cluster=required", Some(&view)),
            (200, r#"{"status":"ok"}"#.into())
        );
        assert_eq!(
            get("/api/ws/status", None),
            (
                200,
                r#"{"cluster":"down","nodes":1,"online_count":0,"online_users":[]}"#.into()
            )
        );
    }

    #[test]
    fn disabled_api_is_404_in_integrated_mode_only() {
        let mut config = Config::default();
        config.websocket.enable = false;
        let out = run(
            &config,
            Mode::Integrated,
            "GET /api/ws/status HTTP/1.1\r\n\r\n",
            "",
        );
        assert_eq!(status_and_body(out).0, 404);
        let out = run(
            &config,
            Mode::Standalone,
            "GET /api/ws/status HTTP/1.1\r\n\r\n",
            "",
        );
        assert_eq!(status_and_body(out).0, 200);
        let out = run(
            &config,
            Mode::Integrated,
            "GET /health HTTP/1.1\r\n\r\n",
            "",
        );
        assert_eq!(status_and_body(out), (200, r#"{"status":"ok"}"#.into()));
    }

    #[test]
    fn push_bodies_are_validated_and_reshaped() {
        let config = Config::default();
        let post = |path: &str, body: &str| {
            let head = format!(
                "POST {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            run(&config, Mode::Integrated, &head, body)
        };
        let out = post(
            "/api/ws/broadcast",
            r#"{"type":"n","content":"系统维护通知","to":"x","from":"y"}"#,
        );
        assert_eq!(
            out,
            Outcome::Push {
                target: Audience::EVERYONE,
                json: r#"{"type":"n","content":"系统维护通知"}"#.into()
            }
        );
        let out = post("/api/ws/broadcast", r#"{"type":"n","room":"r"}"#);
        assert_eq!(
            out,
            Outcome::Push {
                target: Audience::room("r".into()),
                json: r#"{"type":"n","room":"r"}"#.into()
            }
        );
        let out = post(
            "/api/ws/send",
            r#"{"type":"pm","to":"u","content":1,"from":"svc"}"#,
        );
        assert_eq!(
            out,
            Outcome::Push {
                target: Audience::User("u".into()),
                json: r#"{"type":"pm","to":"u","from":"svc","content":1}"#.into()
            }
        );
        assert_eq!(
            status_and_body(post("/api/ws/send", r#"{"type":"pm"}"#)),
            (
                400,
                r#"{"error":"message needs a non-empty string \"to\""}"#.into()
            )
        );
        assert_eq!(
            status_and_body(post("/api/ws/broadcast", "{bad")),
            (400, r#"{"error":"invalid JSON"}"#.into())
        );
        assert_eq!(
            status_and_body(post("/api/ws/broadcast", r#"{"content":1}"#)).0,
            400
        );
        assert_eq!(status_and_body(post("/api/ws/status", "")).0, 405);
        assert_eq!(status_and_body(post("/api/ws/nope", "")).0, 404);
    }

    #[test]
    fn upgrade_refusals_in_order() {
        let mut config = Config::default();
        let plain = run(
            &config,
            Mode::Integrated,
            "GET /api/ws/connect HTTP/1.1\r\n\r\n",
            "",
        );
        assert_eq!(status_and_body(plain).0, 400);
        let v8 = UPGRADE.replace("Version: 13", "Version: 8");
        assert_eq!(
            status_and_body(run(&config, Mode::Integrated, &v8, "")).0,
            426
        );
        let badkey = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert_eq!(
            status_and_body(run(&config, Mode::Integrated, &badkey, "")).0,
            400
        );
        config.websocket.max_connections = 2;
        assert_eq!(
            status_and_body(run(&config, Mode::Integrated, UPGRADE, "")),
            (503, r#"{"error":"server at capacity"}"#.into())
        );
        config.websocket.allowed_origins = vec!["https://app.example".into()];
        let evil = UPGRADE.replace("\r\n\r\n", "\r\nOrigin: https://evil.example\r\n\r\n");
        assert_eq!(
            status_and_body(run(&config, Mode::Integrated, &evil, "")).0,
            403
        );
        let echo = UPGRADE.replace("/api/ws/connect?user_id=u1", "/api/ws/echo");
        assert_eq!(
            status_and_body(run(&config, Mode::Integrated, &echo, "")).0,
            404,
            "echo off by default"
        );
    }
}
