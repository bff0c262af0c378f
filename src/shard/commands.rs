//! What a shard does with each client message: decode in the connection's dialect,
//! then subscribe / unsubscribe / publish / ping, answering with ack, nack, error or pong
//! as SPEC §3 and §4 say. Replies go to the connection's own outbox only.

use super::Shard;
use crate::conn::reader::{Flow, Incoming};
use crate::conn::Conn;
use crate::error::Reject;
use crate::protocol::{self, frame, gows, semstreams, vws, Command, Dialect, Since};
use crate::publication::{Kind, Publication};
use crate::shard::stats::{ShardStats, MESSAGE_KINDS};
use crate::topic;
use bytes::Bytes;
use std::sync::Arc;

impl Shard {
    /// Handles one complete message or control frame from connection `key`.
    pub(super) fn on_message(
        &self,
        conn: Option<&mut Conn>,
        key: usize,
        msg: Incoming<'_>,
    ) -> Flow {
        let Some(conn) = conn else {
            return Flow::Stop;
        };
        match msg {
            Incoming::Text(payload) => {
                ShardStats::add(&self.stats.messages_in, 1);
                self.on_text(conn, key, payload)
            }
            Incoming::Ping(payload) => self.reply(conn, frame::pong_frame(payload)),
            Incoming::Pong => Flow::Continue,
            Incoming::Close(code) => {
                // Echo the client's code (RFC 6455 §5.5.1); 1005 "no code" is never sent.
                let code = code.filter(|c| *c != 1005).unwrap_or(1000);
                self.close_conn(conn, code, "");
                conn.close_cause = crate::conn::CloseCause::Client;
                Flow::Stop
            }
        }
    }

    fn on_text(&self, conn: &mut Conn, key: usize, payload: &mut [u8]) -> Flow {
        if conn.detect {
            self.detect_dialect(conn, key, payload);
        }
        let max_depth = self.broker.config.client.max_json_depth;
        let decoded = protocol::decode(
            conn.dialect,
            payload,
            max_depth,
            &mut self.json_buffers.borrow_mut(),
        );
        let command = match decoded {
            Ok(c) => c,
            Err(failure) => {
                self.count_kind(MESSAGE_KINDS.len() - 1);
                if conn.dialect == Dialect::Semstreams {
                    return self.refuse_semstreams(conn, failure);
                }
                return self.refuse(conn, failure.reject, failure.id.as_deref());
            }
        };
        if conn.dialect == Dialect::Semstreams {
            return self.on_semstreams(conn, key, command);
        }
        self.count_kind(match &command {
            Command::Subscribe { .. } => 0,
            Command::Unsubscribe { .. } => 1,
            Command::UnsubscribeAll { .. } => 2,
            Command::Publish { .. } => 3,
            Command::Ping | Command::Request { .. } | Command::Signal(_) => 4,
        });
        match command {
            Command::Subscribe { topic, id, since } => {
                match self.subscribe(conn, key, topic, since.is_some()) {
                    Ok(added) => self.attach_history(conn, topic, since, added, id.as_deref()),
                    Err(reject) => self.refuse(conn, reject, id.as_deref()),
                }
            }
            Command::Unsubscribe { topic, id } => {
                let result = self.unsubscribe(conn, key, topic);
                self.answer(conn, result, id.as_deref())
            }
            Command::UnsubscribeAll { id } => {
                self.unsubscribe_all(conn, key);
                self.answer(conn, Ok(()), id.as_deref())
            }
            Command::Publish {
                topic,
                data,
                headers,
                id,
            } => {
                let result = self
                    .client_publish(conn, topic, data, headers, false, 0)
                    .map(|_| ());
                if result == Err(Reject::RateLimitAbuse) {
                    self.close_for(conn, Reject::RateLimitAbuse);
                    return Flow::Stop;
                }
                let flow = self.answer(conn, result, id.as_deref());
                if flow == Flow::Continue && self.broker.router.congested() {
                    // Leave the client's next messages unparsed until inboxes drain.
                    return Flow::Pause;
                }
                flow
            }
            Command::Ping => self.reply(conn, gows::render_pong()),
            // Only the SemStreams decoder makes these (handled above).
            Command::Request { .. } | Command::Signal(_) => {
                self.refuse(conn, Reject::UnknownType, None)
            }
        }
    }

    /// Counts a client message under `MESSAGE_KINDS[kind]`.
    fn count_kind(&self, kind: usize) {
        if let Some(c) = self.stats.messages_by_kind.get(kind) {
            ShardStats::add(c, 1);
        }
    }

    /// Ack (vws or SemStreams with an id) or refuse.
    fn answer(&self, conn: &mut Conn, result: Result<(), Reject>, id: Option<&str>) -> Flow {
        match result {
            Ok(()) => match (conn.dialect, id) {
                (Dialect::Vws, Some(id)) => self.reply(conn, vws::render_ack(id)),
                (Dialect::Semstreams, Some(id)) => {
                    let at = self.read_accepted().wall;
                    self.reply(conn, semstreams::render_ack(id, None, at))
                }
                _ => Flow::Continue,
            },
            Err(reject) => self.refuse(conn, reject, id),
        }
    }

