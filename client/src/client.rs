//! The client handle and the driver task behind it: one connection at a time, reconnected
//! with backoff, subscriptions re-made from their last positions.

use crate::backoff::{random_seed, Backoff, BackoffConfig};
use crate::conn::{self, Read, Writer};
use crate::credentials::{self, Ask, Credentials, Provider};
use crate::url::WsUrl;
use crate::wire::{Dialect, Event, Incoming, Position};
use crate::Error;
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

/// What happened to the link, in order (see [`Client::link_events`]).
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// The WebSocket is open (before the subscriptions are back).
    Connected,
    /// The connection failed or ended; the client retries after `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// The backoff delay before the next attempt.
        retry_in: Duration,
    },
    /// After a reconnect: a subscription is back; `recovered` is whether everything
    /// published meanwhile was replayed (`None` for channels without history).
    Resubscribed {
        /// The topic or pattern.
        topic: String,
        /// Whether the resume was complete.
        recovered: Option<bool>,
    },
    /// `max_retries` attempts failed in a row; the client has stopped.
    GaveUp,
    /// SemStreams: the server says its queue for this client is past 80% (`slow`).
    Slow {
        /// Frames queued.
        queue_depth: u64,
        /// The queue's capacity.
        queue_capacity: u64,
    },
}

/// The answer to a subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The channel's last offset when the subscription started (history channels).
    pub top: Option<u64>,
    /// The channel's epoch (history channels).
    pub epoch: Option<String>,
    /// Whether a resume from a position was complete.
    pub recovered: Option<bool>,
}

/// Publications on one subscription; dropping it does not unsubscribe (call
/// [`Client::unsubscribe`]).
#[derive(Debug)]
pub struct Subscription {
    /// What the broker answered.
    pub subscribed: Subscribed,
    events: mpsc::Receiver<Event>,
}

impl Subscription {
    /// The next publication; `None` once the client is closed or gave up.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

/// Settings for [`ClientBuilder::connect`].
pub struct ClientBuilder {
    url: String,
    dialect: Dialect,
    provider: Provider,
    backoff: BackoffConfig,
    ping_deadline: Duration,
    queue_size: usize,
    connect_timeout: Duration,
    events_per_subscription: usize,
}

impl ClientBuilder {
    /// Static credentials for every connect.
    pub fn credentials(mut self, c: Credentials) -> Self {
        self.provider = credentials::fixed(c);
        self
    }

    /// A provider asked at every connect, and with [`Ask::Refused`] after a 401.
    pub fn credentials_provider(mut self, p: Provider) -> Self {
        self.provider = p;
        self
    }

    /// The dialect to speak (default vws). [`Dialect::SemStreams`] reaches a SemStreams
    /// WebSocket Input, or a shardcast broker as a SemStreams peer; it has no unsubscribe,
    /// and only [`Client::subscribe_from`] subscriptions keep positions across reconnects.
    pub fn dialect(mut self, d: Dialect) -> Self {
        self.dialect = d;
        self
    }

    /// Reconnect spacing (default: 1 s, 60 s, ×2, forever).
    pub fn backoff(mut self, b: BackoffConfig) -> Self {
        self.backoff = b;
        self
    }

    /// A link from which nothing arrived for this long is dropped and re-made (default
    /// 30 s); a ping is sent at half of it.
    pub fn ping_deadline(mut self, d: Duration) -> Self {
        self.ping_deadline = d.max(Duration::from_millis(10));
        self
    }

    /// Requests (publishes, subscribes) that may wait while the link is down; past it
    /// they fail with [`Error::QueueFull`] (default 1024).
    pub fn queue_size(mut self, n: usize) -> Self {
        self.queue_size = n.max(1);
        self
    }

    /// Publications buffered per subscription for a slow reader (default 1024); a full
    /// buffer holds the link back rather than dropping.
    pub fn events_per_subscription(mut self, n: usize) -> Self {
        self.events_per_subscription = n.max(1);
        self
    }

