//! Publishing through HTTP: `/api/publish` (one object or a batch array),
//! `/api/broadcast` (go-ws SendEvent / SendError), and the process endpoints
//! `/api/process/{id}/output` and `/status` (go-ws SendProcessOutput / SendProcessStatus).
//!
//! A whole request is validated before anything is published, so a batch with one bad
//! item publishes nothing and says which item is wrong.

use super::{json_response, ApiError};
use crate::error::Reject;
use crate::protocol::json;
use crate::publication::{Kind, Publication};
use crate::server::http::HttpResponse;
use crate::shard::Shard;
use crate::topic;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;

/// How long an API publish waits for a full shard inbox before answering 503.
const INBOX_FULL_WAIT: Duration = Duration::from_secs(2);
/// The media type of JSON bodies.
const JSON: &str = "application/json";
/// Longest accepted gows `type` name.
const MAX_TYPE_LEN: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishItem<'a> {
    channel: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(borrow)]
    headers: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody<'a> {
    event: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputBody {
    line: Option<String>,
    lines: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
    #[serde(rename = "exitCode", default)]
    exit_code: Option<i64>,
}

/// Handles a POST under `/api/`.
pub async fn post(
    shard: &Shard,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    // What a page may POST anywhere without asking (form, text/plain) is never read
    // as JSON (api/access.rs).
    let accepted: &[&str] = if path.ends_with("/output") {
        &[JSON, "text/plain"]
    } else {
        &[JSON]
    };
    super::access::require_media_type(shard, content_type, accepted)?;
    // serde_json bounds its own recursion, but `RawValue` data is only scanned: apply
    // the same nesting limit clients get (+2 for the envelope object and batch array).
    if !json::depth_within(&body, shard.broker.config.client.max_json_depth + 2) {
        shard.broker.global.reject(Reject::TooDeep);
        return Err(ApiError::bad_request(Reject::TooDeep.to_string()));
    }
    let publications = match path {
        "/api/publish" => publish_items(shard, &body)?,
        "/api/broadcast" => vec![broadcast(&body)?],
        p => {
            let rest = p.trim_start_matches("/api/process/");
            if let Some(id) = rest.strip_suffix("/output") {
                process_output(shard, id, content_type, &body)?
            } else if let Some(id) = rest.strip_suffix("/status") {
                vec![process_status(shard, id, &body)?]
            } else {
                return Err(ApiError {
                    status: 404,
                    reason: format!("no such endpoint: {p}"),
                });
            }
        }
    };
    let count = publications.len();
    // All or nothing: a batch with one publication the cluster cannot carry is refused
    // before any of it is routed.
    for p in &publications {
        shard
            .broker
            .router
            .cluster_check_publication(p)
            .map_err(|reject| {
                shard.broker.global.reject(reject);
                ApiError {
                    status: reject.http_status(),
                    reason: reject.to_string(),
                }
            })?;
    }
    for p in publications {
        route_waiting(shard, Arc::new(p)).await?;
    }
    Ok(json_response(
        200,
        &serde_json::json!({ "ok": true, "published": count }),
    ))
}

/// Routes one publication, waiting briefly for full shard inboxes (back-pressure on the
/// HTTP publisher rather than a silent drop); 503 if they stay full.
async fn route_waiting(shard: &Shard, p: Arc<Publication>) -> Result<(), ApiError> {
    let mut full = shard.route(&p).full;
    let deadline = tokio::time::Instant::now() + INBOX_FULL_WAIT;
    while full != 0 {
        if tokio::time::Instant::now() >= deadline {
            shard.broker.global.reject(Reject::Overloaded);
            return Err(ApiError {
                status: 503,
                reason: Reject::Overloaded.to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        full = shard.broker.router.dispatch(&p, full).full;
    }
    Ok(())
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Validates a channel named in an API request (counted and answered with 400).
pub(super) fn check_topic(shard: &Shard, name: &str) -> Result<(), ApiError> {
    topic::validate_topic(name, shard.topic_limits()).map_err(|e| {
        let reject = Reject::InvalidTopic(e);
        shard.broker.global.reject(reject);
        ApiError::bad_request(reject.to_string())
    })
}

fn publish_items(shard: &Shard, body: &[u8]) -> Result<Vec<Publication>, ApiError> {
    let is_batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let items: Vec<PublishItem<'_>> = if is_batch {
        parse(body)?
    } else {
        vec![parse(body)?]
    };
    let max_batch = shard.broker.config.api.max_batch;
    if items.len() > max_batch {
        return Err(ApiError::bad_request(format!(
            "batch of {} publications is over api.max_batch ({max_batch})",
            items.len()
        )));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            publication_of(shard, item).map_err(|e| match is_batch {
                true => ApiError::bad_request(format!("item {i}: {}", e.reason)),
                false => e,
            })
        })
        .collect()
}

fn publication_of(shard: &Shard, item: PublishItem<'_>) -> Result<Publication, ApiError> {
    check_topic(shard, &item.channel)?;
    let gows_type = item.kind.unwrap_or_else(|| "event".to_owned());
    if gows_type.is_empty()
        || gows_type.len() > MAX_TYPE_LEN
        || gows_type.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "invalid type: must be 1 to {MAX_TYPE_LEN} characters without control characters"
        )));
    }
    let data = item.data.map_or(Ok(Bytes::from_static(b"null")), compact)?;
    // Kept as given, key order included (as a vws publisher's `h` is), only compacted.
    let headers = match item.headers {
        Some(h) if !json::is_object_of_strings(h.get()) => {
            return Err(ApiError::bad_request(
                "headers must be an object whose values are strings",
            ))
        }
        h => h.map(compact).transpose()?,
    };
    Ok(Publication::new(
        item.channel.into(),
        Kind::Channel {
            gows_type: crate::publication::gows_type(gows_type),
        },
        data,
        headers,
    ))
}

