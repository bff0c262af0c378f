//! `server.allowed_origins` (SPEC §5): which browser origins may open a WebSocket.
//!
//! * A request without `Origin` (not a browser) is always allowed.
//! * The broker's own origin is always allowed: an `Origin` naming the same host (and
//!   port) as the request's `Host`, so the dashboard at `/` and any page the broker serves
//!   keep working whatever the list says.
//! * `[]` (default): nothing else, i.e. same-origin only.
//! * `["*"]`: any origin.
//! * a list of entries, each one of
//!   - `scheme://host[:port]`: that origin exactly (ASCII case-insensitive);
//!   - `scheme://host:*`: that scheme and host on any port (`"http://localhost:*"` for
//!     local development servers);
//!   - `null`: the opaque origin browsers send from `file://` pages and sandboxed frames
//!     (for development only: every such page shares it).
//!
//! Every refusal is logged at warn level, at most one line a second (with the number of
//! refusals left out since the previous line), naming the origin, the `Host` and what to
//! add to the config: [`log_refusal`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The config key this module implements, for messages.
pub const KEY: &str = "server.allowed_origins";

/// Whether a request with these `Origin` and `Host` headers may upgrade.
pub fn allowed(allowed_origins: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin.map(str::trim) else {
        return true;
    };
    same_origin(origin, host)
        || allowed_origins
            .iter()
            .any(|entry| entry_matches(entry.trim(), origin))
}

/// Whether `origin` is admitted by an entry of the list itself (not as the broker's own).
pub fn listed(allowed_origins: &[String], origin: &str) -> bool {
    let origin = origin.trim();
    allowed_origins
        .iter()
        .any(|entry| entry_matches(entry.trim(), origin))
}

/// True when `origin` names the host (and port) the request was sent to: the broker's
/// own pages. `null` has no host and is never the broker's own.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    let authority = authority.trim_end_matches('/');
    host.is_some_and(|h| !authority.is_empty() && h.trim().eq_ignore_ascii_case(authority))
}

