//! Sockets that are connected but have not sent a complete request head yet, per shard
//! (`server.max_pending_handshakes`, split over the shards).
//!
//! A silent socket costs the attacker nothing but a file descriptor, so it must not
//! take a place that health checks, the API or new WebSockets need: until its first
//! request head is complete a socket counts only here, never in the broker's socket
//! limit (`Broker::open_sockets`). The budget is bounded, and when it is full a new
//! socket closes the oldest pending one instead of being refused: a renewed flood of
//! idle sockets then only shortens how long each of them may stay silent, while a real
//! client, which sends its head within a round trip, still gets in. Sockets that send
//! nothing are also cut after `server.first_byte_timeout` (see `handshake`).
//!
//! Shard-local and single-threaded (`Rc`/`RefCell`): each shard accepts on its own
//! socket, so no lock is taken. It does not read or write sockets: an evicted socket's
//! task is aborted, which drops (and closes) its socket.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use tokio::task::AbortHandle;

/// The pending sockets of one shard, oldest first.
#[derive(Debug)]
pub struct Pending {
    budget: usize,
    next_id: Cell<u64>,
    tasks: RefCell<BTreeMap<u64, AbortHandle>>,
}

/// A socket's place among the pending ones; dropping it (the head is complete, or the
/// socket is gone) leaves the budget.
#[derive(Debug)]
pub struct Ticket {
    pending: Rc<Pending>,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.tasks.borrow_mut().remove(&self.id);
    }
}

impl Pending {
    /// A registry holding at most `budget` sockets (at least 1).
    pub fn new(budget: usize) -> Rc<Self> {
        Rc::new(Pending {
            budget: budget.max(1),
            next_id: Cell::new(0),
            tasks: RefCell::new(BTreeMap::new()),
        })
    }

    /// This shard's share of `total` over `shards` (rounded up, at least 1).
    pub fn share(total: usize, shards: usize) -> usize {
        total.div_ceil(shards.max(1)).max(1)
    }

    /// Makes room for one more socket: when the budget is full, aborts the oldest
    /// pending socket's task. Returns whether one was evicted (the caller counts it).
    pub fn make_room(&self) -> bool {
        let oldest = {
            let mut tasks = self.tasks.borrow_mut();
            if tasks.len() < self.budget {
                return false;
            }
            tasks.pop_first()
        };
        // Outside the borrow: the aborted task drops its ticket, which borrows again.
        match oldest {
            Some((_, task)) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Spawns (on this shard) the task serving a new socket, with its ticket, and
    /// registers the task so that it can be evicted. Call [`Pending::make_room`] first.
    pub fn spawn<F, Fut>(self: &Rc<Self>, serve: F)
    where
        F: FnOnce(Ticket) -> Fut,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let ticket = Ticket {
            pending: Rc::clone(self),
            id,
        };
        // spawn_local does not poll the task here, so it cannot drop its ticket before
        // it is registered.
        let task = tokio::task::spawn_local(serve(ticket));
        self.tasks.borrow_mut().insert(id, task.abort_handle());
    }

    /// Pending sockets now.
    pub fn len(&self) -> usize {
        self.tasks.borrow().len()
    }

    /// No pending socket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
