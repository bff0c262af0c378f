//! History (SPEC §9): the recent publications of selected channels, with their positions.
//!
//! One store for the whole node, behind one mutex. Every publication on a history channel
//! passes through [`History::append`], which assigns its offset (1, 2, 3, … per channel),
//! keeps it, and hands it to the shards while still holding the lock. That one place is
//! what makes the sequence gap-free whichever shard, the HTTP API or the cluster link
//! publishes, and what keeps each shard's inbox in offset order for a channel.
//!
//! Shards keep no copy: a subscriber that is behind (a resume, a replay, or a live
//! publication that arrived ahead of one it has not seen) is fed from here by
//! [`cursor::pump`], paced by its outbox. Entries are the same `Arc<Publication>`s live
//! delivery uses, so a replayed frame is the one already rendered for the live subscribers.
//!
//! Channels that match no rule never touch this module: [`History::rule_for`] says no and
//! the publication goes straight to the shards.

pub mod cursor;

use crate::config::{HistoryConfig, HistoryRule, Replay};
use crate::publication::Publication;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What one retained entry costs beyond its payload and topic, counted against
/// `history.max_bytes`: the `Publication` and its `Arc`, the deque slot, allocator
/// rounding (BENCHMARKS.md has the measured figure).
pub const ENTRY_OVERHEAD: u64 = 192;

/// What a retained publication counts against `history.max_bytes`: its payload and
/// topic, the bookkeeping, and a rendered frame for each dialect. Frames are rendered
/// only for dialects someone received it in, but a stored publication keeps those it
/// has, so counting both makes the cap a bound on memory rather than an estimate.
/// Allocations are counted a quarter larger than asked (the allocator's size classes)
/// and each frame 64 bytes more (its shared handle and box): measured real memory stays
/// below the count (BENCHMARKS.md, "History").
pub fn memory_cost(p: &Publication) -> u64 {
    let rounded = |n: usize| (n as u64) * 5 / 4;
    let frame = rounded(p.frame_size_hint() + crate::protocol::frame::MAX_SERVER_HEADER) + 64;
    ENTRY_OVERHEAD + rounded(payload_len(p) as usize + p.topic.len()) + 2 * frame
}

/// Why retained publications were dropped (`shardcast_history_evicted_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Over the rule's `size`.
    Size = 0,
    /// Over the rule's `bytes`.
    Bytes = 1,
    /// The channel expired (`ttl` after its last publication, no subscribers).
    Ttl = 2,
    /// Over `history.max_bytes`: the least recently published channels lose first.
    MaxBytes = 3,
}

impl Eviction {
    /// Metric labels, in discriminant order.
    pub const LABELS: [&'static str; 4] = ["size", "bytes", "ttl", "max_bytes"];
}

/// History counters, read by metrics and stats.
#[derive(Debug, Default)]
pub struct HistoryStats {
    /// Publications retained now.
    pub retained: AtomicU64,
    /// Bytes retained now, as counted against `history.max_bytes` ([`memory_cost`]).
    pub retained_bytes: AtomicU64,
    /// Channels with history state (offsets and epoch) now.
    pub channels: AtomicU64,
    /// Publications appended since start.
    pub appended: AtomicU64,
    /// Publications dropped, by [`Eviction`].
    pub evicted: [AtomicU64; 4],
    /// Publications sent to subscribers from history (replays and catch-ups).
    pub replayed: AtomicU64,
    /// Resumes answered `recovered: false` / `true`.
    pub recovered: [AtomicU64; 2],
}

impl HistoryStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a resume's outcome.
    pub fn count_resume(&self, recovered: bool) {
        Self::add(&self.recovered[usize::from(recovered)], 1);
    }
}

/// The node's history store.
pub struct History {
    rules: Vec<HistoryRule>,
    max_bytes: u64,
    store: Mutex<Store>,
    /// Counters.
    pub stats: HistoryStats,
    /// Mixed into every epoch so that a restarted node never reuses one.
    seed: u64,
    /// With a shared history (JetStream, SPEC §12): the seed every node derives a
    /// channel's epoch from (0 = none: epochs are this node's own).
    shared_seed: AtomicU64,
    /// With a shared history: brings a channel up to date before a subscriber attaches.
    source: OnceLock<Arc<dyn Source>>,
}

