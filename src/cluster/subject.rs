//! Channel names and patterns as NATS subjects, reversibly.
//!
//! A channel `a/b c/ü` becomes `<prefix>.t.a.b%20c.%C3%BC`: each `/`-separated level is
//! one NATS token; in a token the bytes `[A-Za-z0-9_-]` stand for themselves and every
//! other byte (UTF-8 bytes of non-ASCII text too, and `.`, `*`, `>`, `%`, space, `+`,
//! `#`, `$`) is written `%XX` (upper-case hex). NATS tokens cannot be empty, so an empty
//! level is the token `%` alone (an escape is always `%` plus two hex digits, so `%`
//! alone never means anything else). Channels live under `<prefix>.t.`; broadcasts
//! (go-ws `SendEvent`/`SendError`, to every client) go to `<prefix>.b`.
//!
//! Patterns map `+` to `*` and `#` to `>`. A trailing `#` also matches its parent
//! (`a/#` matches `a`), which NATS `a.>` does not, so such a pattern needs two NATS
//! subscriptions: `a` and `a.>`. Overlapping subscriptions deliver a message once per
//! subscription; the link removes those duplicates (see `dedup`).
//!
//! Broker topics (`$sys/...`) are node-local and never get a subject.

use crate::topic::is_broker_topic;
use std::fmt::Write as _;

/// The token after the prefix that starts every channel subject.
const CHANNELS: &str = "t";
/// The token after the prefix of the broadcast subject.
const BROADCASTS: &str = "b";

fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Escapes one topic level into a non-empty NATS token of safe characters.
pub fn escape_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    for &b in level.as_bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Reverses [`escape_level`]; `None` for a token no channel level escapes to.
pub fn unescape_level(token: &str) -> Option<String> {
    if token == "%" {
        return Some(String::new());
    }
    if token.is_empty() {
        return None;
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            let byte = hi << 4 | lo;
            if keep(byte) {
                return None; // not canonical: it would have been written as itself
            }
            out.push(byte);
            i += 3;
        } else if keep(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// The subject of channel `topic`, or `None` for a broker topic (`$...`), which stays
/// on this node.
pub fn channel_subject(prefix: &str, topic: &str) -> Option<String> {
    if is_broker_topic(topic) {
        return None;
    }
    let mut s = String::with_capacity(prefix.len() + 3 + topic.len() * 2);
    s.push_str(prefix);
    s.push('.');
    s.push_str(CHANNELS);
    for level in topic.split('/') {
        s.push('.');
        escape_level(level, &mut s);
    }
    Some(s)
}

/// Bytes a NATS control line adds around a subject: `SUB <subject> <sid>\r\n` or
/// `PUB <subject> <size>\r\n`, with the number at its longest (20 digits).
pub const LINE_OVERHEAD: usize = 4 + 1 + 20 + 2;

/// The length of the token [`escape_level`] writes for `level`.
fn escaped_level_len(level: &str) -> usize {
    if level.is_empty() {
        return 1;
    }
    level.bytes().map(|b| if keep(b) { 1 } else { 3 }).sum()
}

/// The length of [`channel_subject`]`(prefix, topic)`, without building it.
pub fn channel_subject_len(prefix: &str, topic: &str) -> usize {
    prefix.len()
        + 1
        + CHANNELS.len()
        + topic
            .split('/')
            .map(|level| 1 + escaped_level_len(level))
            .sum::<usize>()
}

/// The longest subject a channel (or pattern) of at most `max_topic_bytes` bytes escapes
/// to: one level of bytes that are all written `%XX` (`prefix.t.` + 3 bytes per byte).
/// Levels, empty levels and wildcards all escape to less.
pub fn worst_subject_len(prefix: &str, max_topic_bytes: usize) -> usize {
    prefix.len() + 1 + CHANNELS.len() + 1 + 3 * max_topic_bytes.max(1)
}

/// The subject broadcasts travel on.
pub fn broadcast_subject(prefix: &str) -> String {
    format!("{prefix}.{BROADCASTS}")
}

/// The channel a subject names (the inverse of [`channel_subject`]); `None` when it is
/// not a channel subject under `prefix`.
pub fn topic_of(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let rest = rest.strip_prefix(CHANNELS)?.strip_prefix('.')?;
    let mut topic = String::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            topic.push('/');
        }
        topic.push_str(&unescape_level(token)?);
    }
    Some(topic)
}

