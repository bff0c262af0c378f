//! Loop prevention across links: the `sc-via` header.
//!
//! A publication that crosses a link carries the ids of the nodes it was published on
//! before, oldest first, comma-separated (`"sc-via":"edge1,cloud"`). A link never sends a
//! publication to a node already in that list (so nothing goes back over the link it came
//! from), a pull link drops what lists this node (its own publication coming back), and a
//! publication that crossed `max_hops` links stops.

use std::collections::BTreeMap;

/// The header carrying the node ids a publication went through.
pub const HEADER: &str = "sc-via";

/// Headers of a publication as a map (`headers` is a compact JSON object of strings).
pub fn parse(headers: Option<&[u8]>) -> BTreeMap<String, String> {
    headers
        .and_then(|h| serde_json::from_slice(h).ok())
        .unwrap_or_default()
}

/// The node ids in `headers`' `sc-via`, oldest first.
pub fn nodes(headers: &BTreeMap<String, String>) -> Vec<&str> {
    headers
        .get(HEADER)
        .map(|v| v.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

/// Whether a raw headers object may carry a via list (a cheap test before parsing).
pub fn may_have(headers: Option<&[u8]>) -> bool {
    headers.is_some_and(|h| memchr::memmem::find(h, HEADER.as_bytes()).is_some())
}

/// Appends `node` to the via list.
pub fn stamp(headers: &mut BTreeMap<String, String>, node: &str) {
    let list = match headers.get(HEADER) {
        Some(v) if !v.is_empty() => format!("{v},{node}"),
        _ => node.to_owned(),
    };
    headers.insert(HEADER.to_owned(), list);
}

/// Why a publication does not cross a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It was already on the node on the other side (or, pulled, on this one).
    Loop,
    /// It crossed `max_hops` links already.
    Hops,
}

/// Whether a publication with `via` may cross one more link to `to` (pushing: `to` is the
/// upstream's id when known; pulling: `to` is this node).
pub fn check(via: &[&str], to: Option<&str>, max_hops: u32) -> Result<(), Stop> {
    if to.is_some_and(|t| via.contains(&t)) {
        return Err(Stop::Loop);
    }
    if via.len() >= max_hops as usize {
        return Err(Stop::Hops);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_appends_and_check_stops_loops_and_long_paths() {
        let mut h = parse(Some(br#"{"a":"1"}"#));
        assert!(nodes(&h).is_empty());
        stamp(&mut h, "edge");
        stamp(&mut h, "cloud");
        assert_eq!(nodes(&h), ["edge", "cloud"]);
        assert_eq!(h.get("a").map(String::as_str), Some("1"));
        let via = nodes(&h);
        assert_eq!(check(&via, Some("edge"), 8), Err(Stop::Loop));
        assert_eq!(check(&via, Some("other"), 8), Ok(()));
        assert_eq!(check(&via, None, 2), Err(Stop::Hops));
        assert_eq!(check(&via, None, 3), Ok(()));
        assert!(may_have(Some(br#"{"sc-via":"x"}"#)));
        assert!(!may_have(Some(br#"{"a":"1"}"#)));
        assert!(parse(Some(b"not json")).is_empty());
    }
}
