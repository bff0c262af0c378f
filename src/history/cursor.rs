//! A connection's positions in the history channels it subscribes to by exact name, and
//! the pump that feeds a connection that is behind from the store.
//!
//! Each cursor holds the next offset the connection should get. A live publication is
//! queued only when it is exactly that offset; an older one was already sent (by a
//! replay, or it was in flight when the subscriber attached) and is skipped; a newer one
//! means the connection is behind, and the pump sends what is missing from the store,
//! in order, before anything newer. That one rule gives "replay, then live, each
//! publication exactly once, in offset order" whatever the interleaving of the join,
//! the shards' inboxes and the replay.
//!
//! Connections subscribed through a pattern only have no cursor: they get live
//! publications as they come (with their offsets, SPEC §9).

use super::History;
use crate::conn::outbox::{Limits, Outbox};
use crate::protocol::Dialect;

/// Where one exact-channel subscription stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The channel.
    pub channel: Box<str>,
    /// Next offset to send.
    pub next: u64,
    /// The store holds offsets this connection still needs (the pump's work).
    pub behind: bool,
}

/// What to do with a live publication for a connection with a cursor on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Queue it: it is the next one.
    Deliver,
    /// Already sent.
    Skip,
    /// Earlier ones are missing: leave it to the pump, which sends them in order.
    CatchUp,
}

impl Cursor {
    /// Decides about the live publication at `offset`, advancing the cursor when it
    /// is delivered.
    pub fn on_live(&mut self, offset: u64) -> Live {
        if offset < self.next {
            Live::Skip
        } else if offset == self.next && !self.behind {
            self.next += 1;
            Live::Deliver
        } else {
            self.behind = true;
            Live::CatchUp
        }
    }
}

/// A connection's cursors (few: one per exact history subscription).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursors(Vec<Cursor>);

impl Cursors {
    /// The cursor on `channel`.
    pub fn get_mut(&mut self, channel: &str) -> Option<&mut Cursor> {
        self.0.iter_mut().find(|c| &*c.channel == channel)
    }

    /// Starts (or restarts) the cursor on `channel` at `next`; `behind` when the store
    /// holds offsets from `next` on (`next <= top`).
    pub fn set(&mut self, channel: &str, next: u64, top: u64) {
        let behind = next <= top;
        match self.get_mut(channel) {
            Some(c) => {
                c.next = next;
                c.behind = behind;
            }
            None => self.0.push(Cursor {
                channel: channel.into(),
                next,
                behind,
            }),
        }
    }

    /// Drops the cursor on `channel`; true when none is left.
    pub fn remove(&mut self, channel: &str) -> bool {
        self.0.retain(|c| &*c.channel != channel);
        self.0.is_empty()
    }

    /// Whether any cursor waits for the pump.
    pub fn behind(&self) -> bool {
        self.0.iter().any(|c| c.behind)
    }
}

/// Most publications one pump round queues: enough for several full `writev`s, small
/// enough that many connections replaying at once each get their first events soon.
const ROUND: usize = 512;

/// Sends a connection that is behind what it is missing, in offset order, up to half
/// its outbox bounds (and [`ROUND`]) at a time: a replay is paced by what the client
/// reads (the rest stays in the store until there is room), takes no more than a
/// connection's share of the shard, and never trips the slow-consumer policy by itself.
/// Returns how many publications were queued.
pub fn pump(
    history: &History,
    cursors: &mut Cursors,
    dialect: Dialect,
    outbox: &mut Outbox,
    limits: &Limits,
) -> u64 {
    let frame_budget = (limits.frames / 2).clamp(1, ROUND);
    let byte_budget = (limits.bytes / 2).max(1);
    let mut queued = 0u64;
    for cursor in cursors.0.iter_mut().filter(|c| c.behind) {
        if outbox.len() >= frame_budget || outbox.bytes() >= byte_budget {
            break;
        }
        let read = history.read(&cursor.channel, cursor.next, |p| {
            if outbox.len() >= frame_budget || outbox.bytes() >= byte_budget {
                return false;
            }
            outbox.push_unbounded(p.frame(dialect));
            queued += 1;
            true
        });
        match read {
            Some((next, top)) => {
                cursor.next = next;
                cursor.behind = next <= top;
            }
            // The channel's history is gone (it cannot expire while subscribed, but a
            // config without the rule after a reload would do it): deliver live only.
            None => cursor.behind = false,
        }
    }
    queued
}
