//! The upkeep view: the parts that keep connections going without a say in
//! who gets what — admission, connections, the clock, the setup, the
//! metrics, the poll's registry and the shared heartbeat. The steps that
//! accept (`accept.rs`), find the client behind a connection
//! (`clients.rs`), fire session timers (`timers.rs`) and write
//! (`write/`) work through it, and so do an HTTP answer and a session's
//! timer ([`Upkeep::respond`], [`Upkeep::arm`]). It cannot run a hook,
//! deliver, or touch the router: a session it must drop that is open (in
//! the router's indexes) is ended, and the close step closes it
//! ([`Connections::drop_session`]).

use mio::Registry;

use super::admission::Admission;
use super::clock::Clock;
use super::connections::Connections;
use super::setup::Setup;
use super::EventLoop;
use crate::http::Response;
use crate::metrics::Metrics;
use crate::session::Heartbeat;

/// The parts connection upkeep touches, borrowed from the loop for one
/// step ([`EventLoop::upkeep`]).
pub(super) struct Upkeep<'a> {
    /// Where sockets are registered.
    pub(super) registry: &'a Registry,
    /// The listener, the connection caps, client addresses, TLS.
    pub(super) admission: &'a mut Admission,
    /// The sessions, their queues and the write lists.
    pub(super) conns: &'a mut Connections,
    /// The loop clock and the session timers.
    pub(super) clock: &'a mut Clock,
    /// The rules and the config.
    pub(super) setup: &'a Setup,
    /// The counters.
    pub(super) metrics: &'a mut Metrics,
    /// The shared Ping frame and event-stream heartbeat (the hub's).
    pub(super) heartbeat: &'a Heartbeat,
}

impl EventLoop {
    /// The upkeep parts, for one step. What it ended, the close step
    /// closes (`EventLoop::close_ended`).
    pub(super) fn upkeep(&mut self) -> Upkeep<'_> {
        Upkeep {
            registry: self.poll.registry(),
            admission: &mut self.admission,
            conns: &mut self.conns,
            clock: &mut self.clock,
            setup: &self.setup,
            metrics: &mut self.metrics,
            heartbeat: &self.hub.heartbeat,
        }
    }
}

impl Upkeep<'_> {
    /// Makes sure the session's timer fires no later than `at_ms`.
    pub(super) fn arm(&mut self, index: usize, at_ms: u64) {
        if let Some(session) = self.conns.sessions.get_mut(index) {
            self.clock.arm(session, at_ms);
        }
    }

    /// Arms an open session for its next Ping, silence or stall deadline.
    pub(super) fn rearm_open(&mut self, index: usize) {
        if let Some(session) = self.conns.sessions.get_mut(index) {
            let at = session.open_deadline(&self.setup.rules);
            self.clock.arm(session, at);
        }
    }

    /// Queues an HTTP answer to the session (kept alive unless `response`
    /// or `keep_alive` says otherwise, or the connection's request cap is
    /// reached); a closing answer arms the session's deadline.
    pub(super) fn respond(&mut self, index: usize, response: &Response, keep_alive: bool) {
        let (now, rules) = (self.clock.now_ms, self.setup.rules);
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        let mut keep = keep_alive && !response.close;
        if keep && !session.count_request() {
            // At most 1000 requests per connection: slots turn over.
            self.metrics.http_request_cap_closes += 1;
            keep = false;
        }
        let closing = session.respond(response.to_bytes(keep), keep, now, &rules);
        self.conns.mark_dirty(index);
        if let Some(deadline) = closing {
            self.arm(index, deadline);
        }
    }
}
