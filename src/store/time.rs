//! The older system's time formats: ISO 8601 (`2026-01-03T12:34:56.789Z`, written by its JSON
//! mode) and SQLite's `datetime('now')` (`2026-01-03 12:34:56`, UTC without a zone marker).

use crate::civil::{civil_from_days, days_from_civil};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn epoch_ms(t: &SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The time of an epoch-milliseconds value.
#[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
pub(crate) fn from_epoch_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn parts(t: &SystemTime) -> (i64, u32, u32, u64, u64, u64, u64) {
    let ms = epoch_ms(t);
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60, millis)
}

/// `2026-01-03T12:34:56.789Z`, as JavaScript's `Date.toISOString()`.
pub(crate) fn to_iso(t: &SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = parts(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// `2026-01-03 12:34:56`, as SQLite's `datetime('now')`.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn to_sqlite(t: &SystemTime) -> String {
    let (y, mo, d, h, mi, s, _) = parts(t);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// Parses either format (and ISO with a `+00:00` or other offset). `None` when it is neither.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn parse(text: &str) -> Option<SystemTime> {
    let b = text.trim().as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = std::str::from_utf8(b.get(r)?).ok()?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0u64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = std::str::from_utf8(&b[start..i]).ok()?;
        if digits.is_empty() {
            return None;
        }
        let first3: String = digits.chars().chain("000".chars()).take(3).collect();
        millis = first3.parse().ok()?;
    }
    let offset_secs: i64 = match b.get(i) {
        None => 0,
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)? as i64;
            let om = num(i + 4..i + 6)? as i64;
            let v = oh * 3600 + om * 60;
            if sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let secs = days * 86_400 + (h * 3600 + mi * 60 + s) as i64 - offset_secs;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip() {
        let t = UNIX_EPOCH + Duration::from_millis(1_767_440_478_755);
        assert_eq!(to_iso(&t), "2026-01-03T11:41:18.755Z");
        assert_eq!(to_sqlite(&t), "2026-01-03 11:41:18");
        assert_eq!(parse("2026-01-03T11:41:18.755Z"), Some(t));
        assert_eq!(
            parse("2026-01-03 11:41:18"),
            Some(UNIX_EPOCH + Duration::from_secs(1_767_440_478))
        );
        assert_eq!(
            parse("2026-01-03T12:41:18.755+01:00"),
            Some(t),
            "offsets are honoured"
        );
        assert_eq!(
            parse("2024-02-29T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_164_800))
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01 00:00:00",
            "2026-01-03T11:41:18.755Q",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
