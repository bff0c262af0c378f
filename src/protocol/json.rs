//! Small JSON pieces shared by the gows and vws codecs: the nesting pre-scan, the one-pass
//! parse of a client message into the raw text of its wanted members, string reading
//! (borrowed, or unescaped in place), compaction of raw values, and string escaping.
//!
//! Owns no message shapes (those live in `gows`/`vws`). Client messages are parsed with
//! serde_json into `&RawValue` slices of the payload: no tree is built and published data
//! is never re-serialized, only copied (and stripped of whitespace when it has any).
//! Writing into a `Vec<u8>` cannot fail (short of an allocation abort), so the `fmt`
//! result of writing into one is deliberately ignored here.

use crate::error::Reject;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// True when the `[`/`{` nesting of `bytes` never exceeds `max`, counting only brackets
/// outside JSON strings (a `\"` escape does not end a string).
///
/// This is a cheap linear scan that runs before parsing, so hostile input such as
/// 10,000 nested arrays is refused without ever being recursed into. It does not validate
/// JSON: unbalanced input is left for the parser to reject.
pub fn depth_within(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            // Strings are skipped whole (a fast search, not byte by byte); the rest of an
            // unterminated one holds no brackets.
            b'"' => match string_end(bytes, i) {
                Some((end, _)) => i = end + 1,
                None => return true,
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// The escape sequence for `b` inside a JSON string, or `None` when it is copied as is.
fn escape_of(b: u8) -> Option<&'static [u8]> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Control characters other than the three common ones become \u00XX; the table is
    // built at compile time so escaping allocates nothing (indexing in a const block
    // cannot fail at run time: an out-of-range index is a compile error).
    #[allow(clippy::indexing_slicing)]
    static CONTROL: [[u8; 6]; 32] = {
        let mut table = [[0u8; 6]; 32];
        let mut i = 0;
        while i < 32 {
            table[i] = [b'\\', b'u', b'0', b'0', HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        table
    };
    match b {
        b'"' => Some(b"\\\""),
        b'\\' => Some(b"\\\\"),
        b'\n' => Some(b"\\n"),
        b'\r' => Some(b"\\r"),
        b'\t' => Some(b"\\t"),
        0..=0x1f => CONTROL.get(usize::from(b)).map(|e| e.as_slice()),
        _ => None,
    }
}

/// Appends the body of a JSON string literal (no surrounding quotes) for `s`.
fn write_str_body(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(esc) = escape_of(b) {
            // Copy the clean run before this byte in one go.
            out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
            out.extend_from_slice(esc);
            start = i + 1;
        }
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
}

/// Writes a publication's `,"headers":{...}` (when it has any) and `,"offset":N` (on a
/// history channel): the same members in the gows and SemStreams renderings.
pub fn write_headers_and_offset(out: &mut Vec<u8>, p: &crate::publication::Publication) {
    if let Some(headers) = &p.headers {
        out.extend_from_slice(b",\"headers\":");
        out.extend_from_slice(headers);
    }
    let offset = p.offset();
    if offset != 0 {
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
    }
}

/// Appends `s` as a JSON string literal: quotes, backslash, `\n`, `\r`, `\t` escaped, other
/// control characters as `\u00XX`; everything else (including non-ASCII) copied as UTF-8.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_str_body(out, s);
    out.push(b'"');
}

/// A `fmt::Write` sink that escapes everything written to it as JSON string content.
struct StrBody<'a>(&'a mut Vec<u8>);

impl fmt::Write for StrBody<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str_body(self.0, s);
        Ok(())
    }
}

/// Appends the `Display` text of `value` as a JSON string literal, escaping on the fly
/// (no intermediate `String`); used for error reasons built from `Reject`.
pub fn write_display(out: &mut Vec<u8>, value: &dyn fmt::Display) {
    out.push(b'"');
    let _ = fmt::Write::write_fmt(&mut StrBody(out), format_args!("{value}"));
    out.push(b'"');
}

/// True when the JSON object text `object` has a top-level key equal to `key`.
///
/// Used once per publication (not per subscriber) to merge the gows type into vws
/// headers, so parsing with serde_json here is cheap enough; text that is not a JSON
/// object reports `false`.
pub fn object_has_key(object: &[u8], key: &str) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(object)
        .map(|map| map.contains_key(key))
        .unwrap_or(false)
}

