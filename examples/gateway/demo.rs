//! The gateway's demo: Claude clients (Anthropic Messages API requests, streamed and not, a
//! tool call and its result, thinking) through the gateway's Anthropic front to an in-process
//! Kiro mock with accounts that misbehave differently, the SQLite store in a temp dir, a burst
//! of client traffic and a table of what happened.
//!
//! Shared by `examples/gateway` and `tests/gateway/demo_run.rs`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tower_account_pool::admin::AdminConfig;
use tower_account_pool::config::PoolFile;
use tower_account_pool::kiro::{KiroClassifier, KiroOptions, KiroResolver};
use tower_account_pool::store::{SqliteStore, Store, StoreHandle};
use tower_account_pool::testing::{KiroMock, RefreshRule, Reply};
use tower_account_pool::{AccountPoolLayer, Pool, Strategy};

use tower_account_pool::kiro::anthropic::AnthropicConfig;

use crate::proxy::{self, Api, BoxError, Gateway, ProxyOptions};

/// The demo's accounts and how each misbehaves.
pub const ACCOUNTS: [(&str, &str); 7] = [
    ("kiro-ok-1", "fine"),
    ("kiro-ok-2", "fine"),
    ("kiro-ok-3", "fine"),
    ("kiro-throttled", "answers 429 with Retry-After: 1"),
    (
        "kiro-expired",
        "its access token expired: refreshed at start",
    ),
    ("kiro-no-quota", "answers 402 MONTHLY_REQUEST_COUNT"),
    ("kiro-suspended", "answers 403 TEMPORARILY_SUSPENDED"),
];

/// The model every demo request asks for.
pub const MODEL: &str = "claude-sonnet-4-5";

/// A running demo.
pub struct Demo {
    pub gateway: Gateway,
    pub mock: KiroMock,
    pub pool: Pool,
    store: StoreHandle,
    tasks: proxy::KiroTasks,
    pub admin_token: String,
    /// The client key the demo generated: clients send it as `x-api-key`.
    pub client_key: String,
    pub db_path: PathBuf,
    // Last: removed after everything that writes into it is gone.
    dir: tempfile::TempDir,
}

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct ClientTally {
    /// Responses by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests that got no response (connection errors).
    pub failed: usize,
    /// Responses whose body broke off.
    pub broken_bodies: usize,
    pub elapsed: Duration,
}

impl ClientTally {
    pub fn total(&self) -> usize {
        self.statuses.values().sum::<usize>() + self.failed
    }
}

/// One account's line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub behaviour: String,
    /// Requests the pool sent with the account.
    pub requests: u64,
    /// Chat requests the mock received with the account's tokens.
    pub upstream_saw: usize,
    pub successes: u64,
    pub rate_limited: u64,
    pub quota_exhausted: u64,
    pub auth: u64,
    pub suspended: u64,
    pub transient: u64,
    pub client_errors: u64,
    /// Token refreshes the mock answered for the account.
    pub refreshes: usize,
    pub state: String,
    pub reason: String,
}

/// The `profileArn` of a demo account (social login).
pub fn profile_arn(name: &str) -> String {
    format!("arn:aws:codewhisperer:us-east-1:000000000000:profile/{name}")
}

