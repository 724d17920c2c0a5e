//! A small HTTP load generator: throughput and latency percentiles.
//!
//! ```sh
//! cargo run --release --example loadgen -- --target http://127.0.0.1:8080/v1/messages \
//!     --concurrency 64 --requests 100000
//!
//! # The gateway comparison (in-process instant upstream, gateway, loadgen; one process):
//! cargo run --release --example loadgen --features kiro,admin -- --compare --requests 200000
//! ```
//!
//! `--compare` measures (a) direct to an instant local upstream, (b) through the gateway with
//! one account, (c) through the gateway with 1,000 accounts of which 500 are cooling down, at
//! `--concurrency` (default 64), and prints a Markdown table. The `--requests` of each case are
//! sent in `--rounds` rounds (default 3) in which the cases take turns, so that a machine whose
//! speed drifts during the comparison moves every case alike; each case's figures are over all
//! its rounds. It also measures (p) a bare
//! proxy on the gateway's own server and client stack with no pool: the ceiling for any
//! gateway built on hyper here, since every request then makes two HTTP exchanges instead of
//! one on the same cores. With `--pinned` (Linux, needs `taskset`) this process, with the
//! load generator and the upstream, runs on CPU 0 and each proxy in a child process (this
//! program again, `--child ROLE --upstream ADDR`) on CPU 1. `--soak N` then sends N more
//! requests through (c) and prints resident memory every N/10 requests (the gateway child's
//! when pinned).
//!
//! To profile one proxy by hand (`perf`, `strace`, `valgrind --tool=callgrind` on its process
//! alone), start its pieces one by one: `--child upstream` serves the instant upstream and
//! prints `listening ADDR`; `--child bare --upstream ADDR` or `--child gateway:1000 --upstream
//! ADDR` serves a proxy in front of it the same way; `--target` loads it. Each child stops when
//! its standard input closes.

#[cfg(all(feature = "kiro", feature = "admin"))]
#[path = "gateway/proxy.rs"]
mod proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body every load request carries.
const BODY: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

