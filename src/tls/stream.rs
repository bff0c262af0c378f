//! [`Stream`]: a connection's socket, plain TCP or TLS over TCP.
//!
//! The shard writes a connection's outbox with `try_write_vectored` outside any task
//! (fan-out flushes many connections in one pass) and waits for writability with
//! `poll_write_ready`; reads go through `AsyncRead`. `Stream` offers exactly that for
//! both kinds, so the shard and the handshake code do not care which one they hold.
//!
//! The plain variant is the `TcpStream` as before: every method is one `match` arm
//! away from the tokio call the shard made directly. The TLS variant is boxed (rustls
//! state is about a kilobyte, most of it buffers that are empty while idle) so that the
//! enum, and with it every connection's state, grows by one word at most.
//!
//! TLS writes: plaintext goes into rustls, which encrypts it at once into its outgoing
//! buffer (bounded by rustls' buffer limit, 64 KiB), and as much ciphertext as the
//! socket takes is written right away. Ciphertext the socket did not take is
//! [`Stream::pending_output`]: the shard keeps waiting for writability until it is out,
//! even when the outbox itself is empty.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConnection;

/// A connection's socket.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP (`ws://`, `http://`).
    Plain(TcpStream),
    /// TLS (`wss://`, `https://`), after its handshake.
    Tls(Box<TlsConn>),
}

/// A TCP socket and the rustls session over it.
#[derive(Debug)]
pub struct TlsConn {
    io: TcpStream,
    tls: ServerConnection,
    /// `close_notify` queued (once).
    closing: bool,
}

impl TlsConn {
    /// A session whose handshake is complete (or under way: reads and writes drive it).
    pub fn new(io: TcpStream, tls: ServerConnection) -> Self {
        TlsConn {
            io,
            tls,
            closing: false,
        }
    }

    /// Writes ciphertext until rustls has none left (`Ok(true)`) or the socket would
    /// block (`Ok(false)`), without a task context.
    fn flush_sync(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut SyncIo(&self.io)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Like [`TlsConn::flush_sync`], registering `cx` for writability when blocked.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            let mut io = AsyncIo {
                io: &mut self.io,
                cx,
            };
            match self.tls.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            // Plaintext rustls already holds first.
            match self.tls.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Closed without close_notify: most clients do that; an end of stream
                // like any other (WebSocket and HTTP frame their own messages).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let mut io = AsyncIo {
                io: &mut self.io,
                cx,
            };
            match self.tls.read_tls(&mut io) {
                Ok(0) => return Poll::Ready(Ok(())), // end of stream
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // rustls queued an alert saying why: try to send it, then fail.
                let _ = self.flush_sync();
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            // Records the peer's data may call for (key update, alerts): best effort,
            // the rest is `pending_output`.
            if self.tls.wants_write() {
                self.flush_sync()?;
            }
        }
    }

    fn try_write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // Older ciphertext first: it must not queue up behind new plaintext without bound.
        if !self.flush_sync()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write_vectored(bufs)?;
        self.flush_sync()?;
        if n == 0 {
            // rustls' buffer is full (only after a partial flush).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.poll_flush_tls(cx)?.is_pending() {
            return Poll::Pending;
        }
        let n = self.tls.writer().write(buf)?;
        // Registers `cx` when the socket is full; the bytes are accepted either way.
        let _ = self.poll_flush_tls(cx)?;
        if n == 0 && !buf.is_empty() {
            return Poll::Pending;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closing {
            self.tls.send_close_notify();
            self.closing = true;
        }
        if self.poll_flush_tls(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `std::io` over a tokio socket without a task context: `WouldBlock` when it is full
/// (and then its readiness is cleared, so a later `poll_write_ready` waits properly).
struct SyncIo<'a>(&'a TcpStream);

impl Write for SyncIo<'_> {
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

/// `std::io` over a tokio socket inside a poll: `Pending` becomes `WouldBlock` with
/// `cx` registered.
struct AsyncIo<'a, 'b> {
    io: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for AsyncIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut read = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut read) {
            Poll::Ready(Ok(())) => Ok(read.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for AsyncIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream {
    /// Whether this is a TLS connection.
    #[inline]
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// TLS ciphertext the socket has not taken yet (never for plain TCP).
    #[inline]
    pub fn pending_output(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.tls.wants_write(),
        }
    }

    /// Writes what it can of `bufs` now, without a task context (`WouldBlock`: nothing
    /// taken; wait with [`Stream::poll_write_ready`]).
    ///
    /// # Errors
    /// The socket or the TLS session failed.
    #[inline]
    pub fn try_write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.try_write_vectored(bufs),
            Stream::Tls(t) => t.try_write_vectored(bufs),
        }
    }

    /// Writes TLS ciphertext left from earlier writes, without a task context (plain:
    /// nothing to do). `WouldBlock` is not an error here: see [`Stream::pending_output`].
    ///
    /// # Errors
    /// The socket failed.
    #[inline]
    pub fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => t.flush_sync().map(|_| ()),
        }
    }

    /// Ready when a write can make progress.
    #[inline]
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => s.poll_write_ready(cx),
            Stream::Tls(t) if t.tls.wants_write() => t.io.poll_write_ready(cx),
            // rustls has room for plaintext: the next write takes some.
            Stream::Tls(_) => Poll::Ready(Ok(())),
        }
    }

    /// The plain socket, to move it to another runtime; a TLS connection stays where it
    /// is (`Err`).
    ///
    /// # Errors
    /// A TLS stream, or the socket could not leave its reactor.
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        match self {
            Stream::Plain(s) => s.into_std(),
            Stream::Tls(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a TLS connection stays on its shard",
            )),
        }
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(t) => t.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(t) => t.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(t) => {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                t.poll_write(cx, first)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(_) => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(t) => t.poll_flush_tls(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(t) => t.poll_shutdown(cx),
        }
    }
}
