//! A gateway for a pool of accounts: the Anthropic Messages API over Kiro accounts
//! (`--api anthropic`, the default for a Kiro pool) or a reverse proxy to one upstream
//! (`--api passthrough`), through `AccountPoolLayer`, behind client keys (`GATEWAY_API_KEY`);
//! responses stream back unbuffered, the admin API and dashboard are under `/admin`, and
//! Ctrl-C (or SIGTERM) shuts down gracefully — requests in flight finish and the store is
//! flushed.
//!
//! ```sh
//! # The demo: Claude-client requests to an in-process Kiro mock with accounts that misbehave
//! # (the mock is `testing::KiroMock`, hence `test-util`, which only the demo needs).
//! cargo run --example gateway --features kiro,test-util,sqlite,admin
//! cargo run --example gateway --features kiro,test-util,sqlite,admin -- --demo-serve
//!
//! # The real thing: Kiro token files in the pool file, each account's region endpoint.
//! GATEWAY_API_KEY=$(openssl rand -hex 24) GATEWAY_ADMIN_TOKEN=$(openssl rand -hex 24) \
//! cargo run --release --example gateway --features kiro,sqlite,admin -- \
//!     --pool configs/account_pool.json \
//!     --store sqlite:configs/gateway.db --listen 127.0.0.1:8080
//! ```

#[cfg(feature = "test-util")]
mod demo;
mod pool_source;
mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tower_account_pool::admin::AdminConfig;
use tower_account_pool::config::{FileWatcher, PoolFile};
use tower_account_pool::kiro::anthropic::{AnthropicConfig, ModelEntry, ModelTable};
use tower_account_pool::kiro::{self, KiroClassifier, KiroEndpoints, KiroOptions, KiroResolver};
use tower_account_pool::store::{JsonFileStore, SqliteStore, StoreHandle};
use tower_account_pool::{AccountPoolLayer, Pool};

use proxy::{Api, BoxError, ClientKeys, Gateway, ProxyOptions, RequestGate, CLIENT_KEYS_VAR};

