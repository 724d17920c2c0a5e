//! Prometheus text exposition of a pool, and the selection-latency histogram.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::view::stats;
use crate::health::{HealthState, OutcomeClass};
use crate::pool::{Lease, Pool, PoolSnapshot};
use crate::select::{Exhausted, SelectRequest};

/// Upper bounds of the histogram buckets, in nanoseconds (`+Inf` is implicit).
const BUCKETS_NS: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000, 10_000_000,
];

/// A histogram of how long [`Pool::select`] takes, shown by `GET /metrics` as
/// `account_pool_selection_duration_seconds`.
///
/// The pool's selection path is not instrumented (it stays free of clocks); callers that want the
/// histogram select through [`SelectionLatency::select`], which reads a monotonic clock twice and
/// bumps two atomic counters: no lock, no allocation. Clone it into the service that selects and
/// give the same handle to [`AdminConfig::selection_latency`](super::AdminConfig::selection_latency).
///
/// Reading the clock is not free (`benches/admin_latency.rs` measures it against a bare
/// `Pool::select`); [`SelectionLatency::sampled`] times only one selection in `n`, chosen at
/// random, and the histogram then counts the sampled selections.
///
/// ```
/// use tower_account_pool::admin::SelectionLatency;
/// use tower_account_pool::{Account, Pool, SelectRequest};
/// use tower_account_pool::credential::NoCredential;
///
/// let pool = Pool::builder().account(Account::new("a", NoCredential)).build().unwrap();
/// let latency = SelectionLatency::new();
/// let lease = latency.select(&pool, &SelectRequest::default()).unwrap();
/// assert_eq!(latency.count(), 1);
/// # drop(lease);
/// ```
#[derive(Clone, Default)]
pub struct SelectionLatency {
    inner: Arc<Histogram>,
}

#[derive(Default)]
struct Histogram {
    /// Time one selection in this many (0 and 1: all).
    one_in: u32,
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl std::fmt::Debug for SelectionLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelectionLatency")
            .field("count", &self.count())
            .finish()
    }
}

impl SelectionLatency {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// A histogram that times one selection in `one_in`, picked at random (`0` and `1` time
    /// every selection).
    pub fn sampled(one_in: u32) -> Self {
        SelectionLatency {
            inner: Arc::new(Histogram {
                one_in,
                ..Histogram::default()
            }),
        }
    }

    /// Selects an account from `pool` and records how long it took (successful or not).
    pub fn select(&self, pool: &Pool, request: &SelectRequest<'_>) -> Result<Lease, Exhausted> {
        let one_in = self.inner.one_in;
        if one_in > 1 && fastrand::u32(..one_in) != 0 {
            return pool.select(request);
        }
        let started = Instant::now();
        let result = pool.select(request);
        self.observe(started.elapsed());
        result
    }

