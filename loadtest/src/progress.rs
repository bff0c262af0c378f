//! The live progress line (stderr, only when it is a terminal).

use crate::tally::{now_ns, Live};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

pub struct Progress {
    bar: ProgressBar,
    /// (time, received) at the last update, for the receive rate.
    last: Mutex<(u64, u64)>,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr_with_hz(5)
        };
        let bar = ProgressBar::with_draw_target(None, target);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}") {
            bar.set_style(style);
        }
        Progress {
            bar,
            last: Mutex::new((now_ns(), 0)),
        }
    }

    pub fn show(&self, phase: &str, live: &Live, wanted: usize) {
        let received = live.received.load(Ordering::Relaxed);
        let now = now_ns();
        let rate = match self.last.lock() {
            Ok(mut last) => {
                let (t, r) = *last;
                *last = (now, received);
                (received - r) as f64 / ((now - t) as f64 / 1e9).max(1e-3)
            }
            Err(_) => 0.0,
        };
        self.bar.set_message(format!(
            "{phase:<10} subscribers {}/{} (failed {})  published {}  received {} ({}/s)",
            live.ready.load(Ordering::Relaxed),
            wanted,
            live.failed.load(Ordering::Relaxed),
            live.published.load(Ordering::Relaxed),
            received,
            crate::report::grouped(rate),
        ));
        self.bar.tick();
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
