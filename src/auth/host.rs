//! `server.allowed_hosts`: the `Host` names under which the broker trusts a request as
//! addressed to itself (a guard against DNS rebinding).
//!
//! After DNS rebinding, a page from `http://evil.example:8080` talks to the broker on
//! this machine under the attacker's name: its `Origin` and `Host` both say
//! `evil.example:8080`, so "same origin" proves nothing, and the peer is loopback. The
//! name in `Host` is what gives it away. Two rules rely on it:
//!
//! * the broker's own origin (`Origin` naming the request's `Host`) is admitted on the
//!   WebSocket only when that `Host` is one of these names (`origin.rs`);
//! * the keyless, loopback-only HTTP API answers only requests whose `Host` is one of
//!   these names (`api/access.rs`).
//!
//! Known names: any IP literal (`127.0.0.1:8080`, `[::1]`, the listen address, a LAN
//! address: a browser that sends an IP as `Host` loaded the page from that IP, and DNS
//! rebinding needs a DNS name), `localhost`, and the entries of `server.allowed_hosts`:
//! `name` (any port) or `name:port` (that port), ASCII case-insensitive, or `"*"` alone
//! (every name: the guard is off). A request without `Host` is not from a browser.

use super::origin::{self, RefusalLog};
use crate::error::Reject;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::Instant;

/// The config key this module implements, for messages.
pub const KEY: &str = "server.allowed_hosts";

/// Whether a `Host` header value names this broker.
pub fn known(allowed_hosts: &[String], host: &str) -> bool {
    let host = host.trim();
    let name = name_of(host);
    if name.is_empty() {
        return false;
    }
    is_ip_literal(name)
        || name.eq_ignore_ascii_case("localhost")
        || allowed_hosts
            .iter()
            .any(|entry| entry_matches(entry.trim(), host, name))
}

fn entry_matches(entry: &str, host: &str, name: &str) -> bool {
    entry == "*"
        || if entry.starts_with('[') {
            // An IPv6 entry is an IP literal, admitted anyway; compare as given.
            entry.eq_ignore_ascii_case(host) || entry.eq_ignore_ascii_case(name)
        } else if entry.contains(':') {
            entry.eq_ignore_ascii_case(host)
        } else {
            entry.eq_ignore_ascii_case(name)
        }
}

/// The name part of `host[:port]` (an IPv6 literal keeps its brackets).
fn name_of(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .find(']')
            .and_then(|end| host.get(..=end))
            .unwrap_or(host);
    }
    host.split(':').next().unwrap_or(host)
}

fn is_ip_literal(name: &str) -> bool {
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => name.parse::<Ipv4Addr>().is_ok(),
    }
}

/// The WebSocket `Origin` rule with the `Host` guard: no `Origin` (not a browser) and
/// listed origins pass; the broker's own origin passes only under a known `Host`.
///
/// # Errors
/// `OriginNotAllowed`, or `HostNotAllowed` for the same origin under an unknown name.
pub fn check_origin(
    allowed_origins: &[String],
    allowed_hosts: &[String],
    origin: Option<&str>,
    host: Option<&str>,
) -> Result<(), Reject> {
    let Some(o) = origin else {
        return Ok(());
    };
    if origin::listed(allowed_origins, o) {
        return Ok(());
    }
    if !origin::allowed(allowed_origins, Some(o), host) {
        return Err(Reject::OriginNotAllowed);
    }
    // Same origin: the broker's own page only if the name is the broker's.
    match host {
        Some(h) if known(allowed_hosts, h) => Ok(()),
        _ => Err(Reject::HostNotAllowed),
    }
}

/// Checks one `server.allowed_hosts` entry (config validation).
///
/// # Errors
/// What is wrong with it.
pub fn validate_entry(entry: &str) -> Result<(), String> {
    const FORMS: &str = "use a host name (any port), name:port, or \"*\" alone";
    if entry == "*" {
        return Ok(());
    }
    if entry.is_empty() || entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{entry:?} is not a host name; {FORMS}"));
    }
    if entry.contains("://") || entry.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{entry:?} is not a host name: no scheme, path, query or user (e.g. \"broker.example.com\"); {FORMS}"
        ));
    }
    if entry.contains('*') {
        return Err(format!(
            "{entry:?}: '*' only stands alone (every host); list each host name"
        ));
    }
    let name = name_of(entry);
    let port = entry.get(name.len()..).unwrap_or_default();
    if name.is_empty() || name == "[]" {
        return Err(format!("{entry:?} names no host; {FORMS}"));
    }
    if !port.is_empty() {
        let digits = port.strip_prefix(':').unwrap_or_default();
        if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{entry:?}: the port must be a number; {FORMS}"));
        }
    }
    Ok(())
}

