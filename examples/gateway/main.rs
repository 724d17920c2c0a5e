//! A reverse proxy for a pool of accounts: every request goes to one upstream through
//! `AccountPoolLayer`, responses stream back unbuffered, the admin API and dashboard are under
//! `/admin`, and Ctrl-C (or SIGTERM) shuts down gracefully — requests in flight finish and the
//! store is flushed.
//!
//! ```sh
//! # The demo: an in-process Kiro mock with accounts that misbehave differently.
//! cargo run --example gateway --features kiro,test-util,sqlite,admin
//! cargo run --example gateway --features kiro,test-util,sqlite,admin -- --demo-serve
//!
//! # The real thing: Kiro token files in the pool file, the Kiro endpoint as upstream.
//! GATEWAY_ADMIN_TOKEN=$(openssl rand -hex 24) \
//! cargo run --release --example gateway --features kiro,test-util,sqlite,admin -- \
//!     --pool configs/account_pool.json \
//!     --upstream https://codewhisperer.us-east-1.amazonaws.com \
//!     --store sqlite:configs/gateway.db --listen 127.0.0.1:8080
//! ```

mod demo;
mod pool_source;
mod proxy;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tower_account_pool::admin::AdminConfig;
use tower_account_pool::config::{FileWatcher, PoolFile};
use tower_account_pool::kiro::{self, KiroClassifier, KiroOptions, KiroResolver};
use tower_account_pool::store::{JsonFileStore, SqliteStore, StoreHandle};
use tower_account_pool::{AccountPoolLayer, Pool};

use proxy::{BoxError, Gateway, ProxyOptions};

