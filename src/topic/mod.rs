//! Topic names and subscription patterns (SPEC §3, MQTT semantics): validation, the
//! reference matcher, and the per-shard subscription [`Index`].
//!
//! Topics are `/`-separated levels; empty levels are ordinary levels. In patterns `+`
//! matches exactly one level and `#` any number of remaining levels (only as the last
//! level; `a/#` also matches `a`). Nothing here does I/O or knows about connections: the
//! index stores opaque `Copy` values (connection ids, shard ids). What a rejection looks
//! like on the wire is `error::Reject`'s business, not this module's.

pub mod index;
mod subscribers;

pub use index::Index;

use std::fmt;

/// Why a topic or pattern is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Empty string.
    Empty,
    /// Longer than `client.max_topic_bytes`.
    TooLong,
    /// More levels than `client.max_topic_levels`.
    TooManyLevels,
    /// Contains a control character.
    ControlCharacter,
    /// `+` or `#` in a topic that is published to.
    WildcardInTopic,
    /// Publishing to a `$`-prefixed topic, reserved for the broker (`$broadcast`, `$sys/...`).
    Reserved,
    /// `+` or `#` inside a level (e.g. `a/b+`).
    WildcardInsideLevel,
    /// `#` not as the last level.
    HashNotLast,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "empty",
            TopicError::TooLong => "too long",
            TopicError::TooManyLevels => "too many levels",
            TopicError::ControlCharacter => "contains a control character",
            TopicError::WildcardInTopic => "wildcards are not allowed when publishing",
            TopicError::Reserved => "topics starting with '$' are reserved for the broker",
            TopicError::WildcardInsideLevel => "'+' and '#' must stand alone in a level",
            TopicError::HashNotLast => "'#' is only allowed as the last level",
        })
    }
}

impl std::error::Error for TopicError {}

/// Size limits applied to topics and patterns (config `client.max_topic_bytes` and
/// `client.max_topic_levels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum length in bytes (UTF-8).
    pub max_bytes: usize,
    /// Maximum number of `/`-separated levels.
    pub max_levels: usize,
}

/// Validates a topic that is published to: no wildcard characters at all.
///
/// # Errors
/// [`TopicError::Empty`], [`TopicError::TooLong`], [`TopicError::TooManyLevels`],
/// [`TopicError::ControlCharacter`] or [`TopicError::WildcardInTopic`].
pub fn validate_topic(topic: &str, limits: &Limits) -> Result<(), TopicError> {
    check_common(topic, limits)?;
    // A topic is never a pattern, so `+`/`#` anywhere (even inside a level) is refused.
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInTopic);
    }
    // `$broadcast` and `$sys/...` carry broker messages; nobody may forge them.
    if topic.starts_with('$') {
        return Err(TopicError::Reserved);
    }
    Ok(())
}

/// How many of `patterns` (valid patterns: a wildcard is always a whole level) are
/// wildcard patterns: they are what `client.max_wildcard_subscriptions` bounds.
pub fn wildcard_count(patterns: &[Box<str>]) -> usize {
    patterns
        .iter()
        .filter(|p| p.bytes().any(|b| b == b'+' || b == b'#'))
        .count()
}

/// Validates a subscription pattern. Returns `Ok(true)` when it contains a wildcard
/// (`+` or `#`), `Ok(false)` when it is an exact topic.
///
/// # Errors
/// [`TopicError::Empty`], [`TopicError::TooLong`], [`TopicError::TooManyLevels`],
/// [`TopicError::ControlCharacter`], [`TopicError::WildcardInsideLevel`] or
/// [`TopicError::HashNotLast`].
pub fn validate_pattern(pattern: &str, limits: &Limits) -> Result<bool, TopicError> {
    check_common(pattern, limits)?;
    let mut wildcard = false;
    let mut levels = pattern.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "+" => wildcard = true,
            "#" => {
                if levels.peek().is_some() {
                    return Err(TopicError::HashNotLast);
                }
                wildcard = true;
            }
            _ if level.bytes().any(|b| b == b'+' || b == b'#') => {
                return Err(TopicError::WildcardInsideLevel)
            }
            _ => {}
        }
    }
    Ok(wildcard)
}

