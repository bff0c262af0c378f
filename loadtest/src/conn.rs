//! One client connection: TCP connect (spreading source addresses over 127.0.x.y, so
//! port allocation stays cheap and runs can pass one address's port range), the upgrade,
//! and a read loop that pulls many frames per syscall through a per-thread scratch buffer.
//! A `wss://` target adds a rustls session over the socket (plaintext in and out of it,
//! ciphertext through the same non-blocking socket calls).

use crate::wire::{self, Dialect, Frame, Reply, Target};
use anyhow::{bail, Context, Result};
use std::cell::RefCell;
use std::io::{self, ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConnection;

/// Source addresses the connections are spread over: 127.0.x.y with x, y in 1..=250.
const SOURCES_PER_OCTET: usize = 250;

/// Size of the per-thread read buffer: one read takes up to this many bytes of frames.
pub const SCRATCH: usize = 256 * 1024;

/// A permessage-deflate inflater and its output buffer.
type Inflater = (flate2::Decompress, Vec<u8>);

thread_local! {
    /// A thread's permessage-deflate inflater and its output (`--compression`); the
    /// broker answers `server_no_context_takeover`, so it is reset per message.
    static INFLATER: RefCell<Option<Box<Inflater>>> =
        const { RefCell::new(None) };
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// An upgraded connection. `pending` holds only an incomplete frame between reads.
pub struct Conn {
    pub stream: TcpStream,
    /// `wss://`: the TLS session over `stream`.
    tls: Option<Box<ClientConnection>>,
    pending: Vec<u8>,
}

/// Connects, upgrades and returns the connection. `index` picks the source address
/// when `spread` is set.
pub async fn open(target: &Target, dialect: Dialect, index: usize, spread: bool) -> Result<Conn> {
    let stream = connect(target, index, spread).await?;
    let (stream, tls) = match &target.tls {
        None => (stream, None),
        Some(config) => {
            let name = ServerName::IpAddress(target.addr.ip().into());
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, stream)
                .await
                .context("TLS handshake")?;
            let (stream, mut session) = tls.into_inner();
            // `send` hands whole batches to rustls and flushes them itself.
            session.set_buffer_limit(None);
            (stream, Some(Box::new(session)))
        }
    };
    let mut conn = Conn {
        stream,
        tls,
        pending: Vec::new(),
    };
    conn.send(&target.upgrade_request(dialect))
        .await
        .context("send upgrade")?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn
            .read_some(&mut chunk)
            .await
            .context("read upgrade response")?;
        if n == 0 {
            bail!("connection closed during the upgrade");
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some((status, end)) = wire::response_head(&head) {
            if status != 101 {
                bail!("upgrade refused: HTTP {status}");
            }
            head.drain(..end);
            conn.pending = head;
            return Ok(conn);
        }
        if head.len() > 16 * 1024 {
            bail!("upgrade response head too long");
        }
    }
}

/// Opens the TCP connection only (no upgrade), with `TCP_NODELAY`. `index` picks the
/// source address when `spread` is set.
pub async fn connect(target: &Target, index: usize, spread: bool) -> Result<TcpStream> {
    let stream = if spread && target.is_v4() {
        // Each connection from its own loopback source address (62,500 of them): the
        // kernel then finds a free port at once instead of searching one address's
        // ephemeral range, which costs the harness more CPU than the broker spends on a
        // connection once thousands are open, and caps one address at about 28k.
        let socket = TcpSocket::new_v4().context("socket")?;
        let x = 1 + (index / SOURCES_PER_OCTET) % SOURCES_PER_OCTET;
        let y = 1 + index % SOURCES_PER_OCTET;
        let source = Ipv4Addr::new(127, 0, x as u8, y as u8);
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .with_context(|| format!("bind {source}"))?;
        socket.connect(target.addr).await
    } else {
        TcpStream::connect(target.addr).await
    }
    .with_context(|| format!("connect {}", target.addr))?;
    stream.set_nodelay(true).context("nodelay")?;
    Ok(stream)
}

/// What a read round ended with.
pub enum ReadEnd {
    /// The socket has no more data for now.
    Drained,
    /// The server closed (code and reason) or the socket ended.
    Closed(u16, String),
}

impl Conn {
    /// Sends bytes, waiting for the socket to take them all.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(tls) = &mut self.tls else {
            return self.stream.write_all(bytes).await.context("write");
        };
        tls.writer().write_all(bytes).context("TLS write")?;
        while tls.wants_write() {
            match tls.write_tls(&mut SyncIo(&self.stream)) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.stream.writable().await.context("writable")?
                }
                Err(e) => return Err(e).context("write"),
            }
        }
        Ok(())
    }

    /// Reads what is there without waiting (`WouldBlock`: nothing yet); `Ok(0)` is the
    /// end of the stream. TLS: plaintext rustls holds first, then records from the socket.
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &mut self.tls else {
            return self.stream.try_read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.read_tls(&mut SyncIo(&self.stream))? == 0 {
                return Ok(0);
            }
            tls.process_new_packets().map_err(io::Error::other)?;
            if tls.wants_write() {
                // Alerts or key updates; best effort, the next `send` flushes the rest.
                let _ = tls.write_tls(&mut SyncIo(&self.stream));
            }
        }
    }

    /// Waits for and reads some bytes.
    async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.try_read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.stream.readable().await?,
                other => return other,
            }
        }
    }

    /// Waits until readable, then reads until the socket would block, calling `on_text`
    /// for every text frame. Pings are answered. Never allocates per frame.
    pub async fn read_round(&mut self, on_text: impl FnMut(&[u8])) -> Result<ReadEnd> {
        self.stream.readable().await.context("readable")?;
        let mut pongs = Vec::new();
        let end = self.read_available(on_text, &mut pongs)?;
        if !pongs.is_empty() {
            self.send(&pongs).await?;
        }
        Ok(end)
    }

    /// Reads whatever the socket has without waiting, calling `on_text` for every text
    /// frame and appending pongs for pings to `pongs` (the caller sends them).
    pub fn read_available(
        &mut self,
        mut on_text: impl FnMut(&[u8]),
        pongs: &mut Vec<u8>,
    ) -> Result<ReadEnd> {
        SCRATCH_BUF.with(|cell| {
            let mut scratch = cell.borrow_mut();
            loop {
                // A partial frame from the last read goes first; new bytes follow it.
                let kept = self.pending.len();
                if kept > 0 {
                    if scratch.len() < kept + SCRATCH {
                        scratch.resize(kept + SCRATCH, 0);
                    }
                    scratch[..kept].copy_from_slice(&self.pending);
                    self.pending.clear();
                }
                let n = match self.try_read(&mut scratch[kept..]) {
                    Ok(0) => return Ok(ReadEnd::Closed(1006, "connection ended".into())),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.pending.extend_from_slice(&scratch[..kept]);
                        return Ok(ReadEnd::Drained);
                    }
                    Err(e) => return Ok(ReadEnd::Closed(1006, format!("read: {e}"))),
                };
                let filled = &scratch[..kept + n];
                let mut at = 0;
                while let Some((frame, used)) = wire::next_frame(&filled[at..])? {
                    at += used;
                    match frame {
                        Frame::Text(p) => on_text(p),
                        Frame::Deflated(p) => INFLATER.with(|cell| -> Result<()> {
                            on_text(inflate(p, &mut cell.borrow_mut())?);
                            Ok(())
                        })?,
                        Frame::Ping(p) => wire::push_frame(wire::OP_PONG, p, pongs),
                        Frame::Close(code, reason) => {
                            return Ok(ReadEnd::Closed(
                                code,
                                String::from_utf8_lossy(reason).into(),
                            ))
                        }
                        Frame::Other => {}
                    }
                }
                self.pending.extend_from_slice(&filled[at..]);
            }
        })
    }

    /// Writes what the socket takes now without waiting (`WouldBlock` when it takes
    /// nothing): how a sender learns the receiver's pace. Plain `ws://` only.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.tls.is_some() {
            return Err(io::Error::new(
                ErrorKind::Unsupported,
                "non-blocking sends are for ws:// targets",
            ));
        }
        self.stream.try_write(bytes)
    }

    /// Reads at most `max` text frames without waiting, calling `on_text` for each, and
    /// leaves the rest unread: in the kernel's socket buffer (so TCP pushes back on the
    /// broker) or, at most one small read's worth, in `pending`. Pongs for pings go to
    /// `pongs` (the caller sends them). Returns the text frames read and how it ended.
    pub fn read_limited(
        &mut self,
        max: usize,
        mut on_text: impl FnMut(&[u8]),
        pongs: &mut Vec<u8>,
    ) -> Result<(usize, ReadEnd)> {
        // Small reads: what is not read stays in the socket, where it slows the sender.
        let mut chunk = [0u8; 4096];
        let mut taken = 0;
        loop {
            let mut at = 0;
            while taken < max {
                let Some((frame, used)) = wire::next_frame(&self.pending[at..])? else {
                    break;
                };
                at += used;
                match frame {
                    Frame::Text(p) => {
                        on_text(p);
                        taken += 1;
                    }
                    Frame::Deflated(_) => bail!("compressed frames on a rate-limited reader"),
                    Frame::Ping(p) => wire::push_frame(wire::OP_PONG, p, pongs),
                    Frame::Close(code, reason) => {
                        let reason = String::from_utf8_lossy(reason).into_owned();
                        return Ok((taken, ReadEnd::Closed(code, reason)));
                    }
                    Frame::Other => {}
                }
            }
            self.pending.drain(..at);
            if taken >= max {
                return Ok((taken, ReadEnd::Drained));
            }
            match self.try_read(&mut chunk) {
                Ok(0) => return Ok((taken, ReadEnd::Closed(1006, "connection ended".into()))),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Ok((taken, ReadEnd::Drained))
                }
                Err(e) => return Ok((taken, ReadEnd::Closed(1006, format!("read: {e}")))),
            }
        }
    }

    /// Sends a close frame (best effort) and drops the connection.
    pub async fn close(mut self) {
        let mut out = Vec::new();
        wire::push_frame(wire::OP_CLOSE, &1000u16.to_be_bytes(), &mut out);
        let _ = self.send(&out).await;
    }

    /// Sends a close frame and waits (up to `limit`) for the server's close or EOF.
    /// Brokers handle frames in order, so when this returns everything sent before was
    /// taken; dropping the socket earlier could reset it and discard unread publishes.
    pub async fn close_and_wait(mut self, limit: std::time::Duration) {
        let mut out = Vec::new();
        wire::push_frame(wire::OP_CLOSE, &1000u16.to_be_bytes(), &mut out);
        if self.send(&out).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(limit, async {
            while let Ok(ReadEnd::Drained) = self.read_round(|_| {}).await {}
        })
        .await;
    }

    /// Subscribes to `topics` and waits until the broker has confirmed them all.
    pub async fn subscribe(&mut self, dialect: Dialect, topics: &[String]) -> Result<()> {
        let mut out = Vec::new();
        for (i, t) in topics.iter().enumerate() {
            wire::subscribe(dialect, t, i + 1, &mut out);
        }
        let mut waiting = match dialect {
            Dialect::Vws | Dialect::Semstreams => topics.len(),
            Dialect::Gows => {
                wire::gows_ping(&mut out);
                1
            }
        };
        self.send(&out).await?;
        let mut refused: Option<String> = None;
        while waiting > 0 {
            let end = self
                .read_round(|msg| match wire::reply(dialect, msg) {
                    Reply::Done => waiting = waiting.saturating_sub(1),
                    Reply::Refused(m) => {
                        waiting = 0;
                        refused = Some(String::from_utf8_lossy(m).into_owned());
                    }
                    Reply::Other => {}
                })
                .await?;
            if let ReadEnd::Closed(code, reason) = end {
                bail!("closed while subscribing: {code} {reason}");
            }
        }
        match refused {
            Some(m) => bail!("subscribe refused: {m}"),
            None => Ok(()),
        }
    }
}