    /// Time allowed for one connect (TCP and upgrade; default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Starts the client: the first connect happens in the background.
    ///
    /// # Errors
    /// [`Error::Url`] for a URL the client cannot open.
    pub fn connect(self) -> Result<Client, Error> {
        let url = WsUrl::parse(&self.url)?;
        let (tx, rx) = mpsc::channel(self.queue_size);
        let (events, _) = broadcast::channel(256);
        let driver = Driver {
            url,
            dialect: self.dialect,
            send_rate: 0.0,
            next_send: Instant::now(),
            provider: self.provider,
            backoff: Backoff::new(self.backoff, random_seed()),
            ping_deadline: self.ping_deadline,
            connect_timeout: self.connect_timeout,
            per_sub: self.events_per_subscription,
            commands: rx,
            events: events.clone(),
            subs: BTreeMap::new(),
            pending: HashMap::new(),
            next_id: 1,
        };
        tokio::spawn(driver.run());
        Ok(Client {
            commands: tx,
            events,
        })
    }
}

/// A handle to a client; cheap to clone, all clones share the one connection.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<LinkEvent>,
}

impl Client {
    /// Settings for a client of the broker at `url` (`ws://host:port/ws`).
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder {
            url: url.to_owned(),
            dialect: Dialect::default(),
            provider: credentials::fixed(Credentials::None),
            backoff: BackoffConfig::default(),
            ping_deadline: Duration::from_secs(30),
            queue_size: 1024,
            connect_timeout: Duration::from_secs(10),
            events_per_subscription: 1024,
        }
    }

    /// Link events from now on (each receiver sees every later one).
    pub fn link_events(&self) -> broadcast::Receiver<LinkEvent> {
        self.events.subscribe()
    }

    /// Subscribes to a topic or pattern; resolves once the broker acked it.
    ///
    /// # Errors
    /// [`Error::Nack`] (refused, with the broker's reason), [`Error::QueueFull`],
    /// [`Error::Closed`].
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription, Error> {
        self.subscribe_inner(topic, None).await
    }

    /// Subscribes to an exact history channel from a position: what came after
    /// `from.offset` is replayed first ([`Subscribed::recovered`] says whether all of it).
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn subscribe_from(&self, topic: &str, from: Position) -> Result<Subscription, Error> {
        self.subscribe_inner(topic, Some(from)).await
    }

    async fn subscribe_inner(
        &self,
        topic: &str,
        from: Option<Position>,
    ) -> Result<Subscription, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Subscribe {
            topic: topic.to_owned(),
            from,
            reply,
        })?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Ends a subscription (its [`Subscription`] then ends).
    ///
    /// # Errors
    /// [`Error::QueueFull`], [`Error::Closed`], [`Error::Nack`]; [`Error::Unsupported`] in
    /// the SemStreams dialect.
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Unsubscribe {
            topic: topic.to_owned(),
            reply,
        })?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Publishes `data` (any JSON) on `topic` with `headers`; resolves on the broker's ack.
    ///
    /// # Errors
    /// [`Error::Nack`] (e.g. not allowed), [`Error::QueueFull`] (the link is down and the
    /// queue holds `queue_size` requests), [`Error::Disconnected`] (sent, but the link
    /// dropped before the ack: it may or may not have been published), [`Error::Closed`].
    pub async fn publish(
        &self,
        topic: &str,
        data: &impl serde::Serialize,
        headers: BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let data =
            serde_json::value::to_raw_value(data).map_err(|e| Error::Encode(e.to_string()))?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Publish {
            topic: topic.to_owned(),
            data,
            headers,
            reply,
        })?;
        answer.await.map_err(|_| Error::Closed)?
    }

    fn send(&self, c: Command) -> Result<(), Error> {
        self.commands.try_send(c).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::QueueFull(self.commands.max_capacity()),
            mpsc::error::TrySendError::Closed(_) => Error::Closed,
        })
    }
}

