//! What the link accepts from NATS. Anyone who may publish on the NATS subjects can send
//! the link bytes, so an envelope is delivered only if it is signed (when
//! `cluster.secret_env` is set), names the channel of the subject it came on, is of a
//! kind that subject carries (channel kinds on channel subjects, broadcasts on the
//! broadcast subject) and names a valid channel (no control characters, wildcards,
//! `$sys/...`, or length over the client limits). Each refusal is counted by reason.

use super::envelope::{self, Origin};
use super::options::{MacKey, MAC_HEADER};
use super::subject;
use crate::publication::Publication;
use crate::topic;

/// Why an envelope from NATS was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an envelope (foreign publisher or a bug).
    Malformed,
    /// `cluster.secret_env` is set and the MAC header is absent or wrong.
    BadMac,
    /// The envelope's channel is not the one its subject names.
    SubjectMismatch,
    /// A broadcast on a channel subject or a channel publication on the broadcast subject.
    KindMismatch,
    /// The channel is not one a client could publish on (control characters, wildcards,
    /// `$sys/...`, too long or deep).
    InvalidTopic,
    /// The sequence number jumped further than any node can count (see `dedup`).
    SequenceJump,
}

impl Refusal {
    /// Labels of `shardcast_cluster_refused_total{reason}`, in `index()` order.
    pub const LABELS: [&'static str; 6] = [
        "malformed",
        "bad_mac",
        "subject_mismatch",
        "kind_mismatch",
        "invalid_topic",
        "sequence_jump",
    ];

    /// Position in [`Refusal::LABELS`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Checks a message that came on `subject` and decodes its envelope.
///
/// # Errors
/// Why it must not be delivered.
pub fn admit(
    prefix: &str,
    mac: Option<&MacKey>,
    limits: &topic::Limits,
    subject: &str,
    mac_header: Option<&str>,
    payload: &[u8],
) -> Result<(Origin, Publication), Refusal> {
    if let Some(key) = mac {
        match mac_header {
            Some(m) if key.verify(subject, payload, m) => {}
            _ => return Err(Refusal::BadMac),
        }
    }
    let (origin, p) = envelope::decode(payload).map_err(|_| Refusal::Malformed)?;
    if subject == subject::broadcast_subject(prefix) {
        if !p.is_broadcast() {
            return Err(Refusal::KindMismatch);
        }
        if !p.topic.is_empty() {
            return Err(Refusal::SubjectMismatch);
        }
        return Ok((origin, p));
    }
    if p.is_broadcast() {
        return Err(Refusal::KindMismatch);
    }
    match subject::topic_of(prefix, subject) {
        Some(t) if *t == *p.topic => {}
        _ => return Err(Refusal::SubjectMismatch),
    }
    topic::validate_topic(&p.topic, limits).map_err(|_| Refusal::InvalidTopic)?;
    Ok((origin, p))
}

/// The MAC header of `message`, if any.
pub fn mac_header(message: &async_nats::Message) -> Option<&str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(MAC_HEADER))
        .map(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: topic::Limits = topic::Limits {
        max_bytes: 64,
        max_levels: 8,
    };

    fn env(kind: &str, topic: &str) -> Vec<u8> {
        serde_json::json!({"o": "a", "i": 1, "s": 1, "k": kind, "n": "x", "t": topic, "d": 1})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn envelopes_must_match_their_subject() {
        let ok = admit("p", None, &LIMITS, "p.t.a.b", None, &env("c", "a/b"));
        assert_eq!(ok.map(|(_, p)| p.topic.to_string()), Ok("a/b".into()));
        let refused = |s: &str, e: &[u8]| admit("p", None, &LIMITS, s, None, e).err();
        assert_eq!(
            refused("p.t.a.b", &env("c", "a/c")),
            Some(Refusal::SubjectMismatch)
        );
        assert_eq!(
            refused("p.t.a.b", &env("e", "")),
            Some(Refusal::KindMismatch)
        );
        assert_eq!(
            refused("p.b", &env("c", "a/b")),
            Some(Refusal::KindMismatch)
        );
        assert_eq!(
            refused("p.b", &env("e", "a")),
            Some(Refusal::SubjectMismatch)
        );
        assert!(refused("p.b", &env("r", "")).is_none());
        assert_eq!(
            refused("p.t.%24sys.stats", &env("c", "$sys/stats")),
            Some(Refusal::InvalidTopic)
        );
        assert_eq!(
            refused("p.t.a%01", &env("c", "a\u{1}")),
            Some(Refusal::InvalidTopic)
        );
        assert_eq!(
            refused("p.t.a%2B", &env("c", "a+")),
            Some(Refusal::InvalidTopic)
        );
        assert_eq!(refused("p.t.a", b"nope"), Some(Refusal::Malformed));
    }

    #[test]
    fn with_a_key_only_signed_envelopes_pass() {
        let key = MacKey::new(b"0123456789abcdef").expect("key");
        let e = env("c", "a");
        let mac = key.sign("p.t.a", &e);
        assert!(admit("p", Some(&key), &LIMITS, "p.t.a", Some(&mac), &e).is_ok());
        assert_eq!(
            admit("p", Some(&key), &LIMITS, "p.t.a", None, &e).err(),
            Some(Refusal::BadMac)
        );
    }
}