fn token_file(access: Option<&str>, refresh: &str, expires_at: &str, name: &str) -> String {
    let access = access.map_or(String::new(), |a| format!(r#""accessToken":"{a}","#));
    let arn = profile_arn(name);
    format!(
        r#"{{{access}"refreshToken":"{refresh}","authMethod":"social","profileArn":"{arn}","expiresAt":"{expires_at}"}}"#
    )
}

/// Starts the mock, writes the pool file and token files, loads the pool through
/// `KiroResolver` (as `--pool` does), opens the SQLite store and starts the gateway on `listen`.
pub async fn start(listen: SocketAddr, admin_token: Option<String>) -> Result<Demo, BoxError> {
    let dir = tempfile::tempdir()?;
    let mock = KiroMock::start().await;
    let mut entries = Vec::new();
    for (id, _) in ACCOUNTS {
        let refresh = format!("rt-{id}");
        mock.accept_refresh_token(id, &refresh, RefreshRule::default());
        let file = if id == "kiro-expired" {
            // The mock no longer takes the old token; the refresh gets a new one.
            token_file(
                Some("at-kiro-expired-old"),
                &refresh,
                "2020-01-01T00:00:00Z",
                id,
            )
        } else {
            let access = format!("at-{id}");
            mock.accept_access_token(id, &access);
            token_file(Some(&access), &refresh, "2099-01-01T00:00:00Z", id)
        };
        let path = dir.path().join(format!("{id}.json"));
        std::fs::write(&path, file)?;
        entries.push(serde_json::json!({"uuid": id, "KIRO_OAUTH_CREDS_FILE_PATH": path}));
    }
    let many = |reply: Reply| std::iter::repeat_n(reply, 1000);
    mock.script(
        "kiro-throttled",
        many(Reply::Throttled {
            retry_after: Some(1),
        }),
    );
    mock.script("kiro-no-quota", many(Reply::QuotaExhausted));
    mock.script("kiro-suspended", many(Reply::Suspended));
    mock.respond_with(claude_like_reply);
    let pool_path = dir.path().join("account_pool.json");
    std::fs::write(
        &pool_path,
        serde_json::to_vec_pretty(&serde_json::json!({ "accounts": entries }))?,
    )?;

    let resolver = KiroResolver::new(KiroOptions::with_base_url(mock.url()));
    let pool = PoolFile::load(&pool_path)?
        .build_with(Pool::builder().strategy(Strategy::RoundRobin), &resolver)?;
    let db_path = dir.path().join("gateway.db");
    let store = StoreHandle::start(&pool, SqliteStore::open(&db_path)?).await?;
    let tasks = proxy::kiro_startup(&pool, Duration::from_secs(60), Duration::from_secs(600)).await;

    let admin_token = admin_token.unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)));
    let mut options = ProxyOptions::new(mock.url());
    options.api = Api::Anthropic {
        config: AnthropicConfig::default(),
        base_url: Some(mock.url()),
    };
    options.admin = Some(AdminConfig::new(&admin_token)?);
    let (client_keys, client_key) = proxy::ClientKeys::generate();
    options.client_keys = Some(client_keys);
    // Three accounts fail every request until they cool down; with a fourth attempt (each on
    // a different account) every client request reaches a working one, whatever the order.
    let layer = AccountPoolLayer::new(pool.clone())
        .classifier(KiroClassifier::default())
        .max_attempts(4);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let gateway = Gateway::start(listener, pool.clone(), layer, options)?;
    Ok(Demo {
        gateway,
        mock,
        pool,
        store,
        tasks,
        admin_token,
        client_key,
        db_path,
        dir,
    })
}

impl Demo {
    pub fn dashboard_url(&self) -> String {
        format!("http://{}/admin", self.gateway.addr())
    }

    /// `requests` chat requests from `concurrency` clients, each pausing `pace` between its
    /// requests; every response body is read to its end.
    pub async fn traffic(
        &self,
        requests: usize,
        concurrency: usize,
        pace: Duration,
    ) -> ClientTally {
        let client = reqwest::Client::new();
        let url = format!("http://{}/v1/messages", self.gateway.addr());
        let key = self.client_key.clone();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let (client, url, next) = (client.clone(), url.clone(), next.clone());
            let key = key.clone();
            workers.spawn(async move {
                let mut tally = ClientTally::default();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= requests {
                        break;
                    }
                    // Half of the requests stream, as Claude Code always does.
                    let body = serde_json::json!({
                        "model": MODEL,
                        "max_tokens": 256,
                        "stream": n % 2 == 0,
                        "messages": [{"role": "user", "content": "Hello"}],
                    });
                    match client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-api-key", &key)
                        .body(body.to_string())
                        .send()
                        .await
                    {
                        Ok(response) => {
                            *tally
                                .statuses
                                .entry(response.status().as_u16())
                                .or_default() += 1;
                            if response.bytes().await.is_err() {
                                tally.broken_bodies += 1;
                            }
                        }
                        Err(_) => tally.failed += 1,
                    }
                    tokio::time::sleep(pace).await;
                }
                tally
            });
        }
        let mut total = ClientTally::default();
        while let Some(Ok(tally)) = workers.join_next().await {
            for (status, n) in tally.statuses {
                *total.statuses.entry(status).or_default() += n;
            }
            total.failed += tally.failed;
            total.broken_bodies += tally.broken_bodies;
        }
        total.elapsed = started.elapsed();
        total
    }

    /// The table's rows, from the pool's snapshot and the mock's record.
    pub fn rows(&self) -> Vec<Row> {
        let snapshot = self.pool.snapshot();
        let recorded = self.mock.requests();
        ACCOUNTS
            .iter()
            .filter_map(|(id, behaviour)| {
                let account = snapshot.account(id)?;
                let c = &account.counters;
                let seen = |path: &str| {
                    recorded
                        .iter()
                        .filter(|r| r.path == path && r.account.as_deref() == Some(*id))
                        .count()
                };
                let mut reason = account.reason.clone().unwrap_or_default();
                if let Some(until) = account.next_retry_at {
                    let left = until.duration_since(SystemTime::now()).unwrap_or_default();
                    let _ = write!(reason, " (retry in {})", human(left));
                }
                Some(Row {
                    id: (*id).to_owned(),
                    behaviour: (*behaviour).to_owned(),
                    requests: c.requests,
                    upstream_saw: seen("/generateAssistantResponse"),
                    successes: c.successes,
                    rate_limited: c.rate_limited,
                    quota_exhausted: c.quota_exhausted,
                    auth: c.auth_expired + c.auth_invalid,
                    suspended: c.suspended,
                    transient: c.transient,
                    client_errors: c.client_errors,
                    refreshes: seen("/refreshToken"),
                    state: account.state.to_string(),
                    reason: reason.trim().to_owned(),
                })
            })
            .collect()
    }

    /// Stops the gateway (in-flight requests finish), the background tasks, and flushes the
    /// store; returns how many accounts the store holds after that, read back from the file.
    pub async fn shutdown(self) -> Result<usize, BoxError> {
        self.gateway.shutdown().await?;
        drop(self.tasks); // the Kiro refresher and prober stop
        self.store.shutdown().await?;
        let stored = SqliteStore::open(&self.db_path)?.load().await?;
        Ok(stored.len())
    }
}