/// Where a shared history lives (the JetStream stream): the store on each node is then a
/// copy that [`Source::sync`] brings up to date before a subscriber attaches.
pub trait Source: Send + Sync {
    /// Brings `channel` up to date in `history` (bounded wait); false when the shared
    /// history could not be read, so what this node has may be incomplete.
    fn sync(&self, history: &History, channel: &str, rule: RuleId) -> bool;
}

/// Which rule a channel follows (index into the rule list).
pub type RuleId = u16;

#[derive(Default)]
struct Store {
    channels: HashMap<Box<str>, ChannelLog>,
    /// Channels holding entries, by the sequence number of their last publication:
    /// the first is the least recently published (evicted first past `max_bytes`).
    lru: BTreeMap<u64, Box<str>>,
    seq: u64,
    bytes: u64,
    entries: u64,
    created: u64,
}

struct ChannelLog {
    rule: RuleId,
    epoch: Arc<str>,
    /// Last offset assigned (0 = none yet).
    top: u64,
    entries: VecDeque<Arc<Publication>>,
    /// Payload bytes of `entries` (the rule's `bytes` bound).
    payload: u64,
    last_publish: Instant,
    /// Key in `Store::lru` while the channel holds entries.
    lru_key: Option<u64>,
}

impl ChannelLog {
    /// Offset of the oldest retained entry (`top + 1` when none is retained).
    fn first(&self) -> u64 {
        self.top + 1 - self.entries.len() as u64
    }
}

/// A channel's position at the moment a subscriber attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Last offset assigned.
    pub top: u64,
    /// Oldest retained offset (`top + 1` when nothing is retained).
    pub first: u64,
    /// The channel's epoch.
    pub epoch: Arc<str>,
    /// The rule's replay mode.
    pub replay: Replay,
    /// False when the shared history (JetStream) could not be read: resumes then answer
    /// `recovered: false`.
    pub synced: bool,
}

/// Where a subscriber starts, decided from its position and the channel's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// First offset to send.
    pub next: u64,
    /// Whether every publication after the client's position is still there (`r`).
    pub recovered: bool,
}

impl Attached {
    /// Where a subscriber resuming after `offset` of `epoch` starts (SPEC §9): right
    /// after its offset when the epoch is the channel's and nothing in between has gone;
    /// else from the oldest retained, with `recovered: false`. Without an epoch the
    /// offset is taken in the current one (`o: 0` asks for everything retained, which
    /// is complete when nothing was ever dropped).
    pub fn resume(&self, offset: u64, epoch: Option<&str>) -> Start {
        let same_epoch = epoch.is_none_or(|e| e == &*self.epoch);
        if !same_epoch || !self.synced {
            return Start {
                next: self.first,
                recovered: false,
            };
        }
        if offset > self.top {
            // A position this epoch never reached: nothing to replay, and nothing the
            // client can be sure of either.
            return Start {
                next: self.top + 1,
                recovered: false,
            };
        }
        Start {
            next: (offset + 1).max(self.first),
            recovered: offset + 1 >= self.first,
        }
    }

    /// Where a plain subscribe (no position) starts: everything retained with
    /// `replay = "all"`, else only new publications.
    pub fn plain(&self) -> u64 {
        match self.replay {
            Replay::All => self.first,
            Replay::None => self.top + 1,
        }
    }
}

/// A page of a channel's history (`GET /api/history/{channel}`).
pub struct Page {
    /// The channel's epoch.
    pub epoch: Arc<str>,
    /// Oldest retained offset.
    pub first: u64,
    /// Last offset assigned.
    pub top: u64,
    /// The publications, in offset order.
    pub publications: Vec<Arc<Publication>>,
}

