//! `GET /api/history/{channel}?since=N&limit=M` (SPEC §9): a channel's retained
//! publications after offset N, oldest first, at most M (default 100, at most
//! `api.max_batch`). It exposes channel data, so it answers like the publishing
//! endpoints: with the API key when one is configured, else to loopback peers only.

use super::{response, ApiError};
use crate::protocol::{json, timestamp};
use crate::publication::Kind;
use crate::shard::Shard;
use bytes::Bytes;

/// Publications returned when the request names no `limit`.
const DEFAULT_LIMIT: usize = 100;

/// Answers `GET /api/history/{channel}` for the decoded `channel` and raw `query`.
///
/// # Errors
/// 400 for a bad channel, `since` or `limit`; 404 when the channel keeps no history.
pub fn get(
    shard: &Shard,
    channel: &str,
    query: Option<&str>,
) -> Result<crate::server::http::HttpResponse, ApiError> {
    let broker = &shard.broker;
    super::publish::check_topic(shard, channel)?;
    let max = broker.config.api.max_batch;
    let (mut since, mut limit) = (0u64, DEFAULT_LIMIT.min(max));
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "since" => {
                since = value.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "since must be an offset, a whole number >= 0 (got {value:?})"
                    ))
                })?;
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be a whole number from 1 to {max} (api.max_batch; got {value:?})"
                        ))
                    })?;
            }
            _ => {}
        }
    }
    let history = &broker.history;
    let Some(rule) = history.rule_for(channel) else {
        return Err(ApiError {
            status: 404,
            reason: format!("channel {channel:?} keeps no history (no history rule matches it)"),
        });
    };
    // Attaching creates the channel's state if it has none, so the epoch reported here
    // is the one its first publication will carry.
    history.attach_synced(channel, rule);
    let Some(page) = history.page(channel, since, limit) else {
        return Err(ApiError {
            status: 404,
            reason: format!("channel {channel:?} has no history"),
        });
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"channel\":");
    json::write_str(&mut out, channel);
    out.extend_from_slice(b",\"epoch\":");
    json::write_str(&mut out, &page.epoch);
    out.extend_from_slice(
        format!(
            ",\"first\":{},\"top\":{},\"publications\":[",
            page.first, page.top
        )
        .as_bytes(),
    );
    for (i, p) in page.publications.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let kind = match &p.kind {
            Kind::Channel { gows_type } => gows_type.as_ref(),
            _ => crate::publication::EVENT,
        };
        out.extend_from_slice(format!("{{\"offset\":{},\"type\":", p.offset()).as_bytes());
        json::write_str(&mut out, kind);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(&p.data);
        if let Some(h) = &p.headers {
            out.extend_from_slice(b",\"headers\":");
            out.extend_from_slice(h);
        }
        out.extend_from_slice(b",\"timestamp\":\"");
        timestamp::write_rfc3339(&mut out, p.accepted_wall);
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}");
    Ok(response(200, "application/json", Bytes::from(out)))
}
