//! Driver for the frame reader ([`crate::conn::reader::parse`]), run the way
//! `Shard::poll_conn` runs it: each read is appended to the bytes carried from the last
//! one, parsed in place, and the unconsumed tail carried again; a paused parse is resumed
//! before reading more, and a close (or any rejection) ends the connection.

use crate::conn::reader::{self, Flow, Fragments, Incoming};
use crate::error::Reject;

/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest client frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Feeds the client byte stream in `input` to the frame reader in chunks.
///
/// Layout: byte 0 picks `max_message_bytes` (low 3 bits: 16 << n, small so the too-large
/// paths are reached) and which messages the handler pauses on (high 5 bits); byte 1
/// (mod 8) is how many chunk lengths follow, one byte each (length − 1), used in turn;
/// the rest is the stream. The same stream read in one piece must give the same
/// messages and the same ending: how TCP splits the bytes must not matter.
///
/// # Panics
/// When the reader panics or an invariant does not hold (a fuzz finding).
pub fn frame_reader(input: &[u8]) {
    let [config, splits, rest @ ..] = input else {
        return;
    };
    let splits = usize::from(*splits % 8).min(rest.len());
    let (lengths, stream) = rest.split_at(splits);
    let lengths: Vec<usize> = lengths.iter().map(|&b| usize::from(b) + 1).collect();
    let setup = Setup {
        max_message: 16 << (config & 7),
        pause_on: config >> 3,
    };
    let chunked = setup.run(stream, &lengths);
    let whole = setup.run(stream, &[]);
    assert_eq!(chunked, whole, "chunking changed what was read");
}

/// What the reader saw: the messages handed over, in order, and how reading ended.
#[derive(Debug, PartialEq)]
struct Transcript {
    messages: Vec<Message>,
    end: End,
}

#[derive(Debug, PartialEq)]
enum Message {
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

#[derive(Debug, PartialEq)]
enum End {
    /// The stream ended: the bytes left unparsed, and whether a fragmented message was
    /// still being reassembled.
    Eof { carried: Vec<u8>, in_message: bool },
    /// The handler stopped (the client closed).
    Stopped,
    /// The reader refused the stream (the connection is closed with this reason).
    Rejected(Reject),
}

struct Setup {
    max_message: usize,
    /// Bit `i % 5` set: pause after the `i`-th message.
    pause_on: u8,
}

impl Setup {
    /// Reads `stream` in chunks of `lengths` (cycled; empty: one read of everything).
    fn run(&self, stream: &[u8], lengths: &[usize]) -> Transcript {
        let mut messages = Vec::new();
        let mut reads = Reads {
            stream,
            lengths,
            turn: 0,
        };
        let mut carried: Vec<u8> = Vec::new();
        let mut fragments: Option<Box<Fragments>> = None;
        let mut unparsed = false;
        loop {
            let mut buf = carried.clone();
            if !std::mem::take(&mut unparsed) {
                match reads.next() {
                    Some(read) => buf.extend_from_slice(read),
                    None => {
                        return Transcript {
                            messages,
                            end: End::Eof {
                                carried,
                                in_message: fragments.is_some(),
                            },
                        }
                    }
                }
            }
            let mut flows = Vec::new();
            let parsed = reader::parse(&mut buf, &mut fragments, self.max_message, |msg| {
                let flow = self.on_message(messages.len(), &msg);
                messages.push(Message::from(msg));
                flows.push(flow);
                flow
            });
            let parsed = match parsed {
                Ok(parsed) => parsed,
                Err(reject) => {
                    return Transcript {
                        messages,
                        end: End::Rejected(reject),
                    }
                }
            };
            assert!(parsed.consumed <= buf.len(), "consumed more than given");
            let last = flows.last().copied();
            assert_eq!(parsed.stopped, last == Some(Flow::Stop), "stop reported");
            assert_eq!(parsed.paused, last == Some(Flow::Pause), "pause reported");
            if let Some(need) = parsed.need {
                let left = buf.len() - parsed.consumed;
                assert!(need > left, "`need` asks for more than is there");
                assert!(need <= MAX_HEADER + self.max_message, "`need` within limit");
            }
            if parsed.stopped {
                return Transcript {
                    messages,
                    end: End::Stopped,
                };
            }
            carried = buf.get(parsed.consumed..).unwrap_or_default().to_vec();
            unparsed = parsed.paused && !carried.is_empty();
        }
    }

    /// The handler's answer, as the shard's would be: stop on close, pause by pattern.
    fn on_message(&self, index: usize, msg: &Incoming<'_>) -> Flow {
        match msg {
            Incoming::Text(text) => {
                assert!(text.len() <= self.max_message, "message within limit");
                assert!(std::str::from_utf8(text).is_ok(), "text is UTF-8");
            }
            Incoming::Ping(payload) => {
                assert!(payload.len() <= MAX_CONTROL_PAYLOAD, "control payload");
            }
            Incoming::Pong => {}
            Incoming::Close(_) => return Flow::Stop,
        }
        if self.pause_on & (1 << (index % 5)) != 0 {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }
}

impl From<Incoming<'_>> for Message {
    fn from(msg: Incoming<'_>) -> Self {
        match msg {
            Incoming::Text(text) => Message::Text(text.to_vec()),
            Incoming::Ping(payload) => Message::Ping(payload.to_vec()),
            Incoming::Pong => Message::Pong,
            Incoming::Close(code) => Message::Close(code),
        }
    }
}

/// The stream cut into reads of the given lengths, in turn.
struct Reads<'a> {
    stream: &'a [u8],
    lengths: &'a [usize],
    turn: usize,
}

impl<'a> Iterator for Reads<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.stream.is_empty() {
            return None;
        }
        let len = match self.lengths.get(self.turn % self.lengths.len().max(1)) {
            Some(&len) => len.min(self.stream.len()),
            None => self.stream.len(),
        };
        self.turn += 1;
        let (read, rest) = self.stream.split_at(len);
        self.stream = rest;
        Some(read)
    }
}
