//! shardcast: a sharded, high-throughput WebSocket publish/subscribe broker.
//!
//! Module map (data flows one way, top to bottom):
//!
//! ```text
//!  socket ─► server (accept, HTTP, upgrade) ─► shard + conn (frames in, limits)
//!        ─► protocol (dialect decode) ─► shard (local topic index)
//!        ─► router (interest table) ─► shard inboxes ─► conn outbox
//!        ─► socket (vectored writes, many frames per syscall)
//! ```
//!
//! Leaf modules know nothing of sockets or runtimes and are tested as pure code:
//! [`topic`] (names, patterns, the subscription index), [`protocol`] (gows/vws codecs and
//! WebSocket framing), [`config`] (TOML + env + flags, validated), [`error`] (every
//! rejection and how it is answered).
#![deny(unsafe_code)]

pub mod alloc;
pub mod api;
pub mod api_client;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod deflate;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod links;
pub mod metrics;
pub mod protocol;
pub mod publication;
pub mod router;
pub mod runner;
pub mod server;
pub mod shard;
pub mod subscribe;
pub mod sys_stats;
pub mod tls;
pub mod topic;