/// Parses the client message `payload` as one JSON object and returns the raw JSON text of
/// the top-level members named in `names` (in that order; `None` for an absent member).
///
/// This is a single serde_json pass that builds no tree: a wanted member's value is only
/// scanned and handed back as a slice of `payload`, and every other member is validated
/// and skipped. serde_json's skipping is iterative, so a deep value cannot exhaust its
/// recursion limit (the caller's [`depth_within`] bound still applies first). When a name
/// appears twice the first member wins, as it did with simd-json's lookups.
///
/// # Errors
/// `MalformedJson` when `payload` is not one valid JSON text, `NotAnObject` when it is
/// valid JSON of another type.
pub fn parse_members<'a, const N: usize>(
    payload: &'a [u8],
    names: &[&'static str; N],
) -> Result<[Option<&'a RawValue>; N], Reject> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let members = serde::Deserializer::deserialize_map(&mut de, Members(names))
        .and_then(|members| de.end().map(|()| members));
    match members {
        Ok(members) => Ok(members),
        // A data error can only come from the top level not being an object; serde_json
        // reports that on its first byte, so check the rest before calling it valid JSON.
        Err(e) if e.is_data() && serde_json::from_slice::<IgnoredAny>(payload).is_ok() => {
            Err(Reject::NotAnObject)
        }
        Err(_) => Err(Reject::MalformedJson),
    }
}

/// Visits the top-level object for [`parse_members`].
struct Members<'n, const N: usize>(&'n [&'static str; N]);

impl<'de, const N: usize> Visitor<'de> for Members<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = [None; N];
        while let Some(slot) = map.next_key_seed(MemberName(self.0))? {
            match slot.and_then(|n| found.get_mut(n)).filter(|f| f.is_none()) {
                Some(free) => *free = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// Maps a member name to its index in the wanted names, without allocating (an escaped
/// name is unescaped into serde_json's own scratch buffer).
struct MemberName<'n, const N: usize>(&'n [&'static str; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for MemberName<'_, N> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<const N: usize> Visitor<'_> for MemberName<'_, N> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|n| *n == name))
    }
}

/// The body of `raw` (between the quotes, escapes still in) when it is a JSON string.
fn string_body(raw: &RawValue) -> Option<&str> {
    raw.get().strip_prefix('"')?.strip_suffix('"')
}

/// True when `raw` is a JSON string.
pub fn is_string(raw: &RawValue) -> bool {
    raw.get().starts_with('"')
}

/// True when `raw` is a JSON number.
pub fn is_number(raw: &RawValue) -> bool {
    matches!(raw.get().as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

/// The text of `raw` when it is a JSON string: borrowed when it has no escapes,
/// unescaped into a new `String` otherwise (rare in practice); `None` for another type.
///
/// # Errors
/// `MalformedJson` for a `\u` escape that is no character (a lone UTF-16 surrogate).
pub fn str_value(raw: &RawValue) -> Result<Option<Cow<'_, str>>, Reject> {
    let Some(body) = string_body(raw) else {
        return Ok(None);
    };
    if !body.contains('\\') {
        return Ok(Some(Cow::Borrowed(body)));
    }
    let mut out = Vec::with_capacity(body.len());
    unescape(body, |piece| match piece {
        Piece::Run(run) => out.extend_from_slice(run.as_bytes()),
        Piece::Char(c) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
    })?;
    // Runs are whole `&str` pieces and chars are encoded, so this never fails.
    String::from_utf8(out)
        .map(|s| Some(Cow::Owned(s)))
        .map_err(|_| Reject::MalformedJson)
}

/// Where a JSON string member's body lies in the payload, so that its text can be
/// borrowed from the payload once parsing (which borrows it too) is over; see
/// [`str_in_place`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrSpan {
    start: usize,
    end: usize,
    escaped: bool,
}

