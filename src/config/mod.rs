//! Configuration: the typed [`Config`], its single source of defaults, and loading.
//!
//! `config/shardcast.toml` lists every key with its default and is embedded in the binary:
//! [`Config::default`] is that file parsed (SPEC §6, STYLE rule 13). [`load`] layers a
//! config file, `SHARDCAST_<SECTION>__<KEY>` environment variables and command-line flags
//! over it, at the TOML-table level, deserializes once and validates; a bad value is
//! refused with the place it came from, the key and the reason ([`ConfigError`]).
//!
//! Pure code: this module reads at most the one config file it is given, and never the
//! process environment (callers pass the variables in, so tests can too).

pub mod duration;
mod listen;
mod load;
pub mod upstream;
mod validate;

pub use listen::parse_listen;
pub use load::{load, Overrides};
pub use upstream::UpstreamConfig;

use crate::protocol::DefaultDialect;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The embedded `config/shardcast.toml`: every key with its default.
pub const DEFAULTS_TOML: &str = include_str!("../../config/shardcast.toml");

/// Most shards a broker may run.
pub const MAX_SHARDS: usize = 128;

/// The whole broker configuration, after defaults, file, environment and flags.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listener, shards, WebSocket limits, shutdown.
    pub server: ServerConfig,
    /// `[client]`: per-connection buffers, slow-consumer policy, publish limits.
    pub client: ClientConfig,
    /// `[auth]`: how WebSocket clients authenticate.
    pub auth: AuthConfig,
    /// `[[policy]]`: who may subscribe / publish where (first match wins).
    pub policy: Vec<PolicyRule>,
    /// `[api]`: the HTTP API.
    pub api: ApiConfig,
    /// `[metrics]`: Prometheus exposition.
    pub metrics: MetricsConfig,
    /// `[cluster]`: NATS backplane.
    pub cluster: ClusterConfig,
    /// `[history]` / `[[history]]`: which channels keep history, and the global cap.
    pub history: HistoryConfig,
    /// `[semstreams]`: the SemStreams dialect (SPEC §11).
    pub semstreams: SemstreamsConfig,
    /// `[[upstream]]`: links to other brokers (pull or push).
    pub upstream: Vec<UpstreamConfig>,
}

/// `[server]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listener address, default `0.0.0.0:8080` (`localhost:PORT` is 127.0.0.1).
    #[serde(deserialize_with = "listen::deserialize")]
    pub listen: SocketAddr,
    /// Shard threads; 0 = one per CPU core (see [`Config::shard_count`]); at most 128.
    pub shards: usize,
    /// WebSocket upgrade path, default `/ws`.
    pub ws_path: String,
    /// Dialect for clients that ask for none: `auto` (default: detected from the first
    /// message, gows until then) or a fixed one.
    #[serde(serialize_with = "serialize_dialect")]
    pub default_dialect: DefaultDialect,
    /// Concurrent connections; more get HTTP 503.
    pub max_connections: usize,
    /// Concurrent TCP connections from one IP address; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// New connections per second one IP address may open (token bucket); 0 = unlimited.
    pub connection_rate_per_ip: f64,
    /// Bucket size for `connection_rate_per_ip`: connections one address may open at once.
    pub connection_burst_per_ip: u32,
    /// IPv6 clients are counted per network of this prefix length (1..=128) by the
    /// per-IP limits: one host holds a whole /64.
    pub ipv6_prefix_per_ip: u8,
    /// Sockets that have not sent a complete request head yet, across all shards; past
    /// it a new socket closes the oldest such socket of its shard.
    pub max_pending_handshakes: usize,
    /// A new socket must send its first byte within this (capped by `handshake_timeout`).
    #[serde(with = "duration")]
    pub first_byte_timeout: Duration,
    /// Longest HTTP request head (request line + headers) in bytes; longer gets HTTP 431.
    pub max_request_head_bytes: usize,
    /// Largest client message in bytes (128 .. 64 MiB); larger closes with 1009.
    pub max_message_bytes: usize,
    /// Close a connection silent for this long.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Server ping period; shorter than `idle_timeout`.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// Allowed `Origin`s; empty = same-origin, `["*"]` = any.
    pub allowed_origins: Vec<String>,
    /// `Host` names the broker answers to as itself besides IP literals and `localhost`
    /// (DNS rebinding guard: `auth::host`); `["*"]` = any.
    pub allowed_hosts: Vec<String>,
    /// Time allowed for a graceful shutdown.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// An HTTP request / WebSocket upgrade must complete within this, counted from
    /// accept for a connection's first request head.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Bounded cross-shard queue length per shard.
    pub inbox_capacity: usize,
    /// Longest a busy shard holds its next flush so each write carries more frames
    /// (0 = always write at once).
    #[serde(with = "duration")]
    pub write_coalesce: Duration,
    /// Log filter (`info`, `debug`, or `tracing` directives); `RUST_LOG` wins when set.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,

    // Native TLS (src/tls/).
    /// PEM certificate chain for `https://`/`wss://` on the listener; "" = plain (the
    /// default). Set together with `tls_key`.
    pub tls_cert: String,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1); "" = plain.
    pub tls_key: String,
    /// How often the certificate and key files are checked for a change and reloaded
    /// ("0s" = only on SIGHUP).
    #[serde(with = "duration")]
    pub tls_reload_interval: Duration,
    // permessage-deflate (RFC 7692, SPEC §10; `crate::deflate`).
    /// `"on"`: clients that offer permessage-deflate get it; default `"off"`.
    pub compression: Compression,
    /// Publications whose frame payload is shorter than this go plain, also to clients
    /// that negotiated compression.
    pub compression_min_bytes: usize,
    /// zlib level 1 (fastest) .. 9 (smallest); each publication is compressed once.
    pub compression_level: u32,
}

