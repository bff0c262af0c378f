//! `[[upstream]]`: links from this broker to other brokers (SPEC §11, docs/FEDERATION.md).
//!
//! Each entry is one link, run by `crate::links`: `pull` subscribes to `patterns` on the
//! upstream and republishes here, `push` forwards local publications matching `patterns`
//! to the upstream. Checked at start ([`check`]), so a bad URL, an unknown mode or a
//! missing secret variable is a config error naming the key, never a link that fails later.

use super::duration;
use super::validate::Violation;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Keys one `[[upstream]]` table may have (checked before deserializing, like `[[policy]]`).
pub const KEYS: [&str; 18] = [
    "name",
    "url",
    "mode",
    "dialect",
    "patterns",
    "prefix",
    "token_env",
    "username_env",
    "password_env",
    "queue_size",
    "on_full",
    "initial_interval",
    "max_interval",
    "multiplier",
    "max_retries",
    "max_hops",
    "ping_deadline",
    "connect_timeout",
];

/// Largest `queue_size` of one link.
pub const MAX_QUEUE_SIZE: usize = 1_000_000;
/// Largest `max_hops`.
pub const MAX_HOPS: u32 = 64;

/// One `[[upstream]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name in `/healthz`, metrics and logs; "" = `upstream-N` (N = its place, from 1).
    #[serde(default)]
    pub name: String,
    /// The upstream's WebSocket URL (`ws://host:port/ws`).
    pub url: String,
    /// `pull` or `push`.
    pub mode: String,
    /// What the link speaks: `vws` (another shardcast broker, every feature) or
    /// `semstreams` (the SemStreams envelope: a SemStreams WebSocket Input, or a
    /// shardcast broker as a SemStreams peer).
    #[serde(default = "default_dialect")]
    pub dialect: String,
    /// Topics or patterns: subscribed upstream (pull) or forwarded upstream (push).
    pub patterns: Vec<String>,
    /// Added in front of each topic where the publication comes in: here for pull, on the
    /// upstream for push. "" = none.
    #[serde(default)]
    pub prefix: String,
    /// Environment variable holding a bearer token or JWT for the upstream; "" = none.
    #[serde(default)]
    pub token_env: String,
    /// Environment variable holding the basic-auth user name (with `password_env`).
    #[serde(default)]
    pub username_env: String,
    /// Environment variable holding the basic-auth password.
    #[serde(default)]
    pub password_env: String,
    /// Push: publications held while the link is down or slower than local publishers.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Push: what a full queue does: `drop_oldest`, `drop_newest` or `block`.
    #[serde(default = "default_on_full")]
    pub on_full: String,
    /// Ceiling of the first reconnect delay.
    #[serde(default = "default_initial", with = "duration")]
    pub initial_interval: Duration,
    /// Ceiling no reconnect delay exceeds.
    #[serde(default = "default_max", with = "duration")]
    pub max_interval: Duration,
    /// Growth of the delay ceiling per failed attempt (>= 1).
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Failed attempts in a row before the link gives up; 0 = never.
    #[serde(default)]
    pub max_retries: u32,
    /// Publications that crossed this many links already are not forwarded again.
    #[serde(default = "default_max_hops")]
    pub max_hops: u32,
    /// A link on which nothing arrives for this long is dropped and re-made.
    #[serde(default = "default_ping_deadline", with = "duration")]
    pub ping_deadline: Duration,
    /// Time allowed for one connect (TCP and WebSocket upgrade).
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
}

fn default_queue_size() -> usize {
    10_000
}
fn default_dialect() -> String {
    "vws".to_owned()
}
fn default_on_full() -> String {
    "drop_oldest".to_owned()
}
fn default_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_max() -> Duration {
    Duration::from_secs(60)
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_max_hops() -> u32 {
    8
}
fn default_ping_deadline() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Which way a link carries publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Upstream to here.
    Pull,
    /// Here to upstream.
    Push,
}

/// What a push link does with a publication when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Drop the oldest queued publication to make room.
    DropOldest,
    /// Drop the new publication.
    DropNewest,
    /// Refuse the local publish (vws nack, API 503) until there is room.
    Block,
}

impl UpstreamConfig {
    /// The mode, when it is one this broker knows.
    pub fn mode(&self) -> Option<Mode> {
        match self.mode.as_str() {
            "pull" => Some(Mode::Pull),
            "push" => Some(Mode::Push),
            _ => None,
        }
    }

    /// The dialect, when it is one the client crate speaks.
    pub fn dialect(&self) -> Option<shardcast_client::Dialect> {
        match self.dialect.as_str() {
            "vws" => Some(shardcast_client::Dialect::Vws),
            "semstreams" => Some(shardcast_client::Dialect::SemStreams),
            _ => None,
        }
    }

