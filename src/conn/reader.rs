//! Frames in: turns the bytes of one read into complete client messages.
//!
//! This is the lean path that replaces fastwebsockets' reader: fastwebsockets keeps an
//! 8 KiB read buffer per connection, which would dominate an idle connection's memory.
//! Here a read lands in the shard's scratch buffer and is parsed in place (unmasked where
//! it lies); only an incomplete frame's bytes are kept on the connection, and only until
//! the rest arrives. It also enforces what fastwebsockets leaves out: client masking,
//! reassembled-message size, UTF-8 of text messages, control-frame rules.
//!
//! A big frame that arrives in many reads is not copied through the scratch buffer on
//! each of them (which costs quadratic work for a message sent in small pieces): once
//! its header is known, later reads land straight at the end of its carried bytes
//! ([`gathers`], [`make_room`]), so each byte is copied once.

use crate::deflate::Inflater;
use crate::error::Reject;
use crate::protocol::frame::{self, OpCode};

/// One complete client message or control frame.
pub enum Incoming<'a> {
    /// A complete, UTF-8-checked text message (mutable: topics are unescaped in place).
    Text(&'a mut [u8]),
    /// Ping with its payload (answer with a pong carrying the same bytes).
    Ping(&'a [u8]),
    /// Pong (only liveness).
    Pong,
    /// Close with the client's code, if it sent one.
    Close(Option<u16>),
}

/// Whether to keep parsing after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// Stop reading this connection (it is closing).
    Stop,
    /// Stop parsing for now and keep the rest of the buffer for later (the shard
    /// inboxes are congested; see `Shard::poll_conn`).
    Pause,
}

/// A text message arriving in several frames.
#[derive(Debug, Default)]
pub struct Fragments {
    data: Vec<u8>,
    /// The message is compressed (RSV1 on its first frame): its UTF-8 is checked once it
    /// is inflated, not as the compressed fragments arrive.
    compressed: bool,
    /// How many bytes at the front of `data` are known to be valid UTF-8; past it there
    /// is at most the start of one character whose rest has not arrived yet.
    checked: usize,
}

impl Fragments {
    /// Appends a fragment, checking its UTF-8 as it arrives (RFC 6455 §8.1: fail fast, not
    /// after the whole message): each byte is checked once, plus at most three again.
    fn push(&mut self, bytes: &[u8]) -> Result<(), Reject> {
        self.data.extend_from_slice(bytes);
        if self.compressed {
            return Ok(());
        }
        let fresh = self.data.get(self.checked..).unwrap_or_default();
        match std::str::from_utf8(fresh) {
            Ok(_) => self.checked = self.data.len(),
            // A character cut at the end of this fragment: wait for the rest.
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(Reject::InvalidUtf8),
        }
        Ok(())
    }

    /// The whole message, once the last fragment is in; a character left unfinished is
    /// invalid UTF-8.
    fn finish(self) -> Result<Vec<u8>, Reject> {
        if self.compressed || self.checked == self.data.len() {
            Ok(self.data)
        } else {
            Err(Reject::InvalidUtf8)
        }
    }
}

/// Result of parsing one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes consumed from the front of the buffer (the rest is an incomplete frame).
    pub consumed: usize,
    /// Total size the incomplete frame at `consumed` needs, when its header is known.
    pub need: Option<usize>,
    /// The handler asked to stop.
    pub stopped: bool,
    /// The handler asked to pause: the bytes after `consumed` hold unparsed messages.
    pub paused: bool,
}

/// Incomplete frames at least this big are gathered in the connection's own buffer.
pub const GATHER_FROM: usize = 64 * 1024;

/// Whether the next read should land straight at the end of `partial` (carried bytes
/// of an incomplete frame of `need` bytes in all): the frame is big and not complete.
pub fn gathers(partial: &[u8], need: usize) -> bool {
    !partial.is_empty() && partial.len() < need && need >= GATHER_FROM
}

/// Adds `chunk` bytes of room at the end of `partial` for the next read and returns
/// where the room starts; truncate to `start + bytes read` after the read. Only the
/// room is written (zeroed), and the buffer grows by doubling, so gathering a frame
/// costs work linear in its size however small the reads.
pub fn make_room(partial: &mut Vec<u8>, chunk: usize) -> usize {
    let start = partial.len();
    partial.resize(start + chunk, 0);
    start
}

