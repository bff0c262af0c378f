//! permessage-deflate (RFC 7692): negotiation, compress-once for publications, and
//! inflating client messages under the size cap.
//!
//! What is kept where (SPEC §10: no deflate or inflate state per idle connection):
//! - per connection: one `bool` (`Conn::deflate`, it negotiated the extension);
//! - per publication: one compressed frame per dialect, made on first use next to the
//!   plain frame (`Publication::deflated_frame`) and shared by every subscriber that
//!   negotiated it;
//! - per shard thread: one deflater (reset after every message; the broker answers
//!   `server_no_context_takeover`) and one inflater with its output buffer, reset before
//!   every message (the broker answers `client_no_context_takeover`, so a client
//!   message never refers to an earlier one and no window is kept between messages).

pub mod negotiate;

pub use negotiate::negotiate;

use crate::config::{Compression, ServerConfig};
use crate::error::Reject;
use crate::protocol::frame;
use bytes::Bytes;
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;
use std::sync::atomic::AtomicU64;

/// The empty stored block a sync flush ends with; RFC 7692 §7.2.1 drops it on the wire
/// and §7.2.2 has the receiver put it back.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the compression settings are (from `[server]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `server.compression = "on"`: offers are negotiated.
    pub enabled: bool,
    /// `server.compression_min_bytes`: smaller payloads are sent plain.
    pub min_bytes: usize,
    /// `server.compression_level` (1..9).
    pub level: u32,
}

impl Settings {
    /// The settings in `server`.
    pub fn of(server: &ServerConfig) -> Self {
        Settings {
            enabled: server.compression == Compression::On,
            min_bytes: server.compression_min_bytes,
            level: server.compression_level,
        }
    }
}

/// Compression counters (one block per shard, in `ShardStats`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Compressed frames made (once per publication and dialect, not per subscriber).
    pub frames: AtomicU64,
    /// Payload bytes those frames carry before compression.
    pub bytes_in: AtomicU64,
    /// ... and after.
    pub bytes_out: AtomicU64,
    /// Publications sent plain to clients that negotiated compression because they were
    /// under `compression_min_bytes` or did not shrink.
    pub plain: AtomicU64,
    /// Compressed client messages inflated.
    pub inflated: AtomicU64,
}

thread_local! {
    /// This thread's deflater and the level it was made for.
    static DEFLATER: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

/// The compressed (RSV1) frame for the plain server text frame `plain`, or `None` when
/// its payload is under `min_bytes` or does not get smaller: that frame then goes plain.
/// Never fragmented: the whole message is one frame.
pub fn deflate_frame(plain: &[u8], settings: &Settings, stats: &Stats) -> Option<Bytes> {
    use crate::shard::stats::ShardStats;
    let payload = frame::server_payload(plain);
    if payload.len() < settings.min_bytes {
        ShardStats::add(&stats.plain, 1);
        return None;
    }
    let made = DEFLATER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let deflater = match &mut *cell {
            Some((level, d)) if *level == settings.level => d,
            slot => {
                let d = Compress::new_with_window_bits(
                    flate2::Compression::new(settings.level),
                    false,
                    negotiate::SERVER_WINDOW_BITS,
                );
                &mut slot.insert((settings.level, d)).1
            }
        };
        let made = frame::build_deflated_frame(payload.len() / 2 + 64, |buf| {
            compress_into(deflater, payload, buf)
        });
        deflater.reset();
        made
    });
    match made {
        Some((frame, compressed_len)) if compressed_len < payload.len() => {
            ShardStats::add(&stats.frames, 1);
            ShardStats::add(&stats.bytes_in, payload.len() as u64);
            ShardStats::add(&stats.bytes_out, compressed_len as u64);
            Some(frame)
        }
        _ => {
            ShardStats::add(&stats.plain, 1);
            None
        }
    }
}

/// Raw-deflates `input` onto the end of `out` with a sync flush and drops the flush's
/// empty block (RFC 7692 §7.2.1). `false` if the deflater failed.
fn compress_into(deflater: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> bool {
    let start_in = deflater.total_in();
    loop {
        let done = usize::try_from(deflater.total_in() - start_in).unwrap_or(usize::MAX);
        let rest = input.get(done..).unwrap_or_default();
        if out.capacity() - out.len() < 64 {
            out.reserve(out.len().max(256));
        }
        if deflater
            .compress_vec(rest, out, FlushCompress::Sync)
            .is_err()
        {
            return false;
        }
        let consumed = deflater.total_in() - start_in == input.len() as u64;
        // The flush is complete once all input is in and the output was not filled.
        if consumed && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&SYNC_TAIL) {
        out.truncate(out.len() - SYNC_TAIL.len());
    }
    true
}

/// A shard's inflater for compressed client messages, reused (reset) for each message.
pub struct Inflater {
    z: Decompress,
    out: Vec<u8>,
    /// Messages inflated since the last [`take_count`](Self::take_count).
    count: u64,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            z: Decompress::new_with_window_bits(false, 15),
            out: Vec::new(),
            count: 0,
        }
    }
}