enum Command {
    Subscribe {
        topic: String,
        from: Option<Position>,
        reply: oneshot::Sender<Result<Subscription, Error>>,
    },
    Unsubscribe {
        topic: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Publish {
        topic: String,
        data: Box<RawValue>,
        headers: BTreeMap<String, String>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// The caller of a subscribe and the events its [`Subscription`] will read.
type Waiting = (
    oneshot::Sender<Result<Subscription, Error>>,
    mpsc::Receiver<Event>,
);

/// A subscription the driver keeps across connections.
struct Sub {
    events: mpsc::Sender<Event>,
    /// Last position seen (exact history channels only).
    position: Option<Position>,
    /// The caller still waits for the first ack.
    waiting: Option<Waiting>,
}

/// A request sent on the current connection, by id.
enum Pending {
    Subscribe(String),
    Resubscribe(String),
    Unsubscribe(oneshot::Sender<Result<(), Error>>),
    Publish(oneshot::Sender<Result<(), Error>>),
}

struct Driver {
    url: WsUrl,
    dialect: Dialect,
    /// Requests per second the server asked for (SemStreams `backpressure`; 0 = no cap),
    /// and when the next one may go.
    send_rate: f64,
    next_send: Instant,
    provider: Provider,
    backoff: Backoff,
    ping_deadline: Duration,
    connect_timeout: Duration,
    per_sub: usize,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<LinkEvent>,
    subs: BTreeMap<String, Sub>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
}

/// What a message from the server calls for.
enum Answer {
    Nothing,
    /// The last resubscription of a reconnect was acked.
    Resubscribed,
    /// A reply to send (SemStreams requests).
    Send(String),
}

/// Why a session ended.
enum End {
    /// The link failed; reconnect.
    Lost(String),
    /// Every handle is gone; stop.
    Done,
}

impl Driver {
    async fn run(mut self) {
        let mut ask = Ask::Connect;
        loop {
            let creds = (self.provider)(ask).await;
            let reason = match conn::open(
                &self.url,
                self.dialect,
                creds.header().as_deref(),
                self.connect_timeout,
            )
            .await
            {
                Ok((writer, reader)) => {
                    ask = Ask::Connect;
                    let _ = self.events.send(LinkEvent::Connected);
                    match self.session(writer, reader).await {
                        End::Done => return,
                        End::Lost(reason) => reason,
                    }
                }
                Err(Error::Refused {
                    status: 401,
                    reason,
                }) => {
                    ask = Ask::Refused;
                    format!("credentials refused (401): {reason}")
                }
                Err(e) => e.to_string(),
            };
            self.fail_in_flight();
            let Some(delay) = self.backoff.next_delay() else {
                let _ = self.events.send(LinkEvent::GaveUp);
                self.give_up();
                return;
            };
            let _ = self.events.send(LinkEvent::Disconnected {
                reason,
                retry_in: delay,
            });
            tokio::time::sleep(delay).await;
            if self.commands.is_closed() && self.subs.is_empty() {
                return;
            }
        }
    }

    /// Runs one connection until it fails or the client is dropped.
    async fn session(&mut self, mut writer: Writer, mut reader: mpsc::Receiver<Read>) -> End {
        // Subscriptions first, from their positions, before any queued request.
        let topics: Vec<String> = self.subs.keys().cloned().collect();
        let mut resubscribing = 0usize;
        for topic in topics {
            let from = self.subs.get(&topic).and_then(|s| s.position.clone());
            let waiting = self.subs.get(&topic).is_some_and(|s| s.waiting.is_some());
            let id = self.id();
            let kind = if waiting {
                Pending::Subscribe(topic.clone())
            } else {
                resubscribing += 1;
                Pending::Resubscribe(topic.clone())
            };
            self.pending.insert(id, kind);
            let text = self.dialect.subscribe(&topic, id, from.as_ref());
            if let Err(e) = send_text(&mut writer, text).await {
                return End::Lost(e);
            }
        }
        if resubscribing == 0 {
            self.backoff.reset();
        }
        let mut last_seen = Instant::now();
        let mut ping = tokio::time::interval(self.ping_deadline / 2);
        ping.tick().await;
        loop {
            // A server that asked for a send rate gets requests spaced by it.
            let paced = self.send_rate > 0.0 && Instant::now() < self.next_send;
            tokio::select! {
                cmd = self.commands.recv(), if !paced => {
                    let Some(cmd) = cmd else {
                        let _ = writer.write_frame(Frame::close(1000, b"")).await;
                        return End::Done;
                    };
                    if let Err(e) = self.request(&mut writer, cmd).await {
                        return End::Lost(e);
                    }
                    if self.send_rate > 0.0 {
                        let gap = Duration::from_secs_f64((1.0 / self.send_rate).min(60.0));
                        self.next_send = self.next_send.max(Instant::now()) + gap;
                    }
                }
                () = tokio::time::sleep_until(self.next_send), if paced => {}
                read = reader.recv() => {
                    last_seen = Instant::now();
                    match read {
                        Some(Read::Text(text)) => {
                            match self.incoming(&text, &mut resubscribing).await {
                                Answer::Nothing => {}
                                Answer::Resubscribed => self.backoff.reset(),
                                Answer::Send(reply) => {
                                    if let Err(e) = send_text(&mut writer, reply).await {
                                        return End::Lost(e);
                                    }
                                }
                            }
                        }
                        Some(Read::Obligated(op, payload)) => {
                            let frame = Frame::new(true, op, None, Payload::Owned(payload));
                            if let Err(e) = writer.write_frame(frame).await {
                                return End::Lost(format!("write failed: {e}"));
                            }
                            if op == OpCode::Close {
                                return End::Lost("closed by the broker".into());
                            }
                        }
                        Some(Read::Alive) => {}
                        Some(Read::Closed(code, reason)) => {
                            return End::Lost(format!("closed by the broker ({code:?}: {reason})"))
                        }
                        Some(Read::Lost(why)) => return End::Lost(format!("connection lost: {why}")),
                        None => return End::Lost("connection lost".into()),
                    }
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() >= self.ping_deadline {
                        return End::Lost(format!(
                            "nothing received for {:?} (ping deadline)", self.ping_deadline
                        ));
                    }
                    let frame = Frame::new(true, OpCode::Ping, None, Payload::Owned(Vec::new()));
                    if let Err(e) = writer.write_frame(frame).await {
                        return End::Lost(format!("write failed: {e}"));
                    }
                }
            }
        }
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends one request; `Err` when the link failed.
    async fn request(&mut self, writer: &mut Writer, cmd: Command) -> Result<(), String> {
        let id = self.id();
        let text = match cmd {
            Command::Subscribe { topic, from, reply } => {
                let (tx, rx) = mpsc::channel(self.per_sub);
                let text = self.dialect.subscribe(&topic, id, from.as_ref());
                self.subs.insert(
                    topic.clone(),
                    Sub {
                        events: tx,
                        position: from,
                        waiting: Some((reply, rx)),
                    },
                );
                self.pending.insert(id, Pending::Subscribe(topic));
                text
            }
            Command::Unsubscribe { topic, reply } => {
                let Some(text) = self.dialect.unsubscribe(&topic, id) else {
                    let _ = reply.send(Err(Error::Unsupported("semstreams", "unsubscribe")));
                    return Ok(());
                };
                self.subs.remove(&topic);
                self.pending.insert(id, Pending::Unsubscribe(reply));
                text
            }
            Command::Publish {
                topic,
                data,
                headers,
                reply,
            } => {
                self.pending.insert(id, Pending::Publish(reply));
                self.dialect.publish(&topic, &data, &headers, id)
            }
        };
        send_text(writer, text).await
    }

    /// Handles one message.
    async fn incoming(&mut self, text: &[u8], resubscribing: &mut usize) -> Answer {
        match self.dialect.decode(text) {
            Some(Incoming::Event(event)) => {
                // Exact subscriptions first; patterns get what matched them.
                let target = if self.subs.contains_key(&event.topic) {
                    Some(event.topic.clone())
                } else {
                    self.subs.keys().find(|p| matches(p, &event.topic)).cloned()
                };
                if let Some(sub) = target.and_then(|t| self.subs.get_mut(&t)) {
                    if let (Some(o), Some(pos)) = (event.offset, sub.position.as_mut()) {
                        pos.offset = o;
                    }
                    let _ = sub.events.send(event).await;
                }
                Answer::Nothing
            }
            Some(Incoming::Ack {
                id,
                top,
                epoch,
                recovered,
            }) => {
                let answer = Subscribed {
                    top,
                    epoch: epoch.clone(),
                    recovered,
                };
                match self.pending.remove(&id) {
                    Some(Pending::Subscribe(topic)) => {
                        if let Some(sub) = self.subs.get_mut(&topic) {
                            track(sub, top, epoch);
                            if let Some((reply, events)) = sub.waiting.take() {
                                let _ = reply.send(Ok(Subscription {
                                    subscribed: answer,
                                    events,
                                }));
                            }
                        }
                        Answer::Nothing
                    }
                    Some(Pending::Resubscribe(topic)) => {
                        if let Some(sub) = self.subs.get_mut(&topic) {
                            track(sub, top, epoch);
                        }
                        let _ = self
                            .events
                            .send(LinkEvent::Resubscribed { topic, recovered });
                        *resubscribing = resubscribing.saturating_sub(1);
                        if *resubscribing == 0 {
                            Answer::Resubscribed
                        } else {
                            Answer::Nothing
                        }
                    }
                    Some(Pending::Unsubscribe(reply)) | Some(Pending::Publish(reply)) => {
                        let _ = reply.send(Ok(()));
                        Answer::Nothing
                    }
                    None => Answer::Nothing,
                }
            }
            Some(Incoming::Nack {
                id: Some(id),
                reason,
            }) => {
                match self.pending.remove(&id) {
                    Some(Pending::Subscribe(topic)) | Some(Pending::Resubscribe(topic)) => {
                        if let Some(mut sub) = self.subs.remove(&topic) {
                            if let Some((reply, _)) = sub.waiting.take() {
                                let _ = reply.send(Err(Error::Nack(reason)));
                            }
                        }
                    }
                    Some(Pending::Unsubscribe(reply)) | Some(Pending::Publish(reply)) => {
                        let _ = reply.send(Err(Error::Nack(reason)));
                    }
                    None => {}
                }
                Answer::Nothing
            }
            Some(Incoming::Slow {
                queue_depth,
                queue_capacity,
            }) => {
                let _ = self.events.send(LinkEvent::Slow {
                    queue_depth,
                    queue_capacity,
                });
                Answer::Nothing
            }
            Some(Incoming::Request { id, rate_limit }) => {
                if let Some(rate) = rate_limit {
                    self.send_rate = rate;
                }
                Answer::Send(crate::wire::semstreams::reply(&id, rate_limit))
            }
            Some(Incoming::Nack { id: None, .. }) | None => Answer::Nothing,
        }
    }

    /// The link dropped: requests sent on it will never be answered.
    fn fail_in_flight(&mut self) {
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Unsubscribe(reply) | Pending::Publish(reply) => {
                    let _ = reply.send(Err(Error::Disconnected));
                }
                // Subscriptions are re-made on the next connection.
                Pending::Subscribe(_) | Pending::Resubscribe(_) => {}
            }
        }
    }

    fn give_up(&mut self) {
        for (_, mut sub) in std::mem::take(&mut self.subs) {
            if let Some((reply, _)) = sub.waiting.take() {
                let _ = reply.send(Err(Error::GaveUp));
            }
        }
        self.commands.close();
    }
}

/// After an ack: an exact history channel's position starts at its top (or stays where
/// the replay will take it); a new epoch restarts it.
fn track(sub: &mut Sub, top: Option<u64>, epoch: Option<String>) {
    let (Some(top), Some(epoch)) = (top, epoch) else {
        return;
    };
    match sub.position.as_mut() {
        // Resuming: the replay moves the offset on; only the epoch is learned.
        Some(pos) if pos.epoch.as_deref() == Some(epoch.as_str()) => {}
        Some(pos) if pos.offset > 0 && pos.epoch.is_none() => pos.epoch = Some(epoch),
        Some(pos) => {
            // A new epoch (or a resume from 0): the replay brings everything retained.
            pos.epoch = Some(epoch);
            pos.offset = 0;
        }
        None => {
            sub.position = Some(Position {
                offset: top,
                epoch: Some(epoch),
            })
        }
    }
}

async fn send_text(writer: &mut Writer, text: String) -> Result<(), String> {
    writer
        .write_frame(Frame::text(Payload::Owned(text.into_bytes())))
        .await
        .map_err(|e| format!("write failed: {e}"))
}

/// MQTT-style match of `topic` against `pattern` (`+` one level, `#` the rest).
fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('/');
    let mut t = topic.split('/');
    loop {
        match (p.next(), t.next()) {
            (Some("#"), _) => return !topic.starts_with('$'),
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}
