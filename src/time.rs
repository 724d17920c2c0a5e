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
            wall_epoch_ms: epoch_ms::millis(&SystemTime::now()),
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
    let now = epoch_ms::millis(&SystemTime::now());
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

    pub(crate) fn millis(t: &SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

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
