//! `Outbox`: one connection's bounded queue of complete, pre-encoded frames.
//!
//! Bounded by frames and bytes (`client.queue_frames` / `client.queue_bytes`); what happens
//! when it is full is `client.on_full`. The queue holds `Bytes` shared with every other
//! subscriber of the same publication, so queuing costs a reference count, not a copy.
//! An idle connection's outbox owns no heap memory: the deque is freed whenever it drains.
//! Writing (vectored, many frames per syscall) is the caller's job: `slices` and `advance`.

use crate::config::OnFull;
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::IoSlice;

/// Most frames handed to one `writev` (Linux `IOV_MAX` is 1024; 64 keeps the stack small).
pub const MAX_IOVECS: usize = 64;

/// What `push` did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Queued after dropping this many older frames (`drop_oldest`).
    DroppedOldest(usize),
    /// Not queued: the queue is full (`drop_newest`).
    DroppedNewest,
    /// Not queued: the queue is full and the policy is `disconnect`.
    Full,
}

/// Bounds and policy of an outbox (copied from `client` config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most frames queued.
    pub frames: usize,
    /// Most bytes queued.
    pub bytes: usize,
    /// What to do when full.
    pub on_full: OnFull,
}

/// A connection's queue of frames waiting to be written.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Bytes>,
    /// Bytes queued, not counting what is already written of the head frame.
    bytes: usize,
    /// How much of the head frame is already on the socket (a frame is never split by
    /// dropping: a half-written frame must be finished or the stream is corrupt).
    head_written: usize,
}

impl Outbox {
    /// True when nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when a frame of `len` bytes fits under `limits` right now.
    pub fn has_room(&self, len: usize, limits: &Limits) -> bool {
        self.frames.len() < limits.frames && self.bytes + len <= limits.bytes
    }

    /// Queues a data frame under `limits`.
    pub fn push(&mut self, frame: Bytes, limits: &Limits) -> Pushed {
        let fits = |q: &Self, extra: usize| q.has_room(extra, limits);
        if fits(self, frame.len()) {
            self.push_unbounded(frame);
            return Pushed::Queued;
        }
        match limits.on_full {
            OnFull::Disconnect => Pushed::Full,
            OnFull::DropNewest => Pushed::DroppedNewest,
            OnFull::DropOldest => {
                let mut dropped = 0;
                // Never drop the head frame once part of it is written.
                let keep = usize::from(self.head_written > 0);
                while !fits(self, frame.len()) && self.frames.len() > keep {
                    if let Some(old) = self.frames.remove(keep) {
                        self.bytes -= old.len();
                        dropped += 1;
                    }
                }
                if fits(self, frame.len()) {
                    self.push_unbounded(frame);
                    Pushed::DroppedOldest(dropped)
                } else {
                    // A single frame larger than the whole byte bound: it cannot be queued.
                    Pushed::DroppedNewest
                }
            }
        }
    }

