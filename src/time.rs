//! Time, in the three forms the crate uses, and the one place that converts between them:
//!
//! - **pool milliseconds**: a monotonic clock (tokio's, so `tokio::time::pause` applies) that
//!   deadlines are kept in ([`Clock`], read lazily by selection through [`LazyNow`]);
//! - **wall-clock epoch milliseconds**: event times that stores order by ([`event_ms`],
//!   [`wall_of`]) and the serde form of every `SystemTime` the crate writes ([`epoch_ms`]);
//! - **civil dates**: ISO 8601 and SQLite timestamps, parsed and formatted without a date-time
//!   dependency.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A deadline meaning "until someone acts".
pub(crate) const NEVER: u64 = u64::MAX;

/// Monotonic pool time in milliseconds (tokio's clock, so `tokio::time::pause` applies).
#[derive(Debug)]
pub(crate) struct Clock {
    epoch: tokio::time::Instant,
    /// Wall-clock milliseconds at `coarse_epoch`, for "last used".
    wall_epoch_ms: u64,
    coarse_epoch: coarsetime::Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            epoch: tokio::time::Instant::now(),
            wall_epoch_ms: millis(&SystemTime::now()),
            coarse_epoch: coarsetime::Instant::now_without_cache_update(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Wall-clock milliseconds, from the kernel's coarse monotonic clock (a few ms of
    /// resolution, read without a timestamp-counter instruction): enough for "last used".
    pub(crate) fn wall_ms_coarse(&self) -> u64 {
        let since =
            coarsetime::Instant::now_without_cache_update().duration_since(self.coarse_epoch);
        self.wall_epoch_ms + since.as_millis()
    }

    /// A clock read deferred until (and unless) something needs it.
    pub(crate) fn lazy(&self) -> LazyNow<'_> {
        LazyNow {
            clock: self,
            ms: Cell::new(UNREAD),
        }
    }

    /// A clock read already made.
    pub(crate) fn fixed(&self, ms: u64) -> LazyNow<'_> {
        LazyNow {
            clock: self,
            ms: Cell::new(ms),
        }
    }

    /// The wall-clock time of a pool deadline.
    pub(crate) fn wall(&self, ms: u64, now_ms: u64) -> Option<SystemTime> {
        match ms {
            0 | NEVER => None,
            ms if ms >= now_ms => SystemTime::now().checked_add(Duration::from_millis(ms - now_ms)),
            ms => SystemTime::now().checked_sub(Duration::from_millis(now_ms - ms)),
        }
    }

    /// The pool deadline of a wall-clock time.
    pub(crate) fn deadline(&self, at: SystemTime, now_ms: u64) -> u64 {
        match at.duration_since(SystemTime::now()) {
            Ok(ahead) => now_ms.saturating_add(ahead.as_millis() as u64),
            Err(_) => now_ms,
        }
    }
}

const UNREAD: u64 = u64::MAX;

/// The wall-clock time of an event that stores order by (an operator's reset, a cooldown
/// set), in epoch ms: strictly increasing within the process, so that two events in the same
/// millisecond keep their order.
pub(crate) fn event_ms() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = millis(&SystemTime::now());
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The pool clock, read at most once per selection and only when a deadline must be compared.
#[derive(Debug)]
pub(crate) struct LazyNow<'a> {
    clock: &'a Clock,
    ms: Cell<u64>,
}

impl LazyNow<'_> {
    pub(crate) fn get(&self) -> u64 {
        match self.ms.get() {
            UNREAD => {
                let ms = self.clock.now_ms();
                self.ms.set(ms);
                ms
            }
            ms => ms,
        }
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn millis(t: &SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The time of an epoch-milliseconds value.
pub(crate) fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A wall-clock epoch-ms event time (0: none).
pub(crate) fn wall_of(ms: u64) -> Option<SystemTime> {
    (ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

/// Formats milliseconds for reasons: `850ms`, `12.5s`, `30m`, `12h`.
pub(crate) fn fmt_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1_000.0),
        60_000..3_600_000 => format!("{:.1}m", ms as f64 / 60_000.0),
        _ => format!("{:.1}h", ms as f64 / 3_600_000.0),
    }
}

/// Serde helpers: `SystemTime` as Unix epoch milliseconds.
pub(crate) mod epoch_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_millis(u64::deserialize(d)?))
    }

    pub(crate) use super::millis;

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(millis(t))
    }

    pub(crate) mod option {
        use super::*;

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
        }

        pub(crate) fn serialize<S: Serializer>(
            t: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&millis(t)),
                None => s.serialize_none(),
            }
        }
    }
}

// ===== civil dates =====
//
// Civil (proleptic Gregorian) dates as day counts since 1970-01-01, for the timestamp formats
// the crate reads and writes (ISO 8601, SQLite's `YYYY-MM-DD HH:MM:SS`, the first of next
// month) without a date-time dependency. Howard Hinnant's algorithms.

/// Days since 1970-01-01 of a civil date (`month` 1–12, `day` 1–31).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month 1–12, day 1–31) of a day count since 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// (year, month, day, hour, minute, second, millisecond) of a time, UTC (the epoch for times
/// before it).
fn parts(t: &SystemTime) -> (i64, u32, u32, u64, u64, u64, u64) {
    let ms = millis(t);
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60, millis)
}

