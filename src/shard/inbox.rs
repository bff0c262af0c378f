//! A shard's inbox: a bounded lock-free MPSC queue (crossbeam) plus a doorbell.
//!
//! Any thread may push; only the owning shard drains. The doorbell rings (a tokio
//! `Notify`, safe across threads) only when the shard may be asleep: `pending` is set by
//! the first producer after a drain and cleared by the shard before it drains again, so a
//! burst of N messages costs one wake-up, not N.

use crate::publication::Publication;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};

/// What travels to a shard.
pub enum ShardMsg {
    /// A publication to deliver to this shard's matching subscribers.
    Deliver(Arc<Publication>),
    /// Report this shard's channels and subscriber counts.
    Channels(oneshot::Sender<Vec<(String, usize)>>),
    /// Report how many of this shard's connections a publication on this topic reaches
    /// (exact and pattern subscriptions, each connection once).
    Subscribers(Box<str>, oneshot::Sender<usize>),
    /// Begin graceful shutdown.
    Shutdown,
    /// Adopt a connection accepted by another shard (see `shard::placement`).
    Adopt(Box<super::placement::Moving>),
}

struct Doorbell {
    pending: AtomicBool,
    notify: Notify,
}

/// The sending side of a shard's inbox; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct InboxSender {
    tx: Sender<ShardMsg>,
    bell: Arc<Doorbell>,
}

/// The shard's receiving side.
pub struct InboxReceiver {
    rx: Receiver<ShardMsg>,
    bell: Arc<Doorbell>,
}

/// A bounded inbox of `capacity` messages.
pub fn channel(capacity: usize) -> (InboxSender, InboxReceiver) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let bell = Arc::new(Doorbell {
        pending: AtomicBool::new(false),
        notify: Notify::new(),
    });
    (
        InboxSender {
            tx,
            bell: bell.clone(),
        },
        InboxReceiver { rx, bell },
    )
}

impl InboxSender {
    /// Whether the inbox is more than half full: readers of client input hold off then,
    /// so publishes wait in TCP buffers instead of meeting a full inbox.
    pub fn congested(&self) -> bool {
        self.tx
            .capacity()
            .is_some_and(|cap| self.tx.len() > cap / 2)
    }

    /// Queues `msg` and wakes the shard if needed.
    ///
    /// # Errors
    /// Hands the message back when the queue is full (or the shard is gone), so the
    /// caller decides: retry, refuse, count (STYLE rule 6).
    pub fn try_send(&self, msg: ShardMsg) -> Result<(), ShardMsg> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                if !self.bell.pending.swap(true, Ordering::AcqRel) {
                    self.bell.notify.notify_one();
                }
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }
}

impl InboxReceiver {
    /// Waits until something may be queued.
    pub async fn wait(&self) {
        if self.rx.is_empty() {
            self.bell.notify.notified().await;
        }
        // Cleared before draining: a producer racing with the drain rings again, so
        // nothing pushed after this point can be missed.
        self.bell.pending.store(false, Ordering::Release);
    }

    /// Takes the next message without waiting.
    pub fn try_recv(&self) -> Option<ShardMsg> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congested_past_half_full() {
        let (tx, rx) = channel(4);
        for _ in 0..2 {
            assert!(tx.try_send(ShardMsg::Shutdown).is_ok());
        }
        assert!(!tx.congested());
        assert!(tx.try_send(ShardMsg::Shutdown).is_ok());
        assert!(tx.congested());
        assert!(rx.try_recv().is_some());
        assert!(!tx.congested());
    }

    #[test]
    fn full_queue_hands_the_message_back() {
        let (tx, rx) = channel(1);
        assert!(tx.try_send(ShardMsg::Shutdown).is_ok());
        assert!(matches!(
            tx.try_send(ShardMsg::Shutdown),
            Err(ShardMsg::Shutdown)
        ));
        assert!(rx.try_recv().is_some());
        assert!(rx.try_recv().is_none());
    }

    #[test]
    fn wake_up_is_not_lost_across_threads() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (tx, rx) = channel(1024);
        let producer = std::thread::spawn(move || {
            for _ in 0..10_000 {
                while tx.try_send(ShardMsg::Shutdown).is_err() {
                    std::thread::yield_now();
                }
            }
        });
        rt.block_on(async {
            let mut got = 0;
            while got < 10_000 {
                rx.wait().await;
                while rx.try_recv().is_some() {
                    got += 1;
                }
            }
        });
        producer.join().expect("producer");
    }
}
