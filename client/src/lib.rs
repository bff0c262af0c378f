//! A Rust client for the shardcast broker (SPEC §11): vws by default, or the SemStreams
//! envelope ([`Dialect::SemStreams`]) to push into a SemStreams WebSocket Input.
//!
//! One [`Client`] holds one WebSocket to a broker, re-made after any failure with
//! exponential backoff and full jitter ([`BackoffConfig`]). Subscriptions survive
//! reconnects: exact history channels are resubscribed from the last offset received, so
//! nothing still retained by the broker is lost, and [`LinkEvent::Resubscribed`] says
//! whether the resume was complete. Credentials come from a provider asked at each
//! connect (and asked for fresh ones after a 401). A link on which nothing arrives within
//! the ping deadline is dropped and re-made.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shardcast_client::Error> {
//! use shardcast_client::{Client, Credentials};
//! use std::collections::BTreeMap;
//!
//! let client = Client::builder("ws://127.0.0.1:8080/ws")
//!     .credentials(Credentials::Bearer("s3cret-token".into()))
//!     .connect()?;
//! let mut sub = client.subscribe("chat/#").await?;
//! client.publish("chat/lobby", &"hello", BTreeMap::new()).await?;
//! while let Some(event) = sub.next().await {
//!     println!("{} {}", event.topic, event.data);
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod client;
mod conn;
mod credentials;
mod url;
mod wire;

pub use backoff::{random_seed, Backoff, BackoffConfig};
pub use client::{Client, ClientBuilder, LinkEvent, Subscribed, Subscription};
pub use conn::{accept_key, open, Read, Writer};
pub use credentials::{Ask, Credentials, CredentialsFuture, Provider};
pub use url::WsUrl;
pub use wire::vws::decode;
pub use wire::{Dialect, Event, Incoming, Position};

/// What can go wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A URL the client cannot open.
    #[error("invalid WebSocket URL {0}")]
    Url(String),
    /// The broker could not be reached or is not a vws WebSocket server.
    #[error("{0}")]
    Connect(String),
    /// The broker refused the upgrade.
    #[error("the broker refused the connection: HTTP {status}: {reason}")]
    Refused {
        /// HTTP status (401 bad credentials, 403 origin, 503 limits).
        status: u16,
        /// The broker's reason.
        reason: String,
    },
    /// The broker refused a request (nack), with its reason.
    #[error("refused by the broker: {0}")]
    Nack(String),
    /// The request queue is full (the link is down or slower than the caller).
    #[error("the client's request queue is full ({0} waiting)")]
    QueueFull(usize),
    /// The link dropped after the request was sent and before its answer.
    #[error("the link dropped before the broker answered")]
    Disconnected,
    /// Data that cannot be encoded as JSON.
    #[error("cannot encode the data: {0}")]
    Encode(String),
    /// The client's dialect has no such request (SemStreams has no unsubscribe).
    #[error("the {0} dialect has no {1}")]
    Unsupported(&'static str, &'static str),
    /// The client gave up reconnecting (`max_retries`).
    #[error("the client gave up reconnecting")]
    GaveUp,
    /// The client is closed.
    #[error("the client is closed")]
    Closed,
}