    /// Counts a rejection and answers it in the connection's dialect; stays open.
    pub(super) fn refuse(&self, conn: &mut Conn, reject: Reject, id: Option<&str>) -> Flow {
        self.stats.reject(reject);
        let reply = match conn.dialect {
            Dialect::Gows => gows::render_error(&reject),
            Dialect::Vws => vws::render_nack(id, &reject),
            Dialect::Semstreams => {
                super::semstreams::bump(&self.stats.semstreams.nacks, 1);
                semstreams::render_nack(id, &reject)
            }
        };
        self.reply(conn, reply)
    }

    /// Queues a reply (ack, nack, error, pong). Replies are not dropped by `on_full`,
    /// but a client that keeps asking without reading cannot grow its queue forever:
    /// past twice the outbox bounds (after trying the socket) it is a slow consumer.
    pub(super) fn reply(&self, conn: &mut Conn, frame: Bytes) -> Flow {
        conn.outbox.push_unbounded(frame);
        let limits = &self.outbox_limits;
        let over = |c: &Conn| {
            c.outbox.len() > limits.frames.saturating_mul(2)
                || c.outbox.bytes() > limits.bytes.saturating_mul(2)
        };
        if over(conn) && (self.flush(conn).is_err() || over(conn)) {
            let dropped = conn.outbox.clear_unstarted() as u64;
            ShardStats::add(&self.stats.dropped_slow_consumer, dropped);
            ShardStats::add(&self.stats.slow_disconnects, 1);
            self.close_for(conn, Reject::SlowConsumer);
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// Subscribes `conn` to `pattern`; `Ok(false)` when it already was.
    pub(super) fn subscribe(
        &self,
        conn: &mut Conn,
        key: usize,
        pattern: &str,
        resume: bool,
    ) -> Result<bool, Reject> {
        let wildcard = topic::validate_pattern(pattern, self.topic_limits())
            .map_err(Reject::InvalidPattern)?;
        if wildcard && resume {
            return Err(Reject::RecoveryNeedsExactChannel);
        }
        if conn.subs.iter().any(|s| &**s == pattern) {
            return Ok(false); // already subscribed: idempotent, as in MQTT
        }
        if !self.broker.policies.may_subscribe(conn.identity(), pattern) {
            return Err(Reject::SubscribeNotAllowed);
        }
        if conn.subs.len() >= self.broker.config.client.max_subscriptions {
            return Err(Reject::TooManySubscriptions);
        }
        let max_wildcards = self.broker.config.client.max_wildcard_subscriptions;
        if wildcard && topic::wildcard_count(&conn.subs) >= max_wildcards {
            return Err(Reject::TooManyWildcards);
        }
        self.allow_sub_change(conn)?;
        self.broker.router.cluster_check_pattern(pattern)?;
        if conn.subs.len() < 4 {
            // Most connections hold a few subscriptions: exact capacity, not Vec's 4 slots.
            conn.subs.reserve_exact(1);
        }
        conn.subs.push(pattern.into());
        ShardStats::add(&self.stats.subscriptions, 1);
        if self.index.borrow_mut().insert(pattern, key as u32) {
            // Before the ack goes out, so a publish made after the ack finds this shard.
            self.broker.router.add_interest(self.id, pattern);
        }
        Ok(true)
    }

    /// After a successful subscribe: on a history channel, places the connection's
    /// cursor (from its position, or where a plain subscribe starts) and answers with
    /// the channel's position (vws ack with `o`/`e`/`r`, gows `subscribed` for a resume);
    /// the replay itself is queued by the pump as the outbox has room. Other channels
    /// get the plain answer. `added` is false for a repeated subscribe, which keeps its
    /// cursor unless it brings a position.
    pub(super) fn attach_history(
        &self,
        conn: &mut Conn,
        channel: &str,
        since: Option<Since>,
        added: bool,
        id: Option<&str>,
    ) -> Flow {
        let history = &self.broker.history;
        let rule = match &since {
            // `subscribe` refused positions on patterns already.
            Some(_) => history.rule_for(channel),
            None if channel.contains(['+', '#']) => None,
            None => history.rule_for(channel),
        };
        let Some(rule) = rule else {
            if since.is_none() {
                return self.answer(conn, Ok(()), id);
            }
            // A resume on a channel that keeps no history: nothing can be recovered.
            history.stats.count_resume(false);
            return match (conn.dialect, id) {
                (Dialect::Vws, Some(id)) => {
                    self.reply(conn, vws::render_ack_position(id, 0, "", Some(false)))
                }
                (Dialect::Vws, None) => Flow::Continue,
                (Dialect::Gows, _) => {
                    self.reply(conn, gows::render_subscribed(channel, 0, "", false))
                }
                (Dialect::Semstreams, Some(id)) => {
                    self.reply(conn, semstreams_position(id, channel, 0, "", Some(false)))
                }
                (Dialect::Semstreams, None) => Flow::Continue,
            };
        };
        let at = history.attach_synced(channel, rule);
        let cursors = conn.cursors.get_or_insert_with(Box::default);
        let recovered = match &since {
            Some(s) => {
                let start = at.resume(s.offset, s.epoch.as_deref());
                history.stats.count_resume(start.recovered);
                cursors.set(channel, start.next, at.top);
                Some(start.recovered)
            }
            None => {
                if added || cursors.get_mut(channel).is_none() {
                    cursors.set(channel, at.plain(), at.top);
                }
                None
            }
        };
        match (conn.dialect, id, recovered) {
            (Dialect::Vws, Some(id), r) => {
                self.reply(conn, vws::render_ack_position(id, at.top, &at.epoch, r))
            }
            (Dialect::Gows, _, Some(r)) => {
                self.reply(conn, gows::render_subscribed(channel, at.top, &at.epoch, r))
            }
            (Dialect::Semstreams, Some(id), r) => {
                self.reply(conn, semstreams_position(id, channel, at.top, &at.epoch, r))
            }
            _ => Flow::Continue,
        }
    }

    fn unsubscribe(&self, conn: &mut Conn, key: usize, pattern: &str) -> Result<(), Reject> {
        topic::validate_pattern(pattern, self.topic_limits()).map_err(Reject::InvalidPattern)?;
        if let Some(pos) = conn.subs.iter().position(|s| &**s == pattern) {
            self.allow_sub_change(conn)?;
            conn.subs.swap_remove(pos);
            if conn.cursors.as_mut().is_some_and(|c| c.remove(pattern)) {
                conn.cursors = None;
            }
            ShardStats::sub(&self.stats.subscriptions, 1);
            self.unindex(&mut self.index.borrow_mut(), pattern, key);
        }
        Ok(())
    }

    /// Takes a token from the connection's subscription-change bucket.
    fn allow_sub_change(&self, conn: &mut Conn) -> Result<(), Reject> {
        let client = &self.broker.config.client;
        let now = self.now_ms();
        if conn
            .sub_rate
            .allow(client.subscribe_rate, client.subscribe_burst, now)
        {
            Ok(())
        } else {
            Err(Reject::SubscribeRateLimited)
        }
    }

    fn unsubscribe_all(&self, conn: &mut Conn, key: usize) {
        let mut index = self.index.borrow_mut();
        for pattern in conn.subs.drain(..) {
            ShardStats::sub(&self.stats.subscriptions, 1);
            self.unindex(&mut index, &pattern, key);
        }
        conn.subs = Vec::new();
        conn.cursors = None;
    }

    /// Publishes a client's message; returns its history offset (0 = none). `ingest`:
    /// the topic is a dialect's own ingest channel, open unless a policy rule closes it.
    /// `origin`: the publication's [`Publication::origin`] (0 = not tracked).
    pub(super) fn client_publish(
        &self,
        conn: &mut Conn,
        topic_name: &str,
        data: Bytes,
        headers: Option<Bytes>,
        ingest: bool,
        origin: u64,
    ) -> Result<u64, Reject> {
        let client = &self.broker.config.client;
        topic::validate_topic(topic_name, self.topic_limits()).map_err(Reject::InvalidTopic)?;
        let policies = &self.broker.policies;
        let allowed = if ingest {
            policies.may_ingest(conn.identity(), topic_name)
        } else {
            policies.may_publish(conn.identity(), topic_name)
        };
        if !allowed {
            return Err(Reject::PublishNotAllowed);
        }
        let read_at = self.read_accepted();
        if !conn.rate.allow(
            client.publish_rate,
            client.publish_burst,
            self.ms_at(read_at.at),
        ) {
            if conn.rate.strikes >= client.rate_limit_strikes {
                return Err(Reject::RateLimitAbuse);
            }
            return Err(Reject::RateLimited);
        }
        let mut publication = Publication::accepted(
            topic_name.into(),
            Kind::Channel {
                gows_type: std::borrow::Cow::Borrowed(crate::publication::EVENT),
            },
            data,
            headers,
            read_at,
        );
        publication.origin = origin;
        let publication = Arc::new(publication);
        self.broker.router.cluster_check_publication(&publication)?;
        if self.route(&publication).full != 0 {
            return Err(Reject::Overloaded);
        }
        Ok(publication.offset())
    }
}

/// The SemStreams `reply` to a `history` request: where the channel stands
/// (`{"channel","top","epoch","recovered"}`), before the replayed `data` follows.
fn semstreams_position(
    id: &str,
    channel: &str,
    top: u64,
    epoch: &str,
    recovered: Option<bool>,
) -> Bytes {
    semstreams::render_reply(
        id,
        &serde_json::json!({
            "channel": channel,
            "top": top,
            "epoch": epoch,
            "recovered": recovered,
        }),
    )
}