/// The span of `raw` within `payload` when `raw` is a JSON string, else `None`.
///
/// `raw` must be a slice of `payload` (as [`parse_members`] returns); its address gives
/// the offset, which needs no unsafe code, and [`str_in_place`] checks the bounds.
pub fn str_span(payload: &[u8], raw: &RawValue) -> Option<StrSpan> {
    let body = string_body(raw)?;
    let start = (body.as_ptr() as usize).checked_sub(payload.as_ptr() as usize)?;
    Some(StrSpan {
        start,
        end: start.checked_add(body.len())?,
        escaped: body.contains('\\'),
    })
}

/// The text of the string at `span`, borrowed from `payload`. An escaped string is
/// unescaped in place first (through `scratch`): unescaped text is never longer than its
/// escaped form, so it fits where it was.
///
/// # Errors
/// `MalformedJson` for a `\u` escape that is no character (a lone UTF-16 surrogate), or a
/// span that is not in `payload`.
pub fn str_in_place<'a>(
    payload: &'a mut [u8],
    span: StrSpan,
    scratch: &mut Vec<u8>,
) -> Result<&'a str, Reject> {
    let end = if span.escaped {
        let body = payload
            .get(span.start..span.end)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or(Reject::MalformedJson)?;
        scratch.clear();
        unescape(body, |piece| match piece {
            Piece::Run(run) => scratch.extend_from_slice(run.as_bytes()),
            Piece::Char(c) => scratch.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        })?;
        let end = span.start + scratch.len();
        payload
            .get_mut(span.start..end)
            .ok_or(Reject::MalformedJson)?
            .copy_from_slice(scratch);
        end
    } else {
        span.end
    };
    let payload: &'a [u8] = payload;
    payload
        .get(span.start..end)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or(Reject::MalformedJson)
}

/// The compact form of the valid JSON text `raw`: whitespace outside strings dropped, and
/// strings that hold escapes rewritten with [`write_str`]'s escaping (`"\u00e9\/"` becomes
/// `"é/"`). Numbers, literals and escape-free strings are kept byte for byte.
///
/// Returns `raw` itself when it is already compact, the common case for machine-written
/// JSON, so the caller copies it once; otherwise the compacted text, built in `scratch`.
///
/// # Errors
/// `MalformedJson` for a `\u` escape that is no character (a lone UTF-16 surrogate) or an
/// unterminated string (neither can occur in text serde_json has accepted, bar the first).
pub fn compact<'s>(raw: &'s str, scratch: &'s mut Vec<u8>) -> Result<&'s [u8], Reject> {
    let bytes = raw.as_bytes();
    if !has_space_or_escape(bytes) {
        return Ok(bytes);
    }
    scratch.clear();
    scratch.reserve(bytes.len());
    let mut i = 0;
    loop {
        // Outside strings: structure, numbers and literals are kept, whitespace dropped.
        let rest = bytes.get(i..).unwrap_or_default();
        let quote = memchr::memchr(b'"', rest).map_or(bytes.len(), |at| i + at);
        let outside = bytes.get(i..quote).unwrap_or_default();
        scratch.extend(
            outside
                .iter()
                .filter(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')),
        );
        if quote == bytes.len() {
            return Ok(scratch);
        }
        let (end, escaped) = string_end(bytes, quote + 1).ok_or(Reject::MalformedJson)?;
        if escaped {
            let body = raw.get(quote + 1..end).ok_or(Reject::MalformedJson)?;
            write_canonical_str(scratch, body)?;
        } else {
            scratch.extend_from_slice(bytes.get(quote..=end).unwrap_or_default());
        }
        i = end + 1;
    }
}

/// True when `bytes` holds JSON whitespace or a backslash anywhere: the quick test that
/// lets already compact text skip the string-aware pass.
fn has_space_or_escape(bytes: &[u8]) -> bool {
    memchr::memchr3(b' ', b'\n', b'\\', bytes).is_some()
        || memchr::memchr2(b'\t', b'\r', bytes).is_some()
}

/// The index of the quote closing the string whose body starts at `from`, and whether the
/// body holds an escape; `None` when the string is not closed.
fn string_end(bytes: &[u8], from: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    let mut i = from;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes.get(at) == Some(&b'"') {
            return Some((at, escaped));
        }
        escaped = true;
        // Skip the escaped byte: it may be a quote. (`\u` digits are never quotes.)
        i = at + 2;
    }
}

