//! Durable history on NATS JetStream (`[cluster] history = "jetstream"`, SPEC §12).
//!
//! ```text
//!  local publish on a history channel ─► Handle ─► task: append to the stream
//!      (`<prefix>.h.<channel>`, offset header, expected last subject sequence),
//!      retried on a wrong-last answer ─► this node's store (append_at) + shards
//!      └─► core NATS announcement on `<prefix>.t.<channel>` with offset + stream seq
//!  link ─► Handle::inbound ─► task: gap? read the missing offsets from the stream,
//!      then append_at in offset order ─► shards
//!  subscribe / resume / GET /api/history ─► History::attach_synced ─► Source::sync:
//!      the task reads what this node lacks from the stream (bounded wait)
//! ```
//!
//! Offsets are assigned where a publication comes in, by optimistic concurrency on the
//! stream: the publishing node caches the stream sequence and offset of each channel's
//! last message and appends `offset + 1` on the condition that the channel's last stream
//! sequence is still the cached one; JetStream refuses the append otherwise, and the node
//! reads the real last message and retries. Only acknowledged appends are announced on
//! core NATS, so a refused attempt is never delivered. The store of each node is a copy:
//! it takes offsets in order only, and fills gaps from the stream before delivering.
//!
//! The epoch of every channel is derived from the stream's name and creation time, so
//! every node agrees on it and restarts (of nodes or of nats-server with its store
//! directory) keep it; it changes only when the stream is made anew (offsets restart).
//! The stream has no age limit and refuses new publications when full (`DiscardNew`),
//! so a channel's last message is never dropped and its offsets never restart.

use super::envelope::{self, Origin};
use super::inbound;
use super::options::{MacKey, MAC_HEADER};
use super::subject;
use crate::broker::Broker;
use crate::history::{History, RuleId, Source};
use crate::publication::Publication;
use crate::router::MatchCache;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use shardcast_client::Backoff;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The header holding a publication's offset (stream messages and announcements).
pub const OFFSET_HEADER: &str = "Shardcast-Offset";
/// The header of an announcement holding the stream sequence of its message.
pub const SEQ_HEADER: &str = "Shardcast-Seq";
/// Jobs waiting for the task at most; past it publications are counted as dropped.
const QUEUE: usize = 65_536;
/// Waits between appends refused because another node appended first: full jitter from
/// 1 ms up to 50 ms, so racing nodes fall out of step. The retries of one publication
/// end at `cluster.jetstream_timeout`, not after a count: a node whose every append
/// loses to another node's burst gets its turn once the burst ends.
const CONFLICT_BACKOFF: shardcast_client::BackoffConfig = shardcast_client::BackoffConfig {
    initial_interval: Duration::from_millis(1),
    max_interval: Duration::from_millis(50),
    multiplier: 2.0,
    max_retries: 0,
};
/// How often the task checks (and re-creates) the stream while it is unavailable.
const RETRY: Duration = Duration::from_secs(1);
/// How long a delivery waits for full shard inboxes.
const INBOX_FULL_WAIT: Duration = Duration::from_millis(100);

/// JetStream counters (`shardcast_jetstream_*`, `/healthz` details).
#[derive(Debug, Default)]
pub struct JetStreamStats {
    /// The stream is in place and answering.
    pub up: AtomicBool,
    /// Publications appended to the stream by this node.
    pub appended: AtomicU64,
    /// Appends refused because another node appended to the channel first (then retried).
    pub conflicts: AtomicU64,
    /// Publications read from the stream (gap fills, catch-ups before a subscribe).
    pub read: AtomicU64,
    /// Gaps that could not be filled from the stream (delivered with the hole visible).
    pub holes: AtomicU64,
    /// History-channel publications delivered live without an offset because the stream
    /// was unavailable (or refused them, e.g. full).
    pub unrecorded: AtomicU64,
    /// Subscribes answered without the stream (it was unavailable or slow).
    pub sync_failed: AtomicU64,
    /// Publications dropped because the queue to the JetStream task was full.
    pub dropped: AtomicU64,
}

impl JetStreamStats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

