//! `Reject`: every way the broker refuses an input, in one place.
//!
//! A rejection knows its user-facing reason (gows `error` text / vws nack `e`), its metric
//! label, and, for connection-fatal ones, the WebSocket close code or HTTP status. Keeping
//! them together is what keeps SPEC §4 true in one place. Variants are cheap enums: no text
//! is built until a reply is actually sent.

use crate::topic::TopicError;
use std::fmt;

/// Why an input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The message is not valid JSON.
    MalformedJson,
    /// The message is JSON but not an object.
    NotAnObject,
    /// gows `type` the broker does not know.
    UnknownType,
    /// vws `k` the broker does not know.
    UnknownKind,
    /// A required field is absent.
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    BadField(&'static str),
    /// JSON nested deeper than `client.max_json_depth`.
    TooDeep,
    /// Channel/topic of a publish is invalid.
    InvalidTopic(TopicError),
    /// Subscription pattern is invalid.
    InvalidPattern(TopicError),
    /// More than `client.max_subscriptions` subscriptions.
    TooManySubscriptions,
    /// Client publishing is not allowed here.
    PublishNotAllowed,
    /// Client published faster than `client.publish_rate`.
    RateLimited,
    /// The broker could not queue the publication (cross-shard queue full).
    Overloaded,
    /// Kept publishing while rate limited (close 1008).
    RateLimitAbuse,
    /// Text frame that is not UTF-8 (close 1007).
    InvalidUtf8,
    /// Message larger than `server.max_message_bytes` (close 1009).
    MessageTooLarge,
    /// Binary frame (close 1003).
    BinaryFrame,
    /// Client frame not masked (close 1002).
    UnmaskedFrame,
    /// Reserved bits set or unknown opcode (close 1002).
    BadOpcode,
    /// Control frame over 125 bytes or fragmented (close 1002).
    BadControlFrame,
    /// Continuation without a start, or a new message inside a fragmented one (close 1002).
    BadFragmentation,
    /// No frame or pong within `server.idle_timeout`.
    IdleTimeout,
    /// Outbound buffer full under `on_full = disconnect` (close 1008).
    SlowConsumer,
    /// Not a WebSocket upgrade, or a bad handshake (HTTP 400).
    BadHandshake,
    /// Over `server.max_connections` (HTTP 503).
    TooManyConnections,
    /// `Origin` not in `server.allowed_origins` (HTTP 403).
    OriginNotAllowed,
    /// No credentials on an upgrade that needs them (HTTP 401).
    MissingCredentials,
    /// Wrong, malformed or expired credentials (HTTP 401).
    BadCredentials,
    /// A `[[policy]]` rule or JWT grant does not let this client subscribe here.
    SubscribeNotAllowed,
    /// The client's IP address holds `server.max_connections_per_ip` (HTTP 503).
    IpConnectionLimit,
    /// The client's IP address connects faster than `server.connection_rate_per_ip` (HTTP 503).
    ConnectRateLimited,
    /// No complete request (head, or API body) within `server.handshake_timeout`
    /// (slowloris): the socket is closed (an API body gets HTTP 408).
    HandshakeTimeout,
    /// A subscribe position that is not one (member name, what is wrong with it).
    BadPosition(&'static str, &'static str),
    /// A subscribe position on a wildcard pattern.
    RecoveryNeedsExactChannel,
    /// A frame length not in the fewest bytes (RFC 6455 §5.2; close 1002).
    NonMinimalLength,
    /// A socket that had not sent a complete request head was closed to make room for a
    /// new one (`server.max_pending_handshakes`).
    PendingEvicted,
    /// A request head longer than `server.max_request_head_bytes` (HTTP 431).
    HeadTooLarge,
    /// More than `client.max_wildcard_subscriptions` wildcard patterns.
    TooManyWildcards,
    /// A close frame with a 1-byte payload or a code that may not be sent (RFC 6455
    /// §5.5.1, §7.4; close 1002).
    BadCloseFrame,
    /// Cluster mode: the channel's NATS subject would make a control line longer than
    /// `cluster.max_control_line` (nats-server would drop the whole link for it).
    ClusterSubjectTooLong,
    /// Cluster mode: the publication would not fit in one NATS message (the server's
    /// `max_payload`), so other nodes could not get it.
    ClusterPayloadTooLarge,
    /// Subscription changes faster than `client.subscribe_rate`.
    SubscribeRateLimited,
    /// A `Host` that is not a name of this broker (`server.allowed_hosts`; HTTP 403):
    /// DNS rebinding against the same-origin rule or the keyless loopback API.
    HostNotAllowed,
    /// A keyless (loopback-only) API request with an `Origin`: a browser page (CSRF).
    ApiFromBrowser,
    /// An API body whose `Content-Type` the endpoint does not take (HTTP 415).
    UnsupportedMediaType,
    /// A vws publish with an `h.type` header: only the HTTP API sets a publication's type.
    ReservedHeader,
    /// TLS on (`server.tls_cert`): the client's TLS handshake failed (no shared version
    /// or cipher, bad record, a client that does not trust the certificate).
    TlsHandshakeFailed,
    /// TLS on: the client spoke plain text (an `http://` or `ws://` URL) to the TLS port
    /// (HTTP 400 in plain text, then closed).
    PlainTextOnTlsPort,
    /// A compressed message (permessage-deflate) that inflates past
    /// `server.max_message_bytes`: a compression bomb (close 1009).
    InflatedTooLarge,
    /// A compressed message that is not valid raw deflate (close 1007).
    BadCompressedData,
    // SemStreams dialect (issue 19).
    /// A SemStreams `request` whose `method` the broker does not offer.
    UnknownMethod,
    /// A SemStreams `request` whose `params` are wrong (which member, what is wrong).
    BadParams(&'static str, &'static str),
    /// A SemStreams `reply` to a request this broker never sent.
    UnsolicitedReply,
    /// A SemStreams `data`/`request` id this peer already used (`semstreams.id_window`).
    ReusedId,
    /// A SemStreams `payload` larger than `semstreams.max_payload_bytes`.
    PayloadTooLarge,
    /// A push link with `on_full = "block"` has a full queue: the local publish is
    /// refused (vws nack, API 503) until the upstream takes publications again.
    UpstreamQueueFull,
}

