//! HTTP on a shard for every socket the lean handshake (`handshake`) passes on. hyper
//! parses requests (with a header-read timeout against slowloris); the WebSocket path
//! goes to `upgrade`, the rest to `api`. Over the connection limit, every request gets
//! 503 and the socket closes.

use super::prefixed::Prefixed;
use super::upgrade;
use crate::api;
use crate::auth::IpSlot;
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

/// Response type used everywhere.
pub type HttpResponse = Response<Full<Bytes>>;

/// A socket hyper serves, as the upgrade sees it.
#[derive(Default)]
pub struct Socket {
    /// The socket now belongs to a WebSocket connection (which releases it).
    pub upgraded: Cell<bool>,
    /// Its place in its address's count; an upgrade takes it along.
    pub ip_slot: Cell<Option<IpSlot>>,
}

/// Serves one socket with hyper; `stream` replays what the lean handshake already read.
pub async fn serve(
    shard: Rc<Shard>,
    stream: Prefixed,
    peer: SocketAddr,
    over_limit: bool,
    ip_slot: Option<IpSlot>,
) {
    let upgraded = Rc::new(Socket {
        upgraded: Cell::new(false),
        ip_slot: Cell::new(ip_slot),
    });
    let requests = Rc::new(Cell::new(0u64));
    let service = {
        let shard = shard.clone();
        let upgraded = upgraded.clone();
        let requests = requests.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let shard = shard.clone();
            let upgraded = upgraded.clone();
            requests.set(requests.get() + 1);
            async move { Ok::<_, Infallible>(route(shard, peer, over_limit, &upgraded, req).await) }
        })
    };
    let server = &shard.broker.config.server;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(server.handshake_timeout)
        .keep_alive(!over_limit);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = connection.await {
        tracing::debug!(shard = shard.id, %peer, error = %e, "http connection ended with an error");
        // SPEC §4: every refusal is counted. hyper has answered a request it could not
        // parse (400/414/431); a header timeout before any request is a slowloris (after
        // one, it is only a kept-alive connection going quiet).
        if e.is_parse() {
            shard.broker.global.reject(Reject::BadHandshake);
        } else if e.is_timeout() && requests.get() == 0 {
            shard.broker.global.reject(Reject::HandshakeTimeout);
        }
    }
    // An upgraded socket now belongs to a WebSocket connection, which releases it.
    if !upgraded.upgraded.get() {
        shard.broker.socket_closed();
    }
}

async fn route(
    shard: Rc<Shard>,
    peer: SocketAddr,
    over_limit: bool,
    upgraded: &Socket,
    req: Request<Incoming>,
) -> HttpResponse {
    if over_limit {
        shard.broker.global.reject(Reject::TooManyConnections);
        return api::unavailable(&Reject::TooManyConnections.to_string(), 1);
    }
    if req.uri().path() == shard.broker.config.server.ws_path {
        return upgrade::upgrade(&shard, req, upgraded, peer);
    }
    api::handle(&shard, peer, req).await
}