/// `std::io` over a tokio socket's non-blocking calls (`WouldBlock` when not ready; the
/// caller then awaits readiness).
struct SyncIo<'a>(&'a TcpStream);

impl io::Read for SyncIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for SyncIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Inflates one permessage-deflate message (RFC 7692 §7.2.2) into the thread's buffer.
fn inflate<'a>(payload: &[u8], slot: &'a mut Option<Box<Inflater>>) -> Result<&'a [u8]> {
    let state = slot.get_or_insert_with(|| {
        Box::new((
            flate2::Decompress::new(false),
            Vec::with_capacity(64 * 1024),
        ))
    });
    let (z, out) = &mut **state;
    z.reset(false);
    out.clear();
    for piece in [payload, &[0, 0, 0xff, 0xff][..]] {
        let start = z.total_in();
        loop {
            let done = (z.total_in() - start) as usize;
            if out.len() == out.capacity() {
                out.reserve(out.len().max(4096));
            }
            let status = z
                .decompress_vec(&piece[done..], out, flate2::FlushDecompress::Sync)
                .context("server sent a compressed frame that does not inflate")?;
            if status == flate2::Status::StreamEnd
                || (z.total_in() - start) as usize == piece.len() && out.len() < out.capacity()
            {
                break;
            }
        }
    }
    Ok(out)
}