const USAGE: &str = "usage:
  gateway [--demo-serve] [--listen ADDR]
      the demo: an in-process Kiro mock, a burst of traffic, a table; --demo-serve keeps serving
  gateway --pool PATH|sqlite:PATH [--upstream URL] [--api anthropic|passthrough] [--kiro-auth-base URL]
          [--store json|sqlite:PATH|redis:URL] [--listen ADDR] [--body-cap BYTES]
          [--methods GET,POST,HEAD] [--header-timeout SECS] [--max-connections N]
          [--allow-anonymous] [--models FILE]
      serve the accounts of the pool file PATH (or of the older system's SQLite database
      with sqlite:PATH, also its store unless --store is given):
      --api anthropic (the default when the pool holds Kiro accounts): the Anthropic Messages
        API (/v1/messages, /v1/messages/count_tokens, /v1/models) over Kiro accounts; Kiro calls
        go to URL/generateAssistantResponse (and usage probes to URL), or without --upstream
        to each account's region endpoint; --kiro-auth-base sends token refreshes to another
        base (a mock or a private endpoint); --models FILE adds models to the table (a JSON
        array of objects with id, kiroId, displayName, aliases, contextWindow, maxOutputTokens)
      --api passthrough (the default otherwise): every request forwarded to URL as it is
      clients must send a key of GATEWAY_API_KEY (comma-separated keys) as x-api-key or
      Authorization: Bearer; without it the gateway refuses to start unless --allow-anonymous
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
    methods: Option<RequestGate>,
    header_timeout: Option<Duration>,
    max_connections: Option<usize>,
    allow_anonymous: bool,
    api: Option<String>,
    kiro_auth_base: Option<String>,
    models: Option<PathBuf>,
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
            "--methods" => {
                let text = value("--methods")?;
                parsed.methods =
                    Some(RequestGate::parse(&text).map_err(|e| format!("--methods: {e}"))?);
            }
            "--header-timeout" => {
                let text = value("--header-timeout")?;
                let seconds = text
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                    .ok_or(format!(
                        "--header-timeout: `{text}` is not a number of seconds in (0, 3600]"
                    ))?;
                parsed.header_timeout = Some(Duration::from_secs_f64(seconds));
            }
            "--max-connections" => {
                let text = value("--max-connections")?;
                parsed.max_connections = Some(text.parse().ok().filter(|n| *n > 0).ok_or(
                    format!("--max-connections: `{text}` is not a positive number"),
                )?);
            }
            "--allow-anonymous" => parsed.allow_anonymous = true,
            "--api" => {
                let text = value("--api")?;
                if !matches!(text.as_str(), "anthropic" | "passthrough") {
                    return Err(format!(
                        "--api: `{text}` is neither anthropic nor passthrough"
                    ));
                }
                parsed.api = Some(text);
            }
            "--kiro-auth-base" => parsed.kiro_auth_base = Some(value("--kiro-auth-base")?),
            "--models" => parsed.models = Some(value("--models")?.into()),
            "--demo-serve" => parsed.demo_serve = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    match (&parsed.pool, &parsed.upstream) {
        (Some(_), None) if parsed.api.as_deref() == Some("passthrough") => {
            return Err("--api passthrough needs --upstream".into())
        }
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

/// The demo without its mock: this build has no `test-util`.
#[cfg(not(feature = "test-util"))]
async fn run_demo(args: Args) -> Result<(), BoxError> {
    let asked = if args.demo_serve {
        "--demo-serve"
    } else {
        "the demo (no --pool)"
    };
    Err(format!(
        "{asked} runs an in-process Kiro mock, which this build lacks: build the example with \
         --features kiro,test-util,sqlite,admin (the real mode, with --pool, needs no test-util)"
    )
    .into())
}

#[cfg(feature = "test-util")]
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
        "\nDashboard: {}  (admin token: {})\nClient key: {}  (send it as x-api-key or Authorization: Bearer)\nSending traffic…\n",
        demo.dashboard_url(),
        demo.admin_token,
        demo.client_key
    );
    let tally = demo.traffic(140, 6, Duration::from_millis(60)).await;
    print!("{}", demo::render(&demo.rows(), &tally));
    println!("\nA Claude client's session through the gateway (Anthropic Messages API → Kiro):");
    print!("{}", demo::render_session(&demo.claude_session().await?));
    if args.demo_serve {
        println!(
            "\nStill serving: dashboard {} , Anthropic API http://{}/v1/messages \
             (ANTHROPIC_BASE_URL=http://{1} ANTHROPIC_API_KEY={}). Ctrl-C stops.",
            demo.dashboard_url(),
            demo.gateway.addr(),
            demo.client_key
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
    let upstream = args.upstream;
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let client_keys = client_keys(args.allow_anonymous)?;
    // Usage probes go where the chat goes when a base is given (tests and private endpoints
    // need no internet); refreshes go to --kiro-auth-base, else to Kiro's own endpoints.
    let passthrough_asked = args.api.as_deref() == Some("passthrough");
    let kiro_options = KiroOptions {
        endpoints: KiroEndpoints {
            social_base: args.kiro_auth_base.clone(),
            oidc_base: args.kiro_auth_base.clone(),
            q_base: upstream.clone().filter(|_| !passthrough_asked),
        },
        ..KiroOptions::default()
    };
    let source = pool_source::PoolSource::parse(&pool_path);
    let pool = source.build(kiro_options.clone())?;
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
                    .resolver(Arc::new(KiroResolver::new(kiro_options).base_dir(dir)))
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
    let api = match args.api.as_deref() {
        Some("anthropic") => "anthropic",
        Some(_) => "passthrough",
        None if kiro_accounts > 0 => "anthropic",
        None => "passthrough",
    };
    if api == "passthrough" && upstream.is_none() {
        return Err("the pool holds no Kiro account: --api passthrough needs --upstream".into());
    }
    let mut layer = AccountPoolLayer::new(pool.clone());
    let tasks = if kiro_accounts > 0 {
        layer = layer.classifier(KiroClassifier::default());
        proxy::kiro_startup(&pool, Duration::from_secs(60), Duration::from_secs(600)).await
    } else {
        proxy::KiroTasks::default()
    };
    let mut options = ProxyOptions::new(upstream.clone().unwrap_or_default());
    if api == "anthropic" {
        let mut models = ModelTable::default();
        if let Some(path) = &args.models {
            models = with_models_file(models, path)?;
        }
        options.api = Api::Anthropic {
            config: AnthropicConfig::default().models(models),
            base_url: upstream.clone(),
        };
    } else if args.models.is_some() {
        return Err("--models is for --api anthropic".into());
    }
    options.client_keys = client_keys;
    if let Some(cap) = args.body_cap {
        options.body_cap = cap;
    }
    if let Some(gate) = args.methods {
        options.gate = gate;
    }
    if let Some(timeout) = args.header_timeout {
        options.header_read_timeout = timeout;
    }
    if let Some(max) = args.max_connections {
        options.max_connections = max;
    }
    match std::env::var(ADMIN_TOKEN_VAR) {
        Ok(_) => options.admin = Some(AdminConfig::from_env(ADMIN_TOKEN_VAR)?),
        Err(_) => eprintln!("note: {ADMIN_TOKEN_VAR} is not set: no admin API under /admin"),
    }
    let admin = options.admin.is_some();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let gateway = Gateway::start(listener, pool.clone(), layer, options)?;
    let snapshot = pool.snapshot();
    let target = upstream.unwrap_or_else(|| "each account's region endpoint".into());
    println!(
        "Proxying http://{} → {target} ({api} API) with {} accounts ({} Kiro, {} available now)",
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
    drop(tasks); // the Kiro refresher and prober stop
    if let Some(store) = store {
        store.shutdown().await?;
    }
    Ok(())
}

/// `table` with the models of the JSON file at `path` added (an entry with a known id replaces
/// it): `[{"id": "claude-opus-5-5", "kiroId": "claude-opus-4.6", "displayName": "…",
/// "aliases": [...], "contextWindow": 1000000, "maxOutputTokens": 64000}]`.
fn with_models_file(mut table: ModelTable, path: &Path) -> Result<ModelTable, BoxError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--models {}: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("--models {}: invalid JSON: {e}", path.display()))?;
    let entries = value.as_array().ok_or_else(|| {
        format!(
            "--models {}: expected a JSON array of models",
            path.display()
        )
    })?;
    for (index, entry) in entries.iter().enumerate() {
        let field = |name: &str| -> Result<String, BoxError> {
            entry[name]
                .as_str()
                .filter(|v| !v.trim().is_empty())
                .map(str::to_owned)
                .ok_or_else(|| {
                    format!(
                        "--models {}: model at index {index} needs a non-empty string `{name}`",
                        path.display()
                    )
                    .into()
                })
        };
        let id = field("id")?;
        let display = entry["displayName"].as_str().unwrap_or(&id).to_owned();
        let mut model = ModelEntry::new(id, field("kiroId")?, display);
        for alias in entry["aliases"].as_array().into_iter().flatten() {
            let alias = alias.as_str().ok_or_else(|| {
                format!(
                    "--models {}: model at index {index}: `aliases` holds strings",
                    path.display()
                )
            })?;
            model = model.alias(alias);
        }
        if let Some(tokens) = entry["contextWindow"].as_u64() {
            model = model.context_window(tokens);
        }
        if let Some(tokens) = entry["maxOutputTokens"].as_u64() {
            model = model.max_output_tokens(tokens);
        }
        if let Some(at) = entry["createdAt"].as_str() {
            model = model.created_at(at);
        }
        table = table.with(model);
    }
    Ok(table)
}

/// The client keys from `GATEWAY_API_KEY`; without it, `None` only with `--allow-anonymous`.
fn client_keys(allow_anonymous: bool) -> Result<Option<ClientKeys>, BoxError> {
    match std::env::var(CLIENT_KEYS_VAR) {
        Ok(text) => Ok(Some(ClientKeys::parse(&text)?)),
        Err(_) if allow_anonymous => {
            eprintln!(
                "warning: {CLIENT_KEYS_VAR} is not set and --allow-anonymous was given: anyone \
                 who can reach this gateway can spend the pool's accounts"
            );
            Ok(None)
        }
        Err(_) => Err(format!(
            "{CLIENT_KEYS_VAR} is not set: clients must authenticate (set it to one or more \
             keys, comma-separated), or pass --allow-anonymous to serve without client keys"
        )
        .into()),
    }
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
