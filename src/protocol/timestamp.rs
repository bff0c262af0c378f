//! RFC 3339 UTC timestamps with millisecond precision (`2026-02-19T10:30:00.123Z`), the
//! gows `timestamp` field.
//!
//! The calendar conversion is done here (Howard Hinnant's `civil_from_days`) so the
//! broker needs no date crate for the one format it writes; nothing here parses dates.

use std::time::{SystemTime, UNIX_EPOCH};

/// Splits milliseconds since the Unix epoch (may be negative) into
/// (year, month, day, hour, minute, second, millisecond), proleptic Gregorian, UTC.
fn civil_from_millis(millis: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let days = millis.div_euclid(86_400_000);
    let ms_of_day = millis.rem_euclid(86_400_000);
    // civil_from_days: shift the epoch to 0000-03-01 so leap days fall at the end of a
    // 400-year era, then split era / year-of-era / day-of-year arithmetically.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Every value below is range-bounded by the arithmetic above, so the casts are exact.
    let secs = ms_of_day / 1000;
    (
        year,
        month as u32,
        day as u32,
        (secs / 3600) as u32,
        (secs / 60 % 60) as u32,
        (secs % 60) as u32,
        (ms_of_day % 1000) as u32,
    )
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut len = 0;
    let mut rest = n;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
        len += 1;
        if rest == 0 && len >= width {
            break;
        }
    }
    out.extend_from_slice(digits.get(digits.len() - len..).unwrap_or_default());
}

/// Milliseconds since the Unix epoch, negative before it (saturating far outside ±292M years).
fn unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => {
            // Round toward negative infinity so 1ms before the epoch is 23:59:59.999.
            let d = e.duration();
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            let partial = i64::from(d.subsec_nanos() % 1_000_000 != 0);
            -ms.saturating_add(partial)
        }
    }
}

/// Appends `t` as RFC 3339 UTC with milliseconds, e.g. `2026-02-19T10:30:00.123Z`
/// (sub-millisecond digits are truncated). Years outside 0..=9999 are written with as
/// many digits as needed (and a leading `-` before year 0).
pub fn write_rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    let (year, month, day, hour, minute, second, milli) = civil_from_millis(unix_millis(t));
    if year < 0 {
        out.push(b'-');
    }
    push_padded(out, year.unsigned_abs(), 4);
    out.push(b'-');
    push_padded(out, u64::from(month), 2);
    out.push(b'-');
    push_padded(out, u64::from(day), 2);
    out.push(b'T');
    push_padded(out, u64::from(hour), 2);
    out.push(b':');
    push_padded(out, u64::from(minute), 2);
    out.push(b':');
    push_padded(out, u64::from(second), 2);
    out.push(b'.');
    push_padded(out, u64::from(milli), 3);
    out.push(b'Z');
}

/// `t` as an RFC 3339 UTC string with milliseconds (see [`write_rfc3339`]).
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    write_rfc3339(&mut out, t);
    // Only ASCII digits and punctuation were written.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn epoch() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn known_instants() {
        // 2024-02-29T00:00:00Z (leap day)
        assert_eq!(rfc3339(at(1_709_164_800, 0)), "2024-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339(at(1_709_164_800 + 86_399, 999)),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339(at(1_709_164_800 + 86_400, 0)),
            "2024-03-01T00:00:00.000Z"
        );
        assert_eq!(rfc3339(at(1_795_435_200, 0)), "2026-11-23T12:00:00.000Z");
        assert_eq!(rfc3339(at(1_771_497_000, 123)), "2026-02-19T10:30:00.123Z");
        // 2100 is not a leap year: Feb 28 is followed by Mar 1.
        assert_eq!(rfc3339(at(4_107_456_000, 0)), "2100-02-28T00:00:00.000Z");
        assert_eq!(
            rfc3339(at(4_107_456_000 + 86_400, 0)),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(rfc3339(at(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(at(253_402_300_799, 0)), "9999-12-31T23:59:59.000Z");
    }

    #[test]
    fn sub_millisecond_is_truncated() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_999_999);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:00.001Z");
    }

    #[test]
    fn before_epoch() {
        let t = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(rfc3339(t), "1969-12-31T23:59:59.999Z");
        let t = UNIX_EPOCH - Duration::from_micros(500);
        assert_eq!(rfc3339(t), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn matches_a_day_by_day_walk() {
        // Cross-check civil_from_days against a naive calendar walk over 1970..2500.
        let mut y = 1970i64;
        let (mut m, mut d) = (1u32, 1u32);
        for days in 0..(530 * 366) {
            let (yy, mm, dd, ..) = civil_from_millis(days * 86_400_000);
            assert_eq!((yy, mm, dd), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