#[derive(Debug)]
struct Args {
    target: Option<String>,
    concurrency: usize,
    requests: usize,
    compare: bool,
    /// `--pinned`: load generator and upstream on CPU 0, each proxy in a child on CPU 1.
    pinned: bool,
    soak: usize,
    /// `--rounds R`: each case measured in R rounds, the cases taking turns.
    rounds: usize,
    /// Internal: this process is a `--pinned` comparison's child.
    child: Option<ChildRole>,
    /// Internal: the child's upstream address.
    upstream: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        target: None,
        concurrency: 64,
        requests: 100_000,
        compare: false,
        pinned: false,
        soak: 0,
        rounds: 3,
        child: None,
        upstream: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, text: String| {
            text.replace('_', "")
                .parse::<usize>()
                .map_err(|_| format!("{name}: `{text}` is not a number"))
        };
        match arg.as_str() {
            "--target" => args.target = Some(value("--target")?),
            "--concurrency" => args.concurrency = number("--concurrency", value("--concurrency")?)?,
            "--requests" => args.requests = number("--requests", value("--requests")?)?,
            "--soak" => args.soak = number("--soak", value("--soak")?)?,
            "--rounds" => args.rounds = number("--rounds", value("--rounds")?)?,
            "--compare" => args.compare = true,
            "--pinned" => args.pinned = true,
            "--child" => args.child = Some(ChildRole::parse(&value("--child")?)?),
            "--upstream" => args.upstream = Some(value("--upstream")?),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.child.is_some_and(|role| role != ChildRole::Upstream) != args.upstream.is_some() {
        return Err("--child (but --child upstream) and --upstream go together".into());
    }
    if args.target.is_none() && !args.compare && args.child.is_none() {
        return Err("give --target URL or --compare".into());
    }
    if args.pinned && !args.compare {
        return Err("--pinned goes with --compare".into());
    }
    if args.concurrency == 0 || args.requests == 0 || args.rounds == 0 {
        return Err("--concurrency, --requests and --rounds must be at least 1".into());
    }
    Ok(args)
}

/// What one run measured.
#[derive(Debug, Clone)]
struct Report {
    requests: usize,
    ok: usize,
    non_2xx: usize,
    errors: usize,
    elapsed: Duration,
    /// Sorted latencies in microseconds.
    latencies: Vec<u32>,
}

impl Report {
    /// The rounds of one case as one report: all their requests over all their time.
    fn merge(rounds: Vec<Report>) -> Report {
        let mut all = Report {
            requests: 0,
            ok: 0,
            non_2xx: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        };
        for round in rounds {
            all.requests += round.requests;
            all.ok += round.ok;
            all.non_2xx += round.non_2xx;
            all.errors += round.errors;
            all.elapsed += round.elapsed;
            all.latencies.extend(round.latencies);
        }
        all.latencies.sort_unstable();
        all
    }

    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies.len()) - 1;
        Duration::from_micros(u64::from(self.latencies[index]))
    }

    fn print(&self, label: &str) {
        println!(
            "{label}: {} requests in {:.2} s = {:.0} req/s; {} ok, {} non-2xx, {} errors; latency p50 {} p90 {} p99 {} max {}",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.ok,
            self.non_2xx,
            self.errors,
            ms(self.percentile(50.0)),
            ms(self.percentile(90.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0)),
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// `requests` POSTs of [`BODY`] to `target` from `concurrency` workers over one shared
/// keep-alive connection pool; each response body is read to its end.
async fn run(target: &str, concurrency: usize, requests: usize) -> Result<Report, BoxError> {
    let uri: http::Uri = target.parse()?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, uri, next) = (client.clone(), uri.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(requests / concurrency + 1);
            let (mut ok, mut non_2xx, mut errors) = (0, 0, 0);
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let request = http::Request::post(uri.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                    .expect("a valid request");
                let sent = Instant::now();
                match client.request(request).await {
                    Ok(response) => {
                        let success = response.status().is_success();
                        match response.into_body().collect().await {
                            Ok(_) if success => ok += 1,
                            Ok(_) => non_2xx += 1,
                            Err(_) => errors += 1,
                        }
                    }
                    Err(_) => errors += 1,
                }
                let micros = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                latencies.push(micros);
            }
            (latencies, ok, non_2xx, errors)
        });
    }
    let mut report = Report {
        requests: 0,
        ok: 0,
        non_2xx: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(requests),
    };
    while let Some(joined) = workers.join_next().await {
        let (latencies, ok, non_2xx, errors) = joined?;
        report.latencies.extend(latencies);
        report.ok += ok;
        report.non_2xx += non_2xx;
        report.errors += errors;
    }
    report.elapsed = started.elapsed();
    report.requests = report.latencies.len();
    report.latencies.sort_unstable();
    Ok(report)
}

#[cfg_attr(not(all(feature = "kiro", feature = "admin")), allow(dead_code))]
/// An upstream that answers every request at once with a small JSON body.
async fn instant_upstream() -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: http::Request<hyper::body::Incoming>| async move {
                        // Read the request body, as a real upstream would.
                        let _ = request.into_body().collect().await;
                        let body = Full::new(Bytes::from_static(
                            br#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"hi"}]}"#,
                        ));
                        let mut response = http::Response::new(body);
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

#[cfg(all(feature = "kiro", feature = "admin"))]
/// The floor of any proxy on this stack: the gateway's server (`proxy::serve`) and inner client
/// (hyper-util's), forwarding each request as it comes, with no pool, no layer, no body check.
/// What the gateway costs beyond this is the pool's and the gateway's own work.
async fn bare_proxy(upstream: SocketAddr) -> Result<SocketAddr, BoxError> {
    use axum::response::IntoResponse as _;
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, axum::body::Body> =
        Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let client = client.clone();
        async move {
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = match format!("http://{upstream}{path}").parse() {
                Ok(uri) => uri,
                Err(_) => return http::StatusCode::BAD_REQUEST.into_response(),
            };
            parts.headers.remove(http::header::HOST);
            match client.request(http::Request::from_parts(parts, body)).await {
                Ok(response) => response.map(axum::body::Body::new).into_response(),
                Err(_) => http::StatusCode::BAD_GATEWAY.into_response(),
            }
        }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _stop = stop; // never sent: serves until the process ends
        let _ = proxy::serve(listener, app, proxy::ServerLimits::default(), stopped).await;
    });
    Ok(addr)
}

