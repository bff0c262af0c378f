//! STUB (replaced by the topic helper): topic/pattern validation and the subscription index.
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
            TopicError::WildcardInsideLevel => "'+' and '#' must stand alone in a level",
            TopicError::HashNotLast => "'#' is only allowed as the last level",
        })
    }
}
