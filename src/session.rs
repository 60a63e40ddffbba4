//! One connection's state: its socket, the phase it is in, the unfinished
//! input it keeps between reads, its frame decoder and its outbound queue.
//!
//! Phases: `Http` (reading request heads; keep-alive REST) → `Chat` or `Echo`
//! (an upgraded WebSocket) → `Closing` (flushing, waiting for the peer's
//! Close or FIN, bounded by a deadline) → reaped by the loop.
//!
//! This module owns the socket I/O edges: `WouldBlock` becomes a value here
//! and never travels further up. The bytes come and go through a
//! [`Transport`] (plain TCP or TLS). It touches nothing outside its session.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::rc::Rc;

use crate::audience::SessionKey;
use crate::deflate::{History, Params};
use crate::frame::{Decoder, Wire};
use crate::outbound::{Flushed, Outbound, Overflow};
use crate::transport::Transport;
use crate::wheel::TimerId;

/// The smallest read into a session's unfinished input.
const MIN_READ: usize = 4096;

/// Where a connection is in its life.
#[derive(Debug)]
pub enum Phase {
    /// Reading HTTP request heads (REST with keep-alive, or an upgrade).
    Http,
    /// An upgraded `/api/ws/connect` session; `None` is anonymous.
    Chat {
        /// User id, shared with the router's index.
        user: Option<Rc<str>>,
    },
    /// An upgraded `/api/ws/echo` session.
    Echo,
    /// On its way out; see [`Closing`].
    Closing(Closing),
    /// Removed at the end of this loop pass; nothing more is read or written.
    Dead,
}

/// How a closing session ends: its queue is flushed; then, unless a Close
/// frame from the peer is still awaited, our side is half-closed and the
/// socket dropped at the peer's FIN or at the deadline, whichever is first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Closing {
    /// We sent a Close first: read frames until the peer's Close arrives.
    pub await_close_frame: bool,
    /// The peer's FIN has arrived.
    pub eof: bool,
    /// Our FIN has been sent.
    pub fin_sent: bool,
    /// Milliseconds on the loop clock after which the socket is dropped.
    pub deadline_ms: u64,
}

/// What one read from the socket gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// `n` bytes arrived.
    Data(usize),
    /// Nothing more for now.
    WouldBlock,
    /// The peer closed its side.
    Eof,
}

/// One connection.
#[derive(Debug)]
pub struct Session {
    /// The stream; dropping the session closes it.
    pub transport: Transport,
    /// This session's key (slot and generation).
    pub key: SessionKey,
    /// Peer address, for logs.
    pub peer: SocketAddr,
    /// Current phase.
    pub phase: Phase,
    /// Unfinished input kept between reads; empty (unallocated) when idle.
    pub pending_input: Vec<u8>,
    /// How far `pending_input` was already searched for the end of a head.
    pub head_scanned: usize,
    /// Bytes needed before the pending frame or request is complete, if known.
    pub input_needed: usize,
    /// Frame reassembly state.
    pub decoder: Decoder,
    /// permessage-deflate parameters, when negotiated. Inline: a broadcast
    /// reads them for every recipient.
    pub deflate: Option<Params>,
    /// What a client that takes its context over sent last (unallocated
    /// until it sends a compressed message).
    pub history: History,
    /// Frames and responses waiting for the socket.
    pub out: Outbound,
    /// The one wheel timer of this session, with its deadline.
    pub timer: Option<(TimerId, u64)>,
    /// Loop-clock ms of the last byte read (WebSocket) or of the start of the
    /// current request (HTTP).
    pub last_seen_ms: u64,
    /// Loop-clock ms when the next Ping is due.
    pub next_ping_ms: u64,
    /// Loop-clock ms since when a pending write has made no progress.
    pub stalled_since_ms: Option<u64>,
    /// WRITABLE interest is registered (only while output is pending).
    pub writable_interest: bool,
    /// Already in the loop's list of sessions to flush this pass.
    pub dirty: bool,
    /// Reading is paused: the session owes more than `max_buffered_bytes`
    /// of responses to a client that is not reading them.
    pub paused: bool,
    /// Counted against `max_http_connections` (until upgraded or reaped).
    pub counted_http: bool,
}