/// Parses every complete frame in `buf`, handing each message to `on_message`, for a
/// connection without permessage-deflate (see [`parse_with`]).
///
/// # Errors
/// The protocol violation that must close the connection (1002/1003/1007/1009).
pub fn parse(
    buf: &mut [u8],
    fragments: &mut Option<Box<Fragments>>,
    max_message: usize,
    on_message: impl FnMut(Incoming<'_>) -> Flow,
) -> Result<Parsed, Reject> {
    parse_with(buf, fragments, max_message, None, on_message)
}

/// [`parse`] for a connection that negotiated permessage-deflate when `inflater` is
/// given: a message whose first frame has RSV1 is inflated (capped at `max_message`
/// inflated bytes) before its UTF-8 is checked and it is handed on. Without `inflater`,
/// RSV1 is a protocol error (1002), as it is on control and continuation frames always.
///
/// # Errors
/// As [`parse`], plus [`Reject::InflatedTooLarge`] (1009) and
/// [`Reject::BadCompressedData`] (1007).
pub fn parse_with(
    buf: &mut [u8],
    fragments: &mut Option<Box<Fragments>>,
    max_message: usize,
    mut inflater: Option<&mut Inflater>,
    mut on_message: impl FnMut(Incoming<'_>) -> Flow,
) -> Result<Parsed, Reject> {
    let mut pos = 0;
    loop {
        let rest = buf.get_mut(pos..).unwrap_or_default();
        let Some(header) = frame::parse_client_header(rest)? else {
            return Ok(Parsed {
                consumed: pos,
                need: None,
                stopped: false,
                paused: false,
            });
        };
        // Only a continuation adds to the message being reassembled; a control frame
        // between its fragments (RFC 6455 §5.4) is a message of its own.
        let so_far = match header.opcode {
            OpCode::Continuation => fragments.as_ref().map_or(0, |f| f.data.len()),
            _ => 0,
        };
        if header.compressed
            && (inflater.is_none() || !matches!(header.opcode, OpCode::Text | OpCode::Binary))
        {
            // RFC 7692 §6: RSV1 only on a data message's first frame, and only once
            // negotiated.
            return Err(Reject::BadOpcode);
        }
        let payload_len =
            usize::try_from(header.payload_len).map_err(|_| Reject::MessageTooLarge)?;
        if payload_len.saturating_add(so_far) > max_message {
            return Err(Reject::MessageTooLarge);
        }
        let total = header.header_len + payload_len;
        if rest.len() < total {
            return Ok(Parsed {
                consumed: pos,
                need: Some(total),
                stopped: false,
                paused: false,
            });
        }
        let payload = rest
            .get_mut(header.header_len..total)
            .ok_or(Reject::BadOpcode)?;
        frame::unmask(payload, header.mask);
        pos += total;
        let flow = match header.opcode {
            OpCode::Text if header.fin => {
                if fragments.is_some() {
                    return Err(Reject::BadFragmentation);
                }
                let text = match inflater.as_deref_mut() {
                    Some(inflater) if header.compressed => {
                        inflater.inflate(payload, max_message)?
                    }
                    _ => payload,
                };
                if std::str::from_utf8(text).is_err() {
                    return Err(Reject::InvalidUtf8);
                }
                on_message(Incoming::Text(text))
            }
            OpCode::Text => {
                if fragments.is_some() {
                    return Err(Reject::BadFragmentation);
                }
                let mut f = Box::<Fragments>::default();
                f.compressed = header.compressed;
                f.push(payload)?;
                *fragments = Some(f);
                Flow::Continue
            }
            OpCode::Continuation => {
                let Some(f) = fragments.as_mut() else {
                    return Err(Reject::BadFragmentation);
                };
                f.push(payload)?;
                if header.fin {
                    let compressed = fragments.as_ref().is_some_and(|f| f.compressed);
                    let mut whole = match fragments.take() {
                        Some(f) => f.finish()?,
                        None => Vec::new(),
                    };
                    match inflater.as_deref_mut() {
                        Some(inflater) if compressed => {
                            let text = inflater.inflate(&whole, max_message)?;
                            if std::str::from_utf8(text).is_err() {
                                return Err(Reject::InvalidUtf8);
                            }
                            on_message(Incoming::Text(text))
                        }
                        _ => on_message(Incoming::Text(&mut whole)),
                    }
                } else {
                    Flow::Continue
                }
            }
            OpCode::Binary => return Err(Reject::BinaryFrame),
            OpCode::Ping => on_message(Incoming::Ping(payload)),
            OpCode::Pong => on_message(Incoming::Pong),
            OpCode::Close => on_message(Incoming::Close(frame::parse_close(payload)?)),
        };
        if flow != Flow::Continue {
            return Ok(Parsed {
                consumed: pos,
                need: None,
                stopped: flow == Flow::Stop,
                paused: flow == Flow::Pause,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn collect(buf: &mut [u8], max: usize) -> (Result<Parsed, Reject>, Vec<String>) {
        let mut frags = None;
        let mut seen = Vec::new();
        let r = parse(buf, &mut frags, max, |m| {
            seen.push(match m {
                Incoming::Text(t) => format!("text:{}", String::from_utf8_lossy(t)),
                Incoming::Ping(p) => format!("ping:{}", p.len()),
                Incoming::Pong => "pong".into(),
                Incoming::Close(c) => format!("close:{c:?}"),
            });
            Flow::Continue
        });
        (r, seen)
    }

    #[test]
    fn several_frames_in_one_read_and_a_partial_tail() {
        let mut buf = client_frame(true, 1, b"hello");
        buf.extend(client_frame(true, 9, b"p"));
        let tail = client_frame(true, 1, b"later");
        buf.extend_from_slice(&tail[..4]);
        let (r, seen) = collect(&mut buf, 1000);
        let parsed = r.expect("parses");
        assert_eq!(seen, vec!["text:hello", "ping:1"]);
        assert_eq!(parsed.consumed, buf.len() - 4);
    }

    #[test]
    fn fragments_with_interleaved_ping_reassemble() {
        let mut buf = client_frame(false, 1, b"ab");
        buf.extend(client_frame(true, 9, b""));
        buf.extend(client_frame(false, 0, b"cd"));
        buf.extend(client_frame(true, 0, b"ef"));
        let (r, seen) = collect(&mut buf, 1000);
        assert!(r.is_ok());
        assert_eq!(seen, vec!["ping:0", "text:abcdef"]);
    }

    #[test]
    fn violations_map_to_rejections() {
        let mut binary = client_frame(true, 2, b"x");
        assert_eq!(collect(&mut binary, 100).0, Err(Reject::BinaryFrame));
        let mut bad_utf8 = client_frame(true, 1, &[0xff, 0xfe]);
        assert_eq!(collect(&mut bad_utf8, 100).0, Err(Reject::InvalidUtf8));
        let mut big = client_frame(true, 1, &[b'a'; 200]);
        assert_eq!(collect(&mut big, 100).0, Err(Reject::MessageTooLarge));
        let mut stray = client_frame(true, 0, b"x");
        assert_eq!(collect(&mut stray, 100).0, Err(Reject::BadFragmentation));
        let mut frag_too_big = client_frame(false, 1, &[b'a'; 60]);
        frag_too_big.extend(client_frame(true, 0, &[b'a'; 60]));
        assert_eq!(
            collect(&mut frag_too_big, 100).0,
            Err(Reject::MessageTooLarge)
        );
    }

    #[test]
    fn control_frames_between_fragments_do_not_count_towards_the_message() {
        let mut buf = client_frame(false, 1, &[b'a'; 60]);
        buf.extend(client_frame(true, 9, &[b'p'; 50]));
        buf.extend(client_frame(true, 0, &[b'b'; 40]));
        let (r, seen) = collect(&mut buf, 100);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let full = client_frame(true, 1, &[b'a'; 70_000]);
        let mut head = full[..20].to_vec();
        assert_eq!(collect(&mut head, 65_536).0, Err(Reject::MessageTooLarge));
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_carries_it() {
        // The first fragment is already invalid: refused before the message ends (the
        // final fragment never arrives in this buffer).
        let mut first = client_frame(false, 1, b"ok \xff");
        assert_eq!(collect(&mut first, 100).0, Err(Reject::InvalidUtf8));
        // A character split across fragments is fine; so is one split at every byte.
        let text = "é€😀";
        let mut buf = Vec::new();
        for (i, b) in text.as_bytes().iter().enumerate() {
            let op = if i == 0 { 1 } else { 0 };
            buf.extend(client_frame(i + 1 == text.len(), op, &[*b]));
        }
        let (r, seen) = collect(&mut buf, 100);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(seen, vec![format!("text:{text}")]);
        // A bad continuation byte in the middle fragment fails there.
        let mut buf = client_frame(false, 1, b"\xe2\x82");
        buf.extend(client_frame(false, 0, b"\x41"));
        assert_eq!(collect(&mut buf, 100).0, Err(Reject::InvalidUtf8));
        // A character left unfinished by the last fragment is invalid.
        let mut buf = client_frame(false, 1, b"a");
        buf.extend(client_frame(true, 0, b"\xe2\x82"));
        assert_eq!(collect(&mut buf, 100).0, Err(Reject::InvalidUtf8));
    }

    #[test]
    fn close_frames_are_validated() {
        let close = |payload: &[u8]| {
            let mut f = client_frame(true, 8, payload);
            collect(&mut f, 100)
        };
        assert_eq!(close(b"").1, vec!["close:None"]);
        assert_eq!(close(b"\x03\xe8bye").1, vec!["close:Some(1000)"]);
        assert_eq!(close(b"\x0f\xa0").1, vec!["close:Some(4000)"]);
        assert_eq!(close(b"\x03").0, Err(Reject::BadCloseFrame));
        assert_eq!(close(b"\x03\xed").0, Err(Reject::BadCloseFrame)); // 1005
        assert_eq!(close(b"\x03\xe8\xff").0, Err(Reject::InvalidUtf8));
    }

    #[test]
    fn a_big_frame_in_small_reads_is_gathered_with_linear_copying() {
        // 4 MiB sent 1 KiB at a time, as the shard's read path handles it.
        let frame = client_frame(true, 1, &vec![b'a'; 4 << 20]);
        let mut partial: Vec<u8> = Vec::new();
        let mut need = 0;
        let mut copied = 0usize;
        let mut seen = Vec::new();
        for piece in frame.chunks(1024) {
            if gathers(&partial, need) {
                let start = make_room(&mut partial, 64 * 1024);
                partial.truncate(start);
                partial.extend_from_slice(piece);
                copied += piece.len();
                if partial.len() < need {
                    continue;
                }
            } else {
                partial.extend_from_slice(piece);
                copied += partial.len(); // through the scratch buffer and back
            }
            let mut frags = None;
            let p = parse(&mut partial, &mut frags, 8 << 20, |m| {
                if let Incoming::Text(t) = m {
                    seen.push(t.len());
                }
                Flow::Continue
            })
            .expect("parses");
            partial.drain(..p.consumed);
            need = p.need.unwrap_or(0);
        }
        assert_eq!(seen, vec![4 << 20]);
        assert!(
            copied < 3 * frame.len(),
            "copied {copied} bytes for a {} byte frame",
            frame.len()
        );
    }

    #[test]
    fn compressed_messages_need_negotiation_and_are_inflated() {
        let text = br#"{"k":"p","t":"a/b","d":"hello hello hello hello"}"#;
        let plain = frame::text_frame(text);
        let stats = crate::deflate::Stats::default();
        let settings = crate::deflate::Settings {
            enabled: true,
            min_bytes: 0,
            level: 6,
        };
        let deflated = crate::deflate::deflate_frame(&plain, &settings, &stats).expect("shrinks");
        let body = frame::server_payload(&deflated).to_vec();
        // Not negotiated: RSV1 is a protocol error.
        let mut one = client_frame(true, 0x40 | 1, &body);
        assert_eq!(collect(&mut one, 1000).0, Err(Reject::BadOpcode));
        let mut inflater = crate::deflate::Inflater::default();
        let mut run = |buf: &mut [u8], max: usize| {
            let mut frags = None;
            let mut seen = Vec::new();
            let r = parse_with(buf, &mut frags, max, Some(&mut inflater), |m| {
                if let Incoming::Text(t) = m {
                    seen.push(String::from_utf8_lossy(t).into_owned());
                }
                Flow::Continue
            });
            (r.map(|_| ()), seen)
        };
        let want = String::from_utf8_lossy(text).into_owned();
        // (Parsing unmasks in place: each run gets a fresh frame.)
        let mut one = client_frame(true, 0x40 | 1, &body);
        assert_eq!(run(&mut one, 1000), (Ok(()), vec![want.clone()]));
        // Fragmented: RSV1 on the first frame only, inflated once the message is whole.
        let (a, b) = body.split_at(body.len() / 2);
        let mut frags = client_frame(false, 0x40 | 1, a);
        frags.extend(client_frame(true, 0, b));
        assert_eq!(run(&mut frags, 1000), (Ok(()), vec![want]));
        // RSV1 on a continuation or a control frame is a protocol error.
        let mut bad = client_frame(false, 0x40 | 1, a);
        bad.extend(client_frame(true, 0x40, b));
        assert_eq!(run(&mut bad, 1000).0, Err(Reject::BadOpcode));
        let mut ping = client_frame(true, 0x40 | 9, b"");
        assert_eq!(run(&mut ping, 1000).0, Err(Reject::BadOpcode));
        // The cap applies to the inflated size.
        let mut one = client_frame(true, 0x40 | 1, &body);
        assert_eq!(run(&mut one, body.len()).0, Err(Reject::InflatedTooLarge));
    }

    #[test]
    fn need_reports_whole_frame_size() {
        let full = client_frame(true, 1, &[b'a'; 300]);
        let mut head = full[..10].to_vec();
        let (r, _) = collect(&mut head, 1000);
        assert_eq!(r.expect("ok").need, Some(full.len()));
    }
}