#[cfg_attr(not(all(feature = "kiro", feature = "admin")), allow(dead_code))]
/// Resident memory of this process or of `pid`, from `/proc` (Linux).
fn resident_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A gateway with `accounts` accounts of which `cooling` (every other one) are rate limited
/// for an hour, forwarding to `upstream_url`.
#[cfg(all(feature = "kiro", feature = "admin"))]
async fn start_gateway(
    upstream_url: &str,
    accounts: usize,
    cooling: usize,
) -> Result<(tower_account_pool::Pool, proxy::Gateway), BoxError> {
    use tower_account_pool::credential::BearerToken;
    use tower_account_pool::{health::RateLimitScope, Account, AccountPoolLayer, Outcome, Pool};

    let pool = Pool::builder()
        .accounts((0..accounts).map(|i| {
            Account::new(
                format!("acct-{i:04}"),
                BearerToken::new(format!("sk-load-test-token-{i:04}")),
            )
        }))
        .build()?;
    for i in (0..accounts).step_by(2).take(cooling) {
        pool.report_probe(
            &format!("acct-{i:04}"),
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(3600)),
                scope: RateLimitScope::Account,
            },
        )?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let layer = AccountPoolLayer::new(pool.clone());
    let gateway = proxy::Gateway::start(
        listener,
        pool.clone(),
        layer,
        proxy::ProxyOptions::new(upstream_url),
    )?;
    Ok((pool, gateway))
}

/// Pins every thread of this process (and the threads it starts later) to `cpu`.
#[cfg(all(feature = "kiro", feature = "admin"))]
fn pin_self(cpu: usize) -> Result<(), BoxError> {
    let status = std::process::Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("--pinned needs `taskset` (util-linux): {e}"))?;
    if !status.success() {
        return Err(format!("taskset could not pin this process to CPU {cpu}").into());
    }
    Ok(())
}

/// What a `--pinned` comparison runs in a child process on the other CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildRole {
    /// The gateway with this many accounts, half of them cooling down (`--child gateway:N`).
    Gateway(usize),
    /// The bare proxy (`--child bare`).
    Bare,
    /// Only the instant upstream (`--child upstream`, no `--upstream`): to profile a proxy by
    /// hand, each process under its own `taskset`, `perf` or `strace`.
    Upstream,
}

impl ChildRole {
    fn parse(text: &str) -> Result<ChildRole, String> {
        match text.split_once(':') {
            None if text == "bare" => Ok(ChildRole::Bare),
            None if text == "upstream" => Ok(ChildRole::Upstream),
            Some(("gateway", n)) => n
                .parse()
                .map(ChildRole::Gateway)
                .map_err(|_| format!("--child gateway:N: `{n}` is not a number")),
            _ => Err(format!(
                "--child: `{text}` is not `bare`, `gateway:N` or `upstream`"
            )),
        }
    }

    #[cfg(all(feature = "kiro", feature = "admin"))]
    fn arg(self) -> String {
        match self {
            ChildRole::Gateway(n) => format!("gateway:{n}"),
            ChildRole::Bare => "bare".into(),
            ChildRole::Upstream => "upstream".into(),
        }
    }
}

/// Starts the proxy `role` names in this process: its address, and the gateway to stop.
#[cfg(all(feature = "kiro", feature = "admin"))]
async fn start_role(
    role: ChildRole,
    upstream: SocketAddr,
) -> Result<(SocketAddr, Option<proxy::Gateway>), BoxError> {
    Ok(match role {
        ChildRole::Bare => (bare_proxy(upstream).await?, None),
        ChildRole::Upstream => (instant_upstream().await?, None),
        ChildRole::Gateway(n) => {
            let (_pool, gateway) = start_gateway(&format!("http://{upstream}"), n, n / 2).await?;
            (gateway.addr(), Some(gateway))
        }
    })
}

/// The child's side: serve the role, print `listening ADDR`, stop when stdin closes.
#[cfg(all(feature = "kiro", feature = "admin"))]
async fn serve_child(role: ChildRole, upstream: Option<&str>) -> Result<(), BoxError> {
    use tokio::io::AsyncReadExt as _;
    let (addr, gateway) = match upstream {
        Some(upstream) => start_role(role, upstream.parse()?).await?,
        None => (instant_upstream().await?, None),
    };
    println!("listening {addr}");
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    if let Some(gateway) = gateway {
        gateway.shutdown().await?;
    }
    Ok(())
}

/// A proxy under test: in this process, or (pinned) a child process on CPU 1.
#[cfg(all(feature = "kiro", feature = "admin"))]
struct Proxied {
    url: String,
    gateway: Option<proxy::Gateway>,
    child: Option<tokio::process::Child>,
}

