//! Reading: drains a ready socket through its session (into the loop's
//! shared buffer, or the session's unfinished input) and hands what arrived
//! to `dispatch`. A short read ends the drain; an unfinished unit is kept
//! by the session. Also resumes sessions whose reading was paused.

use super::EventLoop;
use crate::hooks::CloseReason;
use crate::session::{Eof, Phase, ReadOutcome};

impl EventLoop {
    pub(super) fn on_session_event(&mut self, index: usize, event: &mio::event::Event) {
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        if (event.is_readable() || event.is_read_closed() || event.is_error())
            && self
                .admission
                .handshakes
                .may_read_now(session, &mut self.metrics)
        {
            self.on_readable(index, event.is_read_closed() || event.is_error());
        }
        if event.is_writable() {
            self.conns.schedule_write(index);
        }
    }

    /// Reads a session whose turn came after its readiness event.
    pub(super) fn read_ready(&mut self, index: usize, to_the_end: bool) {
        self.on_readable(index, to_the_end);
    }

    /// Reads until the socket is drained. `peer_closed`: the event also
    /// reported the peer's FIN (or an error), which must be read to the end
    /// because no further edge will announce it.
    fn on_readable(&mut self, index: usize, peer_closed: bool) {
        while let Some((outcome, full)) = self.read_once(index) {
            match outcome {
                // A short read drained the socket: with edge-triggered epoll,
                // any byte that arrives later raises a new event, so the
                // extra read that would only return WouldBlock is skipped,
                // unless a FIN already came with this event.
                Ok(ReadOutcome::Data(_)) if full || peer_closed => continue,
                Ok(ReadOutcome::Data(_)) | Ok(ReadOutcome::WouldBlock) => return,
                Ok(ReadOutcome::Eof) => return self.on_eof(index),
                Ok(ReadOutcome::Proxied) => self.upkeep().on_proxy_header(index),
                Ok(ReadOutcome::NotProxied(why)) => {
                    return self.upkeep().refuse_proxy_header(index, why)
                }
                Err(e) => return self.kill(index, CloseReason::Io(e.to_string())),
            }
        }
    }

    /// One read, then every complete unit it finished is dispatched; the
    /// session keeps only an unfinished rest. `None`: the session is not
    /// read now (gone, dead, paused, or held for the cluster).
    fn read_once(&mut self, index: usize) -> Option<(std::io::Result<ReadOutcome>, bool)> {
        let session = self.conns.sessions.get_mut(index)?;
        if session.is_dead() || session.is_paused() || self.hub.holds(session.key) {
            return None;
        }
        let mut shared = std::mem::take(&mut self.conns.read_buf);
        let read = session.read(&mut shared);
        if read.must_write {
            self.conns.mark_dirty(index);
        }
        if let Ok(ReadOutcome::Data(n)) = read.outcome {
            // Liveness is not refreshed by bytes, only by whole frames
            // (see `Session::next_unit`).
            self.metrics.bytes_in += n as u64;
            if read.into_shared {
                let consumed = self.dispatch(index, &mut shared[..n]);
                if let Some(session) = self.conns.sessions.get_mut(index) {
                    session.keep_input(&shared[consumed..n]);
                }
            } else {
                self.dispatch_kept_input(index);
            }
        }
        self.conns.read_buf = shared;
        Some((read.outcome, read.full))
    }

    /// Dispatches the session's own unfinished input (a large frame or
    /// request arriving in pieces is read in place, never copied back and
    /// forth).
    fn dispatch_kept_input(&mut self, index: usize) {
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        let mut input = session.take_input();
        let consumed = self.dispatch(index, &mut input);
        if let Some(session) = self.conns.sessions.get_mut(index) {
            session.return_input(input, consumed);
        }
    }

    /// Ends a session's hold (see `cluster.rs`): first the input already
    /// read, then the socket, to its end (the edge that announced those
    /// bytes has passed).
    pub(super) fn release_held(&mut self, index: usize) {
        let Some(session) = self.conns.sessions.get(index) else {
            return;
        };
        if session.is_dead() || session.is_paused() || self.hub.holds(session.key) {
            return;
        }
        if session.has_input() {
            self.dispatch_kept_input(index);
        }
        self.on_readable(index, true);
    }

    /// The peer's FIN: what it means depends on the session's phase.
    fn on_eof(&mut self, index: usize) {
        let (now, rules) = (self.clock.now_ms, self.setup.rules);
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        match session.on_eof(now, &rules) {
            Eof::Flush => self.conns.mark_dirty(index),
            Eof::Closing(deadline) => {
                self.conns.mark_dirty(index);
                self.upkeep().arm(index, deadline);
            }
            Eof::Drop => self.kill(index, CloseReason::Client(None)),
        }
    }

    /// Reads again from sessions that were paused and have been drained.
    pub(super) fn resume_paused(&mut self) {
        for index in std::mem::take(&mut self.conns.resume) {
            self.resume_reading(index);
        }
    }

    /// Continues a session whose reading was paused, once the client has
    /// taken its responses: first the requests already read, then the socket
    /// (to its end: the edge that announced those bytes has passed).
    fn resume_reading(&mut self, index: usize) {
        let Some(session) = self.conns.sessions.get(index) else {
            return;
        };
        if session.is_paused() || !matches!(session.phase(), Phase::Http) {
            return;
        }
        if session.has_input() {
            self.dispatch_kept_input(index);
        }
        self.on_readable(index, true);
    }
}