/// Reference matcher: does `pattern` match `topic`? Written to be obviously right, not
/// fast; the [`Index`] is the fast path and is tested against this.
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    if is_broker_topic(topic) && starts_with_wildcard(pattern) {
        return false;
    }
    let mut p = pattern.split('/');
    let mut t = topic.split('/');
    loop {
        match (p.next(), t.next()) {
            // `#` matches the remaining levels, including none (`a/#` matches `a`).
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(pl), Some(tl)) if pl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Does `outer` match every topic `inner` matches? (Both valid patterns; a topic is a
/// pattern without wildcards.) Used to decide whether one policy rule or grant governs a
/// whole subscription.
pub fn pattern_covers(outer: &str, inner: &str) -> bool {
    if is_broker_topic(inner) && starts_with_wildcard(outer) {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    let mut first = true;
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            // A whole-pattern `#` matches topics of one level or more, as `+/#` does.
            (Some("+"), Some("#")) if first => return o.eq(["#"]),
            // `inner` reaches arbitrarily deep where `outer` does not.
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(ol), Some(il)) if ol == il && il != "+" => {}
            (None, None) => return true,
            // `a/#` covers `a` itself: only a trailing `#` may be left over.
            (Some(_), None) | (None, Some(_)) | (Some(_), Some(_)) => return false,
        }
        first = false;
    }
}

/// Is there a topic both patterns match?
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    if (is_broker_topic(a) && starts_with_wildcard(b))
        || (is_broker_topic(b) && starts_with_wildcard(a))
    {
        return false;
    }
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Topics starting with `$` belong to the broker (`$sys/stats`). As in MQTT, a pattern
/// whose first level is a wildcard (`#`, `+/...`) does not match them: a client that
/// subscribes to everything gets the application's topics, not the broker's.
pub fn is_broker_topic(topic: &str) -> bool {
    topic.starts_with('$')
}

/// First level is `+` or `#`.
fn starts_with_wildcard(pattern: &str) -> bool {
    matches!(pattern.split('/').next(), Some("+" | "#"))
}

/// Checks shared by topics and patterns, cheapest first.
fn check_common(s: &str, limits: &Limits) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > limits.max_bytes {
        return Err(TopicError::TooLong);
    }
    if s.bytes().filter(|&b| b == b'/').count() + 1 > limits.max_levels {
        return Err(TopicError::TooManyLevels);
    }
    if has_control(s) {
        return Err(TopicError::ControlCharacter);
    }
    Ok(())
}