enum Job {
    /// A publication accepted on this node.
    Publish(Arc<Publication>, RuleId),
    /// A publication from another node, with its offset and stream sequence if it has them.
    Live(Arc<Publication>, RuleId, Option<(u64, u64)>),
    /// Bring a channel up to date, then answer whether the stream could be read.
    Sync(Box<str>, RuleId, std::sync::mpsc::SyncSender<bool>),
}

/// The router's and the link's way to the JetStream task: cheap, never blocks (except
/// [`Source::sync`], bounded by `cluster.jetstream_timeout`).
#[derive(Clone)]
pub struct Handle {
    jobs: mpsc::Sender<Job>,
    history: Arc<History>,
    /// Counters.
    pub stats: Arc<JetStreamStats>,
    timeout: Duration,
}

impl Handle {
    /// Takes a locally accepted publication on a history channel; false for anything
    /// else (broadcasts, other channels), which goes the usual way.
    pub fn publish(&self, p: &Arc<Publication>) -> bool {
        let Some(rule) = self.rule(p) else {
            return false;
        };
        if self.jobs.try_send(Job::Publish(p.clone(), rule)).is_err() {
            JetStreamStats::add(&self.stats.dropped, 1);
        }
        true
    }

    /// Takes a publication from another node on a history channel (with the offset and
    /// sequence headers of `message`); false for anything else.
    pub fn inbound(&self, p: &Arc<Publication>, message: &async_nats::Message) -> bool {
        let Some(rule) = self.rule(p) else {
            return false;
        };
        let header = |name: &str| -> Option<u64> {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .and_then(|v| v.as_str().parse().ok())
        };
        let at = header(OFFSET_HEADER).map(|o| (o, header(SEQ_HEADER).unwrap_or(0)));
        if self.jobs.try_send(Job::Live(p.clone(), rule, at)).is_err() {
            JetStreamStats::add(&self.stats.dropped, 1);
        }
        true
    }

    fn rule(&self, p: &Publication) -> Option<RuleId> {
        if p.is_broadcast() || crate::topic::is_broker_topic(&p.topic) {
            return None;
        }
        self.history.rule_for(&p.topic)
    }
}

impl Source for Handle {
    fn sync(&self, _history: &History, channel: &str, rule: RuleId) -> bool {
        if !self.stats.up.load(Ordering::Acquire) {
            JetStreamStats::add(&self.stats.sync_failed, 1);
            return false;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let ok = self
            .jobs
            .try_send(Job::Sync(channel.into(), rule, tx))
            .is_ok()
            && rx.recv_timeout(self.timeout).unwrap_or(false);
        if !ok {
            JetStreamStats::add(&self.stats.sync_failed, 1);
        }
        ok
    }
}

/// The task's settings, made at start and moved to its thread.
pub struct Task {
    url: String,
    options: async_nats::ConnectOptions,
    prefix: String,
    stream: String,
    max_bytes: u64,
    max_per_subject: usize,
    timeout: Duration,
    node_id: String,
    mac: Option<MacKey>,
    topics: crate::topic::Limits,
    history: Arc<History>,
    stats: Arc<JetStreamStats>,
    jobs: mpsc::Receiver<Job>,
}

/// Settings of [`channel`].
pub struct Settings {
    /// `cluster.nats_url`.
    pub url: String,
    /// A second login (the task has its own connection).
    pub options: async_nats::ConnectOptions,
    /// `cluster.subject_prefix`.
    pub prefix: String,
    /// `cluster.jetstream_stream`.
    pub stream: String,
    /// `cluster.jetstream_max_bytes`.
    pub max_bytes: u64,
    /// `cluster.jetstream_timeout`.
    pub timeout: Duration,
    /// This node's id.
    pub node_id: String,
    /// The envelope MAC key.
    pub mac: Option<MacKey>,
    /// Channel limits.
    pub topics: crate::topic::Limits,
}

/// The handle and the task for `history`, which is made shared (its source is the stream).
pub fn channel(s: Settings, history: &Arc<History>) -> (Handle, Task) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let stats = Arc::new(JetStreamStats::default());
    let handle = Handle {
        jobs: tx,
        history: history.clone(),
        stats: stats.clone(),
        timeout: s.timeout,
    };
    history.set_source(Arc::new(handle.clone()));
    let task = Task {
        url: s.url,
        options: s.options,
        prefix: s.prefix,
        stream: s.stream,
        max_bytes: s.max_bytes,
        max_per_subject: history.max_rule_size(),
        timeout: s.timeout,
        node_id: s.node_id,
        mac: s.mac,
        topics: s.topics,
        history: history.clone(),
        stats,
        jobs: rx,
    };
    (handle, task)
}

