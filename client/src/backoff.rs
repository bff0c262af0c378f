//! Reconnect delays: exponential backoff with full jitter (each delay uniform in
//! `[0, min(max_interval, initial_interval * multiplier^attempt)]`), the scheme AWS
//! measured to spread reconnect storms best, with SemStreams' key names and defaults.

use std::time::Duration;

/// How reconnects are spaced (SPEC §11). The defaults are SemStreams': 1 s, 60 s, ×2,
/// retry forever.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// Ceiling of the first delay.
    pub initial_interval: Duration,
    /// Ceiling no delay exceeds.
    pub max_interval: Duration,
    /// Growth of the ceiling per failed attempt (at least 1).
    pub multiplier: f64,
    /// Failed attempts in a row before giving up; 0 = never give up.
    pub max_retries: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(60),
            multiplier: 2.0,
            max_retries: 0,
        }
    }
}

/// The state of one link's backoff: attempts since the link was last fully back.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A fresh backoff; `seed` feeds the jitter (any value; 0 is replaced).
    pub fn new(config: BackoffConfig, seed: u64) -> Self {
        Backoff {
            config,
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// Failed attempts since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = self
            .config
            .multiplier
            .max(1.0)
            .powi(self.attempt.min(64) as i32);
        let secs = self.config.initial_interval.as_secs_f64() * factor;
        let max = self.config.max_interval.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }

    /// The delay before the next attempt, or `None` once `max_retries` attempts failed.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.config.max_retries != 0 && self.attempt >= self.config.max_retries {
            return None;
        }
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        Some(ceiling.mul_f64(self.unit()))
    }

    /// Called once the link is really back (connected and resubscribed), not merely
    /// connected: a broker that accepts and then drops keeps the delays growing.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A uniform draw in [0, 1) (xorshift64*: jitter needs spread, not secrecy).
    fn unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seed that differs per process and per call, so clients restarted together do not
/// reconnect in step.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_retries: u32) -> BackoffConfig {
        BackoffConfig {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(2),
            multiplier: 2.0,
            max_retries,
        }
    }

    #[test]
    fn ceilings_grow_by_the_multiplier_up_to_the_max() {
        let mut b = Backoff::new(config(0), 7);
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(b.ceiling().as_millis());
            let d = b.next_delay().unwrap_or_default();
            assert!(d <= Duration::from_secs(2));
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn delays_are_spread_over_the_whole_interval() {
        let mut b = Backoff::new(config(0), 12345);
        let draws: Vec<f64> = (0..2000)
            .map(|_| {
                b.reset();
                b.next_delay().unwrap_or_default().as_secs_f64() / 0.1
            })
            .collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!(
            (0.45..0.55).contains(&mean),
            "full jitter has mean 1/2: {mean}"
        );
        assert!(draws.iter().any(|d| *d < 0.05) && draws.iter().any(|d| *d > 0.95));
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
    }

    #[test]
    fn gives_up_after_max_retries() {
        let mut b = Backoff::new(config(3), 1);
        assert!(b.next_delay().is_some());
        assert!(b.next_delay().is_some());
        assert!(b.next_delay().is_some());
        assert_eq!(b.next_delay(), None);
        b.reset();
        assert!(b.next_delay().is_some());
    }
}