/// How a refusal is classed for `shardcast_errors_total{class}` (as SemStreams classes
/// errors): what an operator should make of a rising count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The connection (or socket) was closed for it.
    Fatal,
    /// A limit or a passing condition; the same request may succeed later.
    Transient,
    /// The input was wrong and will stay wrong.
    Invalid,
}

impl ErrorClass {
    /// Labels, in `ErrorClass as usize` order.
    pub const LABELS: [&'static str; 3] = ["fatal", "transient", "invalid"];
}

impl Reject {
    /// Every variant's metric label, in `index()` order (for per-shard counter arrays).
    pub const LABELS: [&'static str; 56] = [
        "malformed_json",
        "not_an_object",
        "unknown_type",
        "unknown_kind",
        "missing_field",
        "bad_field",
        "too_deep",
        "invalid_topic",
        "invalid_pattern",
        "too_many_subscriptions",
        "publish_not_allowed",
        "rate_limited",
        "overloaded",
        "rate_limit_abuse",
        "invalid_utf8",
        "message_too_large",
        "binary_frame",
        "unmasked_frame",
        "bad_opcode",
        "bad_control_frame",
        "bad_fragmentation",
        "idle_timeout",
        "slow_consumer",
        "bad_handshake",
        "too_many_connections",
        "origin_not_allowed",
        "missing_credentials",
        "bad_credentials",
        "subscribe_not_allowed",
        "ip_connection_limit",
        "connect_rate_limited",
        "handshake_timeout",
        "bad_position",
        "recovery_needs_exact_channel",
        "non_minimal_length",
        "pending_handshake_evicted",
        "request_head_too_large",
        "too_many_wildcards",
        "bad_close_frame",
        "cluster_subject_too_long",
        "cluster_payload_too_large",
        "subscribe_rate_limited",
        "host_not_allowed",
        "api_from_browser",
        "unsupported_media_type",
        "reserved_header",
        "tls_handshake_failed",
        "plain_text_on_tls_port",
        "inflated_too_large",
        "bad_compressed_data",
        "unknown_method",
        "bad_params",
        "unsolicited_reply",
        "reused_id",
        "payload_too_large",
        "upstream_queue_full",
    ];

