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
use tokio::net::TcpSocket;

/// Starts one thread per inbox receiver and socket; shard id = position. Returns once
/// every shard is listening, so the caller may announce the address.
///
/// # Errors
/// A thread could not be spawned, or a shard could not build its runtime or listen.
pub fn spawn(
    broker: &Arc<Broker>,
    receivers: Vec<InboxReceiver>,
    sockets: Vec<TcpSocket>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::with_capacity(receivers.len());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
    for (id, (inbox, socket)) in receivers.into_iter().zip(sockets).enumerate() {
        let broker = broker.clone();
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                let started = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        // Listening registers the socket with this shard's reactor.
                        let listener = {
                            let _entered = rt.enter();
                            crate::server::accept::listen(socket)?
                        };
                        Ok((rt, listener))
                    });
                let (runtime, listener) = match started {
                    Ok(started) => started,
                    Err(e) => {
                        tracing::error!(shard = id, error = %e, "cannot start shard");
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let Some(stats) = broker.shard_stats.get(id).cloned() else {
                    let _ = ready.send(Err(io::Error::other("no stats block for shard")));
                    return;
                };
                let _ = ready.send(Ok(()));
                let shard = Rc::new(Shard::new(id as u16, broker, stats));
                let local = tokio::task::LocalSet::new();
                local.spawn_local(crate::server::accept::run(shard.clone(), listener));
                if id == 0 {
                    local.spawn_local(crate::sys_stats::run(shard.clone()));
                }
                local.block_on(&runtime, shard.run(inbox));
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..threads.len() {
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("a shard thread ended before listening"))??;
    }
    Ok(threads)
}
