//! `shardcast subscribe --url WS_URL --channel C [--since N]`: prints what a channel
//! carries, history first, then live publications, until SIGINT/SIGTERM, the end of the
//! followed process (`--until-exit`) or the end of the connection (SPEC §9, "Clients").
//!
//! It is a vws client (subprotocol `vws`): the subscribe `{"k":"s","t":C,"i":1,"o"?:N}`
//! is answered by an ack (with the channel's position on history channels) or a nack with
//! the broker's reason, so a refusal is reported instead of waiting in silence.
//!
//! Output (stdout), one line per publication (see [`render_plain`], [`render_json`]):
//! a `process_output` line as itself, a `process_status` as `[exited, code 0]`, anything
//! else as its data in compact JSON; `--json` prints `{"offset","channel","type","data"}`
//! objects. Notices (a `--since` that could not be honoured, missed offsets, the end of the
//! connection) go to stderr.
//!
//! Not a general WebSocket client: `ws://` only (no TLS), no reconnect.

use crate::api_client::{encode_path_segment, error_text, ApiClientError, BaseUrl};
use crate::cli::SubscribeArgs;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, Role, WebSocket, WebSocketError};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{
    CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE, USER_AGENT,
};
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

/// Default `--url`: the broker's WebSocket endpoint on this machine.
pub const DEFAULT_WS_URL: &str = "ws://127.0.0.1:8080/ws";
/// Path used when `--url` has none (the broker's default `server.ws_path`).
pub const DEFAULT_WS_PATH: &str = "/ws";
/// The dialect this client speaks.
pub const SUBPROTOCOL: &str = "vws";
/// Time allowed to open the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the whole connection set-up (TCP, HTTP upgrade).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed for the broker to answer the subscribe (ack or nack).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed to send our close frame when stopping.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes of a refused upgrade's body shown in the error.
const MAX_ERROR_BODY: usize = 4096;
/// The `i` of our one request.
const SUBSCRIBE_ID: u64 = 1;

/// How a subscribe session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// SIGINT or SIGTERM.
    Stopped,
    /// `--until-exit` saw the process's final status.
    ProcessEnded,
    /// Our stdout was closed (e.g. `| head`).
    OutputClosed,
}

/// A parsed `ws://host[:port][/path][?query]` URL, with `?token=` added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// Host to connect to (IPv6 without brackets).
    pub host: String,
    /// Port, 80 when absent.
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header and messages.
    pub authority: String,
    /// The request target: path (default [`DEFAULT_WS_PATH`]) and query.
    pub target: String,
}

impl WsUrl {
    /// Parses `ws://host[:port][/path][?query]` (`http://` is taken as the same thing); a
    /// URL without a path gets [`DEFAULT_WS_PATH`]. `token` is appended as `token=` to the
    /// query, percent-encoded.
    ///
    /// # Errors
    /// `wss://`/`https://`, another scheme, a fragment, or a bad host or port.
    pub fn parse(url: &str, token: Option<&str>) -> anyhow::Result<WsUrl> {
        let trimmed = url.trim();
        let scheme_end = trimmed.find("://").map_or(0, |i| i + 3);
        let (scheme, rest) = trimmed.split_at(scheme_end);
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "wss://" || scheme == "https://" {
            bail!(
                "invalid WebSocket URL {url:?}: wss:// (TLS) is not supported; use ws:// \
                 (e.g. {DEFAULT_WS_URL}), through a TLS-terminating proxy if need be"
            );
        }
        if scheme != "ws://" && scheme != "http://" {
            bail!("invalid WebSocket URL {url:?}: must start with ws:// (e.g. {DEFAULT_WS_URL})");
        }
        if rest.contains('#') {
            bail!("invalid WebSocket URL {url:?}: must not have a fragment (#...)");
        }
        let (base, query) = match rest.split_once('?') {
            Some((base, query)) => (base, query),
            None => (rest, ""),
        };
        let base = BaseUrl::parse(&format!("http://{base}")).map_err(|e| match e {
            ApiClientError::InvalidUrl { reason, .. } => {
                anyhow!("invalid WebSocket URL {url:?}: {reason}")
            }
            other => anyhow!("invalid WebSocket URL {url:?}: {other}"),
        })?;
        let mut target = if base.prefix.is_empty() {
            DEFAULT_WS_PATH.to_owned()
        } else {
            base.prefix
        };
        let mut params: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            params.retain(|p| !p.starts_with("token="));
            params.push(format!("token={}", encode_path_segment(token)));
        }
        if !params.is_empty() {
            target.push('?');
            target.push_str(&params.join("&"));
        }
        Ok(WsUrl {
            host: base.host,
            port: base.port,
            authority: base.authority,
            target,
        })
    }

    /// The URL for messages, without the query (which may hold the token).
    pub fn display(&self) -> String {
        let path = self.target.split('?').next().unwrap_or_default();
        format!("ws://{}{path}", self.authority)
    }
}

