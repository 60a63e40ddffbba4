//! The loop's lifecycle: the inbox other threads reach it through, the
//! figures it shares with them, the process signals, and shutdown. The
//! steps in `commands.rs` act on what comes out of here.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::handle::{Command, Inbox};
use crate::metrics::Shared;

/// Handle commands taken per pass, so pushes cannot starve the sockets.
const COMMAND_BUDGET: usize = 1024;

/// What a batch of pending signals asks for.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Signalled {
    /// SIGINT/SIGTERM seen.
    pub(super) stops: usize,
    /// SIGHUP seen: reload the TLS pair.
    pub(super) reload: bool,
}

/// Commands, signals, shutdown.
pub(super) struct Lifecycle {
    /// Handle commands (bounded channel; its waker is `WAKER`).
    inbox: Inbox,
    /// What handles read without asking the loop (`online_count`, ...).
    shared: Arc<Shared>,
    /// SIGINT/SIGTERM/SIGHUP, when the server handles signals.
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// Shutting down: when the loop exits, open sessions or not.
    pub(super) shutdown_deadline_ms: Option<u64>,
    /// The last pass stopped at its command budget: more are waiting.
    pub(super) commands_left: bool,
    /// Commands taken this pass.
    taken: usize,
}

impl Lifecycle {
    pub(super) fn new(
        inbox: Inbox,
        shared: Arc<Shared>,
        signals: Option<signal_hook_mio::v1_0::Signals>,
    ) -> Lifecycle {
        Lifecycle {
            inbox,
            shared,
            signals,
            shutdown_deadline_ms: None,
            commands_left: false,
            taken: 0,
        }
    }

    /// A new batch of commands begins (the waker rang, or some were left).
    pub(super) fn start_commands(&mut self) {
        self.inbox.rearm();
        self.commands_left = false;
        self.taken = 0;
    }

    /// The next command within this pass's budget; past it, the rest wait
    /// for the next pass (`commands_left`).
    pub(super) fn next_command(&mut self) -> Option<Command> {
        if self.taken == COMMAND_BUDGET {
            self.commands_left = true;
            return None;
        }
        let command = self.inbox.next()?;
        self.taken += 1;
        Some(command)
    }

    /// Takes the pending signals.
    pub(super) fn signalled(&mut self) -> Signalled {
        let mut seen = Signalled::default();
        if let Some(signals) = self.signals.as_mut() {
            for signal in signals.pending() {
                match signal {
                    signal_hook::consts::SIGHUP => seen.reload = true,
                    _ => seen.stops += 1,
                }
            }
        }
        seen
    }

    pub(super) fn shutting_down(&self) -> bool {
        self.shutdown_deadline_ms.is_some()
    }

    /// Stores the open-session count that `Handle::online_count` reads.
    pub(super) fn publish_online(&self, count: usize) {
        self.shared.online.store(count, Ordering::Relaxed);
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }
}