/// JSON given to the API as subscribers get it: compact, as docs/PROTOCOL.md §3 says
/// and as client publications are (whitespace outside strings dropped, so a
/// pretty-printed value never puts a raw newline in a frame; values, key order and
/// numbers kept as given).
fn compact(raw: &RawValue) -> Result<Bytes, ApiError> {
    let mut scratch = Vec::new();
    json::compact(raw.get(), &mut scratch)
        .map(Bytes::copy_from_slice)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn json_string(s: &str) -> Bytes {
    let mut out = Vec::with_capacity(s.len() + 2);
    json::write_str(&mut out, s);
    Bytes::from(out)
}

fn broadcast(body: &[u8]) -> Result<Publication, ApiError> {
    let b: BroadcastBody<'_> = parse(body)?;
    match (b.event, b.error) {
        (Some(event), None) if !event.is_empty() => Ok(Publication::new(
            "".into(),
            Kind::BroadcastEvent {
                event: event.into(),
            },
            b.data.map_or(Ok(Bytes::from_static(b"null")), compact)?,
            None,
        )),
        (None, Some(error)) => Ok(Publication::new(
            "".into(),
            Kind::BroadcastError,
            json_string(&error),
            None,
        )),
        _ => Err(ApiError::bad_request(
            "expected {\"event\": NAME, \"data\": ..} or {\"error\": TEXT}",
        )),
    }
}

fn process_channel(shard: &Shard, id: &str) -> Result<String, ApiError> {
    if id.is_empty() || id.contains('/') {
        return Err(ApiError::bad_request("invalid process id"));
    }
    let channel = format!("process:{}", super::percent_decode(id));
    check_topic(shard, &channel)?;
    Ok(channel)
}

fn process_message(channel: &str, gows_type: &'static str, data: Bytes) -> Publication {
    Publication::new(
        channel.into(),
        Kind::Channel {
            gows_type: gows_type.into(),
        },
        data,
        None,
    )
}

fn process_output(
    shard: &Shard,
    id: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Vec<Publication>, ApiError> {
    let channel = process_channel(shard, id)?;
    let lines: Vec<String> = if super::access::media_type(content_type) == JSON {
        let b: OutputBody = parse(body)?;
        match (b.line, b.lines) {
            (Some(line), None) => vec![line],
            (None, Some(lines)) => lines,
            _ => {
                return Err(ApiError::bad_request(
                    "expected {\"line\": TEXT} or {\"lines\": [TEXT, ..]}",
                ))
            }
        }
    } else {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("text body is not UTF-8"))?;
        text.lines().map(str::to_owned).collect()
    };
    let max_batch = shard.broker.config.api.max_batch.max(1);
    if lines.len() > max_batch.saturating_mul(100) {
        return Err(ApiError::bad_request("too many lines in one request"));
    }
    Ok(lines
        .iter()
        .map(|line| process_message(&channel, "process_output", json_string(line)))
        .collect())
}

fn process_status(shard: &Shard, id: &str, body: &[u8]) -> Result<Publication, ApiError> {
    let channel = process_channel(shard, id)?;
    let b: StatusBody = parse(body)?;
    if !matches!(
        b.status.as_str(),
        "running" | "exited" | "killed" | "failed"
    ) {
        return Err(ApiError::bad_request(
            "status must be one of running, exited, killed, failed",
        ));
    }
    // A process that is still running has no exit code yet: `running` carries none.
    let data = if b.status == "running" {
        serde_json::to_vec(&serde_json::json!({ "status": b.status }))
    } else {
        serde_json::to_vec(
            &serde_json::json!({ "status": b.status, "exitCode": b.exit_code.unwrap_or(0) }),
        )
    }
    .unwrap_or_default();
    Ok(process_message(
        &channel,
        "process_status",
        Bytes::from(data),
    ))
}