type Ws = FragmentCollector<TokioIo<Upgraded>>;

/// Runs `shardcast subscribe`.
///
/// # Errors
/// A bad URL, the broker unreachable or refusing the upgrade, the subscribe refused (nack)
/// or unanswered, the connection closed or lost, or stdout failing (other than closed).
pub async fn run(args: &SubscribeArgs) -> anyhow::Result<Outcome> {
    let url = WsUrl::parse(&args.url, args.token.as_deref())?;
    let has_token = args.token.as_deref().is_some_and(|t| !t.is_empty());
    let mut stop = Stop::new()?;
    let connected = tokio::select! {
        biased;
        () = stop.wait() => None,
        ws = connect(&url, has_token) => Some(ws),
    };
    let Some(ws) = connected else {
        return Ok(Outcome::Stopped);
    };
    let mut ws = ws?;
    let request = subscribe_request(&args.channel, args.since);
    ws.write_frame(Frame::text(Payload::Owned(request.into_bytes())))
        .await
        .map_err(|e| lost(&url, &e))?;

    let output = OutputWatch::new();
    let stdout = std::io::stdout();
    let mut session = Session::new(args, stdout.lock());
    let ack_deadline = Instant::now() + ACK_TIMEOUT;
    loop {
        let acked = session.acked;
        let step = tokio::select! {
            biased;
            () = stop.wait() => Step::Stop,
            () = output.closed() => Step::OutputClosed,
            read = async {
                if acked {
                    Some(ws.read_frame().await)
                } else {
                    tokio::time::timeout_at(ack_deadline, ws.read_frame()).await.ok()
                }
            } => match read {
                Some(frame) => Step::Frame(frame),
                None => Step::AckTimeout,
            },
        };
        let frame = match step {
            Step::Stop => {
                close(&mut ws).await;
                return Ok(Outcome::Stopped);
            }
            Step::OutputClosed => {
                close(&mut ws).await;
                return Ok(Outcome::OutputClosed);
            }
            Step::AckTimeout => bail!(
                "the broker at {} did not answer the subscribe to {:?} within {}s",
                url.display(),
                args.channel,
                ACK_TIMEOUT.as_secs()
            ),
            Step::Frame(frame) => frame.map_err(|e| lost(&url, &e))?,
        };
        match frame.opcode {
            OpCode::Text => match session.handle(&frame.payload) {
                Ok(Handled::Continue) => {}
                Ok(Handled::ProcessEnded) => {
                    close(&mut ws).await;
                    return Ok(Outcome::ProcessEnded);
                }
                Err(Failure::Refused(reason)) => bail!(
                    "the broker refused the subscription to {:?}: {reason}",
                    args.channel
                ),
                Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    close(&mut ws).await;
                    return Ok(Outcome::OutputClosed);
                }
                Err(Failure::Output(e)) => {
                    close(&mut ws).await;
                    return Err(e).context("cannot write to stdout");
                }
            },
            OpCode::Close => bail!("{}", closed_message(&url, &frame.payload)),
            // Pings are answered by fastwebsockets; the broker sends no binary frames.
            _ => {}
        }
    }
}

enum Step<'f> {
    Stop,
    OutputClosed,
    AckTimeout,
    Frame(Result<Frame<'f>, WebSocketError>),
}