/// What to add to `server.allowed_hosts` to admit `host`.
pub fn how_to_allow(host: &str) -> String {
    let name = name_of(host.trim());
    format!(
        "if this broker is really reached as {name:?}, add {name:?} to {KEY} (a name not listed there may be a DNS rebinding attack)"
    )
}

static REFUSALS: RefusalLog = RefusalLog::new();

/// Logs (rate-limited, warn level) a request refused for its `Host`.
pub fn log_refusal(what: &str, host: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    let now_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let Some(suppressed) = REFUSALS.admit(now_ms) else {
        return;
    };
    let host: String = host.chars().take(200).collect();
    tracing::warn!(
        "{what} refused with 403: Host {host:?} is not a name of this broker; {}{}",
        how_to_allow(&host),
        if suppressed > 0 {
            format!("; {suppressed} more Host refusals since the previous line were not logged")
        } else {
            String::new()
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ip_literals_and_localhost_are_always_known() {
        let none = list(&[]);
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[::1]",
            "localhost:8080",
            "LOCALHOST",
            "192.168.1.5:8080",
            "0.0.0.0:1",
        ] {
            assert!(known(&none, ok), "{ok}");
        }
        for refused in [
            "evil.example:8080",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "2130706433",
            "[::1",
            "",
            ":8080",
        ] {
            assert!(!known(&none, refused), "{refused}");
        }
    }

    #[test]
    fn entries_name_a_host_on_any_port_or_one_port() {
        let l = list(&["broker.example.com", "other.example:8443"]);
        assert!(known(&l, "broker.example.com"));
        assert!(known(&l, "Broker.Example.COM:8080"));
        assert!(known(&l, "other.example:8443"));
        assert!(!known(&l, "other.example:8080"));
        assert!(!known(&l, "other.example"));
        assert!(!known(&l, "evil.broker.example.com"));
        assert!(known(&list(&["*"]), "anything.example:1"));
    }

    #[test]
    fn the_same_origin_rule_needs_a_known_host() {
        let none = list(&[]);
        let check =
            |origins: &[String], o: &str, h: &str| check_origin(origins, &none, Some(o), Some(h));
        assert_eq!(
            check_origin(&none, &none, None, Some("evil.example")),
            Ok(())
        );
        assert_eq!(
            check(&none, "http://127.0.0.1:8080", "127.0.0.1:8080"),
            Ok(())
        );
        assert_eq!(
            check(&none, "http://localhost:8080", "localhost:8080"),
            Ok(())
        );
        // DNS rebinding: Origin and Host both name the attacker.
        assert_eq!(
            check(&none, "http://evil.example:8080", "evil.example:8080"),
            Err(Reject::HostNotAllowed)
        );
        assert_eq!(
            check(&none, "http://evil.example", "localhost:8080"),
            Err(Reject::OriginNotAllowed)
        );
        let named = list(&["broker.example.com"]);
        assert_eq!(
            check_origin(
                &none,
                &named,
                Some("https://broker.example.com"),
                Some("broker.example.com")
            ),
            Ok(())
        );
        // A listed origin does not depend on the Host.
        let app = list(&["https://app.example.com"]);
        assert_eq!(
            check(&app, "https://app.example.com", "whatever.example"),
            Ok(())
        );
    }

    #[test]
    fn entries_are_validated() {
        for ok in ["*", "broker.example.com", "b.example:8443", "[::1]:80", "h"] {
            assert_eq!(validate_entry(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "http://b.example",
            "b.example/",
            "*.example.com",
            "b.example:x",
            "b.example:",
            "a b",
            "[]",
        ] {
            assert!(validate_entry(bad).is_err(), "{bad}");
        }
    }
}