/// Whether one `server.allowed_origins` entry admits `origin`.
fn entry_matches(entry: &str, origin: &str) -> bool {
    if entry == "*" {
        return true;
    }
    if let Some(prefix) = entry.strip_suffix(":*") {
        // scheme://host:* -- the same scheme and host, with any port or none.
        let head = origin.get(..prefix.len());
        let rest = origin.get(prefix.len()..).unwrap_or_default();
        let port_ok = rest.is_empty()
            || rest.strip_prefix(':').is_some_and(|p| {
                (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
            });
        return head.is_some_and(|h| h.eq_ignore_ascii_case(prefix)) && port_ok;
    }
    entry
        .trim_end_matches('/')
        .eq_ignore_ascii_case(origin.trim_end_matches('/'))
}

/// What to add to `server.allowed_origins` to admit `origin`, as a sentence ending the
/// refusal's log line (and the `/api/ws-check` answer). The origin is quoted as a TOML
/// string; the sentence never repeats anything but the request's own headers.
pub fn how_to_allow(origin: &str) -> String {
    let quoted = toml_string(origin);
    if origin.eq_ignore_ascii_case("null") {
        return format!(
            "add {quoted} to {KEY} (file:// pages and sandboxed frames send Origin null; for development only, it admits every such page)"
        );
    }
    let local = origin
        .split_once("://")
        .map(|(scheme, authority)| (scheme, host_of(authority)))
        .filter(|(_, host)| matches!(*host, "localhost" | "127.0.0.1" | "[::1]"));
    match local {
        Some((scheme, host)) => format!(
            "add {quoted} to {KEY} (or {} for every port of {host}, for development)",
            toml_string(&format!("{scheme}://{host}:*"))
        ),
        None => format!("add {quoted} to {KEY}"),
    }
}

/// The host of an authority `host[:port]` (an IPv6 host keeps its brackets).
fn host_of(authority: &str) -> &str {
    let authority = authority.trim_end_matches('/');
    if authority.starts_with('[') {
        return authority
            .find(']')
            .and_then(|end| authority.get(..=end))
            .unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// `s` as a TOML basic string (header values are visible ASCII; `"` and `\` are escaped).
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Longest part of a header value a log line repeats.
const LOGGED_CHARS: usize = 200;
/// At most one refusal line per this many milliseconds.
const LOG_INTERVAL_MS: u64 = 1000;

/// Rate limit for refusal log lines: at most one per [`LOG_INTERVAL_MS`], counting the
/// refusals left out in between. Shared by every shard thread.
pub struct RefusalLog {
    /// Milliseconds (since the process's first refusal) before which no line is written.
    next_ms: AtomicU64,
    /// Refusals not logged since the last line.
    suppressed: AtomicU64,
}

impl RefusalLog {
    /// A limiter that lets the first refusal through.
    pub const fn new() -> Self {
        RefusalLog {
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(refusals left out since the last line)` when a line may be written at
    /// `now_ms`, else `None` (and this refusal is counted as left out).
    pub fn admit(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms < next
            || self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(LOG_INTERVAL_MS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new()
    }
}

static REFUSALS: RefusalLog = RefusalLog::new();

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Logs (rate-limited, warn level) that an upgrade with this `Origin` was refused:
/// the origin, the `Host`, and what to add to `server.allowed_origins`.
pub fn log_refusal(origin: &str, host: Option<&str>) {
    let Some(suppressed) = REFUSALS.admit(now_ms()) else {
        return;
    };
    tracing::warn!("{}", refusal_line(origin, host, suppressed));
}

/// The text of a refusal log line.
pub fn refusal_line(origin: &str, host: Option<&str>, suppressed: u64) -> String {
    let origin = clip(origin);
    let host = host.map_or_else(|| "(no Host header)".to_owned(), |h| toml_string(clip(h)));
    let mut line = format!(
        "WebSocket upgrade refused with 403: Origin {} is not allowed (Host {host}); to allow it, {}",
        toml_string(origin),
        how_to_allow(origin),
    );
    if suppressed > 0 {
        line.push_str(&format!(
            "; {suppressed} more origin refusals since the previous line were not logged"
        ));
    }
    line
}

/// At most [`LOGGED_CHARS`] characters of an attacker-chosen header value.
fn clip(s: &str) -> &str {
    s.char_indices()
        .nth(LOGGED_CHARS)
        .and_then(|(i, _)| s.get(..i))
        .unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn same_origin_by_default() {
        let none = list(&[]);
        assert!(
            allowed(&none, None, Some("h:8080")),
            "no Origin: not a browser"
        );
        assert!(allowed(&none, Some("http://h:8080"), Some("h:8080")));
        assert!(allowed(&none, Some("https://H:8080"), Some("h:8080")));
        assert!(!allowed(&none, Some("http://evil.example"), Some("h:8080")));
        assert!(!allowed(&none, Some("http://h:9090"), Some("h:8080")));
        assert!(!allowed(&none, Some("http://h:8080"), None));
        assert!(!allowed(&none, Some("null"), Some("h:8080")));
        assert!(!allowed(&none, Some("null"), Some("null")));
        assert!(!allowed(&none, Some("http://"), Some("")));
    }

    #[test]
    fn star_and_lists() {
        assert!(allowed(&list(&["*"]), Some("http://anything"), Some("h")));
        assert!(allowed(&list(&["*"]), Some("null"), Some("h")));
        let l = list(&["https://app.example.com", "http://localhost:3000"]);
        assert!(allowed(
            &l,
            Some("https://app.example.com"),
            Some("broker:8080")
        ));
        assert!(allowed(
            &l,
            Some("http://localhost:3000"),
            Some("broker:8080")
        ));
        assert!(!allowed(
            &l,
            Some("https://app.example.com.evil"),
            Some("broker:8080")
        ));
        assert!(!allowed(
            &l,
            Some("http://app.example.com"),
            Some("broker:8080")
        ));
        assert!(!allowed(&l, Some("null"), Some("broker:8080")));
        assert!(allowed(&l, None, Some("broker:8080")));
    }

    #[test]
    fn the_brokers_own_origin_is_allowed_whatever_the_list() {
        let l = list(&["http://example.test"]);
        assert!(allowed(&l, Some("http://broker:8080"), Some("broker:8080")));
        assert!(allowed(
            &l,
            Some("https://BROKER:8080"),
            Some("broker:8080")
        ));
        assert!(allowed(
            &l,
            Some("http://example.test"),
            Some("broker:8080")
        ));
        assert!(!allowed(
            &l,
            Some("http://broker:9090"),
            Some("broker:8080")
        ));
        assert!(!allowed(&l, Some("http://other:8080"), Some("broker:8080")));
    }

    #[test]
    fn null_is_an_entry_for_file_pages() {
        let l = list(&["null"]);
        assert!(allowed(&l, Some("null"), Some("broker:8080")));
        assert!(allowed(&l, Some("NULL"), Some("broker:8080")));
        assert!(!allowed(&l, Some("http://localhost:3000"), Some("b:1")));
        assert!(!allowed(&l, Some("nullx"), Some("b:1")));
    }

    #[test]
    fn a_port_wildcard_admits_any_port_of_that_scheme_and_host() {
        let l = list(&["http://localhost:*", "https://[::1]:*"]);
        for ok in [
            "http://localhost:3000",
            "http://localhost:1",
            "http://LOCALHOST:65535",
            "http://localhost",
            "https://[::1]:8443",
        ] {
            assert!(allowed(&l, Some(ok), Some("b:1")), "{ok}");
        }
        for refused in [
            "https://localhost:3000",
            "http://localhost.evil.example:3000",
            "http://localhost:3000.evil.example",
            "http://localhost:",
            "http://localhost:123456",
            "http://localhost:30x0",
            "http://localhostx:3000",
            "http://127.0.0.1:3000",
            "http://[::1]:8443",
            "null",
        ] {
            assert!(!allowed(&l, Some(refused), Some("b:1")), "{refused}");
        }
    }

    #[test]
    fn the_advice_names_what_to_add() {
        assert_eq!(
            how_to_allow("https://app.example.com"),
            "add \"https://app.example.com\" to server.allowed_origins"
        );
        let local = how_to_allow("http://localhost:3000");
        assert!(
            local.starts_with("add \"http://localhost:3000\" to server.allowed_origins (or \"http://localhost:*\""),
            "{local}"
        );
        assert!(how_to_allow("http://[::1]:5173").contains("\"http://[::1]:*\""));
        let null = how_to_allow("null");
        assert!(
            null.starts_with("add \"null\" to server.allowed_origins")
                && null.contains("development only"),
            "{null}"
        );
        assert_eq!(
            how_to_allow(r#"http://a"b\c"#),
            r#"add "http://a\"b\\c" to server.allowed_origins"#
        );
    }

    #[test]
    fn the_refusal_line_names_origin_host_and_key() {
        let line = refusal_line("http://localhost:3000", Some("127.0.0.1:8080"), 0);
        for needle in [
            "Origin \"http://localhost:3000\"",
            "Host \"127.0.0.1:8080\"",
            "add \"http://localhost:3000\" to server.allowed_origins",
        ] {
            assert!(line.contains(needle), "{needle} missing: {line}");
        }
        assert!(!line.contains("not logged"), "{line}");
        let line = refusal_line("null", None, 41);
        assert!(line.contains("(no Host header)"), "{line}");
        assert!(line.contains("41 more origin refusals"), "{line}");
        let long = "x".repeat(10_000);
        assert!(refusal_line(&long, Some(&long), 0).len() < 1_000);
    }

    #[test]
    fn refusal_lines_are_rate_limited_with_a_count() {
        let log = RefusalLog::new();
        assert_eq!(log.admit(5), Some(0), "the first line goes out");
        assert_eq!(log.admit(6), None);
        assert_eq!(log.admit(1004), None);
        assert_eq!(log.admit(1005), Some(2), "a second later, with the count");
        assert_eq!(log.admit(1500), None);
        assert_eq!(log.admit(9000), Some(1));
        assert_eq!(log.admit(9001), None);
    }
}
