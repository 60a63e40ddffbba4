//! `websocket.max_connections_per_ip`: open connections (HTTP and WebSocket
//! together) per client address, IPv6 counted per /64 (one host usually
//! holds a whole /64, so counting single v6 addresses would limit nothing).
//!
//! [`PerIp`] holds the counts and nothing else; the event loop owns the one
//! instance and calls [`PerIp::admit`] when a connection's client address
//! is known and [`PerIp::release`] when that connection goes. Pure. The
//! address is never a metric label: only refusals are counted, by reason.

use std::collections::HashMap;
use std::net::IpAddr;

/// What is counted for an address: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// One IPv4 address (an IPv4-mapped IPv6 address counts here).
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl Key {
    /// The key `ip` is counted under.
    pub fn of(ip: IpAddr) -> Key {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Key::V4(u32::from(v4)),
            IpAddr::V6(v6) => Key::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Open connections per `Key`; `max` 0 is off and counts nothing.
#[derive(Debug, Default)]
pub struct PerIp {
    max: usize,
    counts: HashMap<Key, u32>,
}

impl PerIp {
    /// At most `max` connections per key (0: no limit).
    pub fn new(max: usize) -> PerIp {
        PerIp {
            max,
            counts: HashMap::new(),
        }
    }

    /// The limit is on: connections must be admitted and released.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// Counts one more connection for `ip`; `false` (nothing counted) when
    /// the key already has `max`, or when the limit is off.
    pub fn admit(&mut self, ip: IpAddr) -> bool {
        if !self.enabled() {
            return false;
        }
        let count = self.counts.entry(Key::of(ip)).or_insert(0);
        if *count as usize >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    /// Whether `ip` is at its limit (a refusal is due).
    pub fn is_full(&self, ip: IpAddr) -> bool {
        self.enabled()
            && self
                .counts
                .get(&Key::of(ip))
                .is_some_and(|&n| n as usize >= self.max)
    }

    /// One connection admitted for `ip` is gone. The map gives its memory
    /// back once most keys have left.
    pub fn release(&mut self, ip: IpAddr) {
        let key = Key::of(ip);
        if let Some(count) = self.counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&key);
                if self.counts.capacity() > 64 && self.counts.len() * 4 < self.counts.capacity() {
                    self.counts.shrink_to(self.counts.len() * 2);
                }
            }
        }
    }

    /// Addresses with at least one counted connection.
    pub fn addresses(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_per_address_up_to_max() {
        let mut limit = PerIp::new(2);
        assert!(limit.admit(ip("192.0.2.1")));
        assert!(limit.admit(ip("192.0.2.1")));
        assert!(limit.is_full(ip("192.0.2.1")));
        assert!(!limit.admit(ip("192.0.2.1")));
        assert!(limit.admit(ip("192.0.2.2")));
        limit.release(ip("192.0.2.1"));
        assert!(limit.admit(ip("::ffff:192.0.2.1")), "mapped counts as v4");
        assert!(!limit.admit(ip("192.0.2.1")));
        for _ in 0..2 {
            limit.release(ip("192.0.2.1"));
        }
        limit.release(ip("192.0.2.2"));
        assert_eq!(limit.addresses(), 0);
    }

    #[test]
    fn ipv6_per_64() {
        let mut limit = PerIp::new(1);
        assert!(limit.admit(ip("2001:db8:0:1::1")));
        assert!(!limit.admit(ip("2001:db8:0:1:ffff:ffff:ffff:ffff")));
        assert!(limit.admit(ip("2001:db8:0:2::1")));
        assert_eq!(
            Key::of(ip("2001:db8:0:1::9")),
            Key::V6(0x2001_0db8_0000_0001)
        );
    }

    #[test]
    fn off_counts_nothing() {
        let mut limit = PerIp::new(0);
        assert!(!limit.enabled());
        assert!(!limit.admit(ip("192.0.2.1")));
        assert!(!limit.is_full(ip("192.0.2.1")));
        limit.release(ip("192.0.2.1"));
        assert_eq!(limit.addresses(), 0);
    }

    #[test]
    fn memory_is_given_back() {
        let mut limit = PerIp::new(1);
        for i in 0..10_000u32 {
            assert!(limit.admit(IpAddr::from(i.to_be_bytes())));
        }
        for i in 0..10_000u32 {
            limit.release(IpAddr::from(i.to_be_bytes()));
        }
        assert!(
            limit.counts.capacity() <= 128,
            "{}",
            limit.counts.capacity()
        );
    }
}
