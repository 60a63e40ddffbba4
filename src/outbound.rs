//! One session's outbound queue: frames waiting for the socket, bounded in
//! count and bytes, with control frames (Pong, Close) ahead of data.
//!
//! Holds shared [`Wire`] frames, so a broadcast queued to ten thousand
//! sessions costs a reference-count increment per session, not a copy.
//! Writes go out in batches: every pending frame (up to [`MAX_BATCH`] frames
//! and about [`MAX_BATCH_BYTES`]) in one `writev`, so broadcasts that queued
//! up while the loop was busy leave together. A partial write only moves a
//! cursor. An empty queue holds no heap memory.
//!
//! Touches nothing but the writer it is handed.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use crate::frame::Wire;

/// Frames gathered into one vectored write.
pub const MAX_BATCH: usize = 64;

/// Bytes gathered into one vectored write: no more frames are added once
/// this many are gathered (the first frame always goes, whatever its size).
/// Four times a default loopback socket's first send-buffer grant: more
/// would mostly come back unwritten.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Deque slots a drained queue keeps until the session's timer (larger
/// deques are freed at the drain): 8 × 16 bytes.
const KEEP_SLOTS: usize = 8;

/// Pong replies kept at most; older ones are dropped (RFC 6455 lets an
/// endpoint answer only the most recent Ping), so a Ping flood cannot grow
/// the queue.
const MAX_PENDING_CONTROL: usize = 32;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `message_buffer_size` frames are already waiting.
    Messages,
    /// `max_buffered_bytes` would be exceeded.
    Bytes,
    /// The session is being ended (a frame it had to take did not fit, or
    /// it missed one): it takes no more data, so a client never gets a
    /// message after one it missed. Only a session says this; a queue
    /// alone knows the two bounds.
    Ending,
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything was written.
    Drained,
    /// The socket would block with frames still pending.
    Pending,
}

/// The queue. `in_flight` is the frame the socket has partly taken; it always
/// completes before anything else starts, so frames are never interleaved.
#[derive(Debug, Default)]
pub struct Outbound {
    in_flight: Option<Wire>,
    written: usize,
    control: VecDeque<Wire>,
    data: VecDeque<Wire>,
    data_bytes: usize,
    /// Leading `data` entries that control frames may not overtake: HTTP
    /// responses (the 101 above all) must reach the peer before any frame.
    responses_ahead: usize,
}