/// `2026-01-03T12:34:56.789Z`, as JavaScript's `Date.toISOString()` writes it.
pub(crate) fn format_iso(t: &SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = parts(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// `2026-01-03 12:34:56`, as SQLite's `datetime('now')` writes it (UTC, no zone marker).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn format_sqlite(t: &SystemTime) -> String {
    let (y, mo, d, h, mi, s, _) = parts(t);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// The first instant of the month after `t`, UTC.
#[cfg_attr(not(feature = "kiro"), allow(dead_code))]
pub(crate) fn first_of_next_month(t: &SystemTime) -> SystemTime {
    let (y, m, ..) = parts(t);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    UNIX_EPOCH + Duration::from_secs((days_from_civil(ny, nm, 1) * 86_400) as u64)
}

/// The crate's one timestamp parser: `YYYY-MM-DD[T| ]HH:MM:SS[.fraction][Z|±HH:MM]`, which
/// covers ISO 8601 / RFC 3339 as JavaScript and token files write it and SQLite's
/// `datetime('now')`; no zone means UTC; surrounding whitespace is ignored.
///
/// - The day is checked against its month (`2025-02-29` is refused; `2024-02-29` is read).
/// - A leap second (`:60`, which RFC 3339 allows) is accepted and read as the second after
///   `:59`, i.e. the same instant as the next minute's `:00`: `SystemTime` has no leap
///   seconds, and refusing it would turn a valid upstream date into "no date".
/// - The fraction keeps nanoseconds (any number of digits, at least one).
/// - Times before 1970 are refused, as is anything else (`None`).
pub(crate) fn parse(text: &str) -> Option<SystemTime> {
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
    if !(1..=12).contains(&month) || day < 1 || day > i64::from(days_in_month(year, month as u32)) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
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
    let days = days_from_civil(year, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t: SystemTime) -> u128 {
        t.duration_since(UNIX_EPOCH).unwrap().as_millis()
    }

    #[test]
    fn known_dates_and_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    // From the store's former time module.
    #[test]
    fn formats_round_trip() {
        let t = UNIX_EPOCH + Duration::from_millis(1_767_440_478_755);
        assert_eq!(format_iso(&t), "2026-01-03T11:41:18.755Z");
        assert_eq!(format_sqlite(&t), "2026-01-03 11:41:18");
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

    // From the configuration's former time module.
    #[test]
    fn parses_the_formats_the_older_system_wrote() {
        // new Date(1735732800123).toISOString()
        let js = parse("2025-01-01T12:00:00.123Z").unwrap();
        assert_eq!(ms(js), 1_735_732_800_123);
        let sqlite = parse("2025-01-01 12:00:00").unwrap();
        assert_eq!(ms(sqlite), 1_735_732_800_000);
        let offset = parse("2025-01-01T20:00:00+08:00").unwrap();
        assert_eq!(ms(offset), 1_735_732_800_000);
        assert_eq!(
            ms(parse("2024-02-29T00:00:00Z").unwrap()),
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
            "2025-04-31T00:00:00Z",
            "2025-01-01T24:00:00Z",
            "2025-01-01T00:60:00Z",
            "2025-01-01T00:00:61Z",
            "2025-01-01T00:00:00.Z",
            "2025-01-01T00:00:00+0800",
            "2025-01-01T00:00:00+24:00",
            "1969-12-31T23:59:59Z",
            "２025-01-01T00:00:00Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_leap_second_reads_as_the_next_minute() {
        assert_eq!(parse("2016-12-31T23:59:60Z"), parse("2017-01-01T00:00:00Z"),);
    }

    #[test]
    fn formats_like_to_iso_string_and_round_trips() {
        let t = UNIX_EPOCH + Duration::from_millis(1_735_732_800_123);
        assert_eq!(format_iso(&t), "2025-01-01T12:00:00.123Z");
        for ms_value in [0u64, 951_782_400_000, 1_709_164_800_999, 4_102_444_800_000] {
            let t = UNIX_EPOCH + Duration::from_millis(ms_value);
            assert_eq!(parse(&format_iso(&t)), Some(t));
        }
    }

    // From the admin view's former formatter.
    #[test]
    fn iso_known_dates() {
        assert_eq!(format_iso(&UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_iso(&(UNIX_EPOCH + Duration::from_millis(951_782_400_123))),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            format_iso(&(UNIX_EPOCH + Duration::from_secs(1_795_687_558))),
            "2026-11-26T10:05:58.000Z"
        );
    }

    #[test]
    fn first_of_next_month_wraps_the_year() {
        let t = parse("2025-12-15T10:00:00Z").unwrap();
        assert_eq!(
            first_of_next_month(&t),
            parse("2026-01-01T00:00:00Z").unwrap()
        );
        let t = parse("2024-02-29T23:59:59Z").unwrap();
        assert_eq!(
            first_of_next_month(&t),
            parse("2024-03-01T00:00:00Z").unwrap()
        );
    }
}
