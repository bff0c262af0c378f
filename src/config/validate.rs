//! Range and consistency checks on a deserialized [`Config`]: one function, run before
//! anything starts (STYLE rule 13), so the broker never starts half-configured.

use super::{AuthType, Config, MAX_SHARDS};
use std::time::Duration;

/// Smallest allowed `server.max_message_bytes`.
pub const MIN_MESSAGE_BYTES: usize = 128;
/// Largest allowed `server.max_message_bytes` (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Smallest `server.max_request_head_bytes`: a request line and a few headers.
pub const MIN_HEAD_BYTES: usize = 1024;
/// Largest `server.max_request_head_bytes` (1 MiB).
pub const MAX_HEAD_BYTES: usize = 1024 * 1024;

/// One broken rule: the key it is reported on, the reason, and every key whose value
/// takes part (so the error can name whichever source set one of them last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Dotted key, e.g. `server.ping_interval`.
    pub key: &'static str,
    /// User-facing reason.
    pub reason: String,
    /// Keys whose values take part in the rule (includes `key`).
    pub involves: Vec<&'static str>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

fn fail(key: &'static str, reason: impl Into<String>) -> Result<(), Violation> {
    Err(Violation {
        key,
        reason: reason.into(),
        involves: vec![key],
    })
}

fn fail_with(
    key: &'static str,
    other: &'static str,
    reason: impl Into<String>,
) -> Result<(), Violation> {
    Err(Violation {
        key,
        reason: reason.into(),
        involves: vec![key, other],
    })
}

fn at_least(key: &'static str, value: usize, min: usize) -> Result<(), Violation> {
    if value < min {
        return fail(key, format!("must be at least {min} (got {value})"));
    }
    Ok(())
}

/// A per-second rate: finite and >= 0 (0 = unlimited).
fn rate(key: &'static str, what: &str, value: f64) -> Result<(), Violation> {
    if !value.is_finite() || value < 0.0 {
        return fail(
            key,
            format!("must be a number of {what} per second >= 0 (got {value}); 0 = unlimited"),
        );
    }
    Ok(())
}

fn non_zero(key: &'static str, d: Duration) -> Result<(), Violation> {
    if d.is_zero() {
        return fail(key, "must be longer than 0s");
    }
    Ok(())
}

/// A name usable as an environment variable: `[A-Za-z_][A-Za-z0-9_]*`, or empty (= unset).
pub(super) fn env_name(key: &'static str, name: &str) -> Result<(), Violation> {
    let mut chars = name.chars();
    let ok = match chars.next() {
        None => true,
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        Some(_) => false,
    };
    if !ok {
        return fail(
            key,
            format!("{name:?} is not an environment variable name (letters, digits, '_')"),
        );
    }
    Ok(())
}

/// Runs every check, in file order; returns the first violation.
pub(super) fn check(c: &Config) -> Result<(), Violation> {
    server(c)?;
    client(c)?;
    auth(c)?;
    auth_anonymous(c)?;
    policy(c)?;
    api(c)?;
    cluster(c)?;
    history(c)?;
    semstreams(c)?;
    upstream(c)
}

fn limits(c: &Config) -> crate::topic::Limits {
    crate::topic::Limits {
        max_bytes: c.client.max_topic_bytes,
        max_levels: c.client.max_topic_levels,
    }
}

fn upstream(c: &Config) -> Result<(), Violation> {
    super::upstream::check(&c.upstream, &limits(c))
}

