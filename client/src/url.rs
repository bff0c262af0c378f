//! `ws://host[:port][/path][?query]`, the only URLs the client opens (TLS is for a proxy
//! in front, or the broker's own `wss://` once it has it).

use crate::Error;

/// A parsed WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// Host to connect to (IPv6 without brackets).
    pub host: String,
    /// Port, 80 when absent.
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Path (default `/ws`) and query.
    pub target: String,
}

impl WsUrl {
    /// Parses `ws://host[:port][/path][?query]` (`http://` is taken as the same); no path
    /// means `/ws`, the broker's default `server.ws_path`.
    ///
    /// # Errors
    /// [`Error::Url`] for another scheme, a fragment, user info, or a bad host or port.
    pub fn parse(url: &str) -> Result<WsUrl, Error> {
        let bad = |why: &str| Error::Url(format!("{url:?}: {why}"));
        let trimmed = url.trim();
        let scheme = trimmed.split("://").next().unwrap_or_default();
        if scheme.eq_ignore_ascii_case("wss") || scheme.eq_ignore_ascii_case("https") {
            return Err(bad(
                "wss:// (TLS) is not supported yet; use ws://, through a TLS-terminating proxy if need be",
            ));
        }
        let rest = ["ws://", "http://"]
            .iter()
            .find_map(|s| {
                trimmed
                    .get(..s.len())
                    .filter(|p| p.eq_ignore_ascii_case(s))
                    .map(|_| &trimmed[s.len()..])
            })
            .ok_or_else(|| bad("must start with ws://, e.g. ws://127.0.0.1:8080/ws"))?;
        if rest.contains('#') {
            return Err(bad("must not have a fragment"));
        }
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("needs a host (and no user info)"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("bad host"));
        }
        // No path (or `/`) is the broker's default `/ws`; a trailing `/` is dropped.
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let path = match path.trim_end_matches('/') {
            "" => "/ws",
            p => p,
        };
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces or control characters in the path"));
        }
        Ok(WsUrl {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            target,
        })
    }

    /// The URL without its query (which may hold a token), for messages.
    pub fn display(&self) -> String {
        let path = self.target.split('?').next().unwrap_or_default();
        format!("ws://{}{path}", self.authority)
    }

    /// The target with `name=value` set in the query (value percent-encoded).
    pub fn target_with(&self, name: &str, value: &str) -> String {
        let (path, query) = self
            .target
            .split_once('?')
            .unwrap_or((self.target.as_str(), ""));
        let prefix = format!("{name}=");
        let mut params: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        params.push(format!("{prefix}{}", percent_encode(value)));
        format!("{path}?{}", params.join("&"))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let u = WsUrl::parse("ws://127.0.0.1:9000/ws?dialect=vws").ok();
        let u = u.as_ref();
        assert_eq!(u.map(|u| u.port), Some(9000));
        assert_eq!(u.map(|u| u.target.as_str()), Some("/ws?dialect=vws"));
        let d = WsUrl::parse("ws://localhost").ok();
        assert_eq!(
            d.as_ref().map(|u| (u.port, u.target.as_str())),
            Some((80, "/ws"))
        );
        let v6 = WsUrl::parse("ws://[::1]:8080/x").ok();
        assert_eq!(v6.map(|u| u.host), Some("::1".to_owned()));
        for bad in [
            "wss://h/ws",
            "ftp://h",
            "ws://",
            "ws://h:99999",
            "ws://u@h",
            "ws://h/#f",
        ] {
            assert!(WsUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_parameters_are_replaced_and_encoded() {
        let u = WsUrl::parse("ws://h/ws?token=old&a=1").ok();
        let t = u.map(|u| u.target_with("token", "a b/c"));
        assert_eq!(t.as_deref(), Some("/ws?a=1&token=a%20b%2Fc"));
    }
}
