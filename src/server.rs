//! The public [`Server`]: binds the listener, hands out [`Handle`]s, and runs
//! the event loop on the calling thread until a shutdown completes.
//!
//! Everything here happens before `run`: building what the files the
//! config names hold (from the bytes `Config::load` read, else reading
//! them now, see `crate::startup`), the poll, the waker, the command
//! channel and (optionally) the signal source. The loop itself lives in
//! `event_loop`.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::sync::Arc;

use mio::net::TcpListener;
use mio::{Interest, Poll, Waker};

use crate::cluster::Link;
use crate::config::Config;
use crate::event_loop::{EventLoop, Parts, LISTENER, SIGNALS, WAKER};
use crate::handle::{self, Handle, Inbox};
use crate::hooks::{Hooks, NoHooks};
use crate::jwt::Verifier;
use crate::metrics::Shared;
use crate::mode::Mode;
use crate::startup::{Built, FileError};

/// Commands a handle may queue before pushes fail with `QueueFull`.
pub const COMMAND_QUEUE_CAPACITY: usize = 65_536;

/// Why the server could not start or stopped with an error.
#[non_exhaustive]
#[derive(Debug)]
pub enum ServerError {
    /// The listen address could not be bound.
    Bind {
        /// The address as configured.
        address: String,
        /// The OS error.
        source: io::Error,
    },
    /// `tls.cert` or `tls.key` cannot be used (the error names which).
    Tls(crate::tls::TlsError),
    /// The cluster refused to start (the message names the key).
    Cluster(String),
    /// A `jwt:` key cannot be used (the error names which).
    Jwt(crate::jwt::KeyError),
    /// Setting up or running the event loop failed.
    Io {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Bind { address, source } => {
                write!(f, "cannot listen on {address}: {source}")
            }
            ServerError::Io { context, source } => write!(f, "{context}: {source}"),
            ServerError::Tls(e) => write!(f, "config: {e}"),
            ServerError::Cluster(e) => write!(f, "config: {e}"),
            ServerError::Jwt(e) => write!(f, "config: {e}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Bind { source, .. } | ServerError::Io { source, .. } => Some(source),
            ServerError::Tls(e) => Some(e),
            ServerError::Cluster(_) => None,
            ServerError::Jwt(e) => Some(e),
        }
    }
}

fn io_error(context: &'static str) -> impl FnOnce(io::Error) -> ServerError {
    move |source| ServerError::Io { context, source }
}

