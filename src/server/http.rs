//! HTTP on a shard for every socket the lean handshake (`handshake`) passes on. hyper
//! parses requests (heads capped at `server.max_request_head_bytes`, the first due within
//! `server.handshake_timeout` of accept, against slowloris); the WebSocket path goes to
//! `upgrade`, the rest to `api`. Over the connection limit, every request but health
//! and readiness gets 503 and the socket closes.

use super::pending::Ticket;
use super::prefixed::Prefixed;
use super::upgrade;
use crate::api;
use crate::auth::IpSlot;
use crate::broker::Broker;
use crate::error::Reject;
use crate::shard::Shard;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// Response type used everywhere.
pub type HttpResponse = Response<Full<Bytes>>;

/// A socket hyper serves, as the upgrade sees it.
#[derive(Default)]
pub struct Socket {
    /// The socket now belongs to a WebSocket connection (which releases it).
    pub upgraded: Cell<bool>,
    /// Its place in its address's count; an upgrade takes it along.
    pub ip_slot: Cell<Option<IpSlot>>,
    /// Its place among the sockets without a complete request head, until its first.
    pending: Cell<Option<Ticket>>,
    /// It counts in `Broker::open_sockets` (since its first request head).
    counted: Cell<bool>,
    /// It was over `server.max_connections` + headroom then: every request gets 503.
    over_limit: Cell<bool>,
}

impl Socket {
    /// A request head arrived. The first moves the socket from the pending budget to
    /// the broker's socket count, whose limit it is then held to.
    fn head_received(&self, broker: &Broker) {
        if let Some(ticket) = self.pending.take() {
            drop(ticket);
            self.counted.set(true);
            self.over_limit.set(!broker.socket_opened());
        }
    }
}

/// Serves one socket with hyper; `stream` replays what the lean handshake already read.
/// The first request head must be complete by `deadline` (the whole of
/// `server.handshake_timeout`, counted from accept); until then the socket holds
/// `ticket`.
pub async fn serve(
    shard: Rc<Shard>,
    stream: Prefixed,
    peer: SocketAddr,
    ticket: Ticket,
    deadline: Instant,
    ip_slot: Option<IpSlot>,
) {
    let socket = Rc::new(Socket {
        ip_slot: Cell::new(ip_slot),
        pending: Cell::new(Some(ticket)),
        ..Socket::default()
    });
    let service = {
        let shard = shard.clone();
        let socket = socket.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let shard = shard.clone();
            let socket = socket.clone();
            socket.head_received(&shard.broker);
            async move { Ok::<_, Infallible>(route(shard, peer, &socket, req).await) }
        })
    };
    let server = &shard.broker.config.server;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // For the requests after the first (keep-alive); the first has `deadline`.
        .header_read_timeout(server.handshake_timeout)
        // The exact head limit, answered 431. It also bounds hyper's read buffer while
        // a head is incomplete: the buffer grows by at most one read past it, instead
        // of up to max_buf_size (~400 KB) per socket.
        .max_header_size(server.max_request_head_bytes);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let first_head = tokio::time::sleep_until(deadline.into());
    tokio::pin!(first_head);
    let mut timing = true;
    let ended = loop {
        tokio::select! {
            ended = &mut connection => break Some(ended),
            () = &mut first_head, if timing => {
                if !socket.counted.get() {
                    break None;
                }
                timing = false;
            }
        }
    };
    match ended {
        // Slowloris: the first head is not complete within handshake_timeout of accept.
        // Dropping the connection closes the socket without an answer.
        None => shard.broker.global.reject(Reject::HandshakeTimeout),
        Some(Err(e)) => {
            tracing::debug!(shard = shard.id, %peer, error = %e, "http connection ended with an error");
            // SPEC §4: every refusal is counted. hyper has answered a request it could
            // not parse (400/414/431); a header timeout before any request is a
            // slowloris (after one, it is only a kept-alive connection going quiet).
            if e.is_parse_too_large() {
                shard.broker.global.reject(Reject::HeadTooLarge);
            } else if e.is_parse() {
                shard.broker.global.reject(Reject::BadHandshake);
            } else if e.is_timeout() && !socket.counted.get() {
                shard.broker.global.reject(Reject::HandshakeTimeout);
            }
        }
        Some(Ok(())) => {}
    }
    // An upgraded socket now belongs to a WebSocket connection, which releases it.
    if socket.counted.get() && !socket.upgraded.get() {
        shard.broker.socket_closed();
    }
}

async fn route(
    shard: Rc<Shard>,
    peer: SocketAddr,
    socket: &Socket,
    req: Request<Incoming>,
) -> HttpResponse {
    let path = req.uri().path();
    // Health and readiness stay answerable even over the limit: they are what a load
    // balancer or orchestrator watches, and cost nothing.
    if socket.over_limit.get() && path != "/healthz" && path != "/readyz" {
        shard.broker.global.reject(Reject::TooManyConnections);
        let mut response = api::unavailable(&Reject::TooManyConnections.to_string(), 1);
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        return response;
    }
    if path == shard.broker.config.server.ws_path {
        return upgrade::upgrade(&shard, req, socket, peer);
    }
    api::handle(&shard, peer, req).await
}