    /// Queues a frame regardless of the bounds: replies and control frames (ack, nack,
    /// pong, ping, close) are few, bounded by the client's own requests, and must not be
    /// lost to the data policy.
    pub fn push_unbounded(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Drops everything not yet started, keeping a half-written head frame (so a close
    /// frame can still follow it on a well-formed stream). Returns frames dropped.
    pub fn clear_unstarted(&mut self) -> usize {
        let keep = usize::from(self.head_written > 0);
        let dropped = self.frames.len().saturating_sub(keep);
        self.frames.truncate(keep);
        self.bytes = self.frames.iter().map(Bytes::len).sum::<usize>() - self.head_written;
        dropped
    }

    /// Fills `out` with the next frames to write (the first one past its written part);
    /// returns how many slices were filled.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut n = 0;
        for (slot, frame) in out.iter_mut().zip(self.frames.iter()) {
            let start = if n == 0 { self.head_written } else { 0 };
            *slot = IoSlice::new(frame.get(start..).unwrap_or_default());
            n += 1;
        }
        n
    }

    /// Records that `written` bytes went to the socket; returns whole frames completed.
    pub fn advance(&mut self, mut written: usize) -> usize {
        let mut completed = 0;
        self.bytes = self.bytes.saturating_sub(written);
        while written > 0 {
            let Some(head) = self.frames.front() else {
                break;
            };
            let left = head.len() - self.head_written;
            if written >= left {
                written -= left;
                self.frames.pop_front();
                self.head_written = 0;
                completed += 1;
            } else {
                self.head_written += written;
                written = 0;
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            // An idle connection owns no queue memory (a reply or a burst must not pin
            // it); re-allocating a small deque for the next batch costs far less than the
            // write that empties it.
            self.frames = VecDeque::new();
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(frames: usize, bytes: usize, on_full: OnFull) -> Limits {
        Limits {
            frames,
            bytes,
            on_full,
        }
    }

    fn frame(n: u8, len: usize) -> Bytes {
        Bytes::from(vec![n; len])
    }

    #[test]
    fn bounded_by_frames_then_policy_applies() {
        let l = limits(2, 1000, OnFull::Disconnect);
        let mut q = Outbox::default();
        assert_eq!(q.push(frame(1, 10), &l), Pushed::Queued);
        assert_eq!(q.push(frame(2, 10), &l), Pushed::Queued);
        assert_eq!(q.push(frame(3, 10), &l), Pushed::Full);
        assert_eq!(q.len(), 2);
        let l = limits(2, 1000, OnFull::DropNewest);
        assert_eq!(q.push(frame(3, 10), &l), Pushed::DroppedNewest);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn drop_oldest_keeps_newest_and_half_written_head() {
        let l = limits(3, 30, OnFull::DropOldest);
        let mut q = Outbox::default();
        for i in 0..2 {
            assert_eq!(q.push(frame(i, 10), &l), Pushed::Queued);
        }
        q.advance(4); // head frame half written
        assert_eq!(q.push(frame(9, 10), &l), Pushed::Queued); // 6 left of the head + 10 + 10
        assert_eq!(q.push(frame(8, 10), &l), Pushed::DroppedOldest(1));
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let n = q.slices(&mut slices);
        assert_eq!(n, 3);
        assert_eq!(slices[0].len(), 6, "half-written head kept");
        assert_eq!(slices[1][0], 9);
        assert_eq!(slices[2][0], 8);
    }

    #[test]
    fn bounded_by_bytes() {
        let l = limits(100, 25, OnFull::Disconnect);
        let mut q = Outbox::default();
        assert_eq!(q.push(frame(1, 20), &l), Pushed::Queued);
        assert_eq!(q.push(frame(2, 10), &l), Pushed::Full);
        assert_eq!(q.bytes(), 20);
    }

    #[test]
    fn advance_across_frames_and_slices_resume_mid_frame() {
        let l = limits(10, 1000, OnFull::Disconnect);
        let mut q = Outbox::default();
        q.push(frame(1, 5), &l);
        q.push(frame(2, 5), &l);
        q.push(frame(3, 5), &l);
        assert_eq!(q.advance(7), 1);
        assert_eq!(q.bytes(), 8);
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        assert_eq!(q.slices(&mut slices), 2);
        assert_eq!(slices[0].len(), 3);
        assert_eq!(q.advance(8), 2);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn clear_unstarted_keeps_partial_head() {
        let l = limits(10, 1000, OnFull::Disconnect);
        let mut q = Outbox::default();
        q.push(frame(1, 5), &l);
        q.push(frame(2, 5), &l);
        q.advance(2);
        assert_eq!(q.clear_unstarted(), 1);
        assert_eq!(q.len(), 1);
        assert_eq!(q.bytes(), 3);
        q.advance(3);
        assert_eq!(q.clear_unstarted(), 0);
        assert!(q.is_empty());
    }

    #[test]
    fn drained_queue_releases_memory() {
        let l = limits(100, 100_000, OnFull::Disconnect);
        let mut q = Outbox::default();
        for i in 0..50 {
            q.push(frame(i, 1), &l);
        }
        q.advance(50);
        assert_eq!(q.frames.capacity(), 0);
    }
}