    /// Position of this variant in [`Reject::LABELS`] and in counter arrays.
    pub fn index(&self) -> usize {
        match self {
            Reject::MalformedJson => 0,
            Reject::NotAnObject => 1,
            Reject::UnknownType => 2,
            Reject::UnknownKind => 3,
            Reject::MissingField(_) => 4,
            Reject::BadField(_) => 5,
            Reject::TooDeep => 6,
            Reject::InvalidTopic(_) => 7,
            Reject::InvalidPattern(_) => 8,
            Reject::TooManySubscriptions => 9,
            Reject::PublishNotAllowed => 10,
            Reject::RateLimited => 11,
            Reject::Overloaded => 12,
            Reject::RateLimitAbuse => 13,
            Reject::InvalidUtf8 => 14,
            Reject::MessageTooLarge => 15,
            Reject::BinaryFrame => 16,
            Reject::UnmaskedFrame => 17,
            Reject::BadOpcode => 18,
            Reject::BadControlFrame => 19,
            Reject::BadFragmentation => 20,
            Reject::IdleTimeout => 21,
            Reject::SlowConsumer => 22,
            Reject::BadHandshake => 23,
            Reject::TooManyConnections => 24,
            Reject::OriginNotAllowed => 25,
            Reject::MissingCredentials => 26,
            Reject::BadCredentials => 27,
            Reject::SubscribeNotAllowed => 28,
            Reject::IpConnectionLimit => 29,
            Reject::ConnectRateLimited => 30,
            Reject::HandshakeTimeout => 31,
            Reject::BadPosition(..) => 32,
            Reject::RecoveryNeedsExactChannel => 33,
            Reject::NonMinimalLength => 34,
            Reject::PendingEvicted => 35,
            Reject::HeadTooLarge => 36,
            Reject::TooManyWildcards => 37,
            Reject::BadCloseFrame => 38,
            Reject::ClusterSubjectTooLong => 39,
            Reject::ClusterPayloadTooLarge => 40,
            Reject::SubscribeRateLimited => 41,
            Reject::HostNotAllowed => 42,
            Reject::ApiFromBrowser => 43,
            Reject::UnsupportedMediaType => 44,
            Reject::ReservedHeader => 45,
            Reject::TlsHandshakeFailed => 46,
            Reject::PlainTextOnTlsPort => 47,
            Reject::InflatedTooLarge => 48,
            Reject::BadCompressedData => 49,
            Reject::UnknownMethod => 50,
            Reject::BadParams(..) => 51,
            Reject::UnsolicitedReply => 52,
            Reject::ReusedId => 53,
            Reject::PayloadTooLarge => 54,
            Reject::UpstreamQueueFull => 55,
        }
    }

    /// Metric label (`shardcast_rejections_total{reason=...}`).
    pub fn label(&self) -> &'static str {
        Self::LABELS.get(self.index()).copied().unwrap_or("other")
    }

