//! `/api/stats` and `/api/channels[/{name}]`.
//!
//! Stats sum the shards' counter blocks; channel lists ask every shard for its local
//! index over its inbox (no shared channel table to lock) and merge the answers.

use super::{json_response, ApiError};
use crate::broker::Broker;
use crate::server::http::HttpResponse;
use crate::shard::inbox::ShardMsg;
use crate::shard::stats::ShardStats;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Channels listed in `top_channels`.
const TOP_CHANNELS: usize = 10;

/// Who reads a stats object, which decides the channel names it may show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// A caller of the protected API (key or trusted loopback): every channel.
    Operator,
    /// Every `$sys/stats` subscriber, whatever its policy: only channels that every
    /// possible reader may subscribe to (see [`visible_to_every_reader`]).
    Subscribers,
}

/// `GET /api/stats`.
pub async fn stats(broker: &Broker) -> Result<HttpResponse, ApiError> {
    Ok(json_response(
        200,
        &snapshot(broker, Readers::Operator).await?,
    ))
}

/// Whether every client that may read `$sys/stats` may also subscribe to `channel`, so
/// naming it in `top_channels` tells nobody what their policy hides (issue 16, finding
/// 7). A rule that admits an anonymous client admits everyone; a JWT may carry a
/// subscribe grant narrower than the rules, and the frame is the same for every
/// subscriber, so with JWT grants enabled no channel is named.
pub fn visible_to_every_reader(broker: &Broker, channel: &str) -> bool {
    let auth = &broker.config.auth;
    let grants = auth.kind == crate::config::AuthType::Jwt && !auth.jwt_subscribe_claim.is_empty();
    !grants && broker.policies.may_subscribe(None, channel)
}

/// The stats object of `GET /api/stats` and `$sys/stats`: totals, rates over the last
/// second, delivery latency, per-shard figures and the channels with most subscribers
/// (for `Readers::Subscribers`, only those every reader may see).
///
/// # Errors
/// A shard did not answer the channel query in time.
pub async fn snapshot(broker: &Broker, readers: Readers) -> Result<serde_json::Value, ApiError> {
    let shards: Vec<_> = broker
        .shard_stats
        .iter()
        .enumerate()
        .map(|(id, s)| {
            json!({
                "id": id,
                "connections": ShardStats::get(&s.connections_active),
                "subscriptions": ShardStats::get(&s.subscriptions),
                "queued_frames": ShardStats::get(&s.queue_frames),
                "delivered": ShardStats::get(&s.delivered),
                "writes": ShardStats::get(&s.writes),
                "frames_written": ShardStats::get(&s.frames_written),
            })
        })
        .collect();
    // The broker's own topics (`$sys/stats`, the dashboard's) are not channels.
    let counts: Vec<(String, usize)> = channel_counts(broker)
        .await?
        .into_iter()
        .filter(|(name, _)| !crate::topic::is_broker_topic(name))
        .collect();
    let channel_count = counts.len();
    let mut top: Vec<(String, usize)> = counts
        .into_iter()
        .filter(|(name, _)| readers == Readers::Operator || visible_to_every_reader(broker, name))
        .collect();
    // Most subscribers first; ties by name so the list is stable from tick to tick.
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(TOP_CHANNELS);
    let top: Vec<_> = top
        .into_iter()
        .map(|(channel, subscribers)| json!({ "channel": channel, "subscribers": subscribers }))
        .collect();
    let rates = *broker.rates.lock();
    let latency = rates.latency;
    Ok(json!({
        "clients": broker.sum(|s| &s.connections_active),
        "channels": channel_count,
        "shards": shards,
        "messages": {
            "received": broker.sum(|s| &s.messages_in),
            "published": broker.sum(|s| &s.published),
            "delivered": broker.sum(|s| &s.delivered),
            "dropped": broker.sum(|s| &s.dropped_queue_full),
            "slow_disconnects": broker.sum(|s| &s.slow_disconnects),
        },
        "rates": {
            "received_per_s": rates.received_per_s,
            "published_per_s": rates.published_per_s,
            "delivered_per_s": rates.delivered_per_s,
        },
        "latency_us": {
            "p50": latency.p50, "p99": latency.p99, "p999": latency.p999, "max": latency.max,
            "count": latency.count,
        },
        "top_channels": top,
        "history": history(broker),
        "links": broker.links.links.iter().map(|l| l.summary()).collect::<Vec<_>>(),
        "uptime_s": broker.started.elapsed().as_secs(),
    }))
}