/// `server.compression`: whether permessage-deflate is negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Never negotiated (the default).
    Off,
    /// Negotiated with clients that offer it.
    On,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[client]` section: limits that apply to each connection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Outbound buffer bound in frames.
    pub queue_frames: usize,
    /// Outbound buffer bound in bytes.
    pub queue_bytes: usize,
    /// Slow-consumer policy when the outbound buffer is full.
    pub on_full: OnFull,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Wildcard patterns (`+`, `#`) per connection, among `max_subscriptions`.
    pub max_wildcard_subscriptions: usize,
    /// Messages/s a connection may publish (token bucket); 0 = unlimited.
    pub publish_rate: f64,
    /// Token bucket size.
    pub publish_burst: u32,
    /// Subscription changes/s a connection may make (token bucket); 0 = unlimited.
    pub subscribe_rate: f64,
    /// Its bucket size.
    pub subscribe_burst: u32,
    /// Rate-limited messages in a row that close the connection with 1008.
    pub rate_limit_strikes: u32,
    /// Whether WebSocket clients may publish at all.
    pub allow_publish: bool,
    /// Longest topic/channel in bytes.
    pub max_topic_bytes: usize,
    /// Most `/`-separated levels in a topic or pattern.
    pub max_topic_levels: usize,
    /// Deepest JSON nesting in a client message.
    pub max_json_depth: usize,
}

/// What happens when a client's outbound buffer is full (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Close the connection with 1008 "slow consumer".
    Disconnect,
    /// Drop the oldest queued frame to make room.
    DropOldest,
    /// Drop the new frame.
    DropNewest,
}

/// `[semstreams]` section: the SemStreams WebSocket Input dialect (SPEC §11).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SemstreamsConfig {
    /// Where a `data` message whose payload names no `topic` is published; ingest here
    /// is allowed unless a `[[policy]]` rule says otherwise.
    pub data_channel: String,
    /// A peer's queue (frames the broker holds for it: data, acks, replies).
    pub queue_size: usize,
    /// What happens when a peer's queue is full.
    pub on_full: SemstreamsOnFull,
    /// Shortest time between two `slow` signals to one peer.
    #[serde(with = "duration")]
    pub slow_interval: Duration,
    /// Largest `payload` of a `data` message, in bytes (compacted JSON).
    pub max_payload_bytes: usize,
    /// How many of a peer's recent accepted ids are remembered to refuse reuse (0 = off).
    pub id_window: usize,
}

/// `semstreams.on_full`: the SemStreams backpressure policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SemstreamsOnFull {
    /// Drop the oldest queued data frame to make room.
    DropOldest,
    /// Drop the new data frame.
    DropNewest,
    /// Stop reading the peer's socket until its queue has room (TCP backpressure); data
    /// for it that finds the queue full is dropped as with `drop_newest`.
    Block,
}