impl Outbound {
    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_none() && self.control.is_empty() && self.data.is_empty()
    }

    /// Data frames waiting (not counting the one in flight).
    pub fn queued_messages(&self) -> usize {
        self.data.len()
    }

    /// Bytes of data frames waiting (not counting the one in flight).
    pub fn queued_bytes(&self) -> usize {
        self.data_bytes
    }

    /// Bytes still to be written: the rest of the frame in flight and the
    /// data queued behind it (pending control frames are a few bytes each).
    pub fn owed_bytes(&self) -> usize {
        let in_flight = self
            .in_flight
            .as_ref()
            .map_or(0, |frame| frame.len() - self.written);
        in_flight + self.data_bytes
    }

    /// Queues a data frame unless that would pass either bound. One frame
    /// larger than `max_bytes` is still accepted into an empty queue.
    pub fn push_data(
        &mut self,
        frame: Wire,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<(), Overflow> {
        self.check_room(frame.len(), max_messages, max_bytes)?;
        self.push_unbounded(frame);
        Ok(())
    }

    /// Whether a data frame of `len` bytes fits within the bounds.
    #[inline]
    pub fn check_room(
        &self,
        len: usize,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<(), Overflow> {
        if self.data.len() >= max_messages {
            return Err(Overflow::Messages);
        }
        if !self.data.is_empty() && self.data_bytes + len > max_bytes {
            return Err(Overflow::Bytes);
        }
        Ok(())
    }

    /// Queues a data frame past the bounds: for a final Close that must
    /// follow what is already queued, and for HTTP responses.
    #[inline]
    pub fn push_unbounded(&mut self, frame: Wire) {
        if let Some(frame) = self.take_empty_slot(frame) {
            self.data_bytes += frame.len();
            self.data.push_back(frame);
        }
    }

    /// An empty queue takes the frame straight into the in-flight slot, so
    /// the common case (one message per session per pass) never allocates a
    /// deque. Returns the frame back when the slot is taken.
    fn take_empty_slot(&mut self, frame: Wire) -> Option<Wire> {
        if self.is_empty() {
            self.in_flight = Some(frame);
            self.written = 0;
            return None;
        }
        Some(frame)
    }

    /// Queues an HTTP response: after everything queued so far, and never
    /// overtaken by a control frame.
    pub fn push_response(&mut self, bytes: Wire) {
        self.push_unbounded(bytes);
        self.responses_ahead = self.data.len();
    }

    /// Queues a control frame ahead of all data not yet started.
    pub fn push_control(&mut self, frame: Wire) {
        let Some(frame) = self.take_empty_slot(frame) else {
            return;
        };
        if self.control.len() >= MAX_PENDING_CONTROL {
            self.control.pop_front();
        }
        self.control.push_back(frame);
    }

    /// Writes as much as the writer takes, in batches of up to [`MAX_BATCH`]
    /// frames per call, until drained or `WouldBlock`. Returns bytes written.
    pub fn flush_to(&mut self, writer: &mut impl Write) -> io::Result<(Flushed, usize)> {
        let mut total = 0;
        loop {
            self.promote();
            let Some(first) = &self.in_flight else {
                return Ok((Flushed::Drained, total));
            };
            // The fan-out case: one frame and nothing behind it. A plain
            // write skips building (and zeroing) the 64-slot iovec array.
            let result = if self.control.is_empty() && self.data.is_empty() {
                writer.write(&first[self.written..])
            } else {
                self.write_batch(writer)
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    total += n;
                    self.advance(n);
                    if self.is_empty() {
                        self.release_memory(KEEP_SLOTS);
                        return Ok((Flushed::Drained, total));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Flushed::Pending, total))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One `writev` of the frame in flight and up to `MAX_BATCH - 1` more
    /// (within [`MAX_BATCH_BYTES`]), in the order they must reach the peer.
    fn write_batch(&self, writer: &mut impl Write) -> io::Result<usize> {
        let Some(first) = &self.in_flight else {
            return Ok(0);
        };
        let mut slices: [IoSlice<'_>; MAX_BATCH] = [IoSlice::new(&[]); MAX_BATCH];
        slices[0] = IoSlice::new(&first[self.written..]);
        let mut count = 1;
        let mut bytes = slices[0].len();
        let responses = self.data.iter().take(self.responses_ahead);
        let rest = self.data.iter().skip(self.responses_ahead);
        let order = responses.chain(self.control.iter()).chain(rest);
        for frame in order {
            if count == MAX_BATCH || bytes + frame.len() > MAX_BATCH_BYTES {
                break;
            }
            slices[count] = IoSlice::new(frame);
            count += 1;
            bytes += frame.len();
        }
        writer.write_vectored(&slices[..count])
    }

    /// Makes the next frame (control first) the one in flight.
    fn promote(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        self.written = 0;
        if self.responses_ahead > 0 {
            self.responses_ahead -= 1;
            if let Some(frame) = self.data.pop_front() {
                self.data_bytes -= frame.len();
                self.in_flight = Some(frame);
                return;
            }
        }
        if let Some(frame) = self.control.pop_front() {
            self.in_flight = Some(frame);
        } else if let Some(frame) = self.data.pop_front() {
            self.data_bytes -= frame.len();
            self.in_flight = Some(frame);
        }
    }

    /// Moves the cursor over `n` written bytes, in the order they were
    /// gathered: in flight, then control, then data.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(frame) = &self.in_flight else { return };
            let left = frame.len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.in_flight = None;
            self.promote();
        }
    }

    /// Frees each empty deque holding more than `keep` slots. After a drain
    /// `keep` is `KEEP_SLOTS`: a deque that grew in a burst is freed at
    /// once, so ten thousand sessions do not each keep a kilobyte until their
    /// timers, while a small one stays for the next pass. From the session's
    /// timer it is 0: an idle session holds no buffer, yet one under
    /// sustained traffic does not allocate its deque every pass.
    pub fn release_memory(&mut self, keep: usize) {
        if self.data.is_empty() && self.data.capacity() > keep {
            self.data = VecDeque::new();
        }
        if self.control.is_empty() && self.control.capacity() > keep {
            self.control = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A socket that takes at most `budget` bytes per call, then blocks.
    struct Trickle {
        out: Vec<u8>,
        per_call: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let mut taken = 0;
            for buf in bufs {
                let n = buf.len().min(self.per_call - taken);
                self.out.extend_from_slice(&buf[..n]);
                taken += n;
                if taken == self.per_call {
                    break;
                }
            }
            Ok(taken)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn wire(bytes: &[u8]) -> Wire {
        Rc::from(bytes)
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = Outbound::default();
        q.push_data(wire(b"aaaa"), 10, 100).unwrap();
        q.push_data(wire(b"bbbb"), 10, 100).unwrap();
        let mut sock = Trickle {
            out: vec![],
            per_call: 3,
            calls_left: 2,
        };
        assert_eq!(q.flush_to(&mut sock).unwrap(), (Flushed::Pending, 6));
        sock.calls_left = 10;
        assert_eq!(q.flush_to(&mut sock).unwrap(), (Flushed::Drained, 2));
        assert_eq!(sock.out, b"aaaabbbb");
        assert!(q.is_empty());
    }

    #[test]
    fn control_frames_jump_ahead_of_data_but_not_into_a_started_frame() {
        let mut q = Outbound::default();
        q.push_data(wire(b"1111"), 10, 100).unwrap();
        q.push_data(wire(b"2222"), 10, 100).unwrap();
        let mut sock = Trickle {
            out: vec![],
            per_call: 2,
            calls_left: 1,
        };
        q.flush_to(&mut sock).unwrap();
        q.push_control(wire(b"PP"));
        sock.calls_left = 100;
        q.flush_to(&mut sock).unwrap();
        assert_eq!(sock.out, b"1111PP2222");
    }

    #[test]
    fn a_lone_frame_needs_no_deque_and_drained_queues_hold_no_memory() {
        let mut q = Outbound::default();
        q.push_data(wire(b"one"), 10, 100).unwrap();
        assert_eq!((q.data.capacity(), q.control.capacity()), (0, 0));
        q.push_data(wire(b"two"), 10, 100).unwrap();
        q.push_control(wire(b"P"));
        assert!(q.data.capacity() > 0 && q.control.capacity() > 0);
        let mut sock = Trickle {
            out: vec![],
            per_call: 100,
            calls_left: 10,
        };
        assert_eq!(q.flush_to(&mut sock).unwrap(), (Flushed::Drained, 7));
        assert_eq!(sock.out, b"onePtwo");
        q.release_memory(0);
        assert_eq!((q.data.capacity(), q.control.capacity()), (0, 0));
    }

    #[test]
    fn a_drain_frees_a_deque_that_grew_large_and_keeps_a_small_one() {
        let mut sock = Trickle {
            out: vec![],
            per_call: 1 << 20,
            calls_left: 100,
        };
        let mut q = Outbound::default();
        for _ in 0..4 {
            q.push_data(wire(b"x"), 1000, 1 << 20).unwrap();
        }
        q.flush_to(&mut sock).unwrap();
        assert!(q.data.capacity() > 0, "a small deque is kept");
        for _ in 0..100 {
            q.push_data(wire(b"y"), 1000, 1 << 20).unwrap();
        }
        assert!(q.data.capacity() > KEEP_SLOTS);
        q.flush_to(&mut sock).unwrap();
        assert_eq!(q.data.capacity(), 0, "a grown deque is freed at the drain");
        assert_eq!(sock.out.len(), 104);
    }

    #[test]
    fn responses_are_never_overtaken_by_control_frames() {
        let mut q = Outbound::default();
        q.push_response(wire(b"HTTP/1.1 101\r\n\r\n"));
        q.push_data(wire(b"D"), 10, 100).unwrap();
        q.push_control(wire(b"C"));
        let mut sock = Trickle {
            out: vec![],
            per_call: 3,
            calls_left: 100,
        };
        q.flush_to(&mut sock).unwrap();
        assert_eq!(sock.out, b"HTTP/1.1 101\r\n\r\nCD");
    }

    #[test]
    fn bounds_count_messages_and_bytes_behind_the_frame_in_flight() {
        let mut q = Outbound::default();
        // The first frame goes in flight; the bounds apply behind it.
        q.push_data(wire(&[0; 50]), 2, 10).unwrap();
        assert_eq!(
            q.push_data(wire(&[0; 20]), 2, 10),
            Ok(()),
            "one big frame fits an empty queue"
        );
        assert_eq!(q.push_data(wire(&[0; 1]), 2, 10), Err(Overflow::Bytes));
        let mut q = Outbound::default();
        q.push_data(wire(b"x"), 2, 10).unwrap();
        q.push_data(wire(b"a"), 2, 10).unwrap();
        q.push_data(wire(b"b"), 2, 10).unwrap();
        assert_eq!(q.push_data(wire(b"c"), 2, 10), Err(Overflow::Messages));
        assert_eq!((q.queued_messages(), q.queued_bytes()), (2, 2));
        q.push_unbounded(wire(b"close"));
        assert_eq!(q.queued_messages(), 3);
    }

    #[test]
    fn ping_floods_keep_only_the_latest_pongs() {
        let mut q = Outbound::default();
        for i in 0..40u8 {
            q.push_control(wire(&[i]));
        }
        let mut sock = Trickle {
            out: vec![],
            per_call: 100,
            calls_left: 100,
        };
        q.flush_to(&mut sock).unwrap();
        // The first went in flight at once; of the rest the latest 32 are kept.
        let mut expected = vec![0u8];
        expected.extend(8..40u8);
        assert_eq!(sock.out, expected);
    }

    /// Counts calls and the bytes each one was offered.
    struct Recorder {
        out: Vec<u8>,
        offered: Vec<(usize, usize)>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let bytes: usize = bufs.iter().map(|b| b.len()).sum();
            self.offered.push((bufs.len(), bytes));
            for buf in bufs {
                self.out.extend_from_slice(buf);
            }
            Ok(bytes)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_stops_gathering_at_the_byte_bound_but_always_takes_one_frame() {
        let mut q = Outbound::default();
        let big = MAX_BATCH_BYTES / 4 + 1;
        for i in 0..6u8 {
            q.push_data(wire(&vec![i; big]), 100, usize::MAX).unwrap();
        }
        q.push_data(wire(&vec![9; 2 * MAX_BATCH_BYTES]), 100, usize::MAX)
            .unwrap();
        let mut sock = Recorder {
            out: vec![],
            offered: vec![],
        };
        let total = 6 * big + 2 * MAX_BATCH_BYTES;
        assert_eq!(q.flush_to(&mut sock).unwrap(), (Flushed::Drained, total));
        assert_eq!(
            sock.offered,
            vec![(3, 3 * big), (3, 3 * big), (1, 2 * MAX_BATCH_BYTES)],
            "three quarter-plus frames fit a batch, a huge frame goes alone"
        );
        assert_eq!(sock.out.len(), total);
        assert!(sock.out[..big].iter().all(|&b| b == 0));
        assert_eq!(sock.out[total - 1], 9);
    }

    #[test]
    fn batches_are_capped_and_everything_arrives_in_order() {
        let mut q = Outbound::default();
        let frames: Vec<Wire> = (0..200u8).map(|i| wire(&[i])).collect();
        for f in &frames {
            q.push_data(f.clone(), 1000, 10_000).unwrap();
        }
        let mut sock = Trickle {
            out: vec![],
            per_call: 10_000,
            calls_left: 10,
        };
        assert_eq!(q.flush_to(&mut sock).unwrap(), (Flushed::Drained, 200));
        assert_eq!(sock.calls_left, 10 - 4, "200 frames in batches of 64");
        assert_eq!(sock.out, (0..200u8).collect::<Vec<_>>());
        assert_eq!(
            Rc::strong_count(&frames[0]),
            1,
            "queue released its references"
        );
    }
}
