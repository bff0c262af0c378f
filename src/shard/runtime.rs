//! Shard threads: N OS threads, each running one current-thread tokio runtime with a
//! `LocalSet`, so a shard's tasks never migrate and its state needs no locks (the
//! pingora no-steal runtime shape).

use super::inbox::InboxReceiver;
use super::Shard;
use crate::broker::Broker;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Starts one thread per inbox receiver; shard id = position.
///
/// # Errors
/// A thread could not be spawned.
pub fn spawn(
    broker: &Arc<Broker>,
    receivers: Vec<InboxReceiver>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::with_capacity(receivers.len());
    for (id, inbox) in receivers.into_iter().enumerate() {
        let broker = broker.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(shard = id, error = %e, "cannot build shard runtime");
                        return;
                    }
                };
                let Some(stats) = broker.shard_stats.get(id).cloned() else {
                    return;
                };
                let shard = Rc::new(Shard::new(id as u16, broker, stats));
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, shard.run(inbox));
            })?;
        threads.push(thread);
    }
    Ok(threads)
}
