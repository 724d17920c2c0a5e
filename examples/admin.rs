//! A demo pool with the admin API and dashboard on 127.0.0.1.
//!
//! ```text
//! POOL_ADMIN_TOKEN=$(openssl rand -hex 24) cargo run --example admin --features admin
//! ```
//!
//! Without `POOL_ADMIN_TOKEN` a random token is generated and printed once. A background task
//! sends simulated traffic through the pool so the dashboard has something to show; the probe
//! is simulated too. It listens on 127.0.0.1 only; `ADMIN_PORT` changes the port (default 8686).

use std::io::Read;
use std::time::Duration;

use tower_account_pool::admin::{self, AdminConfig, SelectionLatency};
use tower_account_pool::credential::{ApiKey, BearerToken};
use tower_account_pool::{Account, Outcome, Pool, SelectRequest};

fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::builder()
        .account(
            Account::new("kiro-primary", BearerToken::new("demo-token-primary-7f3a"))
                .max_in_flight(4),
        )
        .account(
            Account::new(
                "kiro-secondary",
                BearerToken::new("demo-token-secondary-91c2"),
            )
            .max_in_flight(4),
        )
        .account(
            Account::new("kiro-team-b", BearerToken::new("demo-token-team-b-55e0"))
                .deny_models(["claude-opus-4-5"]),
        )
        .account(
            Account::new(
                "backup-key",
                ApiKey::new("x-api-key", "demo-api-key-backup-0d1e")?,
            )
            .priority(1),
        )
        .account(
            Account::new("legacy-account", BearerToken::new("demo-token-legacy-aa41"))
                .enabled(false),
        )
        .build()?;

    // Some history, so every kind of state shows up.
    for (id, outcome) in [
        (
            "kiro-secondary",
            Outcome::rate_limited(Some(Duration::from_secs(90))),
        ),
        (
            "kiro-team-b",
            Outcome::QuotaExhausted {
                reset_at: Some(std::time::SystemTime::now() + Duration::from_secs(6 * 3600)),
            },
        ),
    ] {
        pool.report_probe(id, outcome)?;
    }

    let (token, generated) = match std::env::var("POOL_ADMIN_TOKEN") {
        Ok(token) => (token, false),
        Err(_) => (random_token()?, true),
    };
    let latency = SelectionLatency::new();
    let config = AdminConfig::new(&token)?
        .selection_latency(latency.clone())
        .prober(|target| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if target.id.as_str().contains("legacy") {
                Outcome::AuthInvalid
            } else {
                Outcome::Success
            }
        });

    // Simulated traffic.
    let traffic = pool.clone();
    tokio::spawn(async move {
        let models = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-5"];
        for i in 0u64.. {
            let model = models[(i % 3) as usize];
            if let Ok(lease) = latency.select(&traffic, &SelectRequest::for_model(model)) {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200 + fastrand::u64(0..1500))).await;
                    let outcome = match fastrand::u32(0..100) {
                        0..=90 => Outcome::Success,
                        91..=94 => Outcome::Transient,
                        95..=97 => Outcome::ClientError,
                        _ => Outcome::rate_limited(Some(Duration::from_secs(20))),
                    };
                    lease.report(outcome);
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });

    let port: u16 = match std::env::var("ADMIN_PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 8686,
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let app = axum::Router::new().nest("/admin", admin::router(pool, config));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    if generated {
        println!("admin token (generated, shown once): {token}");
        println!("dashboard: http://{local}/admin#token={token}");
    } else {
        println!("dashboard: http://{local}/admin  (token from POOL_ADMIN_TOKEN)");
    }
    axum::serve(listener, app).await?;
    Ok(())
}