/// `[auth]` section. Secrets are never in the file: the keys name environment variables.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `auth.type`: none | bearer | basic | jwt.
    #[serde(rename = "type")]
    pub kind: AuthType,
    /// A client with no credentials at all connects as anonymous (wrong ones are still
    /// refused), so `[[policy]]` rules can tell `anyone` from `authenticated`.
    pub anonymous: bool,
    /// Variable holding the bearer token.
    pub bearer_token_env: String,
    /// Variable holding the basic-auth user name.
    pub basic_username_env: String,
    /// Variable holding the basic-auth password.
    pub basic_password_env: String,
    /// Variable holding the HS256 secret.
    pub jwt_secret_env: String,
    /// JWT claim listing the topic patterns the holder may subscribe to.
    pub jwt_subscribe_claim: String,
    /// JWT claim listing the topic patterns the holder may publish to.
    pub jwt_publish_claim: String,
}

/// How WebSocket clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// Anyone may connect.
    None,
    /// `Authorization: Bearer <token>` or `?token=`.
    Bearer,
    /// HTTP basic auth.
    Basic,
    /// HS256 JWT with `exp`.
    Jwt,
}

impl AuthType {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            AuthType::None => "none",
            AuthType::Bearer => "bearer",
            AuthType::Basic => "basic",
            AuthType::Jwt => "jwt",
        }
    }
}

/// One `[[policy]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Topic pattern the rule applies to.
    pub pattern: String,
    /// Who may subscribe: anyone | authenticated | nobody | claim:NAME[=VALUE].
    pub subscribe: String,
    /// Who may publish (same forms as `subscribe`).
    pub publish: String,
}

/// `[api]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Variable holding the API key; "" = no key, the API answers loopback peers only.
    pub key_env: String,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most publications in one batch.
    pub max_batch: usize,
}

/// `[metrics]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics`.
    pub enabled: bool,
}

/// `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS URL; "" = single node.
    pub nats_url: String,
    /// This node's id; "" = generated at start.
    pub node_id: String,
    /// Prefix of every NATS subject.
    pub subject_prefix: String,
    /// Longest NATS control line (`SUB`/`PUB` + subject) the link may send: nats-server's
    /// `max_control_line`. Channels whose subject would not fit are refused per request.
    pub max_control_line: usize,
    /// NATS credentials file (`.creds`: user JWT + nkey seed); "" = none.
    pub credentials_file: String,
    /// Environment variable holding a NATS user nkey seed (`SU...`); "" = none.
    pub nkey_seed_env: String,
    /// NATS user name (with `password_env`); "" = none.
    pub user: String,
    /// Environment variable holding the NATS password of `user`.
    pub password_env: String,
    /// Environment variable holding a NATS token; "" = none.
    pub token_env: String,
    /// PEM file of the CA(s) that signed the NATS server's certificate; "" = system roots.
    pub tls_ca_file: String,
    /// PEM client certificate for NATS TLS (with `tls_key_file`); "" = none.
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// Refuse to talk to NATS without TLS.
    pub require_tls: bool,
    /// Environment variable holding the shared secret that signs every envelope
    /// (HMAC-SHA256); "" = envelopes are not signed.
    pub secret_env: String,

    // Durable history on NATS JetStream (SPEC §12, docs/CLUSTER.md).
    /// Where history channels keep their history in cluster mode.
    pub history: ClusterHistory,
    /// Name of the JetStream stream that holds the history channels.
    pub jetstream_stream: String,
    /// Most bytes the stream may hold; past it new publications are refused by
    /// JetStream (delivered live without an offset) rather than old ones dropped.
    pub jetstream_max_bytes: u64,
    /// How long a JetStream request (append, read, stream set-up) may take, and how long
    /// a subscribe on a history channel waits for the stream before answering from what
    /// the node has (`recovered: false` for a resume).
    #[serde(with = "duration")]
    pub jetstream_timeout: Duration,
}

/// `cluster.history`: where history channels keep their history in cluster mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterHistory {
    /// Each node keeps its own (offsets are per node; SPEC §9).
    Memory,
    /// One JetStream stream for the cluster: offsets per channel cluster-wide (SPEC §12).
    Jetstream,
}