    /// The WebSocket close code when this rejection ends the connection, else `None`
    /// (the connection stays open and gets an error reply / nack).
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Reject::InvalidUtf8 | Reject::BadCompressedData => Some(1007),
            Reject::MessageTooLarge | Reject::InflatedTooLarge => Some(1009),
            Reject::BinaryFrame => Some(1003),
            Reject::UnmaskedFrame
            | Reject::BadOpcode
            | Reject::BadControlFrame
            | Reject::BadFragmentation
            | Reject::NonMinimalLength
            | Reject::BadCloseFrame => Some(1002),
            Reject::IdleTimeout => Some(1001),
            Reject::SlowConsumer | Reject::RateLimitAbuse => Some(1008),
            _ => None,
        }
    }

    /// The short reason sent in a close frame (must stay under 123 bytes).
    pub fn close_reason(&self) -> &'static str {
        match self {
            Reject::InvalidUtf8 => "text frame is not valid UTF-8",
            Reject::MessageTooLarge => "message too large",
            Reject::InflatedTooLarge => "compressed message inflates past the size limit",
            Reject::BadCompressedData => "compressed message is not valid deflate data",
            Reject::BinaryFrame => "binary frames are not supported",
            Reject::UnmaskedFrame => "client frames must be masked",
            Reject::BadOpcode => "reserved bits or unknown opcode",
            Reject::BadControlFrame => "control frame too long or fragmented",
            Reject::BadFragmentation => "bad message fragmentation",
            Reject::NonMinimalLength => "frame length not in the fewest bytes",
            Reject::BadCloseFrame => {
                "close frame with a 1-byte payload or a code that may not be sent"
            }
            Reject::IdleTimeout => "idle timeout",
            Reject::SlowConsumer => "slow consumer",
            Reject::RateLimitAbuse => "publish rate limit exceeded persistently",
            _ => "",
        }
    }

    /// Its class in `shardcast_errors_total`.
    pub fn class(&self) -> ErrorClass {
        match self {
            _ if self.close_code().is_some() => ErrorClass::Fatal,
            Reject::HandshakeTimeout
            | Reject::PendingEvicted
            | Reject::TlsHandshakeFailed
            | Reject::PlainTextOnTlsPort => ErrorClass::Fatal,
            Reject::TooManySubscriptions
            | Reject::TooManyWildcards
            | Reject::RateLimited
            | Reject::SubscribeRateLimited
            | Reject::Overloaded
            | Reject::UpstreamQueueFull
            | Reject::TooManyConnections
            | Reject::IpConnectionLimit
            | Reject::ConnectRateLimited => ErrorClass::Transient,
            _ => ErrorClass::Invalid,
        }
    }

    /// Whether this refuses a connection before it becomes a WebSocket (counted again
    /// in `shardcast_handshake_failures_total`).
    pub fn is_handshake(&self) -> bool {
        matches!(
            self,
            Reject::BadHandshake
                | Reject::TooManyConnections
                | Reject::OriginNotAllowed
                | Reject::HostNotAllowed
                | Reject::MissingCredentials
                | Reject::BadCredentials
                | Reject::IpConnectionLimit
                | Reject::ConnectRateLimited
                | Reject::HandshakeTimeout
                | Reject::PendingEvicted
                | Reject::HeadTooLarge
                | Reject::TlsHandshakeFailed
                | Reject::PlainTextOnTlsPort
        )
    }

    /// Every variant, in `index()` order (payloads are placeholders).
    pub fn all() -> [Reject; Reject::LABELS.len()] {
        use crate::topic::TopicError::Empty;
        [
            Reject::MalformedJson,
            Reject::NotAnObject,
            Reject::UnknownType,
            Reject::UnknownKind,
            Reject::MissingField(""),
            Reject::BadField(""),
            Reject::TooDeep,
            Reject::InvalidTopic(Empty),
            Reject::InvalidPattern(Empty),
            Reject::TooManySubscriptions,
            Reject::PublishNotAllowed,
            Reject::RateLimited,
            Reject::Overloaded,
            Reject::RateLimitAbuse,
            Reject::InvalidUtf8,
            Reject::MessageTooLarge,
            Reject::BinaryFrame,
            Reject::UnmaskedFrame,
            Reject::BadOpcode,
            Reject::BadControlFrame,
            Reject::BadFragmentation,
            Reject::IdleTimeout,
            Reject::SlowConsumer,
            Reject::BadHandshake,
            Reject::TooManyConnections,
            Reject::OriginNotAllowed,
            Reject::MissingCredentials,
            Reject::BadCredentials,
            Reject::SubscribeNotAllowed,
            Reject::IpConnectionLimit,
            Reject::ConnectRateLimited,
            Reject::HandshakeTimeout,
            Reject::BadPosition("", ""),
            Reject::RecoveryNeedsExactChannel,
            Reject::NonMinimalLength,
            Reject::PendingEvicted,
            Reject::HeadTooLarge,
            Reject::TooManyWildcards,
            Reject::BadCloseFrame,
            Reject::ClusterSubjectTooLong,
            Reject::ClusterPayloadTooLarge,
            Reject::SubscribeRateLimited,
            Reject::HostNotAllowed,
            Reject::ApiFromBrowser,
            Reject::UnsupportedMediaType,
            Reject::ReservedHeader,
            Reject::TlsHandshakeFailed,
            Reject::PlainTextOnTlsPort,
            Reject::InflatedTooLarge,
            Reject::BadCompressedData,
            Reject::UnknownMethod,
            Reject::BadParams("", ""),
            Reject::UnsolicitedReply,
            Reject::ReusedId,
            Reject::PayloadTooLarge,
            Reject::UpstreamQueueFull,
        ]
    }

    /// HTTP status for rejections answered before an upgrade.
    pub fn http_status(&self) -> u16 {
        match self {
            Reject::TooManyConnections
            | Reject::Overloaded
            | Reject::UpstreamQueueFull
            | Reject::IpConnectionLimit
            | Reject::ConnectRateLimited => 503,
            Reject::RateLimited | Reject::SubscribeRateLimited => 429,
            Reject::ClusterPayloadTooLarge => 413,
            Reject::HandshakeTimeout => 408,
            Reject::HeadTooLarge => 431,
            Reject::MissingCredentials | Reject::BadCredentials => 401,
            Reject::PublishNotAllowed
            | Reject::SubscribeNotAllowed
            | Reject::OriginNotAllowed
            | Reject::HostNotAllowed
            | Reject::ApiFromBrowser => 403,
            Reject::UnsupportedMediaType => 415,
            _ => 400,
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::MalformedJson => f.write_str("malformed JSON"),
            Reject::NotAnObject => f.write_str("message must be a JSON object"),
            Reject::UnknownType => f.write_str("unknown message type"),
            Reject::UnknownKind => f.write_str("unknown kind"),
            Reject::MissingField(name) => write!(f, "missing field '{name}'"),
            Reject::BadField(name) => write!(f, "field '{name}' has the wrong type"),
            Reject::TooDeep => f.write_str("JSON nested too deeply"),
            Reject::InvalidTopic(e) => write!(f, "invalid topic: {e}"),
            Reject::InvalidPattern(e) => write!(f, "invalid pattern: {e}"),
            Reject::TooManySubscriptions => {
                f.write_str("subscription limit reached (client.max_subscriptions)")
            }
            Reject::TooManyWildcards => f.write_str(
                "wildcard subscription limit reached (client.max_wildcard_subscriptions)",
            ),
            Reject::PublishNotAllowed => f.write_str("not allowed to publish to this topic"),
            Reject::SubscribeNotAllowed => f.write_str("not allowed to subscribe to this pattern"),
            Reject::MissingCredentials => f.write_str("credentials required"),
            Reject::BadCredentials => f.write_str("invalid credentials"),
            Reject::IpConnectionLimit => f.write_str(
                "too many connections from this address (server.max_connections_per_ip)",
            ),
            Reject::ConnectRateLimited => {
                f.write_str("connecting too fast from this address (server.connection_rate_per_ip)")
            }
            Reject::RateLimited => f.write_str("rate limited"),
            Reject::Overloaded => f.write_str("broker overloaded, publication not queued"),
            Reject::TooManyConnections => f.write_str("too many connections"),
            Reject::OriginNotAllowed => f.write_str("origin not allowed (server.allowed_origins)"),
            Reject::BadHandshake => f.write_str("not a valid WebSocket upgrade request"),
            Reject::HandshakeTimeout => {
                f.write_str("request not received in time (server.handshake_timeout)")
            }
            Reject::BadPosition(name, why) => write!(f, "invalid position: '{name}' {why}"),
            Reject::RecoveryNeedsExactChannel => f.write_str("recovery needs an exact channel"),
            Reject::PendingEvicted => f.write_str(
                "closed to make room: too many connections without a request (server.max_pending_handshakes)",
            ),
            Reject::HeadTooLarge => {
                f.write_str("request head too large (server.max_request_head_bytes)")
            }
            Reject::ClusterSubjectTooLong => f.write_str(
                "topic too long for the cluster: its NATS subject would exceed cluster.max_control_line",
            ),
            Reject::ClusterPayloadTooLarge => {
                f.write_str("publication too large for the cluster (NATS max_payload)")
            }
            Reject::SubscribeRateLimited => {
                f.write_str("subscription changes rate limited (client.subscribe_rate)")
            }
            Reject::HostNotAllowed => {
                f.write_str("Host is not a name of this broker (server.allowed_hosts)")
            }
            Reject::ApiFromBrowser => f.write_str(
                "a browser page may not use the keyless API (it answers loopback peers; set api.key_env)",
            ),
            Reject::UnsupportedMediaType => f.write_str("unsupported Content-Type"),
            Reject::ReservedHeader => f.write_str(
                "header 'type' is reserved: only the HTTP API sets a publication's type",
            ),
            Reject::TlsHandshakeFailed => f.write_str("TLS handshake failed"),
            Reject::PlainTextOnTlsPort => f.write_str(
                "this port speaks TLS: use https:// or wss:// (server.tls_cert is set)",
            ),
            Reject::UnknownMethod => f.write_str(
                "unknown method (expected status, backpressure, subscribe, history or routing)",
            ),
            Reject::BadParams(name, what) => write!(f, "params.{name} {what}"),
            Reject::UnsolicitedReply => f.write_str("reply to a request this broker never sent"),
            Reject::ReusedId => f.write_str("id already used on this connection"),
            Reject::PayloadTooLarge => {
                f.write_str("payload too large (semstreams.max_payload_bytes)")
            }
            Reject::UpstreamQueueFull => f.write_str(
                "an upstream link's queue is full (on_full = \"block\"); publish again later",
            ),
            other => f.write_str(other.close_reason()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_index_order() {
        let all = [
            Reject::MalformedJson,
            Reject::TooManyConnections,
            Reject::SlowConsumer,
            Reject::MissingField("t"),
        ];
        for r in all {
            assert_eq!(Reject::LABELS[r.index()], r.label());
        }
        assert_eq!(Reject::SlowConsumer.label(), "slow_consumer");
        assert_eq!(Reject::UpstreamQueueFull.index(), Reject::LABELS.len() - 1);
    }

    #[test]
    fn all_lists_every_variant_in_index_order() {
        for (i, r) in Reject::all().iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        assert_eq!(Reject::InvalidUtf8.class(), ErrorClass::Fatal);
        assert_eq!(Reject::RateLimited.class(), ErrorClass::Transient);
        assert_eq!(Reject::MalformedJson.class(), ErrorClass::Invalid);
        assert!(Reject::BadCredentials.is_handshake() && !Reject::TooDeep.is_handshake());
    }

    #[test]
    fn close_codes_match_spec_section_4() {
        assert_eq!(Reject::InvalidUtf8.close_code(), Some(1007));
        assert_eq!(Reject::MessageTooLarge.close_code(), Some(1009));
        assert_eq!(Reject::BinaryFrame.close_code(), Some(1003));
        assert_eq!(Reject::UnmaskedFrame.close_code(), Some(1002));
        assert_eq!(Reject::SlowConsumer.close_code(), Some(1008));
        assert_eq!(Reject::MalformedJson.close_code(), None);
    }
}