/// What the mock answers a chat request that finds no scripted reply: the answer a Claude
/// model would give to what the converted request asks — a tool call when tools are declared,
/// the tool's answer once its result came back, thinking (in Kiro's tags) when thinking is on.
pub fn claude_like_reply(body: &serde_json::Value) -> Reply {
    let message = &body["conversationState"]["currentMessage"]["userInputMessage"];
    let context = &message["userInputMessageContext"];
    let has = |field: &str| context[field].as_array().is_some_and(|a| !a.is_empty());
    if has("toolResults") {
        Reply::success(&["It is 18 °C", " and sunny in Paris."])
    } else if has("tools") {
        Reply::tool_use(
            "get_weather",
            "tooluse_demo_1",
            [r#"{"city""#, r#":"Paris"}"#],
        )
    } else if body.to_string().contains("<thinking_mode>") {
        Reply::thinking(
            "A greeting: a short, friendly answer is enough.",
            "Hello! How can I help?",
        )
    } else {
        Reply::success(&["Hello", " from Kiro"])
    }
}

/// What a Claude client saw in the demo's session (see [`Demo::claude_session`]).
#[derive(Debug, Clone)]
pub struct Session {
    /// A streamed answer: the SSE event names in order, and the text its deltas carried.
    pub streamed_events: Vec<String>,
    pub streamed_text: String,
    /// A Message answer (`stream: false`).
    pub message: serde_json::Value,
    /// The answer to a request declaring a tool: a `tool_use` block.
    pub tool_call: serde_json::Value,
    /// The answer once the client sent the `tool_result` back.
    pub tool_answer: serde_json::Value,
    /// An answer with thinking on: a `thinking` block, then text.
    pub thinking: serde_json::Value,
}

impl Demo {
    /// A Claude client's session through the gateway, as the Anthropic SDK would send it: a
    /// streamed answer, a Message, a tool call and its round trip, thinking.
    pub async fn claude_session(&self) -> Result<Session, BoxError> {
        let client = reqwest::Client::new();
        let url = format!("http://{}/v1/messages?beta=true", self.gateway.addr());
        let send = |body: serde_json::Value| {
            let request = client
                .post(&url)
                .header("x-api-key", &self.client_key)
                .header("anthropic-version", "2023-06-01")
                .header("content-type", "application/json")
                .body(body.to_string());
            async move {
                let response = request.send().await?;
                let status = response.status();
                let bytes = response.bytes().await?;
                if !status.is_success() {
                    return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)).into());
                }
                Ok::<_, BoxError>(bytes)
            }
        };
        let hello = serde_json::json!([{"role": "user", "content": "Hello"}]);
        let sse = send(serde_json::json!({
            "model": MODEL, "max_tokens": 256, "stream": true, "messages": hello,
        }))
        .await?;
        let mut streamed_events = Vec::new();
        let mut streamed_text = String::new();
        for block in String::from_utf8_lossy(&sse).split("\n\n") {
            let mut data = None;
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    streamed_events.push(name.to_owned());
                } else if let Some(json) = line.strip_prefix("data: ") {
                    data = serde_json::from_str::<serde_json::Value>(json).ok();
                }
            }
            if let Some(text) = data.as_ref().and_then(|d| d["delta"]["text"].as_str()) {
                streamed_text.push_str(text);
            }
        }
        let message = serde_json::from_slice(
            &send(serde_json::json!({"model": MODEL, "max_tokens": 256, "messages": hello}))
                .await?,
        )?;
        let tools = serde_json::json!([{
            "name": "get_weather",
            "description": "The current weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]},
        }]);
        let question =
            serde_json::json!({"role": "user", "content": "What is the weather in Paris?"});
        let tool_call: serde_json::Value = serde_json::from_slice(
            &send(serde_json::json!({
                "model": MODEL, "max_tokens": 256, "tools": tools, "messages": [question],
            }))
            .await?,
        )?;
        let call = tool_call["content"]
            .as_array()
            .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_use"))
            .cloned()
            .ok_or("the answer holds no tool call")?;
        let tool_answer = serde_json::from_slice(
            &send(serde_json::json!({
                "model": MODEL, "max_tokens": 256, "tools": tools,
                "messages": [
                    question,
                    {"role": "assistant", "content": [call.clone()]},
                    {"role": "user", "content": [{
                        "type": "tool_result", "tool_use_id": call["id"],
                        "content": "18 °C, sunny",
                    }]},
                ],
            }))
            .await?,
        )?;
        let thinking = serde_json::from_slice(
            &send(serde_json::json!({
                "model": MODEL, "max_tokens": 2048, "messages": hello,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            }))
            .await?,
        )?;
        Ok(Session {
            streamed_events,
            streamed_text,
            message,
            tool_call,
            tool_answer,
            thinking,
        })
    }
}