/// `[semstreams]` (issue 19).
fn semstreams(c: &Config) -> Result<(), Violation> {
    let s = &c.semstreams;
    let limits = limits(c);
    if let Err(e) = crate::topic::validate_topic(&s.data_channel, &limits) {
        return fail_with(
            "semstreams.data_channel",
            "client.max_topic_bytes",
            format!("must be a valid topic: {e}"),
        );
    }
    if !(1..=1_000_000).contains(&s.queue_size) {
        return fail(
            "semstreams.queue_size",
            format!("must be between 1 and 1000000 (got {})", s.queue_size),
        );
    }
    if s.slow_interval < Duration::from_millis(10) {
        return fail("semstreams.slow_interval", "must be at least 10ms");
    }
    at_least("semstreams.max_payload_bytes", s.max_payload_bytes, 1)?;
    if s.id_window > 1_000_000 {
        return fail(
            "semstreams.id_window",
            format!("must be at most 1000000 (got {})", s.id_window),
        );
    }
    Ok(())
}

fn server(c: &Config) -> Result<(), Violation> {
    let s = &c.server;
    if s.shards > MAX_SHARDS {
        fail(
            "server.shards",
            format!(
                "must be at most {MAX_SHARDS} (got {}); 0 = one per CPU core",
                s.shards
            ),
        )?;
    }
    let path = s.ws_path.as_str();
    if !path.starts_with('/') {
        fail(
            "server.ws_path",
            format!("must start with '/' (got {path:?})"),
        )?;
    }
    if path
        .chars()
        .any(|ch| ch.is_whitespace() || ch.is_control() || ch == '?' || ch == '#')
    {
        fail(
            "server.ws_path",
            format!("must be a plain path without spaces, '?' or '#' (got {path:?})"),
        )?;
    }
    // The WebSocket shares the port with the API, health, metrics and dashboard routes.
    let taken = ["/", "/healthz", "/readyz", "/metrics", "/client.js", "/api"];
    if taken.contains(&path) || path.starts_with("/api/") {
        fail(
            "server.ws_path",
            format!("{path:?} is already used by another endpoint"),
        )?;
    }
    at_least("server.max_connections", s.max_connections, 1)?;
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&s.log_level) {
        fail(
            "server.log_level",
            format!("{:?} is not a log level or filter: {e}", s.log_level),
        )?;
    }
    rate(
        "server.connection_rate_per_ip",
        "connections",
        s.connection_rate_per_ip,
    )?;
    if s.connection_rate_per_ip > 0.0 && s.connection_burst_per_ip == 0 {
        fail_with(
            "server.connection_burst_per_ip",
            "server.connection_rate_per_ip",
            "must be at least 1 when server.connection_rate_per_ip is set",
        )?;
    }
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&s.max_message_bytes) {
        fail(
            "server.max_message_bytes",
            format!(
                "must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES} (64 MiB) (got {})",
                s.max_message_bytes
            ),
        )?;
    }
    compression(s)?;
    non_zero("server.idle_timeout", s.idle_timeout)?;
    non_zero("server.ping_interval", s.ping_interval)?;
    if s.ping_interval >= s.idle_timeout {
        fail_with(
            "server.ping_interval",
            "server.idle_timeout",
            format!(
                "must be shorter than server.idle_timeout ({} >= {})",
                super::duration::format(s.ping_interval),
                super::duration::format(s.idle_timeout)
            ),
        )?;
    }
    for origin in &s.allowed_origins {
        if let Err(reason) = origin_entry(origin) {
            fail("server.allowed_origins", reason)?;
        }
    }
    if s.allowed_origins.len() > 1 && s.allowed_origins.iter().any(|o| o == "*") {
        fail(
            "server.allowed_origins",
            "\"*\" allows every origin and must be the only entry",
        )?;
    }
    for host in &s.allowed_hosts {
        if let Err(reason) = crate::auth::host::validate_entry(host) {
            fail("server.allowed_hosts", reason)?;
        }
    }
    if s.allowed_hosts.len() > 1 && s.allowed_hosts.iter().any(|h| h == "*") {
        fail(
            "server.allowed_hosts",
            "\"*\" allows every host name and must be the only entry",
        )?;
    }
    non_zero("server.handshake_timeout", s.handshake_timeout)?;
    non_zero("server.first_byte_timeout", s.first_byte_timeout)?;
    at_least("server.max_pending_handshakes", s.max_pending_handshakes, 1)?;
    if !(MIN_HEAD_BYTES..=MAX_HEAD_BYTES).contains(&s.max_request_head_bytes) {
        fail(
            "server.max_request_head_bytes",
            format!(
                "must be between {MIN_HEAD_BYTES} and {MAX_HEAD_BYTES} (1 MiB) (got {})",
                s.max_request_head_bytes
            ),
        )?;
    }
    if !(1..=128).contains(&s.ipv6_prefix_per_ip) {
        fail(
            "server.ipv6_prefix_per_ip",
            format!("must be between 1 and 128 (got {})", s.ipv6_prefix_per_ip),
        )?;
    }
    if s.write_coalesce > Duration::from_millis(100) {
        fail(
            "server.write_coalesce",
            "at most 100ms: it is added to delivery latency under load",
        )?;
    }
    at_least("server.inbox_capacity", s.inbox_capacity, 1)?;
    tls_keys(s)
}

