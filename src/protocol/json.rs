//! Small JSON pieces shared by the gows and vws codecs: the nesting pre-scan that runs
//! before simd-json, string escaping, and compact re-serialization of parsed values.
//!
//! Owns no message shapes (those live in `gows`/`vws`) and does no parsing of its own
//! beyond the depth scan. Writing into a `Vec<u8>` cannot fail (short of an allocation
//! abort), so the `fmt`/`io` results of `write!` into one are deliberately ignored here.

use crate::error::Reject;
use bytes::Bytes;
use simd_json::borrowed::Object;
use simd_json::{BorrowedValue, Buffers, StaticNode};
use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;

/// True when the `[`/`{` nesting of `bytes` never exceeds `max`, counting only brackets
/// outside JSON strings (a `\"` escape does not end a string).
///
/// This is a cheap linear scan that runs before simd-json, so hostile input such as
/// 10,000 nested arrays is refused without ever being recursed into. It does not validate
/// JSON: unbalanced input is left for the parser to reject.
pub fn depth_within(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
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

/// Appends the compact JSON text of a parsed simd-json value.
///
/// Recursion depth is bounded by the caller's [`depth_within`] check (the same bound that
/// protected simd-json's own recursive tree building). Object key order is the input
/// order for small objects (halfbrown keeps them in a vector).
pub fn write_value(out: &mut Vec<u8>, value: &BorrowedValue<'_>) {
    match value {
        BorrowedValue::Static(node) => write_static(out, node),
        BorrowedValue::String(s) => write_str(out, s),
        BorrowedValue::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        BorrowedValue::Object(map) => {
            out.push(b'{');
            for (n, (key, item)) in map.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// Appends a scalar. Floats use `Debug`, which is the shortest round-trip form and
/// switches to exponent notation for huge/tiny magnitudes (`1e300`, not 301 digits);
/// parsed JSON never holds NaN or infinities.
fn write_static(out: &mut Vec<u8>, node: &StaticNode) {
    let _ = match node {
        StaticNode::F64(f) => write!(out, "{f:?}"),
        other => write!(out, "{other}"),
    };
}

/// The compact JSON text of `value` as `Bytes` (one allocation).
pub fn to_compact(value: &BorrowedValue<'_>) -> Bytes {
    let mut out = Vec::new();
    write_value(&mut out, value);
    Bytes::from(out)
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

/// Parses a client message in place (simd-json) and requires a JSON object.
/// `buffers` are simd-json's working memory, reused across calls (a shard keeps one set)
/// so parsing does not allocate them per message.
///
/// # Errors
/// `MalformedJson` or `NotAnObject`.
pub fn parse_object<'a>(
    payload: &'a mut [u8],
    buffers: &mut Buffers,
) -> Result<Object<'a>, Reject> {
    match simd_json::borrowed::to_value_with_buffers(payload, buffers) {
        Ok(BorrowedValue::Object(obj)) => Ok(*obj),
        Ok(_) => Err(Reject::NotAnObject),
        Err(_) => Err(Reject::MalformedJson),
    }
}

/// The string field `name` of a parsed object, borrowed from the payload.
///
/// # Errors
/// `MissingField(name)` when absent, `BadField(name)` when not a string.
pub fn required_str<'a>(obj: &Object<'a>, name: &'static str) -> Result<&'a str, Reject> {
    match obj.get(name) {
        None => Err(Reject::MissingField(name)),
        Some(value) => borrowed_str(value).ok_or(Reject::BadField(name)),
    }
}

/// The text of a string value with the payload's lifetime. simd-json unescapes strings in
/// place in the input buffer, so borrowed values always hold `Cow::Borrowed`; an owned one
/// cannot outlive this call and is treated like a wrong type.
pub fn borrowed_str<'a>(value: &BorrowedValue<'a>) -> Option<&'a str> {
    match value {
        BorrowedValue::String(Cow::Borrowed(s)) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact(input: &str) -> String {
        let mut buf = input.as_bytes().to_vec();
        let value = simd_json::to_borrowed_value(&mut buf).expect("valid test JSON");
        String::from_utf8(to_compact(&value).to_vec()).expect("utf8")
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
}
