//! What the benches that start processes share: a child process (a wshub
//! server, a private redis-server) stopped by its PID when dropped, its
//! scratch directory removed, and a free loopback port. A bench includes it
//! with `#[path = "support/process.rs"] mod process;` (a subdirectory of
//! `benches/` is not a bench target of its own).

// Each bench uses the part it needs.
#![allow(dead_code)]

use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;

/// A child process of a bench: killed by its PID (never by name) and
/// waited for when dropped; its scratch directory, if any, removed then.
pub struct Process {
    child: Child,
    dir: Option<PathBuf>,
}

impl Process {
    /// `child`, and the directory to remove with it.
    pub fn new(child: Child, dir: Option<PathBuf>) -> Process {
        Process { child, dir }
    }

    /// Its PID (for `/proc/<pid>/…` CPU figures).
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A loopback port that is free now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