/// `server.tls_cert` and `server.tls_key` come together (the files themselves are read
/// and checked in `load`, see `crate::tls::load_pair`).
fn tls_keys(s: &super::ServerConfig) -> Result<(), Violation> {
    match (s.tls_cert.is_empty(), s.tls_key.is_empty()) {
        (false, true) => fail_with(
            "server.tls_key",
            "server.tls_cert",
            "must be set when server.tls_cert is (the PEM private key of the certificate)",
        ),
        (true, false) => fail_with(
            "server.tls_cert",
            "server.tls_key",
            "must be set when server.tls_key is (the PEM certificate chain)",
        ),
        _ => Ok(()),
    }
}

/// One `server.allowed_origins` entry: `"*"`, `"null"`, `scheme://host[:port]` or
/// `scheme://host:*` (any port), scheme `http` or `https` (src/auth/origin.rs).
fn origin_entry(o: &str) -> Result<(), String> {
    const FORMS: &str = "use \"*\", \"null\", scheme://host[:port] or scheme://host:* (any port)";
    if o == "*" || o == "null" {
        return Ok(());
    }
    if o.starts_with("file:") {
        return Err(format!(
            "{o:?} is not an origin: file:// pages send Origin null; add \"null\" (for development only)"
        ));
    }
    let Some(authority) = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
    else {
        return Err(format!("{o:?} is not an origin; {FORMS}"));
    };
    if o.ends_with('/') {
        return Err(format!(
            "{o:?} is not an origin: no trailing '/' (an Origin has no path); {FORMS}"
        ));
    }
    if o.chars().any(char::is_whitespace) || authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{o:?} is not an origin: only scheme, host and port, no path, query or user; {FORMS}"
        ));
    }
    let host = authority.strip_suffix(":*").unwrap_or(authority);
    if host.contains('*') {
        return Err(format!(
            "{o:?}: '*' may only stand for the port (scheme://host:*), not for part of a host; list each host, or use \"*\" alone for every origin"
        ));
    }
    // host[:port]; an IPv6 host is bracketed.
    let (name, port) = match host.find(']') {
        Some(end) if host.starts_with('[') => host.split_at(end + 1),
        _ => host.split_at(host.find(':').unwrap_or(host.len())),
    };
    if name.is_empty() || (name.contains(['[', ']']) && !name.starts_with('[')) {
        return Err(format!("{o:?} is not an origin: no host; {FORMS}"));
    }
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if !port_ok {
        return Err(format!(
            "{o:?} is not an origin: the port must be a number or '*'; {FORMS}"
        ));
    }
    Ok(())
}

