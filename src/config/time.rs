//! Timestamps as the older system wrote them: ISO 8601 from JavaScript's `toISOString()`
//! (`2025-01-31T12:00:00.000Z`), SQLite's `datetime('now')` (`2025-01-31 12:00:00`, UTC), or
//! Unix epoch milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM]`; no zone means UTC. Times before 1970
/// are rejected.
pub(crate) fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let b = text.trim().as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos: u64 = 0;
    if let Some((b'.', fraction)) = rest.split_first() {
        let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        for (i, digit) in fraction[..len].iter().enumerate().take(9) {
            nanos += u64::from(digit - b'0') * 10u64.pow(8 - i as u32);
        }
        rest = &fraction[len..];
    }
    let offset_secs: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let h = i64::from(h1 - b'0') * 10 + i64::from(h2 - b'0');
            let m = i64::from(m1 - b'0') * 10 + i64::from(m2 - b'0');
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let days = crate::civil::days_from_civil(year, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// Formats a time as JavaScript's `toISOString()` does: `2025-01-31T12:00:00.000Z`.
pub(crate) fn format_timestamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::civil::civil_from_days(days);
    let (month, day) = (i64::from(month), i64::from(day));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t: SystemTime) -> u128 {
        t.duration_since(UNIX_EPOCH).unwrap().as_millis()
    }

    #[test]
    fn parses_the_formats_the_older_system_wrote() {
        // new Date(1735732800123).toISOString()
        let js = parse_timestamp("2025-01-01T12:00:00.123Z").unwrap();
        assert_eq!(ms(js), 1_735_732_800_123);
        let sqlite = parse_timestamp("2025-01-01 12:00:00").unwrap();
        assert_eq!(ms(sqlite), 1_735_732_800_000);
        let offset = parse_timestamp("2025-01-01T20:00:00+08:00").unwrap();
        assert_eq!(ms(offset), 1_735_732_800_000);
        assert_eq!(
            ms(parse_timestamp("2024-02-29T00:00:00Z").unwrap()),
            1_709_164_800_000
        );
    }

    #[test]
    fn rejects_what_is_not_a_timestamp() {
        for bad in [
            "",
            "yesterday",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-01-01T24:00:00Z",
            "2025-01-01T00:00:00.Z",
            "2025-01-01T00:00:00+0800",
            "1969-12-31T23:59:59Z",
            "２025-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_like_to_iso_string_and_round_trips() {
        let t = UNIX_EPOCH + Duration::from_millis(1_735_732_800_123);
        assert_eq!(format_timestamp(t), "2025-01-01T12:00:00.123Z");
        for ms_value in [0u64, 951_782_400_000, 1_709_164_800_999, 4_102_444_800_000] {
            let t = UNIX_EPOCH + Duration::from_millis(ms_value);
            assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
        }
    }
}
