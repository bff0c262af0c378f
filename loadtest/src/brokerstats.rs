//! shardcast's own counters, read from its `/api/stats` over plain HTTP/1.1: the write
//! counters, so a run can report how many frames each write carried (the batching under
//! load), and the WebSocket connection count, so the abuse soak can tell when the broker
//! has let go of its attackers; and from `/metrics` the SemStreams counters of `block`
//! and `on_full` (blocked reads, dropped frames). Other brokers have no such endpoints;
//! the figures are then absent.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Frames written and writes made, summed over the shards.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Writes {
    pub frames: u64,
    pub writes: u64,
}

/// Fetches `/api/stats` from `addr`; `None` when it cannot be read or has no shard figures.
pub fn fetch(addr: SocketAddr) -> Option<Writes> {
    parse(&stats_body(addr)?)
}

/// WebSocket connections the broker holds (`clients` in `/api/stats`); `None` when it
/// cannot be read.
pub fn clients(addr: SocketAddr) -> Option<u64> {
    let v: Value = serde_json::from_slice(&stats_body(addr)?).ok()?;
    v.get("clients")?.as_u64()
}

/// Publications sent to subscribers from history since the broker started
/// (`history.replayed` in `/api/stats`, `shardcast_history_replayed_total`); `None` when
/// it cannot be read or the broker has no history.
pub fn history_replayed(addr: SocketAddr) -> Option<u64> {
    let v: Value = serde_json::from_slice(&stats_body(addr)?).ok()?;
    v.pointer("/history/replayed")?.as_u64()
}

/// SemStreams counters from `/metrics` (docs/PROTOCOL.md §11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Semstreams {
    /// `shardcast_semstreams_read_blocks_total`: times a peer's socket was left unread.
    pub read_blocks: u64,
    /// `shardcast_semstreams_messages_dropped_total`, all reasons.
    pub dropped: u64,
}

/// Fetches the SemStreams counters from `/metrics`; `None` when it cannot be read or
/// has none of them.
pub fn semstreams(addr: SocketAddr) -> Option<Semstreams> {
    parse_semstreams(std::str::from_utf8(&body(addr, "/metrics")?).ok()?)
}

fn parse_semstreams(text: &str) -> Option<Semstreams> {
    let (mut found, mut out) = (false, Semstreams::default());
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let metric = name.split('{').next().unwrap_or(name);
        let slot = match metric {
            "shardcast_semstreams_read_blocks_total" => &mut out.read_blocks,
            "shardcast_semstreams_messages_dropped_total" => &mut out.dropped,
            _ => continue,
        };
        found = true;
        *slot += value as u64;
    }
    found.then_some(out)
}

/// The body of `GET /api/stats`.
fn stats_body(addr: SocketAddr) -> Option<Vec<u8>> {
    body(addr, "/api/stats")
}

/// The body of `GET path`.
fn body(addr: SocketAddr, path: &str) -> Option<Vec<u8>> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).ok()?;
    let body = response.get(memchr::memmem::find(&response, b"\r\n\r\n")? + 4..)?;
    Some(body.to_vec())
}

fn parse(body: &[u8]) -> Option<Writes> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let shards = v.get("shards")?.as_array()?;
    let sum = |key: &str| shards.iter().filter_map(|s| s.get(key)?.as_u64()).sum();
    Some(Writes {
        frames: sum("frames_written"),
        writes: sum("writes"),
    })
}

/// Frames per write between two readings.
pub fn frames_per_write(before: Option<Writes>, after: Option<Writes>) -> Option<f64> {
    let (b, a) = (before?, after?);
    let writes = a.writes.checked_sub(b.writes)?;
    (writes > 0).then(|| a.frames.saturating_sub(b.frames) as f64 / writes as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_shards_and_divides_deltas() {
        let body =
            br#"{"shards":[{"frames_written":10,"writes":2},{"frames_written":30,"writes":3}]}"#;
        let w = parse(body);
        assert_eq!(
            w,
            Some(Writes {
                frames: 40,
                writes: 5
            })
        );
        let later = Some(Writes {
            frames: 140,
            writes: 30,
        });
        assert_eq!(frames_per_write(w, later), Some(4.0));
        assert_eq!(frames_per_write(w, w), None);
        assert_eq!(parse(b"not json"), None);
    }

    #[test]
    fn semstreams_counters_sum_their_labels() {
        let text = "# HELP x\n\
            shardcast_semstreams_read_blocks_total 7\n\
            shardcast_semstreams_messages_dropped_total{reason=\"queue_full\"} 3\n\
            shardcast_semstreams_messages_dropped_total{reason=\"rate_limit\"} 2\n\
            shardcast_semstreams_slow_total 9\n";
        assert_eq!(
            parse_semstreams(text),
            Some(Semstreams {
                read_blocks: 7,
                dropped: 5
            })
        );
        assert_eq!(parse_semstreams("shardcast_clients 1\n"), None);
    }
}