fn has_control(s: &str) -> bool {
    // Byte scan for the common all-ASCII case; C1 controls (U+0080..U+009F) only exist in
    // non-ASCII text, where decoding chars is needed anyway.
    if s.is_ascii() {
        s.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        s.chars().any(char::is_control)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 64,
        max_levels: 4,
    };

    #[test]
    fn topic_errors() {
        assert_eq!(validate_topic("", &LIMITS), Err(TopicError::Empty));
        let long = "x".repeat(65);
        assert_eq!(validate_topic(&long, &LIMITS), Err(TopicError::TooLong));
        assert_eq!(validate_topic(&long[..64], &LIMITS), Ok(()));
        assert_eq!(
            validate_topic("a/b/c/d/e", &LIMITS),
            Err(TopicError::TooManyLevels)
        );
        assert_eq!(validate_topic("a/b/c/d", &LIMITS), Ok(()));
        assert_eq!(
            validate_topic("////", &LIMITS),
            Err(TopicError::TooManyLevels)
        );
        for bad in ["a\0b", "a\nb", "\t", "a/\x7f", "a/\u{85}", "é\u{9f}"] {
            assert_eq!(
                validate_topic(bad, &LIMITS),
                Err(TopicError::ControlCharacter),
                "{bad:?}"
            );
        }
        for bad in ["+", "#", "a/+", "a/#", "a+b", "#x", "a/b#"] {
            assert_eq!(
                validate_topic(bad, &LIMITS),
                Err(TopicError::WildcardInTopic),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn valid_topics() {
        for ok in [
            "a",
            "a//b",
            "/a",
            "a/",
            "/",
            "process:build-1",
            "héllo/wörld/日本",
            "a b/c",
        ] {
            assert_eq!(validate_topic(ok, &LIMITS), Ok(()), "{ok:?}");
            assert_eq!(validate_pattern(ok, &LIMITS), Ok(false), "{ok:?}");
        }
    }

    #[test]
    fn dollar_topics_are_reserved_for_publishing_but_subscribable() {
        assert_eq!(
            validate_topic("$broadcast", &LIMITS),
            Err(TopicError::Reserved)
        );
        assert_eq!(
            validate_topic("$sys/stats", &LIMITS),
            Err(TopicError::Reserved)
        );
        assert_eq!(validate_pattern("$sys/+", &LIMITS), Ok(true));
        assert_eq!(validate_topic("a/$b", &LIMITS), Ok(()));
    }

    #[test]
    fn pattern_errors() {
        assert_eq!(validate_pattern("", &LIMITS), Err(TopicError::Empty));
        assert_eq!(
            validate_pattern(&"+/".repeat(40), &LIMITS),
            Err(TopicError::TooLong)
        );
        assert_eq!(
            validate_pattern("+/+/+/+/#", &LIMITS),
            Err(TopicError::TooManyLevels)
        );
        assert_eq!(
            validate_pattern("a/\u{1}/#", &LIMITS),
            Err(TopicError::ControlCharacter)
        );
        for bad in ["a/b+", "#x", "a+", "+a/b", "a/++", "a/##", "x#/y"] {
            assert_eq!(
                validate_pattern(bad, &LIMITS),
                Err(TopicError::WildcardInsideLevel),
                "{bad:?}"
            );
        }
        for bad in ["#/a", "a/#/b", "#/#", "+/#/+"] {
            assert_eq!(
                validate_pattern(bad, &LIMITS),
                Err(TopicError::HashNotLast),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn valid_patterns() {
        for p in [
            "#", "+", "a/+/c", "a/#", "+/#", "+/+", "/+", "+//#", "日本/+",
        ] {
            assert_eq!(validate_pattern(p, &LIMITS), Ok(true), "{p:?}");
        }
        for p in ["a", "a//b", "/a", "process:build-1"] {
            assert_eq!(validate_pattern(p, &LIMITS), Ok(false), "{p:?}");
        }
    }

    #[test]
    fn display_texts_are_set() {
        assert_eq!(
            TopicError::HashNotLast.to_string(),
            "'#' is only allowed as the last level"
        );
    }

    /// Every pattern and topic over levels {a, b} up to 3 levels deep.
    fn universe() -> (Vec<String>, Vec<String>) {
        let mut topics: Vec<String> = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..3 {
            topics = topics
                .iter()
                .flat_map(|t| {
                    ["a", "b"].map(|l| {
                        if t.is_empty() {
                            l.to_owned()
                        } else {
                            format!("{t}/{l}")
                        }
                    })
                })
                .collect();
            all.extend(topics.iter().cloned());
        }
        all.sort();
        all.dedup();
        let mut patterns = all.clone();
        for t in &all {
            let levels: Vec<&str> = t.split('/').collect();
            for i in 0..levels.len() {
                let mut plus = levels.clone();
                plus[i] = "+";
                patterns.push(plus.join("/"));
                let hash = [&levels[..i], &["#"]].concat();
                patterns.push(hash.join("/"));
            }
        }
        patterns.push("+/+".into());
        patterns.push("+/#".into());
        patterns.sort();
        patterns.dedup();
        (patterns, all)
    }

    #[test]
    fn covers_and_overlap_agree_with_the_matcher() {
        let (patterns, topics) = universe();
        for outer in &patterns {
            for inner in &patterns {
                let inner_topics = topics.iter().filter(|t| pattern_matches(inner, t));
                let covers = inner_topics.clone().all(|t| pattern_matches(outer, t));
                let overlap = inner_topics.clone().any(|t| pattern_matches(outer, t));
                // The 3-level universe cannot show what `#` matches deeper down.
                let deep = inner.ends_with('#') && !outer.ends_with('#');
                if !deep {
                    assert_eq!(
                        pattern_covers(outer, inner),
                        covers,
                        "{outer} covers {inner}"
                    );
                }
                assert_eq!(
                    patterns_overlap(outer, inner),
                    overlap,
                    "{outer} overlaps {inner}"
                );
            }
        }
        assert!(!pattern_covers("a/+/+", "a/#"), "# reaches deeper than +/+");
        assert!(pattern_covers("a/#", "a"));
    }
}
