//! A session's output: queueing within its bounds, and writing what the
//! socket takes, reported as [`Wrote`] (bytes, poll interest, resumed
//! reading, and what comes next: idle, waiting, finished or failed).

use std::io;

use mio::Interest;

use super::{Phase, Rules, Session, Stalled};
use crate::frame::Wire;
use crate::outbound::{Flushed, Overflow};
use crate::transport::Socket;

/// What one write pass did.
#[derive(Debug)]
#[must_use = "a report the loop must apply"]
pub(crate) struct Wrote {
    /// Bytes of the queue written.
    pub bytes: usize,
    /// The poll interest changed to this: reregister the socket.
    pub interest: Option<Interest>,
    /// Reading was paused and the client has taken its responses: read again.
    pub resume: bool,
    /// What comes next.
    pub then: AfterWrite,
}

/// Where a write pass left the session.
#[derive(Debug)]
pub(crate) enum AfterWrite {
    /// Drained; the session goes on.
    Idle,
    /// Output is still pending: if none of it leaves by this loop-clock ms,
    /// the client is stalled.
    Waiting { stall_deadline: u64 },
    /// A closing session is done: drop it.
    Finished,
    /// The socket failed.
    Failed(io::Error),
}

impl<S: Socket> Session<S> {
    /// Queues a data frame within the bounds. A full queue first lets the
    /// socket take what it can: a burst that arrives within one loop pass
    /// is not a slow consumer, a socket that takes nothing more is. This is
    /// the one socket write inside a fan-out, and it is deliberate: without
    /// it a client reading at full speed was closed with 1013 after 257 of
    /// 300 broadcasts pipelined into one pass (default bounds; see the
    /// event loop's module doc). What that early write sent is added to
    /// `bytes_out`.
    ///
    /// A frame that still does not fit ends the session's data: it refuses
    /// every later one ([`Overflow::Ending`]) until the loop closes it, so
    /// its client never gets a message after one it missed.
    pub(crate) fn queue(
        &mut self,
        frame: Wire,
        rules: &Rules,
        bytes_out: &mut u64,
    ) -> Result<(), Overflow> {
        if self.ending {
            return Err(Overflow::Ending);
        }
        let (max_messages, max_bytes) = (rules.message_buffer_size, rules.max_buffered_bytes);
        if self
            .out
            .check_room(frame.len(), max_messages, max_bytes)
            .is_ok()
        {
            self.out.push_unbounded(frame);
            return Ok(());
        }
        // A write error surfaces again at the pass's write, which drops the session.
        if let Ok((_, written)) = self.flush() {
            *bytes_out += written as u64;
        }
        let queued = self.out.push_data(frame, max_messages, max_bytes);
        self.ending |= queued.is_err();
        queued
    }

    /// The session takes no more data frames (it is about to be closed:
    /// see [`Session::queue`]); answers and its Close still go out.
    pub(crate) fn end_data(&mut self) {
        self.ending = true;
    }

    /// Queues a Pong (ahead of data; only the most recent ones are kept).
    pub(crate) fn queue_pong(&mut self, frame: Wire) {
        self.out.push_control(frame);
    }

    /// Writes what the socket takes, then moves the phase on: a drained
    /// closing session half-closes, or is finished once the peer's FIN came.
    pub(crate) fn write(&mut self, now: u64, rules: &Rules) -> Wrote {
        let (flushed, bytes) = match self.flush() {
            Ok(result) => result,
            Err(e) => {
                return Wrote {
                    bytes: 0,
                    interest: None,
                    resume: false,
                    then: AfterWrite::Failed(e),
                }
            }
        };
        let mut wrote = Wrote {
            bytes,
            interest: None,
            resume: false,
            then: AfterWrite::Idle,
        };
        match flushed {
            Flushed::Drained => {
                self.stalled_since_ms = Stalled::NOT;
                if matches!(self.phase, Phase::Http) {
                    // The next request's deadline runs from the end of this response.
                    self.last_seen_ms = now;
                }
                wrote.resume = std::mem::take(&mut self.paused);
                if std::mem::take(&mut self.writable_interest) {
                    wrote.interest = Some(Interest::READABLE);
                }
                wrote.then = self.after_drain();
            }
            Flushed::Pending => {
                if self.paused && self.out.owed_bytes() <= rules.max_buffered_bytes / 2 {
                    self.paused = false;
                    wrote.resume = true;
                }
                if bytes > 0 || self.stalled_since_ms.get().is_none() {
                    self.stalled_since_ms = Stalled::since(now);
                }
                if !std::mem::replace(&mut self.writable_interest, true) {
                    wrote.interest = Some(Interest::READABLE | Interest::WRITABLE);
                }
                wrote.then = AfterWrite::Waiting {
                    stall_deadline: now.saturating_add(rules.write_wait_ms),
                };
            }
        }
        wrote
    }

    /// Writes the queue, then what is waiting below it (TLS records).
    fn flush(&mut self) -> io::Result<(Flushed, usize)> {
        let (flushed, written) = self.out.flush_to(&mut self.transport)?;
        if flushed == Flushed::Drained && self.transport.push_pending()? {
            return Ok((Flushed::Pending, written));
        }
        Ok((flushed, written))
    }

    /// A closing session whose queue is empty moves on: half-close, or done.
    fn after_drain(&mut self) -> AfterWrite {
        let Phase::Closing(closing) = &mut self.phase else {
            return AfterWrite::Idle;
        };
        if closing.await_close_frame {
            return AfterWrite::Idle;
        }
        if closing.eof {
            return AfterWrite::Finished;
        }
        if !closing.fin_sent {
            closing.fin_sent = true;
            // Half-close and wait for the peer's FIN: closing with unread
            // input would send RST and could destroy the response in flight.
            if self.transport.shutdown_write().is_err() {
                return AfterWrite::Finished;
            }
        }
        AfterWrite::Idle
    }
}