/// The session as the demo prints it.
pub fn render_session(session: &Session) -> String {
    let text_of = |message: &serde_json::Value, kind: &str| -> String {
        message["content"]
            .as_array()
            .map(|blocks| {
                blocks
                    .iter()
                    .filter(|b| b["type"] == kind)
                    .map(|b| match kind {
                        "text" => b["text"].as_str().unwrap_or_default().to_owned(),
                        "thinking" => b["thinking"].as_str().unwrap_or_default().to_owned(),
                        _ => format!("{}({})", b["name"].as_str().unwrap_or_default(), b["input"]),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "stream: {}\n  text: {:?}",
        session.streamed_events.join(", "),
        session.streamed_text
    );
    let _ = writeln!(
        out,
        "message: {:?} (stop_reason {})",
        text_of(&session.message, "text"),
        session.message["stop_reason"]
    );
    let _ = writeln!(
        out,
        "tool call: {} (stop_reason {}) → after the tool_result: {:?}",
        text_of(&session.tool_call, "tool_use"),
        session.tool_call["stop_reason"],
        text_of(&session.tool_answer, "text")
    );
    let _ = writeln!(
        out,
        "thinking: {:?} → {:?}",
        text_of(&session.thinking, "thinking"),
        text_of(&session.thinking, "text")
    );
    out
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.as_millis()),
        1..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// The table printed at the end of the demo.
pub fn render(rows: &[Row], tally: &ClientTally) -> String {
    let mut out = String::new();
    let header = [
        "account",
        "requests",
        "upstream",
        "ok",
        "429",
        "quota",
        "auth",
        "suspended",
        "5xx/reset",
        "4xx",
        "refreshes",
        "state",
        "reason",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.requests.to_string(),
                r.upstream_saw.to_string(),
                r.successes.to_string(),
                r.rate_limited.to_string(),
                r.quota_exhausted.to_string(),
                r.auth.to_string(),
                r.suspended.to_string(),
                r.transient.to_string(),
                r.client_errors.to_string(),
                r.refreshes.to_string(),
                r.state.clone(),
                r.reason.clone(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, row: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == 0 || i >= 11 {
                let _ = write!(text, "{cell:<w$}  ");
            } else {
                let _ = write!(text, "{cell:>w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    line(&mut out, &header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &rule);
    for row in &cells {
        line(&mut out, row);
    }
    let statuses: Vec<String> = tally
        .statuses
        .iter()
        .map(|(s, n)| format!("{n} × {s}"))
        .collect();
    let _ = writeln!(
        out,
        "\nclients: {} requests in {:.1} s: {}; {} without a response, {} broken bodies",
        tally.total(),
        tally.elapsed.as_secs_f64(),
        statuses.join(", "),
        tally.failed,
        tally.broken_bodies
    );
    out
}

/// The behaviours, for the start of the demo.
pub fn legend() -> String {
    let mut out = String::new();
    for (id, behaviour) in ACCOUNTS {
        let _ = writeln!(out, "  {id:<16} {behaviour}");
    }
    out
}