impl History {
    /// A store for `config`: its rules, then the built-in `process:` rule unless a rule
    /// already has that prefix.
    pub fn new(config: &HistoryConfig) -> Self {
        let mut rules = config.rules.clone();
        let builtin = HistoryRule::builtin_process();
        if !rules.iter().any(|r| r.prefix == builtin.prefix) {
            rules.push(builtin);
        }
        let state = std::collections::hash_map::RandomState::new();
        let mut h = state.build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        History {
            rules,
            max_bytes: config.max_bytes,
            store: Mutex::new(Store::default()),
            stats: HistoryStats::default(),
            seed: h.finish(),
            shared_seed: AtomicU64::new(0),
            source: OnceLock::new(),
        }
    }

    /// The rule `channel` follows, or `None` when it keeps no history. The only cost
    /// history adds to a publication on any other channel.
    pub fn rule_for(&self, channel: &str) -> Option<RuleId> {
        if self.max_bytes == 0 {
            return None;
        }
        let (i, rule) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(channel))?;
        if rule.size == 0 {
            return None;
        }
        RuleId::try_from(i).ok()
    }

    fn rule(&self, id: RuleId) -> Option<&HistoryRule> {
        self.rules.get(usize::from(id))
    }

    fn new_epoch(&self, channel: &str, created: u64) -> Arc<str> {
        match self.shared_seed.load(Ordering::Relaxed) {
            0 => epoch_of(self.seed, created.to_string().as_bytes()),
            shared => epoch_of(shared, channel.as_bytes()),
        }
    }

    /// Makes history shared (SPEC §12): `source` brings channels up to date before
    /// subscribers attach. Set once, before any subscriber.
    pub fn set_source(&self, source: Arc<dyn Source>) {
        let _ = self.source.set(source);
    }

    /// With a shared history: every node derives a channel's epoch from `seed` (the
    /// stream's identity), so they all agree and a restart keeps it.
    pub fn set_shared_seed(&self, seed: u64) {
        self.shared_seed.store(seed.max(1), Ordering::Relaxed);
    }

    /// The channel's epoch under the shared seed, `None` before it is known.
    fn shared_epoch(&self, channel: &str) -> Option<Arc<str>> {
        match self.shared_seed.load(Ordering::Relaxed) {
            0 => None,
            s => Some(epoch_of(s, channel.as_bytes())),
        }
    }

    /// The largest `size` of the rules (what a shared history keeps per channel).
    pub fn max_rule_size(&self) -> usize {
        self.rules.iter().map(|r| r.size).max().unwrap_or(0).max(1)
    }

    /// Last offset this node holds for `channel` (`None` without state), for the shared
    /// history's gap check.
    pub fn top(&self, channel: &str) -> Option<u64> {
        let store = self.store.lock();
        let log = store.channels.get(channel)?;
        // State from before the cluster's epoch was known is replaced on the next append.
        match self.shared_epoch(channel) {
            Some(e) if e != log.epoch => Some(0),
            _ => Some(log.top),
        }
    }

    /// The oldest and newest offsets this node holds for `channel` (`first > top` when
    /// it holds none), `None` without state; state from before the cluster's epoch was
    /// known counts as empty.
    pub fn span(&self, channel: &str) -> Option<(u64, u64)> {
        let store = self.store.lock();
        let log = store.channels.get(channel)?;
        match self.shared_epoch(channel) {
            Some(e) if e != log.epoch => Some((1, 0)),
            _ => Some((log.first(), log.top)),
        }
    }

    /// Shared history: puts `older` (ascending, contiguous, the last right before the
    /// oldest offset this node holds) in front of what it holds, as far as the rule's
    /// `size` and `bytes` allow. Nothing is delivered: subscribers that need these are
    /// behind and read them from here. Returns how many were kept.
    pub fn prepend(
        &self,
        channel: &str,
        rule: RuleId,
        older: Vec<(u64, Arc<Publication>)>,
    ) -> usize {
        let Some(limits) = self.rule(rule) else {
            return 0;
        };
        let mut guard = self.store.lock();
        let store = &mut *guard;
        let shared = self.shared_epoch(channel);
        let Some(log) = store.channels.get_mut(channel) else {
            return 0;
        };
        if shared.is_some_and(|e| e != log.epoch) {
            return 0;
        }
        let (mut kept, mut bytes) = (0u64, 0u64);
        for (offset, p) in older.into_iter().rev() {
            let payload = payload_len(&p);
            if offset + 1 != log.first()
                || log.entries.len() >= limits.size
                || log.payload + payload > limits.bytes
            {
                break;
            }
            p.set_offset(offset);
            log.payload += payload;
            bytes += memory_cost(&p);
            log.entries.push_front(p);
            kept += 1;
        }
        let needs_lru = kept > 0 && log.lru_key.is_none();
        if needs_lru {
            store.seq += 1;
            let key = store.seq;
            if let Some(log) = store.channels.get_mut(channel) {
                log.lru_key = Some(key);
            }
            store.lru.insert(key, channel.into());
        }
        store.entries += kept;
        store.bytes += bytes;
        let mut freed = Freed::default();
        self.evict_over_cap(store, &mut freed);
        store.entries = store.entries.saturating_sub(freed.entries);
        store.bytes = store.bytes.saturating_sub(freed.bytes);
        self.publish_totals(store);
        freed.count(&self.stats);
        usize::try_from(kept).unwrap_or(usize::MAX)
    }

    /// Like [`History::attach`], after bringing the channel up to date from the shared
    /// history when there is one.
    pub fn attach_synced(&self, channel: &str, rule: RuleId) -> Attached {
        let synced = self
            .source
            .get()
            .is_none_or(|s| s.sync(self, channel, rule));
        let mut at = self.attach(channel, rule);
        at.synced = synced;
        at
    }

    /// Shared history: retains `p` at the `offset` the cluster gave it and calls
    /// `deliver`, under the lock like [`History::append`]. `None` (nothing delivered)
    /// for an offset this node holds already. An offset past the next one leaves a hole
    /// (the caller filled what it could from the stream): what this node kept before it
    /// is dropped, so the store stays one run of offsets.
    pub fn append_at<R>(
        &self,
        p: &Arc<Publication>,
        rule: RuleId,
        offset: u64,
        deliver: impl FnOnce() -> R,
    ) -> Option<R> {
        {
            let mut guard = self.store.lock();
            let store = &mut *guard;
            let log = self.log_mut(store, &p.topic, rule, Instant::now())?;
            let mut freed = Freed::default();
            if let Some(epoch) = self.shared_epoch(&p.topic) {
                if log.epoch != epoch {
                    // Created before the stream was known: take the cluster's epoch.
                    while !log.entries.is_empty() {
                        freed.pop(log, Eviction::Size);
                    }
                    log.epoch = epoch;
                    log.top = 0;
                }
            }
            if offset <= log.top || offset == 0 {
                return None;
            }
            let mut stale_key = None;
            if offset > log.top + 1 {
                while !log.entries.is_empty() {
                    freed.pop(log, Eviction::Size);
                }
                stale_key = log.lru_key.take();
                log.top = offset - 1;
            }
            if let Some(k) = stale_key {
                store.lru.remove(&k);
            }
            store.entries = store.entries.saturating_sub(freed.entries);
            store.bytes = store.bytes.saturating_sub(freed.bytes);
            freed.count(&self.stats);
        }
        Some(self.append_inner(p, rule, Some(offset), deliver))
    }

    fn log_mut<'s>(
        &self,
        store: &'s mut Store,
        channel: &str,
        rule: RuleId,
        now: Instant,
    ) -> Option<&'s mut ChannelLog> {
        if !store.channels.contains_key(channel) {
            store.created += 1;
            let epoch = self.new_epoch(channel, store.created);
            store.channels.insert(
                channel.into(),
                ChannelLog {
                    rule,
                    epoch,
                    top: 0,
                    entries: VecDeque::new(),
                    payload: 0,
                    last_publish: now,
                    lru_key: None,
                },
            );
            self.stats
                .channels
                .store(store.channels.len() as u64, Ordering::Relaxed);
        }
        store.channels.get_mut(channel)
    }

    /// Assigns `p` the next offset of its channel, retains it, evicts what the limits
    /// ask, and calls `deliver` (the hand-off to the shards) before letting go of the
    /// lock, so no subscriber can attach between the append and the hand-off unseen.
    pub fn append<R>(&self, p: &Arc<Publication>, rule: RuleId, deliver: impl FnOnce() -> R) -> R {
        self.append_inner(p, rule, None, deliver)
    }

    fn append_inner<R>(
        &self,
        p: &Arc<Publication>,
        rule: RuleId,
        at: Option<u64>,
        deliver: impl FnOnce() -> R,
    ) -> R {
        let Some(limits) = self.rule(rule) else {
            return deliver();
        };
        let now = Instant::now();
        let payload = payload_len(p);
        let mut guard = self.store.lock();
        let store = &mut *guard;
        store.seq += 1;
        let seq = store.seq;
        let Some(log) = self.log_mut(store, &p.topic, rule, now) else {
            return deliver(); // unreachable: the channel was just found or inserted
        };
        if at.is_some_and(|o| o != log.top + 1) {
            return deliver(); // unreachable: `append_at` made it the next offset
        }
        log.top += 1;
        p.set_offset(log.top);
        log.entries.push_back(p.clone());
        log.payload += payload;
        log.last_publish = now;
        let old_key = log.lru_key.replace(seq);
        let mut freed = Freed::default();
        while log.entries.len() > limits.size {
            freed.pop(log, Eviction::Size);
        }
        while log.payload > limits.bytes && !log.entries.is_empty() {
            freed.pop(log, Eviction::Bytes);
        }
        let emptied = log.entries.is_empty();
        if emptied {
            log.lru_key = None;
        }
        if let Some(k) = old_key {
            store.lru.remove(&k);
        }
        if !emptied {
            store.lru.insert(seq, p.topic.clone());
        }
        store.entries += 1;
        store.bytes += memory_cost(p);
        HistoryStats::add(&self.stats.appended, 1);
        self.evict_over_cap(store, &mut freed);
        store.entries = store.entries.saturating_sub(freed.entries);
        store.bytes = store.bytes.saturating_sub(freed.bytes);
        self.publish_totals(store);
        freed.count(&self.stats);
        deliver()
    }

    /// Past `history.max_bytes`: the least recently published channels lose their
    /// oldest entries first.
    fn evict_over_cap(&self, store: &mut Store, freed: &mut Freed) {
        while store.bytes.saturating_sub(freed.bytes) > self.max_bytes {
            let Some((&key, name)) = store.lru.iter().next() else {
                break;
            };
            let Some(log) = store.channels.get_mut(name) else {
                store.lru.remove(&key);
                continue;
            };
            freed.pop(log, Eviction::MaxBytes);
            if log.entries.is_empty() {
                log.lru_key = None;
                store.lru.remove(&key);
            }
        }
    }

    fn publish_totals(&self, store: &Store) {
        self.stats.retained.store(store.entries, Ordering::Relaxed);
        self.stats
            .retained_bytes
            .store(store.bytes, Ordering::Relaxed);
    }

    /// The channel's state for a subscriber attaching now, creating it (offset 0, a new
    /// epoch) if it has none yet, so the epoch a client is told stays the channel's.
    /// The caller must already be subscribed (interest registered) so that everything
    /// after `top` reaches it live.
    pub fn attach(&self, channel: &str, rule: RuleId) -> Attached {
        let replay = self.rule(rule).map_or(Replay::None, |r| r.replay);
        let mut store = self.store.lock();
        match self.log_mut(&mut store, channel, rule, Instant::now()) {
            Some(log) => Attached {
                top: log.top,
                first: log.first(),
                epoch: log.epoch.clone(),
                replay,
                synced: true,
            },
            // Unreachable (the channel was just found or inserted); an empty channel.
            None => Attached {
                top: 0,
                first: 1,
                epoch: Arc::from(""),
                replay,
                synced: true,
            },
        }
    }

    /// Hands `f` the retained publications of `channel` from offset `from` on, in order,
    /// while `f` returns true (it decides how many fit). Returns the next offset to send
    /// and the channel's top, or `None` when the channel has no history state.
    pub fn read(
        &self,
        channel: &str,
        from: u64,
        mut f: impl FnMut(&Arc<Publication>) -> bool,
    ) -> Option<(u64, u64)> {
        let store = self.store.lock();
        let log = store.channels.get(channel)?;
        // Entries evicted meanwhile are skipped: the offsets show the hole.
        let mut next = from.max(log.first());
        let skip = usize::try_from(next - log.first()).unwrap_or(usize::MAX);
        let mut sent = 0u64;
        for p in log.entries.iter().skip(skip) {
            if !f(p) {
                break;
            }
            next += 1;
            sent += 1;
        }
        HistoryStats::add(&self.stats.replayed, sent);
        Some((next, log.top))
    }

    /// Up to `limit` publications of `channel` after offset `since`, for the HTTP API.
    pub fn page(&self, channel: &str, since: u64, limit: usize) -> Option<Page> {
        let store = self.store.lock();
        let log = store.channels.get(channel)?;
        let first = log.first();
        let from = (since + 1).max(first);
        let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
        Some(Page {
            epoch: log.epoch.clone(),
            first,
            top: log.top,
            publications: log.entries.iter().skip(skip).take(limit).cloned().collect(),
        })
    }

    /// Drops channels whose `ttl` has passed since their last publication and that have
    /// no subscribers (`has_subscribers` asks the router). Their epoch goes with them: a
    /// client resuming later learns that its position is gone.
    pub fn expire(&self, now: Instant, has_subscribers: impl Fn(&str) -> bool) {
        let mut guard = self.store.lock();
        let store = &mut *guard;
        let mut expired: Vec<Box<str>> = Vec::new();
        for (name, log) in &store.channels {
            let ttl = self.rule(log.rule).map_or(Duration::ZERO, |r| r.ttl);
            if now.saturating_duration_since(log.last_publish) >= ttl && !has_subscribers(name) {
                expired.push(name.clone());
            }
        }
        if expired.is_empty() {
            return;
        }
        let mut freed = Freed::default();
        for name in expired {
            if let Some(mut log) = store.channels.remove(&name) {
                if let Some(k) = log.lru_key.take() {
                    store.lru.remove(&k);
                }
                while !log.entries.is_empty() {
                    freed.pop(&mut log, Eviction::Ttl);
                }
            }
        }
        store.bytes = store.bytes.saturating_sub(freed.bytes);
        store.entries = store.entries.saturating_sub(freed.entries);
        if store.channels.is_empty() {
            // A flood of channels has gone: give their table's memory back too.
            store.channels.shrink_to_fit();
        }
        self.stats
            .channels
            .store(store.channels.len() as u64, Ordering::Relaxed);
        self.publish_totals(store);
        freed.count(&self.stats);
    }
}