/// A bound, not yet running wshub server.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Config,
    mode: Mode,
    handle: Handle,
    inbox: Inbox,
    shared: Arc<Shared>,
    hooks: Box<dyn Hooks>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    tls: Option<Arc<rustls::ServerConfig>>,
    jwt: Verifier,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `app.host` on `app.port` (integrated) or `websocket.port` (standalone).
    ///
    /// The files the config names (`tls.cert`, `tls.key`,
    /// `jwt.public_key`) are used as [`Config::load`] read them (see
    /// [`Config::files`]); a file it did not read is read now.
    pub fn bind(config: Config, mode: Mode) -> Result<Server, ServerError> {
        let port = match mode {
            Mode::Integrated => config.app.port,
            Mode::Standalone => config.websocket.port,
        };
        let address = format_address(&config.app.host, port);
        let bind_error = |source| ServerError::Bind {
            address: address.clone(),
            source,
        };
        let resolved = address
            .to_socket_addrs()
            .map_err(bind_error)?
            .next()
            .ok_or_else(|| bind_error(io::ErrorKind::AddrNotAvailable.into()))?;
        let listener = bind_listener(resolved, config.app.reuse_port).map_err(bind_error)?;
        Server::with_listener(listener, config, mode)
    }

    /// Uses an already bound listener (tests bind port 0; supervisors pass
    /// sockets). Reads the config's files as [`Server::bind`] does.
    pub fn from_listener(
        listener: StdListener,
        config: Config,
        mode: Mode,
    ) -> Result<Server, ServerError> {
        listener
            .set_nonblocking(true)
            .map_err(io_error("set listener non-blocking"))?;
        Server::with_listener(TcpListener::from_std(listener), config, mode)
    }

    fn with_listener(
        mut listener: TcpListener,
        mut config: Config,
        mode: Mode,
    ) -> Result<Server, ServerError> {
        // Taken out, not cloned: the running server keeps no copy of the
        // key files, and a SIGHUP reload reads them afresh.
        let mut files = std::mem::take(&mut config.files);
        let Built { tls, jwt } = Built::from_config(&config, &mut files).map_err(|e| match e {
            FileError::Tls(e) => ServerError::Tls(e),
            FileError::Jwt(e) => ServerError::Jwt(e),
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(io_error("read listener address"))?;
        let poll = Poll::new().map_err(io_error("create poll"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(io_error("register listener"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_error("create waker"))?);
        let shared = Arc::new(Shared::default());
        let (handle, inbox) = handle::channel(waker, shared.clone(), COMMAND_QUEUE_CAPACITY);
        Ok(Server {
            poll,
            listener,
            local_addr,
            config,
            mode,
            handle,
            inbox,
            shared,
            hooks: Box::new(NoHooks),
            signals: None,
            tls,
            jwt,
        })
    }

    /// The address the server listens on (with the real port when bound to 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for pushing from other threads; valid before and during `run`.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Installs application hooks (run on the loop thread).
    pub fn with_hooks(mut self, hooks: impl Hooks + 'static) -> Server {
        self.hooks = Box::new(hooks);
        self
    }

    /// Shuts down gracefully on SIGINT or SIGTERM; a second signal exits at
    /// once. With TLS, SIGHUP re-reads the certificate and key.
    pub fn shutdown_on_signals(mut self) -> Result<Server, ServerError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut wanted = vec![SIGINT, SIGTERM];
        if self.tls.is_some() {
            wanted.push(SIGHUP);
        }
        let mut signals = signal_hook_mio::v1_0::Signals::new(wanted)
            .map_err(io_error("install signal handlers"))?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(io_error("register signals"))?;
        self.signals = Some(signals);
        Ok(self)
    }

    /// Serves until a shutdown (handle or signal) completes.
    pub fn run(self) -> Result<(), ServerError> {
        log::info!(
            "wshub listening on {}{} ({} mode, max_connections {})",
            self.local_addr,
            if self.tls.is_some() { " with TLS" } else { "" },
            match self.mode {
                Mode::Integrated => "integrated",
                Mode::Standalone => "standalone",
            },
            self.config.websocket.max_connections
        );
        let app = &self.config.app;
        if !app.trusted_proxies.is_empty() {
            log::info!(
                "client addresses: trusted proxies [{}], {}",
                app.trusted_proxies,
                if app.proxy_protocol {
                    "PROXY protocol required".to_owned()
                } else {
                    format!("header {}", app.client_ip_header.name())
                }
            );
        }
        let cluster = match self.config.cluster.enabled() {
            true => Some(
                Link::start(
                    &self.config.cluster,
                    &self.config.websocket,
                    &self.config.history,
                    Arc::new(self.handle.clone()),
                )
                .map_err(ServerError::Cluster)?,
            ),
            false => None,
        };
        self.jwt.start_refresh();
        EventLoop::new(Parts {
            poll: self.poll,
            listener: self.listener,
            config: self.config,
            mode: self.mode,
            inbox: self.inbox,
            shared: self.shared,
            hooks: self.hooks,
            signals: self.signals,
            cluster,
            tls: self.tls,
            jwt: self.jwt,
        })
        .run()
        .map_err(io_error("event loop"))
    }
}

/// Connections the kernel may hold for us between two accept passes.
///
/// mio's `bind` listens with 128: a burst of connects (a deploy, a reconnect
/// wave) overflows it and clients wait out a SYN retransmit (the load bench
/// measured 29k upgrades/s falling to 8k). The kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listener with `SO_REUSEADDR` (a restart need not wait out
/// TIME_WAIT, as with mio's `bind`), the wide backlog and, for
/// `app.reuse_port`, `SO_REUSEPORT`: several processes may then listen on
/// the same address and the kernel spreads new connections over them.
/// socket2 sets the options before `bind`, which std and mio cannot.
fn bind_listener(address: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn format_address(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
