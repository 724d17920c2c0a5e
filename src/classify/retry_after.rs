//! [`retry_after`]: how long an upstream asked us to wait.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// How long an upstream asked us to wait: `retry-after-ms` (milliseconds, as OpenAI sends),
/// else `Retry-After` as delay-seconds or as an HTTP-date (relative to `now`; a date in the past
/// means zero).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderMap;
/// use tower_account_pool::classify::retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", httpdate::fmt_http_date(now + Duration::from_secs(90)).parse().unwrap());
/// assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(90)));
/// headers.insert("retry-after-ms", "1500".parse().unwrap());
/// assert_eq!(retry_after(&headers, now), Some(Duration::from_millis(1500)));
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after", "12".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(12)));
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(now - Duration::from_secs(5))
                .parse()
                .unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after-ms", "250.5".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_micros(250_500)));
        h.insert("retry-after-ms", "-3".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }
}
