//! The pool at work, without any network: simulated traffic over five accounts that misbehave
//! differently, then a table of what the pool made of it.
//!
//! ```text
//! cargo run --example pool_at_work
//! ```

use std::time::Duration;

use tower_account_pool::credential::BearerToken;
use tower_account_pool::{health::HealthPolicy, Account, Outcome, Pool, SelectRequest};

/// How each simulated account answers its n-th request.
fn upstream(account: &str, n: u64) -> Outcome {
    match account {
        "steady-1" | "steady-2" => Outcome::Success,
        // Rate limited on every fifth request, asking for a one-second pause.
        "throttled" if n % 5 == 4 => Outcome::rate_limited(Some(Duration::from_secs(1))),
        "throttled" => Outcome::Success,
        // Fails transiently for its first requests, then recovers: ejected, probed, restored.
        "flaky" if n < 4 => Outcome::Transient,
        "flaky" => Outcome::Success,
        "banned" => Outcome::Suspended,
        _ => Outcome::Success,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .init();

    let names = ["steady-1", "steady-2", "throttled", "flaky", "banned"];
    let pool = Pool::builder()
        .accounts(
            names
                .iter()
                .map(|n| Account::new(*n, BearerToken::new(format!("secret-token-for-{n}")))),
        )
        .health(HealthPolicy::default().with_ejection_base(Duration::from_millis(200)))
        .build()?;

    let mut served = std::collections::HashMap::<String, u64>::new();
    for i in 0..200 {
        let request = SelectRequest::for_model("claude-sonnet-4-5");
        match pool.select(&request) {
            Ok(lease) => {
                let n = served.entry(lease.id().to_string()).or_default();
                let outcome = upstream(lease.id().as_str(), *n);
                *n += 1;
                lease.report(outcome);
            }
            Err(exhausted) => println!("request {i}: {exhausted}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    println!();
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>10} {:>10}  {:<14} reason",
        "account", "requests", "success", "limited", "transient", "suspended", "state"
    );
    for a in pool.snapshot().accounts {
        let c = a.counters;
        println!(
            "{:<10} {:>8} {:>8} {:>8} {:>10} {:>10}  {:<14} {}",
            a.id.as_str(),
            c.requests,
            c.successes,
            c.rate_limited,
            c.transient,
            c.suspended,
            a.state.as_str(),
            a.reason.unwrap_or_default()
        );
    }
    Ok(())
}
