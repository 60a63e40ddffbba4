//! Commands: applies what handles and hooks asked for (pushes,
//! disconnects, queries, shutdown), bounded per pass, and the signals
//! (SIGINT/SIGTERM shut down, SIGHUP reloads the TLS pair). The inbox,
//! the signals and the shutdown deadline are `Lifecycle`'s; a shutdown
//! stops `Admission` and closes every session.

use log::info;

use super::{EventLoop, ACTION_ROUNDS};
use crate::audience::Audience;
use crate::handle::Command;
use crate::hooks::CloseReason;
use crate::session::Phase;
use crate::wheel::millis;

impl EventLoop {
    /// Handle commands, at most a budget per pass (`Lifecycle`).
    pub(super) fn drain_commands(&mut self) {
        self.life.start_commands();
        while let Some(command) = self.life.next_command() {
            self.on_command(command);
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Push {
                target,
                json,
                reply,
            } => {
                let sent = self.delivery().push(&target, &json);
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
                let changed = self.delivery().handle_membership(&user, &room, join);
                if let Some(reply) = reply {
                    let _ = reply.try_send(changed);
                }
            }
            Command::OnlineUsers(reply) => {
                let _ = reply.try_send(self.hub.online_users());
            }
            Command::Shutdown => self.begin_shutdown(),
            Command::Cluster(event) => self.on_cluster(event),
        }
        self.close_ended();
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
        self.hub
            .router
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
        if self.life.shutting_down() {
            return;
        }
        let timeout = millis(self.setup.config.websocket.shutdown_timeout);
        self.life.shutdown_deadline_ms = Some(self.clock.now_ms + timeout);
        self.admission.stop(self.poll.registry());
        if let Some(link) = self.hub.cluster.as_mut() {
            // Other nodes drop this node's users now, not after presence_ttl.
            link.leave();
        }
        info!(
            "shutting down: closing {} WebSocket sessions",
            self.conns.open_websockets
        );
        let indexes: Vec<usize> = self.conns.sessions.iter().map(|(i, _)| i).collect();
        for index in indexes {
            match self.conns.sessions.get(index).map(|s| s.phase()) {
                Some(Phase::Chat { .. } | Phase::Echo | Phase::Sse { .. }) => {
                    self.server_close(index, 1001, "server shutting down", CloseReason::Shutdown)
                }
                Some(Phase::Http | Phase::Proxy) => self.kill(index, CloseReason::Shutdown),
                _ => {}
            }
        }
    }

    pub(super) fn on_signals(&mut self) {
        let signalled = self.life.signalled();
        if signalled.reload {
            self.reload_tls();
        }
        if signalled.stops == 0 {
            return;
        }
        if self.life.shutting_down() || signalled.stops > 1 {
            info!("second signal: exiting now");
            self.life.shutdown_deadline_ms = Some(self.clock.now_ms);
            self.conns.sessions.clear();
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
        if self.admission.tls.is_none() {
            return;
        }
        match crate::tls::load(&self.setup.config.tls) {
            Ok(Some(config)) => {
                info!(
                    "SIGHUP: TLS certificate reloaded from {}",
                    self.setup.config.tls.cert
                );
                self.admission.tls = Some(config);
            }
            Ok(None) => {}
            Err(e) => log::warn!("SIGHUP: {e}; keeping the previous certificate"),
        }
    }
}
