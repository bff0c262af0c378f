//! shardcast: a sharded, high-throughput WebSocket publish/subscribe broker.
//!
//! Module map (data flows one way, top to bottom):
//!
//! ```text
//!  socket ─► server (accept, HTTP, upgrade) ─► conn (frames in, limits) ─► protocol (dialect decode)
//!        ─► shard (local topic index) ─► router (interest table, other shards) ─► shard inbox
//!        ─► conn outbox ─► socket (vectored writes, many frames per syscall)
//! ```
//!
//! Leaf modules know nothing of sockets or runtimes and are tested as pure code:
//! [`topic`] (names, patterns, the subscription index), [`protocol`] (gows/vws codecs and
//! WebSocket framing), [`config`] (TOML + env + flags, validated), [`error`] (every
//! rejection and how it is answered).

pub mod config;
pub mod error;
pub mod protocol;
pub mod publication;
pub mod topic;