    /// Records one selection that took `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_NS
            .iter()
            .position(|&le| ns <= le)
            .unwrap_or(BUCKETS_NS.len());
        self.inner.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Selections recorded so far.
    pub fn count(&self) -> u64 {
        self.inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    fn render(&self, out: &mut String) {
        let name = "account_pool_selection_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "Time Pool::select took, for selections made through SelectionLatency.",
        );
        let mut cumulative = 0u64;
        for (i, bucket) in self.inner.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match BUCKETS_NS.get(i) {
                Some(&ns) => seconds(ns),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = seconds(self.inner.sum_ns.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

fn seconds(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}

/// Every health state an account can show, for one-hot state gauges.
const STATES: [HealthState; 9] = [
    HealthState::Healthy,
    HealthState::RateLimited,
    HealthState::QuotaExhausted,
    HealthState::AuthExpired,
    HealthState::AuthInvalid,
    HealthState::Suspended,
    HealthState::Ejected,
    HealthState::HalfOpen,
    HealthState::Disabled,
];

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, line feed).
pub(crate) fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The whole exposition: per account, per pool and the histogram.
pub(crate) fn render(pool: &Pool, snapshot: &PoolSnapshot, latency: &SelectionLatency) -> String {
    let mut out = String::with_capacity(1024 + snapshot.accounts.len() * 1024);
    let ids: Vec<String> = snapshot
        .accounts
        .iter()
        .map(|a| escape_label(a.id.as_str()))
        .collect();

    header(
        &mut out,
        "account_pool_account_requests_total",
        "counter",
        "Leases handed out for the account.",
    );
    for (a, id) in snapshot.accounts.iter().zip(&ids) {
        let _ = writeln!(
            out,
            "account_pool_account_requests_total{{account=\"{id}\"}} {}",
            a.counters.requests
        );
    }

    header(
        &mut out,
        "account_pool_account_outcomes_total",
        "counter",
        "Outcomes reported for the account, by class.",
    );
    for (a, id) in snapshot.accounts.iter().zip(&ids) {
        let c = &a.counters;
        for class in OutcomeClass::ALL {
            let value = c.outcome(*class);
            let _ = writeln!(
                out,
                "account_pool_account_outcomes_total{{account=\"{id}\",class=\"{}\"}} {value}",
                class.as_str()
            );
        }
    }

    header(
        &mut out,
        "account_pool_account_state",
        "gauge",
        "1 for the account's current health state, 0 for the others.",
    );
    for (a, id) in snapshot.accounts.iter().zip(&ids) {
        for state in STATES {
            let _ = writeln!(
                out,
                "account_pool_account_state{{account=\"{id}\",state=\"{state}\"}} {}",
                u8::from(a.state == state)
            );
        }
    }

    header(
        &mut out,
        "account_pool_account_in_flight",
        "gauge",
        "Requests in flight on the account.",
    );
    for (a, id) in snapshot.accounts.iter().zip(&ids) {
        let _ = writeln!(
            out,
            "account_pool_account_in_flight{{account=\"{id}\"}} {}",
            a.in_flight
        );
    }

    header(
        &mut out,
        "account_pool_account_available",
        "gauge",
        "1 when the account could take a request now.",
    );
    for (a, id) in snapshot.accounts.iter().zip(&ids) {
        let _ = writeln!(
            out,
            "account_pool_account_available{{account=\"{id}\"}} {}",
            u8::from(a.available)
        );
    }

    let pool_stats = pool.stats();
    for (name, help, value) in [
        (
            "account_pool_selections_total",
            "Leases handed out by the pool (accounts removed since are not included).",
            pool_stats.selections,
        ),
        (
            "account_pool_exhaustions_total",
            "Selections that found no account.",
            pool_stats.exhaustions,
        ),
        (
            "account_pool_retries_total",
            "Requests retried on another account.",
            pool_stats.retries,
        ),
    ] {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }

    let s = stats(snapshot);
    header(
        &mut out,
        "account_pool_accounts",
        "gauge",
        "Accounts in the pool, by state group.",
    );
    for (group, value) in [
        ("healthy", s.healthy),
        ("cooling_down", s.cooling_down),
        ("unhealthy", s.unhealthy),
        ("disabled", s.disabled),
    ] {
        let _ = writeln!(out, "account_pool_accounts{{group=\"{group}\"}} {value}");
    }
    header(
        &mut out,
        "account_pool_routable_accounts",
        "gauge",
        "Accounts that could take a request now (what /health reports).",
    );
    let _ = writeln!(out, "account_pool_routable_accounts {}", s.routable);

    latency.render(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_times_about_one_in_n() {
        use crate::credential::NoCredential;
        use crate::Account;
        let pool = Pool::builder()
            .account(Account::new("a", NoCredential))
            .build()
            .unwrap();
        let latency = SelectionLatency::sampled(8);
        for _ in 0..8000 {
            drop(latency.select(&pool, &SelectRequest::default()).unwrap());
        }
        let n = latency.count();
        assert!((600..=1400).contains(&n), "{n} of 8000 timed");
        assert_eq!(
            pool.stats().selections,
            8000,
            "every selection still selects"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = SelectionLatency::new();
        h.observe(Duration::from_nanos(90));
        h.observe(Duration::from_nanos(900));
        h.observe(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains("_bucket{le=\"0.0000001\"} 1\n"), "{out}");
        assert!(out.contains("_bucket{le=\"0.000001\"} 2\n"), "{out}");
        assert!(out.contains("_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("_count 3\n"), "{out}");
        assert!(out.contains("_sum 1.00000099\n"), "{out}");
    }
}
