//! Per-IP limits on accepted sockets (`server.max_connections_per_ip`,
//! `server.connection_rate_per_ip` / `connection_burst_per_ip`): one address cannot take
//! every connection slot, nor open connections as fast as it likes.
//!
//! Counted per TCP connection at accept, before a byte is read, so half-open handshakes
//! (slowloris) and HTTP connections count too. A socket that passes holds an [`IpSlot`]
//! for its whole life; dropping the slot gives the place back. With both limits off (the
//! default: behind a load balancer every client has the balancer's address) nothing is
//! tracked and no lock is taken.

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
    /// `max_open` 0 = no connection limit; `rate` 0 = no rate limit.
    pub fn new(max_open: usize, rate: f64, burst: u32) -> Self {
        IpLimits {
            max_open: u32::try_from(max_open).unwrap_or(u32::MAX),
            rate,
            burst: f64::from(burst.max(1)),
            table: Mutex::new(HashMap::new()),
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
    fn off_by_default_tracks_nothing() {
        let l = Arc::new(IpLimits::new(0, 0.0, 10));
        for _ in 0..100 {
            assert!(matches!(l.admit(ip(1)), Ok(None)));
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn connection_limit_counts_open_slots_per_address() {
        let l = Arc::new(IpLimits::new(2, 0.0, 10));
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
        let l = Arc::new(IpLimits::new(0, 0.5, 3));
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
