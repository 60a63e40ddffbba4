//! The [`Handle`]: how other threads reach the event loop.
//!
//! A handle is `Clone + Send + Sync`. Each call puts one command on a
//! bounded channel and wakes the loop through its `mio::Waker`; a burst of
//! pushes costs one wake, because only the push that finds no wake pending
//! makes the syscall. A full channel is an error the caller sees at once:
//! nothing here blocks without a timeout.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use crate::audience::Audience;
use crate::cluster::{Event, Refused, ToLoop};
use crate::message::{self, Message};
use crate::metrics::Shared;

/// How long a query waits for the loop's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a handle asks the loop to do.
#[derive(Debug)]
pub(crate) enum Command {
    Push {
        target: Audience<String>,
        json: Vec<u8>,
        reply: Option<SyncSender<usize>>,
    },
    DisconnectUser(String),
    /// Add every session of `user` (every node) to `room`, or remove them.
    Membership {
        user: String,
        room: String,
        join: bool,
        reply: Option<SyncSender<usize>>,
    },
    OnlineUsers(SyncSender<Vec<String>>),
    Shutdown,
    /// From the cluster's bridge threads.
    Cluster(Event),
}

/// Why a handle call failed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleError {
    /// The command queue is full; the loop is behind. Retry later or drop.
    QueueFull,
    /// The server has stopped.
    Closed,
    /// The loop did not answer a query in time.
    Timeout,
    /// The message is not a JSON object with a non-empty `type`.
    InvalidMessage(String),
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleError::QueueFull => f.write_str("wshub command queue is full"),
            HandleError::Closed => f.write_str("wshub server has stopped"),
            HandleError::Timeout => f.write_str("wshub event loop did not answer in time"),
            HandleError::InvalidMessage(why) => write!(f, "invalid message: {why}"),
        }
    }
}

impl std::error::Error for HandleError {}

/// The loop's end of the channel.
pub(crate) struct Inbox {
    pub(crate) receiver: Receiver<Command>,
    pub(crate) wake_pending: Arc<AtomicBool>,
    pub(crate) shared: Arc<Shared>,
}

impl Inbox {
    /// Takes the next command, if any. The caller clears the wake flag once
    /// per pass with [`Inbox::rearm`] before draining.
    pub(crate) fn next(&self) -> Option<Command> {
        let command = self.receiver.try_recv().ok()?;
        self.shared.queued_commands.fetch_sub(1, Ordering::Relaxed);
        Some(command)
    }

    /// Lets the next push wake the loop again.
    pub(crate) fn rearm(&self) {
        self.wake_pending.store(false, Ordering::SeqCst);
    }
}

/// A cloneable, thread-safe way to push to users and query the server.
#[derive(Clone)]
pub struct Handle {
    sender: SyncSender<Command>,
    waker: Arc<mio::Waker>,
    wake_pending: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

/// Creates a connected handle and inbox with room for `capacity` commands.
pub(crate) fn channel(
    waker: Arc<mio::Waker>,
    shared: Arc<Shared>,
    capacity: usize,
) -> (Handle, Inbox) {
    let (sender, receiver) = mpsc::sync_channel(capacity);
    let wake_pending = Arc::new(AtomicBool::new(false));
    let handle = Handle {
        sender,
        waker,
        wake_pending: wake_pending.clone(),
        shared: shared.clone(),
    };
    let inbox = Inbox {
        receiver,
        wake_pending,
        shared,
    };
    (handle, inbox)
}

impl Handle {
    /// Queues `message` to every session of `user`. An offline user is not an
    /// error: the message simply reaches no one.
    pub fn send_to_user(&self, user: &str, message: &Message) -> Result<(), HandleError> {
        self.push(Audience::User(user.to_owned()), message.to_json(), None)
    }

    /// Queues `message` to every open chat session.
    pub fn broadcast(&self, message: &Message) -> Result<(), HandleError> {
        self.push(Audience::EVERYONE, message.to_json(), None)
    }

    /// Queues `message` to every member of `room`.
    pub fn broadcast_to_room(&self, room: &str, message: &Message) -> Result<(), HandleError> {
        self.push(Audience::room(room.to_owned()), message.to_json(), None)
    }

    /// Queues pre-serialized JSON (an object with a non-empty `type`) to
    /// every session of `user`, sent byte for byte.
    pub fn send_json_to_user(&self, user: &str, json: Vec<u8>) -> Result<(), HandleError> {
        check_json(&json)?;
        self.push(Audience::User(user.to_owned()), json, None)
    }

    /// Queues pre-serialized JSON to every open chat session.
    pub fn broadcast_json(&self, json: Vec<u8>) -> Result<(), HandleError> {
        check_json(&json)?;
        self.push(Audience::EVERYONE, json, None)
    }

