//! permessage-deflate negotiation (RFC 7692 §5, §7.1): reads the client's
//! `Sec-WebSocket-Extensions` offers and picks the first one the broker can honour.
//!
//! Both upgrade paths (the lean parser in `server::handshake` and hyper's in
//! `server::upgrade`) call [`negotiate`], so they agree on every offer.
//!
//! What the broker answers is always the same few parameters:
//! - `server_no_context_takeover`: every message is compressed on its own, which is what
//!   lets one compressed frame serve every subscriber (compress once per publication);
//! - `client_no_context_takeover`: RFC 7692 §7.1.1.2 lets a server ask this of any client,
//!   offered or not. A client message then never refers to an earlier one, so inflating it
//!   needs no window kept per connection: the shard's one inflater is reset per message.
//! - `server_max_window_bits=15` only when the offer names `server_max_window_bits`
//!   (§7.1.2.1: the answer must then carry it). Frames are compressed once for all with a
//!   32 KiB window, so an offer asking for a smaller one (8..14) is declined (§7.1.2.1 lets
//!   the server decline) and the next offer is tried.
//! - `client_max_window_bits` is never answered (§7.1.2.2: optional even when offered; the
//!   client then keeps its own window, up to 15 bits, which the shard's inflater accepts).
//!
//! An offer with an unknown parameter, a parameter given twice, a value where none is
//! allowed, or a window size outside 8..15 (with leading zeros, or quoted so it unquotes
//! to something else) is declined (§7.1). When no offer is acceptable the connection is
//! made without the extension; a handshake is never refused over it.

/// The extension's registered name.
pub const NAME: &str = "permessage-deflate";

/// Window bits the broker compresses with (32 KiB).
pub const SERVER_WINDOW_BITS: u8 = 15;

/// The answer when the accepted offer did not name `server_max_window_bits`.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The answer when it did (the value must be echoed, at most the offered one).
const ANSWER_WITH_WINDOW: &str = "permessage-deflate; server_no_context_takeover; \
                                  client_no_context_takeover; server_max_window_bits=15";

/// The parameters of one `permessage-deflate` offer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// The `Sec-WebSocket-Extensions` answer for the first acceptable permessage-deflate
/// offer among `headers` (every `Sec-WebSocket-Extensions` value, in order), or `None`:
/// no extension (compression off, nothing offered, or nothing acceptable).
pub fn negotiate<'a>(
    enabled: bool,
    headers: impl IntoIterator<Item = &'a [u8]>,
) -> Option<&'static str> {
    if !enabled {
        return None;
    }
    for value in headers {
        // Header values are visible ASCII; anything else cannot be a valid offer list.
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for element in split_outside_quotes(value, b',') {
            let mut parts = split_outside_quotes(element, b';');
            let name = parts.next().unwrap_or_default().trim();
            if !name.eq_ignore_ascii_case(NAME) {
                continue; // another extension (or an empty list element): not ours
            }
            if let Some(offer) = parse_offer(parts) {
                if let Some(answer) = answer(&offer) {
                    return Some(answer);
                }
            }
        }
    }
    None
}

/// The answer to an acceptable offer, `None` to decline it.
fn answer(offer: &Offer) -> Option<&'static str> {
    // The client's own choices need nothing from us: client_no_context_takeover is
    // answered anyway, and its window (client_max_window_bits) is at most 15 bits.
    let _ = (
        offer.client_no_context_takeover,
        offer.client_max_window_bits,
    );
    // server_no_context_takeover is what the broker does anyway.
    let _ = offer.server_no_context_takeover;
    match offer.server_max_window_bits {
        None => Some(ANSWER),
        Some(bits) if bits >= SERVER_WINDOW_BITS => Some(ANSWER_WITH_WINDOW),
        Some(_) => None,
    }
}

/// The offer's parameters, `None` when one is unknown, repeated or has a bad value.
fn parse_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut offer = Offer::default();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(param_value(v.trim())?)),
            None => (param.trim(), None),
        };
        if name.is_empty() || !is_token(name) {
            return None;
        }
        let name = name.to_ascii_lowercase();
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) if !offer.server_no_context_takeover => {
                offer.server_no_context_takeover = true;
            }
            ("client_no_context_takeover", None) if !offer.client_no_context_takeover => {
                offer.client_no_context_takeover = true;
            }
            ("server_max_window_bits", Some(v)) if offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(window_bits(&v)?);
            }
            ("client_max_window_bits", v) if offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(match v {
                    Some(v) => Some(window_bits(&v)?),
                    None => None,
                });
            }
            _ => return None,
        }
    }
    Some(offer)
}

/// A window size: a decimal 8..15 without leading zeros (RFC 7692 §7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// A parameter value: a token, or a quoted-string that unquotes to a token (RFC 6455
/// §9.1).
fn param_value(raw: &str) -> Option<String> {
    let value = match raw.strip_prefix('"') {
        Some(quoted) => {
            let inner = quoted.strip_suffix('"')?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?),
                    '"' => return None,
                    c => out.push(c),
                }
            }
            out
        }
        None => raw.to_owned(),
    };
    (!value.is_empty() && is_token(&value)).then_some(value)
}

/// RFC 7230 `token`: visible ASCII but separators.
fn is_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Splits `s` at `sep` where it is not inside a quoted-string (a backslash escapes the
/// next character inside quotes). An unterminated quote runs to the end.
fn split_outside_quotes(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, b) in s.bytes().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if b == sep && !quoted {
                rest = s.get(i + 1..);
                return s.get(..i);
            }
        }
        rest = None;
        Some(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(offers: &[&str]) -> Option<&'static str> {
        negotiate(true, offers.iter().map(|s| s.as_bytes()))
    }

    #[test]
    fn plain_offers_are_accepted_with_no_context_takeover_both_ways() {
        for offer in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "Permessage-Deflate ; Client_Max_Window_Bits=10",
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
            "x-webkit-deflate-frame, permessage-deflate",
            "permessage-deflate; client_max_window_bits=\"12\"",
        ] {
            assert_eq!(n(&[offer]), Some(ANSWER), "{offer}");
        }
        assert_eq!(n(&[]), None);
        assert_eq!(negotiate(false, [b"permessage-deflate".as_slice()]), None);
    }

    #[test]
    fn server_window_is_echoed_or_the_offer_declined() {
        assert_eq!(
            n(&["permessage-deflate; server_max_window_bits=15"]),
            Some(ANSWER_WITH_WINDOW)
        );
        assert_eq!(n(&["permessage-deflate; server_max_window_bits=10"]), None);
        // A declined offer falls back to the next one, also in a later header line.
        assert_eq!(
            n(&["permessage-deflate; server_max_window_bits=10, permessage-deflate"]),
            Some(ANSWER)
        );
        assert_eq!(
            n(&[
                "permessage-deflate; server_max_window_bits=9",
                "permessage-deflate; client_max_window_bits"
            ]),
            Some(ANSWER)
        );
    }

    #[test]
    fn bad_parameters_decline_the_offer() {
        for offer in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=015",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits=\"1 5\"",
            "permessage-deflate; client_max_window_bits=\"15",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; mystery",
            "permessage-deflate; ;",
            "deflate-frame",
        ] {
            assert_eq!(n(&[offer]), None, "{offer}");
        }
        // Quoted commas and semicolons do not split anything.
        assert_eq!(
            n(&["permessage-deflate; x=\"a,permessage-deflate\", permessage-deflate"]),
            Some(ANSWER)
        );
        assert_eq!(
            n(&[&String::from_utf8_lossy(b"permessage-deflate; \xff")]),
            None
        );
    }
}
