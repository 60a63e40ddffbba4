//! Commands: applies what handles and hooks asked for (pushes,
//! disconnects, queries, shutdown), bounded per pass, and the signals
//! (SIGINT/SIGTERM shut down, SIGHUP reloads the TLS pair).

use log::info;

use super::{EventLoop, ACTION_ROUNDS, COMMAND_BUDGET};
use crate::audience::Audience;
use crate::handle::Command;
use crate::hooks::CloseReason;
use crate::session::Phase;
use crate::wheel::millis;

impl EventLoop {
    pub(super) fn drain_commands(&mut self) {
        self.inbox.rearm();
        self.commands_left = false;
        for _ in 0..COMMAND_BUDGET {
            let Some(command) = self.inbox.next() else {
                return;
            };
            self.on_command(command);
        }
        self.commands_left = true;
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Push {
                target,
                json,
                reply,
            } => {
                let sent = self.push(&target, &json);
                if let Some(reply) = reply {
                    let _ = reply.try_send(sent);
                }
            }
            Command::DisconnectUser(user) => self.disconnect_user(&user),
            Command::Membership {
                user,
                room,
                join,
                reply,
            } => {
                let changed = self.handle_membership(&user, &room, join);
                if let Some(reply) = reply {
                    let _ = reply.try_send(changed);
                }
            }
            Command::OnlineUsers(reply) => {
                let _ = reply.try_send(self.online_users());
            }
            Command::Shutdown => self.begin_shutdown(),
            Command::Cluster(event) => self.on_cluster(event),
        }
    }

    /// Runs what hooks asked for, after the event that ran them. An action
    /// can run hooks again (a disconnect runs `on_disconnect`); their actions
    /// follow, for a bounded number of rounds, the rest in the next pass.
    pub(super) fn apply_actions(&mut self) {
        for _ in 0..ACTION_ROUNDS {
            if self.actions.is_empty() {
                return;
            }
            for command in self.actions.take() {
                self.on_command(command);
            }
        }
    }

    fn disconnect_user(&mut self, user: &str) {
        let mut keys = Vec::new();
        self.router
            .for_each_member(Audience::User(user), |key| keys.push(key));
        for key in keys {
            self.server_close(
                key.index as usize,
                1000,
                "disconnected by server",
                CloseReason::Server,
            );
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline_ms.is_some() {
            return;
        }
        let timeout = millis(self.config.websocket.shutdown_timeout);
        self.shutdown_deadline_ms = Some(self.now_ms + timeout);
        self.accepting = false;
        let _ = self.poll.registry().deregister(&mut self.listener);
        if let Some(link) = self.cluster.as_mut() {
            // Other nodes drop this node's users now, not after presence_ttl.
            link.leave();
        }
        info!(
            "shutting down: closing {} WebSocket sessions",
            self.open_websockets
        );
        let indexes: Vec<usize> = self.sessions.iter().map(|(i, _)| i).collect();
        for index in indexes {
            match self.sessions.get(index).map(|s| s.phase()) {
                Some(Phase::Chat { .. } | Phase::Echo | Phase::Sse { .. }) => {
                    self.server_close(index, 1001, "server shutting down", CloseReason::Shutdown)
                }
                Some(Phase::Http | Phase::Proxy) => self.kill(index, CloseReason::Shutdown),
                _ => {}
            }
        }
    }

    pub(super) fn on_signals(&mut self) {
        let mut count = 0;
        let mut reload = false;
        if let Some(signals) = self.signals.as_mut() {
            for signal in signals.pending() {
                match signal {
                    signal_hook::consts::SIGHUP => reload = true,
                    _ => count += 1,
                }
            }
        }
        if reload {
            self.reload_tls();
        }
        if count == 0 {
            return;
        }
        if self.shutdown_deadline_ms.is_some() || count > 1 {
            info!("second signal: exiting now");
            self.shutdown_deadline_ms = Some(self.now_ms);
            self.sessions.clear();
            return;
        }
        info!("signal received: shutting down");
        self.begin_shutdown();
    }
}

impl EventLoop {
    /// SIGHUP: re-reads `tls.cert` and `tls.key`. New connections use the
    /// new pair; open ones keep theirs; a bad pair is logged and the old
    /// one kept.
    fn reload_tls(&mut self) {
        if self.tls.is_none() {
            return;
        }
        match crate::tls::load(&self.config.tls) {
            Ok(Some(config)) => {
                info!(
                    "SIGHUP: TLS certificate reloaded from {}",
                    self.config.tls.cert
                );
                self.tls = Some(config);
            }
            Ok(None) => {}
            Err(e) => log::warn!("SIGHUP: {e}; keeping the previous certificate"),
        }
    }
}