    /// The full-queue policy, when it is one this broker knows.
    pub fn on_full(&self) -> Option<OnFull> {
        match self.on_full.as_str() {
            "drop_oldest" => Some(OnFull::DropOldest),
            "drop_newest" => Some(OnFull::DropNewest),
            "block" => Some(OnFull::Block),
            _ => None,
        }
    }

    /// The configured name, or `upstream-N` for entry `index` (from 0).
    pub fn display_name(&self, index: usize) -> String {
        if self.name.is_empty() {
            format!("upstream-{}", index + 1)
        } else {
            self.name.clone()
        }
    }

    /// The environment variables this link reads its credentials from, with their keys.
    pub fn secret_vars(&self) -> Vec<(&'static str, &str)> {
        [
            ("upstream.token_env", self.token_env.as_str()),
            ("upstream.username_env", self.username_env.as_str()),
            ("upstream.password_env", self.password_env.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect()
    }
}

/// Checks every `[[upstream]]` entry; `limits` are the topic limits of this broker.
pub(super) fn check(
    entries: &[UpstreamConfig],
    limits: &crate::topic::Limits,
) -> Result<(), Violation> {
    let mut names = std::collections::HashSet::new();
    for (i, u) in entries.iter().enumerate() {
        let name = u.display_name(i);
        let fail = |key: &'static str, reason: String| {
            Err(Violation {
                key,
                reason: format!("upstream {} ({name:?}): {reason}", i + 1),
                involves: vec!["upstream"],
            })
        };
        if name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            fail(
                "upstream.name",
                "must be 1 to 64 of the characters A-Z a-z 0-9 - _ .".into(),
            )?;
        }
        if !names.insert(name.clone()) {
            fail("upstream.name", "another [[upstream]] has this name".into())?;
        }
        if let Err(e) = shardcast_client::WsUrl::parse(&u.url) {
            fail("upstream.url", e.to_string())?;
        }
        if u.mode().is_none() {
            fail(
                "upstream.mode",
                format!("unknown mode {:?}; use \"pull\" or \"push\"", u.mode),
            )?;
        }
        if u.dialect().is_none() {
            fail(
                "upstream.dialect",
                format!(
                    "unknown dialect {:?}; use \"vws\" or \"semstreams\"",
                    u.dialect
                ),
            )?;
        }
        if u.on_full().is_none() {
            fail(
                "upstream.on_full",
                format!(
                    "unknown policy {:?}; use \"drop_oldest\", \"drop_newest\" or \"block\"",
                    u.on_full
                ),
            )?;
        }
        if u.patterns.is_empty() {
            fail(
                "upstream.patterns",
                "needs at least one topic or pattern".into(),
            )?;
        }
        for p in &u.patterns {
            if let Err(e) = crate::topic::validate_pattern(p, limits) {
                fail("upstream.patterns", format!("{p:?}: {e}"))?;
            }
        }
        if u.prefix.contains(['+', '#']) || u.prefix.chars().any(char::is_control) {
            fail(
                "upstream.prefix",
                format!(
                    "{:?} must not contain '+', '#' or control characters",
                    u.prefix
                ),
            )?;
        }
        for (key, var) in [
            ("upstream.token_env", &u.token_env),
            ("upstream.username_env", &u.username_env),
            ("upstream.password_env", &u.password_env),
        ] {
            if let Err(v) = super::validate::env_name(key, var) {
                fail(key, v.reason)?;
            }
        }
        if !u.token_env.is_empty() && !u.username_env.is_empty() {
            fail(
                "upstream.token_env",
                "give either token_env or username_env + password_env, not both".into(),
            )?;
        }
        if u.username_env.is_empty() != u.password_env.is_empty() {
            fail(
                "upstream.password_env",
                "username_env and password_env go together".into(),
            )?;
        }
        if u.queue_size == 0 || u.queue_size > MAX_QUEUE_SIZE {
            fail(
                "upstream.queue_size",
                format!(
                    "must be between 1 and {MAX_QUEUE_SIZE} (got {})",
                    u.queue_size
                ),
            )?;
        }
        if u.initial_interval.is_zero() {
            fail("upstream.initial_interval", "must be longer than 0s".into())?;
        }
        if u.max_interval < u.initial_interval {
            fail(
                "upstream.max_interval",
                "must be at least initial_interval".into(),
            )?;
        }
        if !u.multiplier.is_finite() || u.multiplier < 1.0 {
            fail(
                "upstream.multiplier",
                format!("must be a number >= 1 (got {})", u.multiplier),
            )?;
        }
        if u.max_hops == 0 || u.max_hops > MAX_HOPS {
            fail(
                "upstream.max_hops",
                format!("must be between 1 and {MAX_HOPS} (got {})", u.max_hops),
            )?;
        }
        if u.ping_deadline < Duration::from_millis(100) {
            fail("upstream.ping_deadline", "must be at least 100ms".into())?;
        }
        if u.connect_timeout.is_zero() {
            fail("upstream.connect_timeout", "must be longer than 0s".into())?;
        }
    }
    Ok(())
}