#[cfg(all(feature = "kiro", feature = "admin"))]
impl Proxied {
    async fn start(role: ChildRole, upstream: SocketAddr, pinned: bool) -> Result<Self, BoxError> {
        use tokio::io::AsyncBufReadExt as _;
        if pinned {
            let mut child = tokio::process::Command::new("taskset")
                .arg("-c")
                .arg("1")
                .arg(std::env::current_exe()?)
                .args(["--child", &role.arg(), "--upstream", &upstream.to_string()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stdout = child.stdout.take().ok_or("the child has no stdout")?;
            let mut line = String::new();
            tokio::io::BufReader::new(stdout)
                .read_line(&mut line)
                .await?;
            let addr = line
                .trim()
                .strip_prefix("listening ")
                .ok_or_else(|| format!("the child did not start: `{}`", line.trim()))?;
            return Ok(Proxied {
                url: format!("http://{addr}/v1/messages"),
                gateway: None,
                child: Some(child),
            });
        }
        let (addr, gateway) = start_role(role, upstream).await?;
        Ok(Proxied {
            url: format!("http://{addr}/v1/messages"),
            gateway,
            child: None,
        })
    }

    async fn stop(mut self) -> Result<(), BoxError> {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await?;
        }
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take()); // the child stops when its stdin closes
            child.wait().await?;
        }
        Ok(())
    }
}

#[cfg(all(feature = "kiro", feature = "admin"))]
async fn compare(args: &Args) -> Result<(), BoxError> {
    let cpus = std::thread::available_parallelism().map_or(0, |p| p.get());
    if args.pinned {
        if cpus < 2 {
            return Err(format!("--pinned needs two CPUs; this machine has {cpus}").into());
        }
        pin_self(0)?;
    }
    let upstream = instant_upstream().await?;
    let direct_url = format!("http://{upstream}/v1/messages");
    let (c, n) = (args.concurrency, args.requests);
    println!(
        "concurrency {c}, {n} requests per case in {} rounds, {cpus} CPUs{}",
        args.rounds,
        if args.pinned {
            "; pinned: load generator and upstream on CPU 0, proxies on CPU 1"
        } else {
            ""
        }
    );
    // Every proxy runs from the start; each case is warmed up (connections, allocator), then
    // measured in `--rounds` rounds that take turns (a, p, b, c, a, p, …), so that a machine
    // that slows down or speeds up during the comparison moves every case alike.
    let mut cases = vec![("(a) direct".to_owned(), direct_url, None)];
    for (label, role) in [
        ("(p) bare proxy, no pool", ChildRole::Bare),
        ("(b) gateway, 1 account", ChildRole::Gateway(1)),
        (
            "(c) gateway, 1,000 accounts, 500 cooling down",
            ChildRole::Gateway(1000),
        ),
    ] {
        let proxy = Proxied::start(role, upstream, args.pinned).await?;
        cases.push((label.to_owned(), proxy.url.clone(), Some(proxy)));
    }
    let rounds = args.rounds;
    let per_round = n.div_ceil(rounds);
    for (_, url, _) in &cases {
        run(url, c, n / 10 + 1).await?;
    }
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(); cases.len()];
    for round in 1..=rounds {
        for ((label, url, _), reports) in cases.iter().zip(&mut reports) {
            let report = run(url, c, per_round).await?;
            report.print(&format!("round {round}/{rounds} {label}"));
            reports.push(report);
        }
    }
    // (c)/(p) in each round: the rounds of one pair ran back to back, so their ratio is the
    // least moved by the machine's drift; the median of them cross-checks the overall one.
    let mut paired: Vec<f64> = reports[3]
        .iter()
        .zip(&reports[1])
        .map(|(many, floor)| many.throughput() / floor.throughput())
        .collect();
    paired.sort_by(f64::total_cmp);
    let mut merged: Vec<(String, Report)> = cases
        .iter()
        .zip(reports)
        .map(|((label, ..), reports)| (label.clone(), Report::merge(reports)))
        .collect();
    for (label, _, proxy) in cases {
        if let Some(proxy) = proxy {
            if label.starts_with("(c)") && args.soak > 0 {
                soak(&proxy, c, args.soak).await?;
            }
            proxy.stop().await?;
        }
    }
    let direct = merged.remove(0).1;
    let proxied: Vec<(&str, Report)> = merged
        .iter()
        .map(|(label, report)| (label.as_str(), report.clone()))
        .collect();
    let [(_, floor), _, (_, many)] = &proxied[..] else {
        unreachable!("three proxied cases")
    };

    println!("\n| case | req/s | p50 | p90 | p99 | max | non-2xx + errors |");
    println!("|---|---|---|---|---|---|---|");
    let cases = std::iter::once(("(a) direct to the upstream", &direct))
        .chain(proxied.iter().map(|(label, report)| (*label, report)));
    for (label, r) in cases {
        println!(
            "| {label} | {:.0} | {} | {} | {} | {} | {} |",
            r.throughput(),
            ms(r.percentile(50.0)),
            ms(r.percentile(90.0)),
            ms(r.percentile(99.0)),
            ms(r.percentile(100.0)),
            r.non_2xx + r.errors
        );
    }
    println!(
        "\n(p)/(a) throughput: {:.0} % (what one proxy hop leaves on this machine); (c)/(p): {:.0} %",
        floor.throughput() / direct.throughput() * 100.0,
        many.throughput() / floor.throughput() * 100.0,
    );
    println!(
        "(c)/(p) round by round: median {:.0} %, lowest {:.0} %, highest {:.0} % ({} rounds)",
        paired[paired.len() / 2] * 100.0,
        paired[0] * 100.0,
        paired[paired.len() - 1] * 100.0,
        paired.len(),
    );
    let ratio = many.throughput() / direct.throughput();
    let p99_gap = many.percentile(99.0).as_secs_f64() - direct.percentile(99.0).as_secs_f64();
    println!(
        "(c)/(a) throughput: {:.0} % (target ≥ 85 %: {}); p99 (c) − (a): {:.3} ms (target ≤ 1 ms: {})",
        ratio * 100.0,
        if ratio >= 0.85 { "met" } else { "NOT met" },
        p99_gap * 1000.0,
        if p99_gap <= 0.001 { "met" } else { "NOT met" },
    );
    Ok(())
}