const USAGE: &str = "usage:
  gateway [--demo-serve] [--listen ADDR]
      the demo: an in-process Kiro mock, a burst of traffic, a table; --demo-serve keeps serving
  gateway --pool PATH|sqlite:PATH --upstream URL [--store json|sqlite:PATH|redis:URL]
          [--listen ADDR] [--body-cap BYTES]
      proxy every request to URL through the accounts of the pool file PATH (or of the older
      system's SQLite database with sqlite:PATH, also its store unless --store is given)
      (admin API under /admin when GATEWAY_ADMIN_TOKEN holds a token of 16+ characters)";

/// The environment variable holding the admin token.
const ADMIN_TOKEN_VAR: &str = "GATEWAY_ADMIN_TOKEN";

#[derive(Debug, Default)]
struct Args {
    pool: Option<PathBuf>,
    upstream: Option<String>,
    store: Option<String>,
    listen: Option<SocketAddr>,
    body_cap: Option<usize>,
    demo_serve: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args::default();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--pool" => parsed.pool = Some(value("--pool")?.into()),
            "--upstream" => parsed.upstream = Some(value("--upstream")?),
            "--store" => parsed.store = Some(value("--store")?),
            "--listen" => {
                let text = value("--listen")?;
                parsed.listen = Some(text.parse().map_err(|_| {
                    format!("--listen: `{text}` is not an address like 127.0.0.1:8080")
                })?);
            }
            "--body-cap" => {
                let text = value("--body-cap")?;
                parsed.body_cap = Some(
                    text.parse()
                        .map_err(|_| format!("--body-cap: `{text}` is not a number of bytes"))?,
                );
            }
            "--demo-serve" => parsed.demo_serve = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    match (&parsed.pool, &parsed.upstream) {
        (Some(_), None) => return Err("--pool needs --upstream".into()),
        (None, Some(_)) => return Err("--upstream needs --pool".into()),
        (Some(_), Some(_)) if parsed.demo_serve => {
            return Err("--demo-serve is for the demo, without --pool".into())
        }
        _ => {}
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .init();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}\n");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let result = if args.pool.is_some() {
        serve(args).await
    } else {
        run_demo(args).await
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run_demo(args: Args) -> Result<(), BoxError> {
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let demo = demo::start(listen, std::env::var(ADMIN_TOKEN_VAR).ok()).await?;
    println!(
        "Demo: a Kiro mock upstream with {} accounts:",
        demo::ACCOUNTS.len()
    );
    print!("{}", demo::legend());
    println!(
        "\nDashboard: {}  (admin token: {})\nSending traffic…\n",
        demo.dashboard_url(),
        demo.admin_token
    );
    let tally = demo.traffic(140, 6, Duration::from_millis(60)).await;
    print!("{}", demo::render(&demo.rows(), &tally));
    if args.demo_serve {
        println!(
            "\nStill serving: dashboard {} , proxy http://{}/generateAssistantResponse. Ctrl-C stops.",
            demo.dashboard_url(),
            demo.gateway.addr()
        );
        proxy::shutdown_signal().await;
        println!("Shutting down: requests in flight finish, then the store is flushed.");
    }
    let db = demo.db_path.clone();
    let stored = demo.shutdown().await?;
    println!(
        "Store flushed: {stored} accounts in {} (a temp dir, removed now).",
        db.display()
    );
    Ok(())
}

async fn serve(args: Args) -> Result<(), BoxError> {
    let pool_path = args.pool.expect("checked by parse_args");
    let upstream = args.upstream.expect("checked by parse_args");
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let source = pool_source::PoolSource::parse(&pool_path);
    let pool = source.build(KiroOptions::default())?;
    let store_spec = args.store.clone().or_else(|| source.default_store());
    let store = match store_spec.as_deref() {
        None => None,
        Some("json") => {
            let path = source.pool_file()?;
            Some(StoreHandle::start(&pool, JsonFileStore::open(path)?).await?)
        }
        Some(spec) if spec.starts_with("sqlite:") => {
            Some(StoreHandle::start(&pool, SqliteStore::open(&spec["sqlite:".len()..])?).await?)
        }
        Some(spec) if spec.starts_with("redis:") => Some(open_redis(&pool, spec).await?),
        Some(other) => {
            return Err(format!("--store: `{other}` is not json, sqlite:PATH or redis:URL").into())
        }
    };
    // Hot reload: edits of the pool file (accounts added, removed, changed) reach the running
    // pool; a broken edit is logged and ignored. Stops when `_watch` is dropped.
    let _watch = match &source {
        pool_source::PoolSource::File(path) => {
            let dir = PoolFile::load(path)?.dir();
            Some(
                FileWatcher::new(&pool, path)
                    .resolver(Arc::new(
                        KiroResolver::new(KiroOptions::default()).base_dir(dir),
                    ))
                    .start(),
            )
        }
        pool_source::PoolSource::Sqlite(_) => None,
    };
    let kiro_accounts = pool
        .snapshot()
        .accounts
        .iter()
        .filter(|a| a.credential.kind == kiro::KIND)
        .count();
    let mut layer = AccountPoolLayer::new(pool.clone());
    let tasks = if kiro_accounts > 0 {
        layer = layer.classifier(KiroClassifier::default());
        proxy::kiro_startup(&pool, Duration::from_secs(60), Duration::from_secs(600)).await
    } else {
        Vec::new()
    };
    let mut options = ProxyOptions::new(upstream.clone());
    if let Some(cap) = args.body_cap {
        options.body_cap = cap;
    }
    match std::env::var(ADMIN_TOKEN_VAR) {
        Ok(_) => options.admin = Some(AdminConfig::from_env(ADMIN_TOKEN_VAR)?),
        Err(_) => eprintln!("note: {ADMIN_TOKEN_VAR} is not set: no admin API under /admin"),
    }
    let admin = options.admin.is_some();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let gateway = Gateway::start(listener, pool.clone(), layer, options)?;
    let snapshot = pool.snapshot();
    println!(
        "Proxying http://{} → {upstream} with {} accounts ({} Kiro, {} available now)",
        gateway.addr(),
        snapshot.accounts.len(),
        kiro_accounts,
        snapshot.available()
    );
    if admin {
        println!("Dashboard: http://{}/admin", gateway.addr());
    }
    proxy::shutdown_signal().await;
    println!("Shutting down: requests in flight finish, then the store is flushed.");
    gateway.shutdown().await?;
    for task in tasks {
        task.abort();
    }
    if let Some(store) = store {
        store.shutdown().await?;
    }
    Ok(())
}

#[cfg(feature = "redis")]
async fn open_redis(pool: &Pool, spec: &str) -> Result<StoreHandle, BoxError> {
    use tower_account_pool::store::{RedisConfig, RedisStore};
    let url = &spec["redis:".len()..];
    let store = RedisStore::open(RedisConfig::new(url, "gateway")).await?;
    Ok(StoreHandle::start(pool, store).await?)
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_pool: &Pool, _spec: &str) -> Result<StoreHandle, BoxError> {
    Err("--store redis:URL needs the example built with --features redis".into())
}
