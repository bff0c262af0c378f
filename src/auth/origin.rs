//! `server.allowed_origins` (SPEC §5): which browser origins may open a WebSocket.
//!
//! * `[]` (default): same-origin. A request without `Origin` (not a browser) is allowed;
//!   one with `Origin` must name the same host (and port) as its `Host` header.
//! * `["*"]`: any origin.
//! * a list: the `Origin` must equal one entry exactly (ASCII case-insensitive);
//!   requests without `Origin` are still allowed (they are not cross-site browser requests).

/// Whether a request with these `Origin` and `Host` headers may upgrade.
pub fn allowed(allowed_origins: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin.map(str::trim) else {
        return true;
    };
    if allowed_origins.iter().any(|a| a == "*") {
        return true;
    }
    if allowed_origins.is_empty() {
        // Same-origin: compare the origin's authority (scheme stripped) with Host.
        let authority = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .trim_end_matches('/');
        return host.is_some_and(|h| h.trim().eq_ignore_ascii_case(authority));
    }
    allowed_origins.iter().any(|a| {
        a.trim_end_matches('/')
            .eq_ignore_ascii_case(origin.trim_end_matches('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::allowed;

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
    }

    #[test]
    fn star_and_lists() {
        assert!(allowed(&list(&["*"]), Some("http://anything"), Some("h")));
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
        assert!(allowed(&l, None, Some("broker:8080")));
    }
}