/// `requests` more requests through (c), with resident memory every tenth: this process's, or
/// the gateway child's when pinned.
#[cfg(all(feature = "kiro", feature = "admin"))]
async fn soak(proxy: &Proxied, concurrency: usize, requests: usize) -> Result<(), BoxError> {
    let pid = proxy.child.as_ref().and_then(|child| child.id());
    let resident = || resident_kib(pid).unwrap_or(0);
    let step = (requests / 10).max(1);
    println!(
        "\nsoak: {requests} requests through (c), resident memory of the {} every {step}:",
        if pid.is_some() {
            "gateway process"
        } else {
            "whole process (loadgen included)"
        }
    );
    println!("  start: {} KiB", resident());
    let mut sent = 0;
    while sent < requests {
        let batch = step.min(requests - sent);
        let r = run(&proxy.url, concurrency, batch).await?;
        sent += batch;
        println!(
            "  after {sent}: {} KiB ({:.0} req/s, {} failed)",
            resident(),
            r.throughput(),
            r.non_2xx + r.errors
        );
    }
    Ok(())
}

#[cfg(not(all(feature = "kiro", feature = "admin")))]
async fn compare(_args: &Args) -> Result<(), BoxError> {
    Err("--compare runs the gateway in process: build with --features kiro,admin".into())
}

#[cfg(not(all(feature = "kiro", feature = "admin")))]
async fn serve_child(_role: ChildRole, _upstream: Option<&str>) -> Result<(), BoxError> {
    Err("--child runs the gateway: build with --features kiro,admin".into())
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}\nusage: loadgen --target URL [--concurrency C] [--requests N]\n       loadgen --compare [--pinned] [--concurrency C] [--requests N] [--rounds R] [--soak N]   (features kiro,admin)");
            std::process::exit(2);
        }
    };
    // Pinned, each process has one CPU: one worker thread, not two taking turns on it.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.pinned || args.child.is_some() {
        runtime.worker_threads(1);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(run_main(args));
}

async fn run_main(args: Args) {
    let result = if let Some(role) = args.child {
        serve_child(role, args.upstream.as_deref()).await
    } else if args.compare {
        compare(&args).await
    } else {
        let target = args.target.as_deref().unwrap_or_default();
        run(target, args.concurrency, args.requests)
            .await
            .map(|report| {
                report.print(target);
            })
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