/// True when the valid JSON text `raw` is an object whose values are all strings (the
/// rule for vws `h`).
pub fn is_object_of_strings(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'{') {
        return false;
    }
    // In valid JSON a member value follows the `:` after its name; at depth 1 (the only
    // depth an object of strings has) it must open a string. Strings are skipped whole,
    // so a `:` inside one is never seen.
    let mut want_value = false;
    let mut i = 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'"' => match string_end(bytes, i + 1) {
                Some((end, _)) => {
                    want_value = false;
                    i = end + 1;
                }
                None => return false,
            },
            _ if want_value => return false,
            b':' => {
                want_value = true;
                i += 1;
            }
            _ => i += 1,
        }
    }
    true
}

/// Appends the JSON string literal for the escaped body `body`, in [`write_str`]'s
/// escaping.
fn write_canonical_str(out: &mut Vec<u8>, body: &str) -> Result<(), Reject> {
    out.push(b'"');
    unescape(body, |piece| match piece {
        // Unescaped runs of valid JSON hold no quote, backslash or control character.
        Piece::Run(run) => out.extend_from_slice(run.as_bytes()),
        Piece::Char(c) => write_str_body(out, c.encode_utf8(&mut [0; 4])),
    })?;
    out.push(b'"');
    Ok(())
}

/// A piece of an unescaped JSON string: a run copied as is, or the character of one
/// escape sequence.
enum Piece<'s> {
    Run(&'s str),
    Char(char),
}

/// Feeds the unescaped text of the JSON string body `body` to `sink`, piece by piece.
///
/// # Errors
/// `MalformedJson` for an escape that is not valid JSON or is a lone UTF-16 surrogate.
fn unescape<'s>(body: &'s str, mut sink: impl FnMut(Piece<'s>)) -> Result<(), Reject> {
    let mut rest = body;
    while let Some(at) = rest.find('\\') {
        // `\` is ASCII, so both halves are on character boundaries.
        let (run, escape) = rest.split_at(at);
        sink(Piece::Run(run));
        let (c, len) = escape_at(escape.as_bytes()).ok_or(Reject::MalformedJson)?;
        sink(Piece::Char(c));
        rest = escape.get(len..).ok_or(Reject::MalformedJson)?;
    }
    sink(Piece::Run(rest));
    Ok(())
}

/// The character that the escape sequence at the start of `esc` stands for (a surrogate
/// pair is one character), and the escape's length in bytes.
fn escape_at(esc: &[u8]) -> Option<(char, usize)> {
    let c = match esc.get(1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let high = hex4(esc.get(2..6)?)?;
            if !(0xD800..0xDC00).contains(&high) {
                // A lone low surrogate is no `char`, so it is refused here too.
                return char::from_u32(high).map(|c| (c, 6));
            }
            if esc.get(6..8)? != b"\\u" {
                return None;
            }
            let low = hex4(esc.get(8..12)?)?;
            if !(0xDC00..0xE000).contains(&low) {
                return None;
            }
            let c = char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))?;
            return Some((c, 12));
        }
        _ => return None,
    };
    Some((c, 2))
}