/// permessage-deflate keys (`crate::deflate`).
fn compression(s: &crate::config::ServerConfig) -> Result<(), Violation> {
    if !(1..=9).contains(&s.compression_level) {
        fail(
            "server.compression_level",
            format!(
                "must be between 1 (fastest) and 9 (smallest) (got {})",
                s.compression_level
            ),
        )?;
    }
    if s.compression_min_bytes > MAX_MESSAGE_BYTES {
        fail(
            "server.compression_min_bytes",
            format!(
                "must be at most {MAX_MESSAGE_BYTES} (64 MiB) (got {})",
                s.compression_min_bytes
            ),
        )?;
    }
    Ok(())
}

fn client(c: &Config) -> Result<(), Violation> {
    let k = &c.client;
    at_least("client.queue_frames", k.queue_frames, 1)?;
    if k.queue_bytes < c.server.max_message_bytes {
        // A frame larger than the whole buffer could never be queued.
        fail_with(
            "client.queue_bytes",
            "server.max_message_bytes",
            format!(
                "must be at least server.max_message_bytes ({} < {})",
                k.queue_bytes, c.server.max_message_bytes
            ),
        )?;
    }
    at_least("client.max_subscriptions", k.max_subscriptions, 1)?;
    at_least(
        "client.max_wildcard_subscriptions",
        k.max_wildcard_subscriptions,
        1,
    )?;
    // Above max_subscriptions it simply never binds (a connection cannot hold more
    // patterns than subscriptions), so a lower max_subscriptions alone needs no change.
    rate("client.publish_rate", "messages", k.publish_rate)?;
    if k.publish_rate > 0.0 && k.publish_burst == 0 {
        fail_with(
            "client.publish_burst",
            "client.publish_rate",
            "must be at least 1 when client.publish_rate is set",
        )?;
    }
    rate(
        "client.subscribe_rate",
        "subscription changes",
        k.subscribe_rate,
    )?;
    if k.subscribe_rate > 0.0 && k.subscribe_burst == 0 {
        fail_with(
            "client.subscribe_burst",
            "client.subscribe_rate",
            "must be at least 1 when client.subscribe_rate is set",
        )?;
    }
    if k.rate_limit_strikes == 0 {
        fail("client.rate_limit_strikes", "must be at least 1")?;
    }
    if !(1..=65_536).contains(&k.max_topic_bytes) {
        fail(
            "client.max_topic_bytes",
            format!("must be between 1 and 65536 (got {})", k.max_topic_bytes),
        )?;
    }
    if !(1..=1024).contains(&k.max_topic_levels) {
        fail(
            "client.max_topic_levels",
            format!("must be between 1 and 1024 (got {})", k.max_topic_levels),
        )?;
    }
    if !(1..=1024).contains(&k.max_json_depth) {
        fail(
            "client.max_json_depth",
            format!("must be between 1 and 1024 (got {})", k.max_json_depth),
        )?;
    }
    Ok(())
}