/// The vws subscribe request.
pub fn subscribe_request(channel: &str, since: Option<u64>) -> String {
    let mut request = serde_json::json!({ "k": "s", "t": channel, "i": SUBSCRIBE_ID });
    if let (Some(n), Some(map)) = (since, request.as_object_mut()) {
        map.insert("o".to_owned(), n.into());
    }
    request.to_string()
}

/// SIGINT and SIGTERM, listened for from the start so neither kills us mid-line.
struct Stop {
    int: Signal,
    term: Signal,
}

impl Stop {
    fn new() -> anyhow::Result<Stop> {
        Ok(Stop {
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Notices that stdout is a pipe whose reader has gone (the write end reports an
/// error), so `shardcast subscribe ... | grep -m1 x` ends with its reader even when
/// nothing more is published (a write would only fail at the next publication).
struct OutputWatch(Option<AsyncFd<std::fs::File>>);

impl OutputWatch {
    fn new() -> OutputWatch {
        let watched = || -> Option<AsyncFd<std::fs::File>> {
            // A duplicate of fd 1: same pipe, closed with the watch.
            let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
            let file = std::fs::File::from(fd);
            let kind = file.metadata().ok()?.file_type();
            if !kind.is_fifo() {
                return None;
            }
            // SAFETY: the `File` is moved into the `AsyncFd` and owned by it: its fd stays
            // open, on the same pipe, until the `AsyncFd` (which deregisters first) drops it.
            #[allow(unsafe_code)]
            let registered = unsafe { AsyncFd::register_with_interest(file, Interest::ERROR) };
            registered.ok()
        };
        OutputWatch(watched())
    }

    /// Resolves when the reader has gone; never where stdout cannot be watched.
    async fn closed(&self) {
        let Some(fd) = &self.0 else {
            return std::future::pending().await;
        };
        loop {
            match fd.ready(Interest::ERROR).await {
                Ok(guard) if guard.ready().is_error() => return,
                Ok(mut guard) => guard.clear_ready(),
                Err(_) => return std::future::pending().await,
            }
        }
    }
}

/// Opens the WebSocket: TCP, HTTP/1.1 upgrade offering `vws`, checks of the 101 answer.
async fn connect(url: &WsUrl, has_token: bool) -> anyhow::Result<Ws> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(url, has_token)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "no WebSocket handshake with {} within {}s",
            url.display(),
            HANDSHAKE_TIMEOUT.as_secs()
        ),
    }
}

async fn handshake(url: &WsUrl, has_token: bool) -> anyhow::Result<Ws> {
    let authority = &url.authority;
    let stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((url.host.as_str(), url.port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => bail!("cannot connect to {authority}: {e}"),
        Err(_) => bail!("cannot connect to {authority}: connect timed out"),
    };
    let _ = stream.set_nodelay(true);
    let key = fastwebsockets::handshake::generate_key();
    let request = Request::get(url.target.as_str())
        .header(HOST, authority.as_str())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_KEY, key.as_str())
        .header(SEC_WEBSOCKET_VERSION, "13")
        .header(SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        .header(USER_AGENT, concat!("shardcast/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .with_context(|| format!("invalid WebSocket request for {}", url.display()))?;
    let failed = |e: hyper::Error| anyhow!("WebSocket handshake with {authority} failed: {e}");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(failed)?;
    tokio::spawn(async move {
        // Ends when the upgraded connection is dropped.
        let _ = conn.with_upgrades().await;
    });
    let mut response = sender.send_request(request).await.map_err(failed)?;
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = Limited::new(response.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        bail!(
            "{}",
            refusal_message(url, status.as_u16(), &body, has_token)
        );
    }
    let header = |name: hyper::header::HeaderName| -> String {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let expected = crate::server::handshake::accept_key(key.as_bytes());
    if header(SEC_WEBSOCKET_ACCEPT).as_bytes() != expected.as_slice() {
        bail!(
            "{} answered the upgrade with a wrong Sec-WebSocket-Accept (is it a WebSocket server?)",
            url.display()
        );
    }
    let protocol = header(SEC_WEBSOCKET_PROTOCOL);
    if protocol != SUBPROTOCOL {
        bail!(
            "{} did not accept the {SUBPROTOCOL} subprotocol (it answered {protocol:?}); is it a shardcast broker?",
            url.display()
        );
    }
    let upgraded = hyper::upgrade::on(&mut response).await.map_err(failed)?;
    let mut ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    Ok(FragmentCollector::new(ws))
}

/// Why the broker refused the upgrade, with a hint for the usual mistakes.
pub fn refusal_message(url: &WsUrl, status: u16, body: &str, has_token: bool) -> String {
    let reason = error_text(body);
    let mut message = format!(
        "the broker at {} refused the WebSocket connection: HTTP {status}",
        url.display()
    );
    if !reason.is_empty() {
        message.push_str(": ");
        message.push_str(&reason);
    }
    match status {
        401 if !has_token => message.push_str(" (give a credential with --token or SHARDCAST_TOKEN)"),
        404 | 400 => message.push_str(&format!(
            " (is {DEFAULT_WS_PATH} the broker's server.ws_path? give the full URL, e.g. {DEFAULT_WS_URL})"
        )),
        _ => {}
    }
    message
}

/// Sends a normal close, without waiting long for it.
async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.write_frame(Frame::close(1000, b""))).await;
}

fn lost(url: &WsUrl, e: &WebSocketError) -> anyhow::Error {
    match e {
        WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed => anyhow!(
            "the connection to {} was lost (closed without a close frame)",
            url.display()
        ),
        other => anyhow!("the connection to {} was lost: {other}", url.display()),
    }
}

/// `the broker closed the connection (1001 going away: shutting down)`.
pub fn closed_message(url: &WsUrl, payload: &[u8]) -> String {
    let (code, reason) = match payload {
        [hi, lo, reason @ ..] => (
            u16::from_be_bytes([*hi, *lo]),
            String::from_utf8_lossy(reason),
        ),
        _ => return format!("the broker at {} closed the connection", url.display()),
    };
    let name = match code {
        1000 => " normal",
        1001 => " going away",
        1002 => " protocol error",
        1003 => " unsupported data",
        1007 => " invalid data",
        1008 => " policy violation",
        1009 => " message too big",
        1011 => " internal error",
        1012 => " service restart",
        1013 => " try again later",
        _ => "",
    };
    let reason = reason.trim();
    let sep = if reason.is_empty() { "" } else { ": " };
    format!(
        "the broker at {} closed the connection ({code}{name}{sep}{reason})",
        url.display()
    )
}

fn say(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "shardcast subscribe: {message}");
}

/// One message from the broker (ack, nack or event); unknown keys are ignored.
#[derive(Debug, Deserialize)]
struct Incoming<'a> {
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    i: Option<serde_json::Value>,
    #[serde(default)]
    t: Option<String>,
    #[serde(default, borrow)]
    d: Option<&'a RawValue>,
    #[serde(default)]
    h: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    o: Option<u64>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    r: Option<bool>,
}

/// One publication, as printed.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The channel it was published on.
    pub channel: &'a str,
    /// Its gows type (`event` when the broker sent none).
    pub kind: &'a str,
    /// Its offset on a history channel.
    pub offset: Option<u64>,
    /// Its data, as JSON text.
    pub data: &'a str,
    /// Headers other than `type`, when there are any.
    pub headers: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

enum Handled {
    Continue,
    ProcessEnded,
}

enum Failure {
    Refused(String),
    Output(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Output(e)
    }
}

/// The state of one subscription: ack, offsets seen, output.
struct Session<W> {
    out: W,
    pattern: String,
    since: Option<u64>,
    json: bool,
    until_exit: bool,
    prefix_channel: bool,
    acked: bool,
    /// The channel's last offset when the subscription was attached (history channels).
    top: Option<u64>,
    /// Last offset printed, per channel, to notice holes.
    last: HashMap<String, u64>,
}

impl<W: Write> Session<W> {
    fn new(args: &SubscribeArgs, out: W) -> Session<W> {
        Session {
            out,
            pattern: args.channel.clone(),
            since: args.since,
            json: args.json,
            until_exit: args.until_exit,
            prefix_channel: args.channel.contains(['+', '#']),
            acked: false,
            top: None,
            last: HashMap::new(),
        }
    }

    fn handle(&mut self, payload: &[u8]) -> Result<Handled, Failure> {
        let msg: Incoming<'_> = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                say(format_args!(
                    "ignoring a message that is not vws JSON ({e})"
                ));
                return Ok(Handled::Continue);
            }
        };
        let ours = msg.i.as_ref().and_then(serde_json::Value::as_u64) == Some(SUBSCRIBE_ID);
        match msg.k.as_deref() {
            Some("a") if ours => {
                self.acked(&msg);
                Ok(Handled::Continue)
            }
            Some("n") if ours => Err(Failure::Refused(
                msg.e.unwrap_or_else(|| "no reason given".to_owned()),
            )),
            Some("n") => {
                let reason = msg.e.as_deref().unwrap_or("no reason given");
                say(format_args!("the broker reported: {reason}"));
                Ok(Handled::Continue)
            }
            Some(_) => Ok(Handled::Continue),
            None => self.event(&msg),
        }
    }

    fn acked(&mut self, ack: &Incoming<'_>) {
        self.acked = true;
        let epoch = ack.e.as_deref().unwrap_or_default();
        // `o` with an empty epoch: the channel keeps no history.
        self.top = ack.o.filter(|_| !epoch.is_empty());
        let Some(n) = self.since else {
            return;
        };
        match ack.r {
            Some(true) => {
                // Every publication after `n` follows: the next offset must be n + 1.
                self.last.insert(self.pattern.clone(), n);
                return;
            }
            Some(false) => {}
            None => return,
        }
        let channel = &self.pattern;
        match self.top {
            None => say(format_args!(
                "channel {channel:?} keeps no history: --since {n} cannot be honoured; \
                 printing new publications only"
            )),
            Some(top) if n > top => say(format_args!(
                "--since {n} is beyond the last offset of {channel:?} ({top}, epoch {epoch}): \
                 nothing to replay; printing new publications only"
            )),
            Some(top) => say(format_args!(
                "--since {n} could not be honoured completely: some publications of {channel:?} \
                 after offset {n} are gone (expired, evicted, or the history restarted; now \
                 epoch {epoch}, last offset {top}); printing everything still retained"
            )),
        }
    }

    fn event(&mut self, msg: &Incoming<'_>) -> Result<Handled, Failure> {
        let Some(channel) = msg.t.as_deref() else {
            return Ok(Handled::Continue);
        };
        // Broadcasts (`$broadcast`) reach every client; only our channel is printed.
        if !crate::topic::pattern_matches(&self.pattern, channel) {
            return Ok(Handled::Continue);
        }
        let kind = msg
            .h
            .as_ref()
            .and_then(|h| h.get("type"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("event");
        // Headers besides the type (e.g. `traceparent`), shown by `--json`.
        let extra = msg
            .h
            .as_ref()
            .filter(|h| h.keys().any(|k| k != "type"))
            .map(|h| {
                let mut h = h.clone();
                h.remove("type");
                h
            });
        let event = Event {
            channel,
            kind,
            offset: msg.o,
            data: msg.d.map_or("null", RawValue::get),
            headers: extra.as_ref(),
        };
        if let Some(offset) = event.offset {
            self.check_offset(channel, offset);
        }
        let line = if self.json {
            render_json(&event)
        } else {
            render_plain(&event, self.prefix_channel)
        };
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        let latest = match (self.top, event.offset) {
            (Some(top), Some(offset)) => offset >= top,
            _ => true,
        };
        if self.until_exit && latest && final_status(&event) {
            return Ok(Handled::ProcessEnded);
        }
        Ok(Handled::Continue)
    }

    fn check_offset(&mut self, channel: &str, offset: u64) {
        let Some(last) = self.last.get_mut(channel) else {
            self.last.insert(channel.to_owned(), offset);
            return;
        };
        let expected = last.saturating_add(1);
        if offset > expected {
            say(format_args!(
                "missed {} publication(s) of {channel:?}: offsets {expected} to {}",
                offset - expected,
                offset - 1
            ));
        } else if offset < expected {
            say(format_args!(
                "the offsets of {channel:?} restarted at {offset} (its history was reset)"
            ));
        }
        *last = offset;
    }
}

/// A `process_status` that ends the process: `exited`, `killed` or `failed`.
pub fn final_status(event: &Event<'_>) -> bool {
    event.kind == "process_status"
        && serde_json::from_str::<serde_json::Value>(event.data).is_ok_and(|d| {
            matches!(
                d.get("status").and_then(serde_json::Value::as_str),
                Some("exited" | "killed" | "failed")
            )
        })
}

/// The line printed for `event` without `--json`: a `process_output` line as itself, a
/// `process_status` as `[running]` / `[exited, code N]` / `[killed]` / `[failed]`, other
/// data as compact JSON; `CHANNEL<TAB>` in front when `prefix_channel` (wildcard patterns).
pub fn render_plain(event: &Event<'_>, prefix_channel: bool) -> String {
    let body = match event.kind {
        "process_output" => serde_json::from_str::<String>(event.data)
            .unwrap_or_else(|_| compact_json(event.data).into_owned()),
        "process_status" => {
            status_line(event.data).unwrap_or_else(|| compact_json(event.data).into_owned())
        }
        _ => compact_json(event.data).into_owned(),
    };
    if prefix_channel {
        format!("{}\t{body}", event.channel)
    } else {
        body
    }
}

/// `[exited, code 0]` for `{"status":"exited","exitCode":0}`; `None` when `data` is not a
/// status object.
fn status_line(data: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    let status = value.get("status")?.as_str()?;
    let code = value
        .get("exitCode")
        .and_then(serde_json::Value::as_i64)
        .filter(|c| *c >= 0 && status != "running");
    Some(match code {
        Some(code) => format!("[{status}, code {code}]"),
        None => format!("[{status}]"),
    })
}

/// The `--json` line: `{"offset":N|null,"channel":C,"type":T,"data":D,"headers"?:{..}}`.
pub fn render_json(event: &Event<'_>) -> String {
    let mut line = String::with_capacity(event.data.len() + event.channel.len() + 64);
    line.push_str("{\"offset\":");
    match event.offset {
        Some(o) => line.push_str(itoa::Buffer::new().format(o)),
        None => line.push_str("null"),
    }
    line.push_str(",\"channel\":");
    line.push_str(&serde_json::Value::from(event.channel).to_string());
    line.push_str(",\"type\":");
    line.push_str(&serde_json::Value::from(event.kind).to_string());
    line.push_str(",\"data\":");
    line.push_str(&compact_json(event.data));
    if let Some(headers) = event.headers {
        line.push_str(",\"headers\":");
        line.push_str(&serde_json::Value::Object(headers.clone()).to_string());
    }
    line.push('}');
    line
}

/// `raw` (valid JSON) without whitespace outside strings, so it fits on one line.
pub fn compact_json(raw: &str) -> Cow<'_, str> {
    let mut in_string = false;
    let mut escaped = false;
    let mut out: Option<String> = None;
    for (i, c) in raw.char_indices() {
        let keep = if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            true
        } else if c == '"' {
            in_string = true;
            true
        } else {
            !matches!(c, ' ' | '\t' | '\n' | '\r')
        };
        match (&mut out, keep) {
            (Some(s), true) => s.push(c),
            (Some(_), false) => {}
            (None, true) => {}
            (None, false) => out = Some(raw.get(..i).unwrap_or_default().to_owned()),
        }
    }
    match out {
        Some(s) => Cow::Owned(s),
        None => Cow::Borrowed(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str, token: Option<&str>) -> WsUrl {
        WsUrl::parse(u, token).expect("valid URL")
    }

    fn args(channel: &str) -> SubscribeArgs {
        SubscribeArgs {
            url: DEFAULT_WS_URL.to_owned(),
            channel: channel.to_owned(),
            since: None,
            json: false,
            until_exit: false,
            token: None,
        }
    }

    fn event<'a>(kind: &'a str, data: &'a str, offset: Option<u64>) -> Event<'a> {
        Event {
            channel: "process:b1",
            kind,
            offset,
            data,
            headers: None,
        }
    }

    #[test]
    fn parses_ws_urls() {
        let u = url("ws://127.0.0.1:8080/ws", None);
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8080));
        assert_eq!(
            (u.authority.as_str(), u.target.as_str()),
            ("127.0.0.1:8080", "/ws")
        );
        assert_eq!(url("ws://h:9", None).target, "/ws");
        assert_eq!(url("ws://h:9/", None).target, "/ws");
        assert_eq!(url("http://h:9/stream/", None).target, "/stream");
        assert_eq!(url("WS://[::1]:9/x?a=1", None).host, "::1");
        assert_eq!(url("ws://h/x?a=1", None).port, 80);
        assert_eq!(
            url("ws://h/x?a=1&token=old", Some("a b/c")).target,
            "/x?a=1&token=a%20b%2Fc"
        );
        assert_eq!(url("ws://h/x", Some("")).target, "/x");
        let u = url("ws://h:1/ws?token=secret", None);
        assert_eq!(u.display(), "ws://h:1/ws", "no token in messages");
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "wss://h/ws",
            "https://h",
            "h:8080/ws",
            "ftp://h",
            "ws://",
            "ws://h:0",
            "ws://h/ws#x",
            "ws://u@h",
        ] {
            assert!(WsUrl::parse(bad, None).is_err(), "{bad} should be refused");
        }
        let e = WsUrl::parse("wss://h", None)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn subscribe_requests() {
        let plain: serde_json::Value =
            serde_json::from_str(&subscribe_request("process:b1", None)).expect("json");
        assert_eq!(
            plain,
            serde_json::json!({"k": "s", "t": "process:b1", "i": 1})
        );
        let since: serde_json::Value =
            serde_json::from_str(&subscribe_request("c", Some(17))).expect("json");
        assert_eq!(
            since,
            serde_json::json!({"k": "s", "t": "c", "i": 1, "o": 17})
        );
    }

    #[test]
    fn plain_lines() {
        assert_eq!(
            render_plain(
                &event("process_output", r#""make: ok \"x\"""#, Some(3)),
                false
            ),
            r#"make: ok "x""#
        );
        assert_eq!(
            render_plain(&event("process_output", "{\"a\": 1}", None), false),
            r#"{"a":1}"#
        );
        assert_eq!(
            render_plain(
                &event(
                    "process_status",
                    r#"{"status":"exited","exitCode":0}"#,
                    None
                ),
                false
            ),
            "[exited, code 0]"
        );
        assert_eq!(
            render_plain(
                &event(
                    "process_status",
                    r#"{"status":"killed","exitCode":-1}"#,
                    None
                ),
                false
            ),
            "[killed]"
        );
        assert_eq!(
            render_plain(
                &event(
                    "process_status",
                    r#"{"status":"running","exitCode":0}"#,
                    None
                ),
                false
            ),
            "[running]"
        );
        assert_eq!(
            render_plain(&event("process_status", "7", None), false),
            "7"
        );
        assert_eq!(
            render_plain(&event("event", "{ \"t\" : [1, \"a b\"] }\n", None), false),
            r#"{"t":[1,"a b"]}"#
        );
        assert_eq!(
            render_plain(&event("event", r#""hi""#, None), true),
            "process:b1\t\"hi\""
        );
    }

    #[test]
    fn json_lines() {
        let mut headers = serde_json::Map::new();
        headers.insert("traceparent".to_owned(), "00-x".into());
        let e = Event {
            headers: Some(&headers),
            ..event("process_output", r#""line""#, Some(17))
        };
        let line: serde_json::Value = serde_json::from_str(&render_json(&e)).expect("json");
        assert_eq!(
            line,
            serde_json::json!({"offset": 17, "channel": "process:b1", "type": "process_output",
                "data": "line", "headers": {"traceparent": "00-x"}})
        );
        let line = render_json(&event("event", "{\n \"a\": 1\n}", None));
        assert_eq!(
            line,
            r#"{"offset":null,"channel":"process:b1","type":"event","data":{"a":1}}"#
        );
    }

    #[test]
    fn compacts_only_outside_strings() {
        assert!(matches!(compact_json(r#"{"a":"b c"}"#), Cow::Borrowed(_)));
        assert_eq!(compact_json("[ \"\\\" x\" , 1 ]"), r#"["\" x",1]"#);
        assert_eq!(compact_json(" \"é \" "), "\"é \"");
    }

    #[test]
    fn final_statuses() {
        let status = |s: &str| format!(r#"{{"status":"{s}","exitCode":0}}"#);
        for s in ["exited", "killed", "failed"] {
            assert!(
                final_status(&event("process_status", &status(s), None)),
                "{s}"
            );
        }
        assert!(!final_status(&event(
            "process_status",
            &status("running"),
            None
        )));
        assert!(!final_status(&event("event", &status("exited"), None)));
    }

    fn session(a: &SubscribeArgs) -> Session<Vec<u8>> {
        Session::new(a, Vec::new())
    }

    fn feed(s: &mut Session<Vec<u8>>, msg: &str) -> Result<Handled, Failure> {
        s.handle(msg.as_bytes())
    }

    #[test]
    fn session_prints_history_and_stops_at_the_latest_exit() {
        let mut a = args("process:b1");
        a.until_exit = true;
        let mut s = session(&a);
        let exited = r#"{"t":"process:b1","d":{"status":"exited","exitCode":2},"h":{"type":"process_status"},"o":"#;
        assert!(matches!(
            feed(&mut s, r#"{"k":"a","i":1,"o":4,"e":"ep"}"#),
            Ok(Handled::Continue)
        ));
        // An earlier run's exit, replayed from history: not the end yet.
        assert!(matches!(
            feed(&mut s, &format!("{exited}1}}")),
            Ok(Handled::Continue)
        ));
        let line = r#"{"t":"process:b1","d":"hello","h":{"type":"process_output"},"o":2}"#;
        assert!(matches!(feed(&mut s, line), Ok(Handled::Continue)));
        // Broadcasts are not the channel's.
        assert!(matches!(
            feed(&mut s, r#"{"t":"$broadcast","d":1,"h":{"type":"event"}}"#),
            Ok(Handled::Continue)
        ));
        assert!(matches!(
            feed(&mut s, r#"{"t":"process:b1","d":[1],"o":3}"#),
            Ok(Handled::Continue)
        ));
        assert!(matches!(
            feed(&mut s, &format!("{exited}4}}")),
            Ok(Handled::ProcessEnded)
        ));
        assert_eq!(
            String::from_utf8_lossy(&s.out),
            "[exited, code 2]\nhello\n[1]\n[exited, code 2]\n"
        );
    }

    #[test]
    fn session_reports_a_nack() {
        let mut s = session(&args("a/#/b"));
        let refused = feed(&mut s, r#"{"k":"n","i":1,"e":"invalid pattern"}"#);
        assert!(
            matches!(&refused, Err(Failure::Refused(r)) if r == "invalid pattern"),
            "a nack of our subscribe is a refusal"
        );
    }

    #[test]
    fn closed_messages() {
        let u = url("ws://h:1/ws", None);
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"shutting down");
        assert_eq!(
            closed_message(&u, &payload),
            "the broker at ws://h:1/ws closed the connection (1001 going away: shutting down)"
        );
        assert_eq!(
            closed_message(&u, &1008u16.to_be_bytes()),
            "the broker at ws://h:1/ws closed the connection (1008 policy violation)"
        );
        assert_eq!(
            closed_message(&u, b""),
            "the broker at ws://h:1/ws closed the connection"
        );
    }

    #[test]
    fn refusal_hints() {
        let u = url("ws://h:1/ws", None);
        let m = refusal_message(&u, 401, r#"{"error":"credentials required"}"#, false);
        assert!(
            m.contains("HTTP 401: credentials required") && m.contains("--token"),
            "{m}"
        );
        let m = refusal_message(&u, 401, r#"{"error":"bad token"}"#, true);
        assert!(!m.contains("--token"), "{m}");
    }
}