/// The value of four hex digits.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0u32, |n, &d| Some(n * 16 + char::from(d).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact(input: &str) -> String {
        serde_json::from_str::<IgnoredAny>(input).expect("valid test JSON");
        let mut scratch = Vec::new();
        let out = super::compact(input, &mut scratch).expect("compacts");
        String::from_utf8(out.to_vec()).expect("utf8")
    }

    #[test]
    fn depth_counts_only_outside_strings() {
        assert!(depth_within(b"{}", 1));
        assert!(!depth_within(b"[[]]", 1));
        assert!(depth_within(b"[[]]", 2));
        assert!(depth_within(br#"{"a":"[[[[[["}"#, 1));
        assert!(depth_within(br#"{"a":"\"[[[[["}"#, 1));
        assert!(!depth_within(br#"{"a":"\\",  "b":[[1]]}"#, 2));
        assert!(depth_within(b"[][][][]", 1));
        assert!(depth_within(b"", 0));
        assert!(!depth_within(b"{", 0));
    }

    #[test]
    fn deep_input_is_refused_cheaply() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(!depth_within(deep.as_bytes(), 64));
        assert!(depth_within(deep.as_bytes(), 10_000));
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\nd\re\tf\u{1}g\u{1f}é✓");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text, "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001fé✓\"");
        let back: String = serde_json::from_str(&text).expect("valid JSON string");
        assert_eq!(back, "a\"b\\c\nd\re\tf\u{1}g\u{1f}é✓");
    }

    #[test]
    fn display_is_escaped() {
        let mut out = Vec::new();
        write_display(&mut out, &"say \"hi\"\n");
        assert_eq!(out, b"\"say \\\"hi\\\"\\n\"");
    }

    #[test]
    fn values_reserialize_compactly() {
        assert_eq!(
            compact(r#" { "a" : [1, -2, true, null, "x\ny"] } "#),
            r#"{"a":[1,-2,true,null,"x\ny"]}"#
        );
        assert_eq!(compact("1.5"), "1.5");
        assert_eq!(compact("1e300"), "1e300");
        assert_eq!(compact("18446744073709551615"), "18446744073709551615");
        assert_eq!(compact(r#""\u00e9\/""#), "\"é/\"");
        let back: serde_json::Value =
            serde_json::from_str(&compact("[0.1, 2.0, -0.0, 1e-7]")).expect("json");
        assert_eq!(back, serde_json::json!([0.1, 2.0, -0.0, 1e-7]));
    }

    #[test]
    fn object_key_lookup() {
        assert!(object_has_key(br#"{"type":"x"}"#, "type"));
        assert!(object_has_key(br#"{"a":"b","typ\u0065":"x"}"#, "type"));
        assert!(!object_has_key(br#"{"a":"type"}"#, "type"));
        assert!(!object_has_key(b"[]", "type"));
    }

    fn members<const N: usize>(
        input: &str,
        names: &[&'static str; N],
    ) -> Result<[Option<String>; N], Reject> {
        parse_members(input.as_bytes(), names).map(|m| m.map(|r| r.map(|r| r.get().to_owned())))
    }

    #[test]
    fn members_are_raw_text_first_one_wins() {
        let got = members(
            r#" {"b" : [1, 2] ,"a":"x","b":3,"z":{"q":[]}} "#,
            &["a", "b", "c"],
        );
        assert_eq!(
            got,
            Ok([Some(r#""x""#.into()), Some("[1, 2]".into()), None])
        );
        // Escaped member names are matched by their text.
        assert_eq!(members(r#"{"\u0074":1}"#, &["t"]), Ok([Some("1".into())]));
        assert_eq!(members("{}", &["t"]), Ok([None]));
    }

    #[test]
    fn members_need_one_valid_object() {
        for bad in [
            "",
            " ",
            "{",
            "{} {",
            "{}}",
            r#"{"a":1,}"#,
            "[1,",
            "[1] x",
            "nul",
            "{'a':1}",
        ] {
            assert_eq!(members(bad, &["a"]), Err(Reject::MalformedJson), "{bad}");
        }
        // Broken JSON in a member that is not wanted still counts.
        assert_eq!(
            members(r#"{"a":1,"x":[tru]}"#, &["a"]),
            Err(Reject::MalformedJson)
        );
        for other in ["[1]", r#""x""#, "1", "null", " [ {} ] "] {
            assert_eq!(members(other, &["a"]), Err(Reject::NotAnObject), "{other}");
        }
    }

    fn compact_err(input: &str) -> Reject {
        super::compact(input, &mut Vec::new()).expect_err("should fail")
    }

    #[test]
    fn compact_keeps_values_as_sent() {
        // Numbers are not re-printed; whitespace inside strings is data.
        assert_eq!(
            compact("[4e3, 1.50, -0, 1E+2, 123456789012345678901234567890]"),
            "[4e3,1.50,-0,1E+2,123456789012345678901234567890]"
        );
        assert_eq!(
            compact("{\n  \"a b\": \"c\\td e\" ,\r\n \"f\":[ ]\n}"),
            r#"{"a b":"c\td e","f":[]}"#
        );
        assert_eq!(compact(r#""\ud83d\ude00\b\f""#), "\"😀\\u0008\\u000c\"");
        assert_eq!(compact_err(r#""\ud800""#), Reject::MalformedJson);
        assert_eq!(compact_err(r#""\udc00x""#), Reject::MalformedJson);
        assert_eq!(compact_err(r#""\ud800\u0041""#), Reject::MalformedJson);
        // Already compact text is handed back as is, not copied.
        let raw = r#"{"a":[1,"b"]}"#;
        let mut scratch = Vec::new();
        let out = super::compact(raw, &mut scratch).expect("compacts");
        assert!(std::ptr::eq(out, raw.as_bytes()));
    }

    #[test]
    fn compact_matches_a_reparse_on_mutated_json() {
        // Deterministic mutations of JSON values; every one serde_json accepts must compact
        // to the same value, with no whitespace left outside strings.
        let seeds: [&[u8]; 3] = [
            br#"{ "a" : [1, 2.5e3, null, "x y\n\u00e9\/"], "b": {"c": true} }"#,
            b"[\n  \"q\\\"\",\t-0.5 , {}, [[]] ]",
            br#""\ud83d\ude00 \\ \t""#,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut checked = 0;
        for round in 0..6000 {
            let mut buf = seeds[round % seeds.len()].to_vec();
            let r = next();
            let pos = (r >> 8) as usize % buf.len();
            match r % 3 {
                0 => buf[pos] = b" \"\\,:[]{}0e.-"[(r >> 32) as usize % 13],
                1 => buf.insert(pos, b" \t\n\r"[(r >> 40) as usize % 4]),
                _ => {
                    buf.remove(pos);
                }
            }
            let Ok(text) = std::str::from_utf8(&buf) else {
                continue;
            };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
                continue;
            };
            let mut scratch = Vec::new();
            let Ok(out) = super::compact(text.trim(), &mut scratch) else {
                continue; // a lone surrogate escape
            };
            let out = std::str::from_utf8(out).expect("utf8").to_owned();
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&out).ok(),
                Some(value)
            );
            assert_eq!(compact(&out), out, "compacting twice changes nothing");
            checked += 1;
        }
        assert!(checked > 1000, "only {checked} mutations were valid JSON");
    }

    #[test]
    fn object_of_strings() {
        assert!(is_object_of_strings("{}"));
        assert!(is_object_of_strings(r#"{ "a" : "b:c" , "d":"{\"e\":1}" }"#));
        assert!(!is_object_of_strings(r#"{"a":"b","c":1}"#));
        assert!(!is_object_of_strings(r#"{"a":{"b":"c"}}"#));
        assert!(!is_object_of_strings(r#"{"a":["b"]}"#));
        assert!(!is_object_of_strings(r#"{"a":null}"#));
        assert!(!is_object_of_strings(r#"["a"]"#));
        assert!(!is_object_of_strings(r#""a""#));
    }

    #[test]
    fn strings_are_read_in_place() {
        let mut payload = br#"{"t":"a\/b\u00e9\"c","u":"plain"}"#.to_vec();
        let [t, u] = parse_members(&payload, &["t", "u"]).expect("object");
        let (t, u) = (t.expect("t"), u.expect("u"));
        assert_eq!(str_value(t), Ok(Some(Cow::Owned("a/bé\"c".into()))));
        assert_eq!(str_value(u), Ok(Some(Cow::Borrowed("plain"))));
        let (t, u) = (str_span(&payload, t), str_span(&payload, u));
        let mut scratch = Vec::new();
        let t = t.expect("string");
        assert_eq!(str_in_place(&mut payload, t, &mut scratch), Ok("a/bé\"c"));
        assert_eq!(
            str_in_place(&mut payload, u.expect("string"), &mut scratch),
            Ok("plain")
        );
        let payload = br#"{"n":1}"#.to_vec();
        let [n] = parse_members(&payload, &["n"]).expect("object");
        assert_eq!(str_span(&payload, n.expect("n")), None);
        assert_eq!(str_value(n.expect("n")), Ok(None));
    }
}