impl Session {
    /// A freshly accepted connection.
    pub fn new(transport: Transport, key: SessionKey, peer: SocketAddr, now_ms: u64) -> Session {
        Session {
            transport,
            key,
            peer,
            phase: Phase::Http,
            pending_input: Vec::new(),
            head_scanned: 0,
            input_needed: 0,
            decoder: Decoder::default(),
            deflate: None,
            history: History::default(),
            out: Outbound::default(),
            timer: None,
            last_seen_ms: now_ms,
            next_ping_ms: u64::MAX,
            stalled_since_ms: None,
            writable_interest: false,
            dirty: false,
            paused: false,
            counted_http: false,
        }
    }

    /// The user id of a chat session.
    pub fn user(&self) -> Option<&Rc<str>> {
        match &self.phase {
            Phase::Chat { user } => user.as_ref(),
            _ => None,
        }
    }

    /// The permessage-deflate parameters, when negotiated.
    pub fn deflate_params(&self) -> Option<&Params> {
        self.deflate.as_ref()
    }

    /// Upgraded and not closing.
    pub fn is_open_websocket(&self) -> bool {
        matches!(self.phase, Phase::Chat { .. } | Phase::Echo)
    }

    /// Reads once into `buf`, turning `WouldBlock` and `Interrupted` into values.
    pub fn read_into(&mut self, buf: &mut [u8]) -> io::Result<ReadOutcome> {
        loop {
            match self.transport.read(buf) {
                Ok(0) => return Ok(ReadOutcome::Eof),
                Ok(n) => return Ok(ReadOutcome::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadOutcome::WouldBlock)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads once, appending to `pending_input`. The buffer grows with what
    /// has arrived (at most doubling, at most `chunk` per read, never past
    /// what the pending unit still needs), not with what a header declared:
    /// a peer that announces 512 KiB and sends 2 bytes costs a few KiB.
    /// Also returns how many bytes were asked for, so the caller can tell a
    /// short read (socket drained) from a full one.
    pub fn read_pending(&mut self, chunk: usize) -> (io::Result<ReadOutcome>, usize) {
        let start = self.pending_input.len();
        let mut want = start.max(MIN_READ).min(chunk);
        if self.input_needed > start {
            want = want.min(self.input_needed - start);
        }
        // Capacity already paid for is used as it is.
        want = want.max(self.pending_input.capacity() - start);
        self.pending_input.resize(start + want, 0);
        let mut spare = std::mem::take(&mut self.pending_input);
        let outcome = self.read_into(&mut spare[start..]);
        let filled = match outcome {
            Ok(ReadOutcome::Data(n)) => start + n,
            _ => start,
        };
        spare.truncate(filled);
        self.pending_input = spare;
        (outcome, want)
    }

    /// Queues a data frame within the bounds. A full queue first lets the
    /// socket take what it can: a burst that arrives within one loop pass
    /// is not a slow consumer, a socket that takes nothing more is.
    /// What that early write sent is added to `bytes_out`.
    pub fn queue(
        &mut self,
        frame: Wire,
        max_messages: usize,
        max_bytes: usize,
        bytes_out: &mut u64,
    ) -> Result<(), Overflow> {
        if self
            .out
            .check_room(frame.len(), max_messages, max_bytes)
            .is_err()
        {
            // A write error surfaces again at the pass's flush, which drops the session.
            if let Ok((_, written)) = self.flush() {
                *bytes_out += written as u64;
            }
        }
        self.out.push_data(frame, max_messages, max_bytes)
    }

    /// Writes what the socket takes. Returns whether output is still pending
    /// (queued frames, or TLS records below them) and how many bytes of the
    /// queue went out.
    pub fn flush(&mut self) -> io::Result<(Flushed, usize)> {
        let (flushed, written) = self.out.flush_to(&mut self.transport)?;
        if flushed == Flushed::Drained && self.transport.push_pending()? {
            return Ok((Flushed::Pending, written));
        }
        Ok((flushed, written))
    }

    /// Keeps `rest` as unfinished input (copied once), or frees the buffer.
    pub fn keep_input(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            self.pending_input = Vec::new();
            self.input_needed = 0;
        } else {
            self.pending_input.clear();
            self.pending_input.extend_from_slice(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Session;

    #[test]
    fn a_session_stays_small() {
        // Every idle connection pays this in the slab (BENCHMARKS.md).
        // 304 before permessage-deflate, whose RSV1 flag in the decoder and
        // history pointer take 16 more.
        assert!(
            std::mem::size_of::<Session>() <= 320,
            "{} bytes",
            std::mem::size_of::<Session>()
        );
    }
}