/// The stream subject of channel `topic` (`<prefix>.h.…`), beside its live subject.
fn stream_subject(prefix: &str, live: &str) -> Option<String> {
    let rest = live.strip_prefix(prefix)?.strip_prefix(".t.")?;
    Some(format!("{prefix}.h.{rest}"))
}

/// The stream's epoch seed: its name and creation time.
fn seed(name: &str, created_ns: i128) -> u64 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(name.as_bytes());
    h.update(created_ns.to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    for (x, y) in b.iter_mut().zip(d.iter()) {
        *x = *y;
    }
    u64::from_be_bytes(b)
}

/// A channel's last message in the stream: its stream sequence and offset.
#[derive(Clone, Copy, Default)]
struct Last {
    seq: u64,
    offset: u64,
}

struct Running {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: Option<stream::Stream>,
    /// Per channel: the last message this node knows of (for the append condition and
    /// as the start of reads).
    last: HashMap<Box<str>, Last>,
    instance: u64,
    seq: u64,
    cache: MatchCache,
}

impl Task {
    /// Runs the task on its own thread and runtime (like the link).
    ///
    /// # Errors
    /// The thread or its runtime could not be started.
    pub fn start(self, broker: Weak<Broker>) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("cluster-jetstream".into())
            .spawn(move || runtime.block_on(self.run(broker)))?;
        Ok(())
    }

    async fn run(mut self, broker: Weak<Broker>) {
        let options = std::mem::take(&mut self.options)
            .name(format!("shardcast {} jetstream", self.node_id))
            .retry_on_initial_connect()
            .max_reconnects(None);
        let servers: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let client = match options.connect(servers).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(url = %self.url, error = %e, "cluster: JetStream history: cannot use NATS");
                return;
            }
        };
        let mut js = jetstream::new(client.clone());
        js.set_timeout(self.timeout);
        let mut r = Running {
            client,
            js,
            stream: None,
            last: HashMap::new(),
            instance: super::draw(),
            seq: 0,
            cache: MatchCache::default(),
        };
        let mut tick = tokio::time::interval(RETRY);
        loop {
            tokio::select! {
                job = self.jobs.recv() => {
                    let Some(job) = job else { break };
                    let Some(broker) = broker.upgrade() else { break };
                    self.job(&mut r, &broker, job).await;
                }
                _ = tick.tick() => {
                    if broker.strong_count() == 0 {
                        break;
                    }
                    let connected = r.client.connection_state()
                        == async_nats::connection::State::Connected;
                    if r.stream.is_none() || !connected {
                        self.set_up(&mut r, connected).await;
                    }
                }
            }
        }
        self.stats.up.store(false, Ordering::Release);
    }

    fn down(&self, r: &mut Running, why: &str) {
        r.stream = None;
        r.last.clear();
        if self.stats.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(stream = %self.stream, error = %why, "cluster: JetStream history unavailable; live delivery goes on without offsets");
        }
    }

    /// Creates or updates the stream; marks history available when it answers.
    async fn set_up(&self, r: &mut Running, connected: bool) {
        if !connected {
            self.down(r, "NATS not connected");
            return;
        }
        let config = stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.h.>", self.prefix)],
            storage: stream::StorageType::File,
            max_messages_per_subject: i64::try_from(self.max_per_subject).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(self.max_bytes).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::New,
            allow_direct: true,
            ..Default::default()
        };
        let info = match r.js.update_stream(&config).await {
            Ok(info) => Ok(info),
            Err(_) => {
                r.js.create_stream(config)
                    .await
                    .map(|s| s.cached_info().clone())
                    .map_err(|e| e.to_string())
            }
        };
        match info {
            Ok(info) => {
                self.history
                    .set_shared_seed(seed(&self.stream, info.created.unix_timestamp_nanos()));
                r.stream = r.js.get_stream(&self.stream).await.ok();
                if r.stream.is_some() && !self.stats.up.swap(true, Ordering::AcqRel) {
                    tracing::info!(stream = %self.stream, "cluster: JetStream history available");
                }
            }
            Err(e) => {
                if r.stream.is_some() || self.stats.up.load(Ordering::Acquire) {
                    self.down(r, &e);
                } else {
                    tracing::error!(stream = %self.stream, error = %e, "cluster: history = \"jetstream\" but the JetStream stream cannot be created or updated (is JetStream enabled on nats-server, `-js`?); retrying every second, live delivery goes on without offsets");
                }
                r.stream = None;
            }
        }
    }

    async fn job(&self, r: &mut Running, broker: &Broker, job: Job) {
        match job {
            Job::Publish(p, rule) => self.append(r, broker, &p, rule).await,
            Job::Live(p, rule, None) => {
                JetStreamStats::add(&self.stats.unrecorded, 1);
                self.dispatch(r, broker, &p, rule, None).await;
            }
            Job::Live(p, rule, Some((offset, seq))) => {
                self.deliver_at(r, broker, &p, rule, offset).await;
                if seq != 0 {
                    let known = r.last.entry(p.topic.clone()).or_default();
                    if offset > known.offset {
                        *known = Last { seq, offset };
                    }
                }
            }
            Job::Sync(channel, rule, done) => {
                let ok = self.sync(r, broker, &channel, rule).await;
                let _ = done.try_send(ok);
            }
        }
    }

    /// Delivers `p` at `offset` in offset order: when this node holds the channel with
    /// subscribers and the offsets before it are missing (an announcement lost, or not
    /// yet subscribed in NATS when they went by), they are read from the stream first;
    /// what cannot be read stays a visible hole. Without subscribers the store just
    /// jumps ahead (the next subscribe catches it up).
    async fn deliver_at(
        &self,
        r: &mut Running,
        broker: &Broker,
        p: &Arc<Publication>,
        rule: RuleId,
        offset: u64,
    ) {
        if let Some(top) = self.history.top(&p.topic) {
            if offset > top + 1 && broker.router.has_subscribers(&p.topic) {
                let from = (top + 1).max(self.window_start(offset - 1));
                let got = self.fill(r, broker, &p.topic, rule, from, offset - 1).await;
                if got < offset - 1 {
                    JetStreamStats::add(&self.stats.holes, 1);
                }
            }
        }
        self.dispatch(r, broker, p, rule, Some(offset)).await;
    }

    /// The oldest offset the stream can still hold when `top` is the newest.
    fn window_start(&self, top: u64) -> u64 {
        (top + 1).saturating_sub(self.max_per_subject as u64).max(1)
    }

    /// Appends a local publication to the stream, retrying on conflicts; delivers it
    /// here and announces it to the other nodes once acknowledged. Without the stream it
    /// is delivered live without an offset.
    async fn append(&self, r: &mut Running, broker: &Broker, p: &Arc<Publication>, rule: RuleId) {
        let Some(live) = subject::channel_subject(&self.prefix, &p.topic) else {
            return;
        };
        let Some(stored) = stream_subject(&self.prefix, &live) else {
            return;
        };
        r.seq += 1;
        let origin = Origin {
            node: self.node_id.clone(),
            instance: r.instance,
            seq: r.seq,
        };
        let payload = envelope::encode(p, &origin);
        let mac = self.mac.as_ref().map(|k| k.sign(&live, &payload));
        let mut acked = None;
        if let Some(stream) = r.stream.clone() {
            let deadline = Instant::now() + self.timeout;
            // Made at the first conflict: most appends never need one (or its seed).
            let mut backoff: Option<Backoff> = None;
            loop {
                let last = match r.last.get(&p.topic) {
                    Some(l) => *l,
                    None => match self.last_of(&stream, &stored).await {
                        Ok(l) => l,
                        Err(e) => {
                            self.down(r, &e);
                            break;
                        }
                    },
                };
                let offset = last.offset + 1;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(OFFSET_HEADER, offset.to_string().as_str());
                if let Some(m) = &mac {
                    headers.insert(MAC_HEADER, m.as_str());
                }
                let publish = jetstream::context::Publish::build()
                    .payload(payload.clone())
                    .headers(headers)
                    .expected_last_subject_sequence(last.seq);
                let ack = match r.js.send_publish(stored.clone(), publish).await {
                    // The ack future times out after the context's timeout.
                    Ok(fut) => fut.await,
                    Err(e) => Err(e),
                };
                match ack {
                    Ok(ack) => {
                        r.last.insert(
                            p.topic.clone(),
                            Last {
                                seq: ack.sequence,
                                offset,
                            },
                        );
                        acked = Some((offset, ack.sequence));
                        break;
                    }
                    Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                        JetStreamStats::add(&self.stats.conflicts, 1);
                        r.last.remove(&p.topic);
                        let backoff = backoff.get_or_insert_with(|| {
                            Backoff::new(CONFLICT_BACKOFF, shardcast_client::random_seed())
                        });
                        let wait = backoff.next_delay().unwrap_or_default();
                        if Instant::now() + wait >= deadline {
                            tracing::warn!(channel = %p.topic, attempts = backoff.attempts(), "cluster: other nodes kept appending to the channel for cluster.jetstream_timeout; publication delivered without an offset");
                            break;
                        }
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => {
                        // A refusal (stream full) leaves the stream up; a timeout or a
                        // broken connection does not.
                        if matches!(
                            e.kind(),
                            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                        ) {
                            self.down(r, &e.to_string());
                        } else {
                            r.last.remove(&p.topic);
                            tracing::warn!(channel = %p.topic, error = %e, "cluster: JetStream refused a history publication; delivered without an offset");
                        }
                        break;
                    }
                }
            }
        }
        let mut headers = async_nats::HeaderMap::new();
        if let Some(m) = &mac {
            headers.insert(MAC_HEADER, m.as_str());
        }
        match acked {
            Some((offset, seq)) => {
                JetStreamStats::add(&self.stats.appended, 1);
                headers.insert(OFFSET_HEADER, offset.to_string().as_str());
                headers.insert(SEQ_HEADER, seq.to_string().as_str());
                self.deliver_at(r, broker, p, rule, offset).await;
            }
            None => {
                JetStreamStats::add(&self.stats.unrecorded, 1);
                self.dispatch(r, broker, p, rule, None).await;
            }
        }
        // The other nodes: at most once, like every core NATS delivery; a node that
        // misses one fills the gap from the stream when the next one comes.
        let _ = r.client.publish_with_headers(live, headers, payload).await;
    }

    /// The channel's last message in the stream (zeros when it has none).
    async fn last_of(&self, stream: &stream::Stream, stored: &str) -> Result<Last, String> {
        match stream.get_last_raw_message_by_subject(stored).await {
            Ok(m) => Ok(Last {
                seq: m.sequence,
                offset: offset_of(&m.headers).unwrap_or(0),
            }),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(Last::default())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Brings `channel` up to date from the stream; false when the stream could not be
    /// read.
    async fn sync(&self, r: &mut Running, broker: &Broker, channel: &str, rule: RuleId) -> bool {
        let Some(stream) = r.stream.clone() else {
            return false;
        };
        let Some(stored) = subject::channel_subject(&self.prefix, channel)
            .and_then(|live| stream_subject(&self.prefix, &live))
        else {
            return true; // a broker topic: nothing shared
        };
        let last = match self.last_of(&stream, &stored).await {
            Ok(l) => l,
            Err(e) => {
                self.down(r, &e);
                return false;
            }
        };
        if last.offset == 0 {
            return true;
        }
        let known = r.last.entry(channel.into()).or_default();
        if last.offset >= known.offset {
            *known = last;
        }
        let start = self.window_start(last.offset);
        let (_, top) = self.history.span(channel).unwrap_or((1, 0));
        if last.offset > top {
            let from = (top + 1).max(start);
            if self.fill(r, broker, channel, rule, from, last.offset).await < last.offset {
                return false;
            }
        }
        // What this node lacks before its oldest (it joined the channel late, or
        // trimmed it): put in front, not delivered (subscribers behind read the store).
        let (first, _) = self.history.span(channel).unwrap_or((1, 0));
        if first > start {
            let older = self.read(r, channel, start, first - 1).await;
            let complete = older.len() as u64 == first - start;
            self.history.prepend(channel, rule, older);
            return complete;
        }
        true
    }

    /// Reads offsets `from..=to` of `channel` from the stream and delivers them in
    /// order. Returns the highest offset this node holds afterwards.
    async fn fill(
        &self,
        r: &mut Running,
        broker: &Broker,
        channel: &str,
        rule: RuleId,
        from: u64,
        to: u64,
    ) -> u64 {
        for (offset, p) in self.read(r, channel, from, to).await {
            self.dispatch(r, broker, &p, rule, Some(offset)).await;
        }
        self.history.top(channel).unwrap_or(0)
    }

    /// Offsets `from..=to` of `channel` from the stream, in order, as far as they can be
    /// read within `cluster.jetstream_timeout` (and pass the inbound checks).
    async fn read(
        &self,
        r: &Running,
        channel: &str,
        from: u64,
        to: u64,
    ) -> Vec<(u64, Arc<Publication>)> {
        let mut out = Vec::new();
        let (Some(stream), Some(live)) = (
            r.stream.clone(),
            subject::channel_subject(&self.prefix, channel),
        ) else {
            return out;
        };
        let Some(stored) = stream_subject(&self.prefix, &live) else {
            return out;
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        // Later offsets have later stream sequences: start after the last message known,
        // when it comes before `from`.
        let mut next_seq = r
            .last
            .get(channel)
            .filter(|l| l.offset < from && l.seq > 0)
            .map_or(1, |l| l.seq + 1);
        while tokio::time::Instant::now() < deadline {
            let got = tokio::time::timeout_at(
                deadline,
                stream.direct_get_next_for_subject(&stored, Some(next_seq)),
            )
            .await;
            let Ok(Ok(m)) = got else { break };
            let Ok(m) = jetstream::message::StreamMessage::try_from(m.message) else {
                break;
            };
            next_seq = m.sequence + 1;
            let Some(offset) = offset_of(&m.headers) else {
                continue;
            };
            if offset < from {
                continue;
            }
            if offset > to {
                break;
            }
            let mac = m
                .headers
                .get(MAC_HEADER)
                .map(async_nats::HeaderValue::as_str);
            if let Ok((_, p)) = inbound::admit(
                &self.prefix,
                self.mac.as_ref(),
                &self.topics,
                &live,
                mac,
                &m.payload,
            ) {
                JetStreamStats::add(&self.stats.read, 1);
                out.push((offset, Arc::new(p)));
            }
            if offset == to {
                break;
            }
        }
        out
    }

    /// Delivers `p` to this node's shards: at `offset` through the store (skipped when
    /// the store has it already), or live without an offset.
    async fn dispatch(
        &self,
        r: &mut Running,
        broker: &Broker,
        p: &Arc<Publication>,
        rule: RuleId,
        offset: Option<u64>,
    ) {
        let router = &broker.router;
        let cache = &mut r.cache;
        let routed = match offset {
            Some(o) => self.history.append_at(p, rule, o, || {
                router.dispatch(p, router.targets(&p.topic, cache))
            }),
            None => Some(router.dispatch(p, router.targets(&p.topic, cache))),
        };
        let Some(mut full) = routed.map(|r| r.full) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + INBOX_FULL_WAIT;
        while full != 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
            full = router.dispatch(p, full).full;
        }
    }
}

/// The offset header of a stream message.
fn offset_of(headers: &async_nats::HeaderMap) -> Option<u64> {
    headers.get(OFFSET_HEADER)?.as_str().parse().ok()
}