fn auth(c: &Config) -> Result<(), Violation> {
    let a = &c.auth;
    env_name("auth.bearer_token_env", &a.bearer_token_env)?;
    env_name("auth.basic_username_env", &a.basic_username_env)?;
    env_name("auth.basic_password_env", &a.basic_password_env)?;
    env_name("auth.jwt_secret_env", &a.jwt_secret_env)?;
    // The variables' values are read at start (`auth::Authenticator::from_config`);
    // here only that the method has the names it needs.
    let needs: &[(&'static str, &str)] = match a.kind {
        AuthType::None => &[],
        AuthType::Bearer => &[("auth.bearer_token_env", &a.bearer_token_env)],
        AuthType::Basic => &[
            ("auth.basic_username_env", &a.basic_username_env),
            ("auth.basic_password_env", &a.basic_password_env),
        ],
        AuthType::Jwt => &[("auth.jwt_secret_env", &a.jwt_secret_env)],
    };
    for (key, name) in needs {
        if name.is_empty() {
            fail_with(
                key,
                "auth.type",
                format!(
                    "auth.type = {} needs the name of the environment variable holding the secret",
                    a.kind.name()
                ),
            )?;
        }
    }
    for (key, claim) in [
        ("auth.jwt_subscribe_claim", &a.jwt_subscribe_claim),
        ("auth.jwt_publish_claim", &a.jwt_publish_claim),
    ] {
        if claim.is_empty() {
            fail(key, "must name a JWT claim")?;
        }
    }
    Ok(())
}

/// Each rule's pattern is a valid pattern and its `subscribe`/`publish` parse; rules that
/// can never apply under the configured `auth.type` are refused rather than ignored.
fn auth_anonymous(c: &Config) -> Result<(), Violation> {
    if c.auth.anonymous && c.auth.kind == AuthType::None {
        return fail_with(
            "auth.anonymous",
            "auth.type",
            "only means something with auth.type = \"bearer\", \"basic\" or \"jwt\" (with \"none\" every client is anonymous already)",
        );
    }
    Ok(())
}

fn policy(c: &Config) -> Result<(), Violation> {
    let limits = crate::topic::Limits {
        max_bytes: c.client.max_topic_bytes,
        max_levels: c.client.max_topic_levels,
    };
    let bad = |i: usize, reason: String| {
        fail_with(
            "policy",
            "auth.type",
            format!("rule {} ({}): {reason}", i + 1, rule_pattern(c, i)),
        )
    };
    for (i, rule) in c.policy.iter().enumerate() {
        if let Err(e) = crate::topic::validate_pattern(&rule.pattern, &limits) {
            bad(i, format!("pattern: {e}"))?;
        }
        for (field, who) in [("subscribe", &rule.subscribe), ("publish", &rule.publish)] {
            match crate::auth::policy::Who::parse(who) {
                Err(e) => bad(i, format!("{field}: {e}"))?,
                Ok(crate::auth::policy::Who::Claim { .. }) if c.auth.kind != AuthType::Jwt => bad(
                    i,
                    format!(
                        "{field}: claim rules need auth.type = \"jwt\" (it is {:?})",
                        c.auth.kind.name()
                    ),
                )?,
                Ok(crate::auth::policy::Who::Authenticated) if c.auth.kind == AuthType::None => {
                    bad(
                        i,
                        format!(
                            "{field}: \"authenticated\" never matches with auth.type = \"none\""
                        ),
                    )?
                }
                Ok(_) => {}
            }
        }
    }
    Ok(())
}

fn rule_pattern(c: &Config, i: usize) -> String {
    c.policy
        .get(i)
        .map_or_else(String::new, |r| format!("pattern {:?}", r.pattern))
}

fn api(c: &Config) -> Result<(), Violation> {
    let a = &c.api;
    env_name("api.key_env", &a.key_env)?;
    at_least("api.max_body_bytes", a.max_body_bytes, 1)?;
    at_least("api.max_batch", a.max_batch, 1)
}

fn cluster(c: &Config) -> Result<(), Violation> {
    let k = &c.cluster;
    for url in k.nats_url.split(',').filter(|_| !k.nats_url.is_empty()) {
        if url.trim().parse::<async_nats::ServerAddr>().is_err() {
            fail(
                "cluster.nats_url",
                format!("{url:?} is not a NATS server URL (e.g. nats://127.0.0.1:4222)"),
            )?;
        }
    }
    let p = k.subject_prefix.as_str();
    let token_ok = |t: &str| {
        !t.is_empty()
            && !t
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control() || ch == '*' || ch == '>')
    };
    if !p.split('.').all(token_ok) {
        fail(
            "cluster.subject_prefix",
            format!("{p:?} is not a NATS subject prefix (dot-separated tokens without spaces, '*' or '>')"),
        )?;
    }
    env_name("cluster.nkey_seed_env", &k.nkey_seed_env)?;
    env_name("cluster.password_env", &k.password_env)?;
    env_name("cluster.token_env", &k.token_env)?;
    env_name("cluster.secret_env", &k.secret_env)?;
    if !(128..=1_048_576).contains(&k.max_control_line) {
        fail(
            "cluster.max_control_line",
            format!(
                "must be between 128 and 1048576 (got {})",
                k.max_control_line
            ),
        )?;
    }
    let shortest =
        crate::cluster::subject::worst_subject_len(p, 1) + crate::cluster::subject::LINE_OVERHEAD;
    if shortest > k.max_control_line {
        fail(
            "cluster.max_control_line",
            format!(
                "{} is too short for subject_prefix {p:?}: even a one-byte channel needs a {shortest}-byte control line",
                k.max_control_line
            ),
        )?;
    }
    jetstream(k)?;
    if k.node_id
        .chars()
        .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        fail(
            "cluster.node_id",
            format!(
                "must not contain spaces or control characters (got {:?})",
                k.node_id
            ),
        )?;
    }
    Ok(())
}

