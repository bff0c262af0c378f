//! Subscriber threads: each runs a single-threaded runtime holding its share of the
//! subscriber connections, and returns its [`Tally`] when the run stops.

use crate::conn::{self, ReadEnd};
use crate::plan::Plan;
use crate::tally::{now_ns, Live, SeqTracker, Tally};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};

/// Whether the run is still going. Tasks stop reading when it turns false.
pub type Running = watch::Receiver<bool>;

/// How a subscriber behaves once subscribed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Reads everything; its messages are counted.
    Reader,
    /// Never reads again (the slow-consumer scenario); not counted.
    Stalled,
}

/// Runs subscribers `thread, thread + threads, …` (readers first, then stalled ones)
/// until `running` turns false.
pub fn thread_main(plan: Arc<Plan>, live: Arc<Live>, running: Running, thread: usize) -> Tally {
    let tally = Rc::new(RefCell::new(Tally::default()));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tally.borrow_mut().error(format!("subscriber runtime: {e}"));
            return Rc::try_unwrap(tally)
                .map(RefCell::into_inner)
                .unwrap_or_default();
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let gate = Rc::new(Semaphore::new(plan.connect_concurrency));
        let mut tasks = Vec::new();
        for index in (thread..plan.subs + plan.slow).step_by(plan.threads) {
            let role = if index < plan.subs {
                Role::Reader
            } else {
                Role::Stalled
            };
            tasks.push(tokio::task::spawn_local(subscriber(
                plan.clone(),
                live.clone(),
                running.clone(),
                tally.clone(),
                gate.clone(),
                index,
                role,
            )));
        }
        for t in tasks {
            if t.await.is_err() {
                tally.borrow_mut().error("subscriber task failed");
            }
        }
    });
    drop(local);
    Rc::try_unwrap(tally)
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

async fn subscriber(
    plan: Arc<Plan>,
    live: Arc<Live>,
    mut running: Running,
    tally: Rc<RefCell<Tally>>,
    gate: Rc<Semaphore>,
    index: usize,
    role: Role,
) {
    let topic = plan.topic_name(plan.topic_of(index));
    let connected = async {
        let _permit = gate.acquire().await;
        let mut c =
            conn::open(&plan.sub_target, plan.dialect, index, plan.spread_sources()).await?;
        c.subscribe(plan.dialect, std::slice::from_ref(&topic))
            .await?;
        anyhow::Ok(c)
    };
    let mut c = tokio::select! {
        c = connected => match c {
            Ok(c) => c,
            Err(e) => {
                tally.borrow_mut().error(format!("subscriber setup: {e:#}"));
                live.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
        _ = running.wait_for(|r| !r) => return,
    };
    live.ready.fetch_add(1, Ordering::Relaxed);
    live.last_ready_ns.fetch_max(now_ns(), Ordering::Relaxed);

    if role == Role::Stalled {
        // Holds the connection open without reading until the run ends.
        let _ = running.wait_for(|r| !r).await;
        return;
    }

    let mut seqs = SeqTracker::new(plan.pubs);
    let mut mine = 0u64;
    loop {
        let mut got = 0u64;
        let round = c.read_round(|msg| {
            let Some(stamp) = crate::wire::find_stamp(msg) else {
                return;
            };
            let mut t = tally.borrow_mut();
            if !seqs.see(stamp.publisher, stamp.seq, &mut t) {
                return;
            }
            got += 1;
            t.arrived(&live.window.times(), stamp.sent_ns, now_ns());
        });
        let end = tokio::select! {
            r = round => r,
            _ = running.wait_for(|r| !r) => break,
        };
        // One shared counter update per read round feeds the progress line and the drain.
        live.received.fetch_add(got, Ordering::Relaxed);
        mine += got;
        match end {
            Ok(ReadEnd::Drained) => {}
            Ok(ReadEnd::Closed(code, reason)) => {
                tally.borrow_mut().close("subscriber", code, &reason);
                break;
            }
            Err(e) => {
                tally.borrow_mut().error(format!("subscriber read: {e:#}"));
                break;
            }
        }
    }
    tally.borrow_mut().readers.push(mine);
}