/// What an append or expiry dropped, counted once the lock is released.
#[derive(Default)]
struct Freed {
    entries: u64,
    bytes: u64,
    by_reason: [u64; 4],
}

impl Freed {
    fn pop(&mut self, log: &mut ChannelLog, why: Eviction) {
        if let Some(p) = log.entries.pop_front() {
            log.payload -= payload_len(&p);
            self.bytes += memory_cost(&p);
            self.entries += 1;
            if let Some(n) = self.by_reason.get_mut(why as usize) {
                *n += 1;
            }
        }
    }

    fn count(&self, stats: &HistoryStats) {
        for (counter, n) in stats.evicted.iter().zip(self.by_reason) {
            if n > 0 {
                HistoryStats::add(counter, n);
            }
        }
    }
}

/// An epoch: 12 hex digits of a hash of `seed` and `what`.
/// SHA-256, so that every node (whatever its build) derives the same shared epoch.
fn epoch_of(seed: u64, what: &[u8]) -> Arc<str> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(seed.to_be_bytes());
    h.update(what);
    let d = h.finalize();
    d.iter()
        .take(6)
        .fold(String::with_capacity(12), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
        .into()
}

/// The bytes of a publication counted against a rule's `bytes`: data plus headers.
fn payload_len(p: &Publication) -> u64 {
    (p.data.len() + p.headers.as_ref().map_or(0, bytes::Bytes::len)) as u64
}

#[cfg(test)]
mod tests;