/// `cluster.history = "jetstream"` and its keys.
fn jetstream(k: &crate::config::ClusterConfig) -> Result<(), Violation> {
    let name = k.jetstream_stream.as_str();
    if name.is_empty()
        || name.len() > 255
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        fail(
            "cluster.jetstream_stream",
            format!("must be 1 to 255 of A-Z a-z 0-9 _ - (a JetStream stream name; got {name:?})"),
        )?;
    }
    if !(1024..=i64::MAX as u64).contains(&k.jetstream_max_bytes) {
        fail(
            "cluster.jetstream_max_bytes",
            format!("must be at least 1024 (got {})", k.jetstream_max_bytes),
        )?;
    }
    let t = k.jetstream_timeout;
    if t < std::time::Duration::from_millis(10) || t > std::time::Duration::from_secs(60) {
        fail(
            "cluster.jetstream_timeout",
            format!("must be between 10ms and 60s (got {t:?})"),
        )?;
    }
    if k.history == crate::config::ClusterHistory::Jetstream && k.nats_url.is_empty() {
        fail(
            "cluster.history",
            "\"jetstream\" needs cluster.nats_url (cluster mode)".to_owned(),
        )?;
    }
    Ok(())
}

/// Most publications one history rule may keep per channel.
pub const MAX_HISTORY_SIZE: usize = 1_000_000;

/// Each history rule names its channels one way (pattern or prefix) and keeps something
/// sensible; `history.max_bytes` 0 turns history off altogether.
fn history(c: &Config) -> Result<(), Violation> {
    let limits = crate::topic::Limits {
        max_bytes: c.client.max_topic_bytes,
        max_levels: c.client.max_topic_levels,
    };
    for (i, rule) in c.history.rules.iter().enumerate() {
        let what = match (&rule.pattern, &rule.prefix) {
            (Some(p), None) => format!("pattern {p:?}"),
            (None, Some(p)) => format!("prefix {p:?}"),
            _ => {
                return fail(
                    "history.rules",
                    format!("rule {}: give exactly one of `pattern` and `prefix`", i + 1),
                )
            }
        };
        let bad = |reason: String| {
            fail(
                "history.rules",
                format!("rule {} ({what}): {reason}", i + 1),
            )
        };
        if let Some(p) = &rule.pattern {
            if let Err(e) = crate::topic::validate_pattern(p, &limits) {
                bad(format!("pattern: {e}"))?;
            }
        }
        if rule.prefix.as_deref() == Some("") {
            bad("prefix must not be empty (use pattern = \"#\" for every channel)".to_owned())?;
        }
        if rule.size > MAX_HISTORY_SIZE {
            bad(format!(
                "size must be at most {MAX_HISTORY_SIZE} (got {})",
                rule.size
            ))?;
        }
        if rule.size > 0 && rule.bytes == 0 {
            bad("bytes must be more than 0 (or set size = 0 to keep no history)".to_owned())?;
        }
        if rule.ttl.is_zero() {
            bad("ttl must be longer than 0s".to_owned())?;
        }
    }
    Ok(())
}