/// The output buffer is kept between messages up to this size (larger ones are freed).
const KEEP_OUTPUT: usize = 64 * 1024;

impl Inflater {
    /// Messages inflated since the last call (for the shard's counter).
    pub fn take_count(&mut self) -> u64 {
        std::mem::take(&mut self.count)
    }

    /// Inflates one whole compressed message (RFC 7692 §7.2.2); the result is valid until
    /// the next call.
    ///
    /// # Errors
    /// [`Reject::InflatedTooLarge`] as soon as the output passes `cap` bytes (a
    /// compression bomb is stopped there, never inflated in full);
    /// [`Reject::BadCompressedData`] for data that is not raw deflate.
    pub fn inflate(&mut self, compressed: &[u8], cap: usize) -> Result<&mut [u8], Reject> {
        self.z.reset(false);
        if self.out.capacity() > KEEP_OUTPUT.max(cap) {
            self.out = Vec::new();
        }
        self.out.clear();
        'pieces: for piece in [compressed, &SYNC_TAIL] {
            let start = self.z.total_in();
            loop {
                let done = usize::try_from(self.z.total_in() - start).unwrap_or(usize::MAX);
                let rest = piece.get(done..).unwrap_or_default();
                if self.out.len() == self.out.capacity() {
                    // Grow by doubling, never past one byte over the cap.
                    let want = (self.out.len() * 2).max(4096).min(cap + 1);
                    if want <= self.out.len() {
                        return Err(Reject::InflatedTooLarge);
                    }
                    self.out.reserve_exact(want - self.out.len());
                }
                let before = self.z.total_out();
                let status = self
                    .z
                    .decompress_vec(rest, &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| Reject::BadCompressedData)?;
                if self.out.len() > cap {
                    return Err(Reject::InflatedTooLarge);
                }
                if status == Status::StreamEnd {
                    break 'pieces; // a final block: anything after it is ignored
                }
                let all_in = self.z.total_in() - start == piece.len() as u64;
                let progress = self.z.total_out() != before;
                if all_in && self.out.len() < self.out.capacity() {
                    break;
                }
                if !progress && self.out.len() < self.out.capacity() && !all_in {
                    // Room to write and input left, yet nothing moves: broken data.
                    return Err(Reject::BadCompressedData);
                }
            }
        }
        self.count += 1;
        Ok(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            enabled: true,
            min_bytes: 16,
            level: 6,
        }
    }

    #[test]
    fn a_deflated_frame_inflates_back_to_the_payload() {
        let payload = br#"{"type":"event","channel":"a/b","data":{"n":1,"text":"hello hello hello hello hello"}}"#;
        let plain = frame::text_frame(payload);
        let stats = Stats::default();
        let deflated = deflate_frame(&plain, &settings(), &stats).expect("compresses");
        assert_eq!(deflated[0], 0xC1, "FIN + RSV1 + text");
        let body = frame::server_payload(&deflated);
        assert!(!body.ends_with(&SYNC_TAIL));
        let mut inflater = Inflater::default();
        assert_eq!(inflater.inflate(body, 1 << 20).expect("inflates"), payload);
        // Reset between messages: the same bytes inflate the same way again.
        assert_eq!(inflater.inflate(body, 1 << 20).expect("again"), payload);
        assert_eq!(ShardStats::get(&stats.frames), 1);
        use crate::shard::stats::ShardStats;
    }

    #[test]
    fn small_or_incompressible_payloads_stay_plain() {
        let stats = Stats::default();
        assert!(deflate_frame(&frame::text_frame(b"{\"a\":1}"), &settings(), &stats).is_none());
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        assert!(deflate_frame(&frame::text_frame(&noise), &settings(), &stats).is_none());
    }

    #[test]
    fn a_bomb_stops_at_the_cap() {
        let zeros = vec![b'a'; 10 << 20];
        let mut d = Compress::new_with_window_bits(flate2::Compression::best(), false, 15);
        let mut bomb = Vec::with_capacity(64 * 1024);
        assert!(compress_into(&mut d, &zeros, &mut bomb));
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let mut inflater = Inflater::default();
        assert_eq!(
            inflater.inflate(&bomb, 65_536).map(|o| o.len()),
            Err(Reject::InflatedTooLarge)
        );
        assert!(inflater.out.capacity() <= 65_537 + 64);
        assert_eq!(
            inflater
                .inflate(b"\xff\xff\xff\xff", 65_536)
                .map(|o| o.len()),
            Err(Reject::BadCompressedData)
        );
    }
}
