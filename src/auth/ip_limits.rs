//! Per-IP limits on accepted sockets (`server.max_connections_per_ip`,
//! `server.connection_rate_per_ip` / `connection_burst_per_ip`): one address cannot take
//! every connection slot, nor open connections as fast as it likes.
//!
//! Counted per TCP connection at accept, before a byte is read, so half-open handshakes
//! (slowloris) and HTTP connections count too. A socket that passes holds an [`IpSlot`]
//! for its whole life; dropping the slot gives the place back. With both limits off (the
//! default: behind a load balancer every client has the balancer's address) nothing is
//! tracked and no lock is taken.
//!
//! An IPv6 client is counted per network (`server.ipv6_prefix_per_ip`, a /64 by
//! default): one host is usually given a whole /64 and could otherwise open its limit
//! from each of 2^64 addresses. IPv4-mapped IPv6 addresses count as their IPv4 address.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Addresses tracked at most; beyond this, idle entries are swept, and if none are idle
/// a new address is refused as rate limited (the table cannot grow without bound).
const MAX_TRACKED: usize = 100_000;

/// Why a socket was refused (HTTP 503 with `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRefusal {
    /// The address holds `max_connections_per_ip` connections.
    TooManyConnections,
    /// The address opens connections faster than `connection_rate_per_ip`.
    RateLimited {
        /// Seconds until the next connection would be accepted.
        retry_after_secs: u32,
    },
}

#[derive(Debug)]
struct Entry {
    open: u32,
    tokens: f64,
    refilled: Instant,
}

/// The per-IP table shared by every shard.
#[derive(Debug)]
pub struct IpLimits {
    max_open: u32,
    /// Bits of an IPv6 address that name the client (the rest is zeroed).
    ipv6_mask: u128,
    rate: f64,
    burst: f64,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

/// A socket's place in its address's count; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut table = self.limits.table.lock();
        if let Some(e) = table.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
            // Without a rate limit an address with nothing open has nothing to remember.
            if e.open == 0 && self.limits.rate <= 0.0 {
                table.remove(&self.ip);
            }
        }
    }
}

impl IpLimits {
    /// `max_open` 0 = no connection limit; `rate` 0 = no rate limit; IPv6 clients are
    /// counted per network of `ipv6_prefix` bits (128 = exact addresses).
    pub fn new(max_open: usize, rate: f64, burst: u32, ipv6_prefix: u8) -> Self {
        let ipv6_mask = match u32::from(ipv6_prefix) {
            0 => 0,
            bits @ 1..128 => !(u128::MAX >> bits),
            _ => u128::MAX,
        };
        IpLimits {
            max_open: u32::try_from(max_open).unwrap_or(u32::MAX),
            ipv6_mask,
            rate,
            burst: f64::from(burst.max(1)),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// The address `ip` is counted under: IPv4 as is, IPv6 as its network.
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & self.ipv6_mask).into()),
            v4 => v4,
        }
    }

    fn enabled(&self) -> bool {
        self.max_open > 0 || self.rate > 0.0
    }

    /// Admits one new connection from `ip`. `Ok(None)` when no limit is on.
    ///
    /// # Errors
    /// The address is over one of its limits.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, IpRefusal> {
        if !self.enabled() {
            return Ok(None);
        }
        let ip = self.key(ip);
        let now = Instant::now();
        let mut table = self.table.lock();
        if table.len() >= MAX_TRACKED && !table.contains_key(&ip) {
            self.sweep(&mut table, now);
            if table.len() >= MAX_TRACKED {
                return Err(IpRefusal::RateLimited {
                    retry_after_secs: 1,
                });
            }
        }
        let entry = table.entry(ip).or_insert(Entry {
            open: 0,
            tokens: self.burst,
            refilled: now,
        });
        if self.max_open > 0 && entry.open >= self.max_open {
            return Err(IpRefusal::TooManyConnections);
        }
        if self.rate > 0.0 {
            let elapsed = now.duration_since(entry.refilled).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * self.rate).min(self.burst);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                let wait = ((1.0 - entry.tokens) / self.rate).ceil();
                return Err(IpRefusal::RateLimited {
                    retry_after_secs: (wait as u32).max(1),
                });
            }
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        Ok(Some(IpSlot {
            limits: Arc::clone(self),
            ip,
        }))
    }

    /// Forgets addresses with no open connection whose bucket has refilled (they would
    /// be admitted exactly as a new address is).
    fn sweep(&self, table: &mut HashMap<IpAddr, Entry>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        table.retain(|_, e| {
            let refill = now.duration_since(e.refilled).as_secs_f64() * rate;
            e.open > 0 || (rate > 0.0 && e.tokens + refill < burst)
        });
    }

    /// Addresses currently tracked (for tests and stats).
    pub fn tracked(&self) -> usize {
        self.table.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn ipv6_counts_per_network_and_mapped_ipv4_as_ipv4() {
        let v6 = |s: &str| s.parse::<IpAddr>().expect("address");
        let l = Arc::new(IpLimits::new(2, 0.0, 10, 64));
        let _a = l.admit(v6("2001:db8:1:2::1")).expect("first");
        let _b = l.admit(v6("2001:db8:1:2:ffff::9")).expect("second");
        assert_eq!(
            l.admit(v6("2001:db8:1:2:dead:beef:0:1")).err(),
            Some(IpRefusal::TooManyConnections),
            "the same /64 is one client"
        );
        assert!(
            l.admit(v6("2001:db8:1:3::1")).is_ok(),
            "the next /64 is another"
        );
        let _c = l.admit(v6("::ffff:10.0.0.1")).expect("mapped");
        let _d = l.admit(IpAddr::from([10, 0, 0, 1])).expect("plain");
        assert_eq!(
            l.admit(IpAddr::from([10, 0, 0, 1])).err(),
            Some(IpRefusal::TooManyConnections),
            "::ffff:10.0.0.1 and 10.0.0.1 are one client"
        );
        let exact = Arc::new(IpLimits::new(1, 0.0, 10, 128));
        let _e = exact.admit(v6("2001:db8::1")).expect("exact");
        assert!(
            exact.admit(v6("2001:db8::2")).is_ok(),
            "/128 counts addresses"
        );
    }

    #[test]
    fn off_by_default_tracks_nothing() {
        let l = Arc::new(IpLimits::new(0, 0.0, 10, 64));
        for _ in 0..100 {
            assert!(matches!(l.admit(ip(1)), Ok(None)));
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn connection_limit_counts_open_slots_per_address() {
        let l = Arc::new(IpLimits::new(2, 0.0, 10, 64));
        let a = l.admit(ip(1)).expect("first");
        let _b = l.admit(ip(1)).expect("second");
        assert_eq!(l.admit(ip(1)).err(), Some(IpRefusal::TooManyConnections));
        assert!(l.admit(ip(2)).is_ok(), "other addresses are not affected");
        drop(a);
        assert!(
            l.admit(ip(1)).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn rate_limit_allows_a_burst_then_says_when_to_retry() {
        let l = Arc::new(IpLimits::new(0, 0.5, 3, 64));
        let slots: Vec<_> = (0..3).map(|_| l.admit(ip(1)).expect("burst")).collect();
        drop(slots);
        assert_eq!(
            l.admit(ip(1)).err(),
            Some(IpRefusal::RateLimited {
                retry_after_secs: 2
            }),
            "0.5/s: the next token is 2 s away"
        );
    }
}