    /// Like [`Handle::send_to_user`], and waits for the loop to say how many
    /// sessions the message was queued to (0 when the user is offline).
    pub fn send_to_user_counted(
        &self,
        user: &str,
        message: &Message,
    ) -> Result<usize, HandleError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.push(
            Audience::User(user.to_owned()),
            message.to_json(),
            Some(reply),
        )?;
        answer.recv_timeout(REPLY_TIMEOUT).map_err(reply_error)
    }

    /// Adds every open session of `user`, on every node, to `room`, as
    /// `POST /api/ws/join` does, and waits for the number of sessions
    /// changed (cluster-wide from the view). A session already in
    /// `max_rooms_per_session` rooms is skipped.
    pub fn join(&self, user: &str, room: &str) -> Result<usize, HandleError> {
        self.membership(user, room, true)
    }

    /// Removes every open session of `user`, on every node, from `room`,
    /// as `POST /api/ws/leave` does; returns the sessions changed.
    pub fn leave(&self, user: &str, room: &str) -> Result<usize, HandleError> {
        self.membership(user, room, false)
    }

    fn membership(&self, user: &str, room: &str, join: bool) -> Result<usize, HandleError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Command::Membership {
            user: user.to_owned(),
            room: room.to_owned(),
            join,
            reply: Some(reply),
        })?;
        answer.recv_timeout(REPLY_TIMEOUT).map_err(reply_error)
    }

    /// Closes every session of `user` (Close 1000).
    pub fn disconnect_user(&self, user: &str) -> Result<(), HandleError> {
        self.send(Command::DisconnectUser(user.to_owned()))
    }

    /// Open chat sessions, anonymous ones included. Answered from a counter
    /// the loop publishes, without a round trip.
    pub fn online_count(&self) -> usize {
        self.shared.online()
    }

    /// Distinct online user ids, sorted. Asks the loop and waits up to 5 s.
    pub fn online_users(&self) -> Result<Vec<String>, HandleError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Command::OnlineUsers(reply))?;
        answer.recv_timeout(REPLY_TIMEOUT).map_err(reply_error)
    }

    /// Starts a graceful shutdown: Close 1001 to every client, then `run`
    /// returns once they are gone or `shutdown_timeout` has passed.
    pub fn shutdown(&self) -> Result<(), HandleError> {
        self.send(Command::Shutdown)
    }

    fn push(
        &self,
        target: Audience<String>,
        json: Vec<u8>,
        reply: Option<SyncSender<usize>>,
    ) -> Result<(), HandleError> {
        self.send(Command::Push {
            target,
            json,
            reply,
        })
    }

    fn send(&self, command: Command) -> Result<(), HandleError> {
        self.enqueue(|sender| {
            sender.try_send(command).map_err(|e| match e {
                TrySendError::Full(_) => HandleError::QueueFull,
                TrySendError::Disconnected(_) => HandleError::Closed,
            })
        })
    }

    /// Counts the command `put` queues and wakes the loop unless a wake is
    /// already pending.
    fn enqueue(
        &self,
        put: impl FnOnce(&SyncSender<Command>) -> Result<(), HandleError>,
    ) -> Result<(), HandleError> {
        // Counted before it is queued: the loop may take it at once.
        self.shared.queued_commands.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = put(&self.sender) {
            self.shared.queued_commands.fetch_sub(1, Ordering::Relaxed);
            return Err(e);
        }
        if !self.wake_pending.swap(true, Ordering::SeqCst) && self.waker.wake().is_err() {
            return Err(HandleError::Closed);
        }
        Ok(())
    }
}

/// The bridge threads reach the loop through the same queue and waker.
impl ToLoop for Handle {
    fn send_from_bridge(&self, event: Event) -> Result<(), Refused> {
        self.enqueue(|sender| {
            sender
                .send(Command::Cluster(event))
                .map_err(|_| HandleError::Closed)
        })
        .map_err(refused)
    }

    fn try_send_from_bridge(&self, event: Event) -> Result<(), Refused> {
        self.send(Command::Cluster(event)).map_err(refused)
    }
}

fn refused(e: HandleError) -> Refused {
    match e {
        HandleError::QueueFull => Refused::Full,
        _ => Refused::Gone,
    }
}

fn check_json(json: &[u8]) -> Result<(), HandleError> {
    message::parse(json)
        .map(|_| ())
        .map_err(|e| HandleError::InvalidMessage(e.to_string()))
}

fn reply_error(e: mpsc::RecvTimeoutError) -> HandleError {
    match e {
        mpsc::RecvTimeoutError::Timeout => HandleError::Timeout,
        mpsc::RecvTimeoutError::Disconnected => HandleError::Closed,
    }
}
