//! What the chaos tests share (tests/chaos.rs on one node,
//! tests/cluster_history.rs across two): a reproducible PRNG, the
//! per-stream tracking of positions, the tally checked at the end, and
//! the position parser. Knobs come from the environment.

pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// mulberry-style PRNG: reproducible and dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one client knows of one stream.
#[derive(Default, Clone)]
pub struct Track {
    pub epoch: String,
    /// The last offset seen (the position to resume from).
    pub last: u64,
    pub known: bool,
    /// Being resumed on this connection: wait for `recovered`.
    pub resuming: bool,
    /// This connection's welcome position.
    pub welcome: Option<(String, u64)>,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Tally {
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub misordered: u64,
    pub wrong_content: u64,
    pub declared_failed: u64,
    pub resumed_ok: u64,
    pub replayed: u64,
    pub reconnects: u64,
    /// Connections the server ended (e.g. 1013 when a worker fell behind).
    pub ended: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.misordered += o.misordered;
        self.wrong_content += o.wrong_content;
        self.declared_failed += o.declared_failed;
        self.resumed_ok += o.resumed_ok;
        self.replayed += o.replayed;
        self.reconnects += o.reconnects;
        self.ended += o.ended;
    }
}

/// `kind:epoch:offset` into its parts; `None` if it is not a position.
pub fn split_position(pos: &str) -> Option<(&str, &str, u64)> {
    let mut parts = pos.splitn(3, ':');
    let (kind, epoch, offset) = (parts.next()?, parts.next()?, parts.next()?);
    Some((kind, epoch, offset.parse().ok()?))
}