/// The NATS subscriptions that together receive every channel `pattern` matches (one,
/// or two for a trailing `#`). Empty for patterns that can only match broker topics.
pub fn pattern_subjects(prefix: &str, pattern: &str) -> Vec<String> {
    if pattern.starts_with('$') {
        return Vec::new(); // matches only `$` topics, which never cross nodes
    }
    let mut s = String::with_capacity(prefix.len() + 3 + pattern.len() * 2);
    s.push_str(prefix);
    s.push('.');
    s.push_str(CHANNELS);
    let mut levels = pattern.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if last => {
                // `a/#` matches `a` too; a bare `#` matches every topic (at least one
                // level), which `>` alone covers.
                let parent = (s.len() > prefix.len() + 1 + CHANNELS.len()).then(|| s.clone());
                s.push_str(".>");
                return parent.into_iter().chain(std::iter::once(s)).collect();
            }
            "+" => s.push_str(".*"),
            _ => {
                s.push('.');
                escape_level(level, &mut s);
            }
        }
    }
    vec![s]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn literal_topics_escape_and_come_back() {
        let cases = [
            ("a/b", "sc.t.a.b"),
            ("a.b c", "sc.t.a%2Eb%20c"),
            ("x/*/>", "sc.t.x.%2A.%3E"),
            ("100%", "sc.t.100%25"),
            ("a//b/", "sc.t.a.%.b.%"),
            ("ü", "sc.t.%C3%BC"),
        ];
        for (topic, subject) in cases {
            assert_eq!(channel_subject("sc", topic).as_deref(), Some(subject));
            assert_eq!(topic_of("sc", subject).as_deref(), Some(topic));
        }
    }

    #[test]
    fn broker_topics_never_get_a_subject() {
        assert_eq!(channel_subject("sc", "$sys/stats"), None);
        assert!(pattern_subjects("sc", "$sys/#").is_empty());
        assert_eq!(
            channel_subject("sc", "a/$b").as_deref(),
            Some("sc.t.a.%24b")
        );
    }

    #[test]
    fn patterns_map_wildcards() {
        assert_eq!(pattern_subjects("sc", "a/+/c"), vec!["sc.t.a.*.c"]);
        assert_eq!(pattern_subjects("sc", "a/#"), vec!["sc.t.a", "sc.t.a.>"]);
        assert_eq!(pattern_subjects("sc", "#"), vec!["sc.t.>"]);
        assert_eq!(pattern_subjects("sc", "+/#"), vec!["sc.t.*", "sc.t.*.>"]);
        assert_eq!(pattern_subjects("sc", "a b"), vec!["sc.t.a%20b"]);
        assert_eq!(pattern_subjects("sc", "a/+x"), vec!["sc.t.a.%2Bx"]);
    }

    #[test]
    fn foreign_subjects_are_not_topics() {
        assert_eq!(topic_of("sc", "other.t.a"), None);
        assert_eq!(topic_of("sc", "sc.b"), None);
        assert_eq!(topic_of("sc", "sc.t.a%2"), None);
        assert_eq!(topic_of("sc", "sc.t.%61"), None, "non-canonical escape");
        assert_eq!(topic_of("sc", "sc.t.a.*"), None);
        assert_eq!(topic_of("sc", "sc.t.%FF"), None, "not UTF-8");
    }

    #[test]
    fn subject_lengths_are_exact_and_bounded() {
        for topic in ["a/b", "ü", "a//b/", "/", "100%", "x/*/>", "é/é/é"] {
            let subject = channel_subject("sc", topic).unwrap_or_default();
            assert_eq!(channel_subject_len("sc", topic), subject.len(), "{topic}");
            assert!(
                subject.len() <= worst_subject_len("sc", topic.len()),
                "{topic}"
            );
        }
        // The worst case is reached: one level of escaped bytes.
        let worst = "é".repeat(10);
        assert_eq!(
            channel_subject_len("sc", &worst),
            worst_subject_len("sc", worst.len())
        );
    }

    proptest! {
        #[test]
        fn worst_case_bounds_every_topic_and_pattern(topic in "[ -~\u{80}-\u{10FFFF}/]{1,40}") {
            let worst = worst_subject_len("p", topic.len());
            prop_assert!(channel_subject_len("p", &topic) <= worst);
            for s in pattern_subjects("p", &topic) {
                prop_assert!(s.len() <= worst);
            }
        }

        #[test]
        fn escaping_round_trips(topic in any::<String>()) {
            prop_assume!(!topic.starts_with('$'));
            let subject = channel_subject("p.q", &topic);
            prop_assert!(subject.is_some());
            let subject = subject.unwrap_or_default();
            prop_assert_eq!(topic_of("p.q", &subject), Some(topic));
        }

        #[test]
        fn literal_subjects_are_valid_nats(topic in "[ -~\u{80}-\u{10FFFF}/.]{0,40}") {
            prop_assume!(!topic.starts_with('$'));
            let subject = channel_subject("p", &topic).unwrap_or_default();
            prop_assert!(!subject.is_empty());
            for token in subject.split('.') {
                prop_assert!(!token.is_empty());
                prop_assert!(token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'%'));
            }
        }
    }
}