/// History totals (SPEC §9): what is retained, what was dropped and why, replays and
/// how resumes went.
fn history(broker: &Broker) -> serde_json::Value {
    let h = &broker.history.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let evicted: serde_json::Map<String, serde_json::Value> = crate::history::Eviction::LABELS
        .iter()
        .zip(&h.evicted)
        .map(|(label, c)| ((*label).to_owned(), get(c).into()))
        .collect();
    json!({
        "channels": get(&h.channels),
        "retained": get(&h.retained),
        "retained_bytes": get(&h.retained_bytes),
        "max_bytes": broker.config.history.max_bytes,
        "appended": get(&h.appended),
        "replayed": get(&h.replayed),
        "evicted": evicted,
        "resumes": { "recovered": get(&h.recovered[1]), "not_recovered": get(&h.recovered[0]) },
    })
}

/// Asks every shard the same question and collects the answers.
async fn ask_shards<T>(
    broker: &Broker,
    ask: impl Fn(tokio::sync::oneshot::Sender<T>) -> ShardMsg,
) -> Result<Vec<T>, ApiError> {
    let mut replies = Vec::new();
    for id in 0..broker.router.shard_count() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some(inbox) = broker.router.inbox(id) {
            if inbox.try_send(ask(tx)).is_ok() {
                replies.push(rx);
            }
        }
    }
    let mut answers = Vec::with_capacity(replies.len());
    for rx in replies {
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(answer)) => answers.push(answer),
            _ => {
                return Err(ApiError {
                    status: 503,
                    reason: "a shard did not answer in time".into(),
                })
            }
        }
    }
    Ok(answers)
}

/// How many connections a publication on `topic` reaches, over every shard.
///
/// # Errors
/// A shard did not answer in time.
pub async fn reach(broker: &Broker, topic: &str) -> Result<usize, ApiError> {
    Ok(
        ask_shards(broker, |tx| ShardMsg::Subscribers(topic.into(), tx))
            .await?
            .into_iter()
            .sum(),
    )
}

/// Merged subscription (pattern) -> subscriber counts from every shard.
async fn channel_counts(broker: &Broker) -> Result<BTreeMap<String, usize>, ApiError> {
    let mut merged = BTreeMap::new();
    for list in ask_shards(broker, ShardMsg::Channels).await? {
        for (name, n) in list {
            *merged.entry(name).or_insert(0) += n;
        }
    }
    Ok(merged)
}

/// `GET /api/channels` (every subscribed pattern and its subscriber count) and
/// `GET /api/channels/{name}`: the connections a publication on `name` reaches, through
/// exact and wildcard subscriptions alike (`sensors/#`, `sensors/+/temp`), each once.
pub async fn channels(broker: &Broker, name: Option<&str>) -> Result<HttpResponse, ApiError> {
    if let Some(name) = name {
        let reached = reach(broker, name).await?;
        return Ok(json_response(
            200,
            &json!({ "channel": name, "subscribers": reached }),
        ));
    }
    let list: Vec<_> = channel_counts(broker)
        .await?
        .iter()
        .filter(|(c, _)| !crate::topic::is_broker_topic(c))
        .map(|(c, n)| json!({ "channel": c, "subscribers": n }))
        .collect();
    Ok(json_response(
        200,
        &json!({ "channels": list, "count": list.len() }),
    ))
}