/// `[history]` section: the rules (also written as `[[history]]` tables) and the cap.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// All retained history together, in bytes; past it the least recently published
    /// channels lose their oldest entries first.
    pub max_bytes: u64,
    /// Rules, first match wins; the built-in `process:` rule comes after them.
    pub rules: Vec<HistoryRule>,
}

/// One history rule: which channels (`pattern` or `prefix`) and how much they keep.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// A vws pattern (`+`, `#`) the channel must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// A prefix the channel must start with (e.g. `process:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Publications kept per channel; 0 = matching channels keep no history.
    #[serde(default = "HistoryRule::default_size")]
    pub size: usize,
    /// Payload bytes (data + headers) kept per channel.
    #[serde(default = "HistoryRule::default_bytes")]
    pub bytes: u64,
    /// Kept this long after the channel's last publication (unless it has subscribers).
    #[serde(with = "duration", default = "HistoryRule::default_ttl")]
    pub ttl: Duration,
    /// What a plain subscribe (no position) gets first.
    #[serde(default = "HistoryRule::default_replay")]
    pub replay: Replay,
}

impl HistoryRule {
    fn default_size() -> usize {
        1000
    }
    fn default_bytes() -> u64 {
        4 * 1024 * 1024
    }
    fn default_ttl() -> Duration {
        Duration::from_secs(15 * 60)
    }
    fn default_replay() -> Replay {
        Replay::None
    }

    /// The built-in rule for go-ws process channels (SPEC §9): last 10,000 publications /
    /// 4 MiB for 15 minutes, replayed to a plain subscribe.
    pub fn builtin_process() -> Self {
        HistoryRule {
            pattern: None,
            prefix: Some(crate::protocol::gows::PROCESS_PREFIX.to_owned()),
            size: 10_000,
            bytes: 4 * 1024 * 1024,
            ttl: Duration::from_secs(15 * 60),
            replay: Replay::All,
        }
    }

    /// Whether this rule selects `channel`.
    pub fn matches(&self, channel: &str) -> bool {
        match (&self.pattern, &self.prefix) {
            (Some(p), _) => crate::topic::pattern_matches(p, channel),
            (None, Some(prefix)) => channel.starts_with(prefix.as_str()),
            (None, None) => false,
        }
    }
}

/// What a plain subscribe to a history channel gets before live publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Replay {
    /// Only new publications.
    None,
    /// Everything retained, then new publications.
    All,
}

impl Default for Config {
    /// The embedded `config/shardcast.toml`.
    fn default() -> Self {
        // The embedded file is part of the build, not outside input; the unit test
        // `embedded_defaults_parse_and_validate` keeps this invariant.
        toml::from_str(DEFAULTS_TOML)
            .expect("invariant: the embedded config/shardcast.toml parses into Config")
    }
}

impl Config {
    /// Number of shards to run: `server.shards`, or one per CPU core when it is 0 (at
    /// most [`MAX_SHARDS`], at least 1).
    pub fn shard_count(&self) -> usize {
        let n = match self.server.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        n.clamp(1, MAX_SHARDS)
    }

    /// Checks every key's range and the keys that depend on each other.
    ///
    /// # Errors
    /// The first violation, as `(key, reason)`; [`load`] turns it into a [`ConfigError`]
    /// naming where the offending value came from.
    pub fn validate(&self) -> Result<(), validate::Violation> {
        validate::check(self)
    }
}

pub use validate::Violation;

fn serialize_dialect<S: Serializer>(d: &DefaultDialect, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}

/// Where a configuration value came from; names the culprit in a [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The embedded defaults.
    Defaults,
    /// A config file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its name, e.g. `--listen`).
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Defaults => f.write_str("the embedded defaults"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// A configuration the broker refuses to start with. `Display` is the message for the
/// operator: `config error in <where>: <key>: <reason>`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config error in {}: cannot read the file: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config error in {}: invalid TOML: {message}", .path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// A key is unknown, has the wrong type, or a value out of range.
    #[error("config error in {origin}: {key}: {reason}")]
    Invalid {
        /// Where the offending value came from.
        origin: Origin,
        /// Dotted key, e.g. `server.ping_interval`.
        key: String,
        /// Why it is refused.
        reason: String,
    },
}

impl ConfigError {
    /// The dotted key this error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
