//! The dashboard in a real browser: headless Chromium driven over the DevTools protocol.
//!
//! Starts a pool with the admin router on 127.0.0.1, loads the dashboard with the token (in the
//! URL fragment, which never reaches the server), checks the accounts and their states are
//! rendered, clicks "Disable" on one account and checks the pool saw it, and that a state change
//! made in the pool shows up live. Screenshots go to `target/admin-dashboard*.png`.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). Without it the test says it was skipped,
//! except under CI (`CI` set), where a missing browser is a failure.
#![cfg(all(feature = "admin", feature = "test-util"))]

use crate::admin_support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower_account_pool::admin::{self, AdminConfig};
use tower_account_pool::credential::BearerToken;
use tower_account_pool::{
    health::RateLimitScope, Account, HealthState, Outcome, Pool, SelectRequest,
};

use admin_support::ADMIN_TOKEN;

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 900;

fn chromium_binary() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    })
}

/// A headless Chromium and one page of it, over the DevTools protocol.
struct Browser {
    child: Child,
    profile: PathBuf,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: String,
}

impl Browser {
    async fn launch(binary: &PathBuf) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "tap-admin-chromium-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={WIDTH},{HEIGHT}"),
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // Chromium prints its DevTools address on stderr; keep draining stderr afterwards.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url.trim().to_owned());
                    }
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium printed its DevTools address");
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools WebSocket");
        let mut browser = Browser {
            child,
            profile,
            ws,
            next_id: 0,
            session: String::new(),
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.viewport(WIDTH, HEIGHT).await;
        browser
    }

    /// Sends a command (to the page once attached) and waits for its answer.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method} failed: {error}"),
        }
    }

    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"))
                .expect("DevTools connection open")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).unwrap();
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    return Err(error.clone());
                }
                return Ok(reply["result"].clone());
            }
        }
    }

    async fn viewport(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 }),
        )
        .await;
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        match self.try_eval(expression).await {
            Ok(value) => value,
            Err(error) => panic!("`{expression}` failed: {error}"),
        }
    }

    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self
            .try_call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Waits until `expression` is true in the page.
    async fn wait_for(&mut self, expression: &str, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            // Errors are expected while the page is still loading.
            if self.try_eval(expression).await == Ok(json!(true)) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.try_eval("document.body.innerText").await;
                panic!("timed out waiting for {what}; the page shows:\n{body:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A real mouse click at the centre of the element `selector` matches.
    async fn click(&mut self, selector: &str) {
        let point = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({selector:?}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return {{x: r.x + r.width / 2, y: r.y + r.height / 2}}; }})()"
            ))
            .await;
        assert!(point.is_object(), "nothing matches {selector}");
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": point["x"], "y": point["y"], "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = decode_base64(shot["data"].as_str().unwrap());
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

fn demo_pool() -> Pool {
    let pool = Pool::builder()
        .account(
            Account::new("kiro-main", BearerToken::new("sk-browser-test-main-0001"))
                .max_in_flight(4),
        )
        .account(Account::new(
            "kiro-second",
            BearerToken::new("sk-browser-test-second-0002"),
        ))
        .account(Account::new(
            "kiro-busy",
            BearerToken::new("sk-browser-test-busy-0003"),
        ))
        .account(Account::new(
            "kiro-quota",
            BearerToken::new("sk-browser-test-quota-0004"),
        ))
        .account(Account::new(
            "kiro-locked",
            BearerToken::new("sk-browser-test-locked-0005"),
        ))
        .account(
            Account::new("backup", BearerToken::new("sk-browser-test-backup-0006"))
                .priority(1)
                .enabled(false),
        )
        .build()
        .unwrap();
    for _ in 0..12 {
        let lease = pool.select(&SelectRequest::default()).unwrap();
        lease.report(Outcome::Success);
    }
    pool.report_probe(
        "kiro-busy",
        Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(95)),
            scope: RateLimitScope::Account,
        },
    )
    .unwrap();
    pool.report_probe(
        "kiro-quota",
        Outcome::QuotaExhausted {
            reset_at: Some(SystemTime::now() + Duration::from_secs(5 * 3600)),
        },
    )
    .unwrap();
    pool.report_probe("kiro-locked", Outcome::Suspended)
        .unwrap();
    pool
}

fn state_name(state: HealthState) -> String {
    serde_json::to_value(state)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let Some(binary) = chromium_binary() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed: .ci/run installs it with apt-get");
        }
        eprintln!("skipped: chromium is not installed (apt-get install chromium)");
        return;
    };

    let pool = demo_pool();
    let app = axum::Router::new().nest(
        "/admin",
        admin::router(pool.clone(), AdminConfig::new(ADMIN_TOKEN).unwrap()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut browser = Browser::launch(&binary).await;
    // Under a prefix, without a trailing slash: the page resolves its calls against itself.
    browser
        .call(
            "Page.navigate",
            json!({ "url": format!("http://{addr}/admin#token={ADMIN_TOKEN}") }),
        )
        .await;
    let rows = "document.querySelectorAll('tbody tr[data-id]').length";
    browser
        .wait_for(
            &format!("{rows} === 6"),
            Duration::from_secs(20),
            "six account rows",
        )
        .await;
    browser
        .wait_for(
            "document.getElementById('live').dataset.live === 'on'",
            Duration::from_secs(10),
            "the live event stream",
        )
        .await;

    // The token left the address bar; it stays in this tab's session storage only.
    assert_eq!(
        browser.eval("location.href").await,
        json!(format!("http://{addr}/admin"))
    );
    assert_eq!(
        browser
            .eval("sessionStorage.getItem('account-pool-admin-token')")
            .await,
        json!(ADMIN_TOKEN)
    );
    assert_eq!(browser.eval("localStorage.length").await, json!(0));

    // Every account is rendered with the state the pool reports, in priority order.
    let rendered = browser
        .eval(
            "[...document.querySelectorAll('tbody tr[data-id]')].map(r => [r.dataset.id, \
             r.querySelector('.chip').dataset.state, r.querySelector('.chip').textContent])",
        )
        .await;
    let snapshot = pool.snapshot();
    let expected: Vec<Value> = snapshot
        .accounts
        .iter()
        .map(|a| json!([a.id.as_str(), state_name(a.state)]))
        .collect();
    let got: Vec<Value> = rendered
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r[0], r[1]]))
        .collect();
    assert_eq!(got, expected);
    let labels: Vec<&str> = rendered
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[2].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "Healthy",
            "Healthy",
            "Rate limited",
            "Quota exhausted",
            "Suspended",
            "Disabled"
        ]
    );
    let text = browser.eval("document.body.innerText").await;
    let text = text.as_str().unwrap();
    assert!(
        text.contains("rate limited for 1.6m"),
        "reasons shown:\n{text}"
    );
    assert!(text.contains("••••0001"), "masked credentials shown");
    assert!(!text.contains("sk-browser-test"), "no secret on the page");
    browser.screenshot("admin-dashboard.png").await;

    // Disable one account with a real click; the pool sees it.
    browser
        .click("tr[data-id='kiro-second'] button[data-action='disable']")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.snapshot().account("kiro-second").unwrap().state != HealthState::Disabled {
        assert!(Instant::now() < deadline, "the pool never saw the click");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !pool
            .snapshot()
            .account("kiro-second")
            .unwrap()
            .settings
            .enabled
    );
    browser
        .wait_for(
            "document.querySelector(\"tr[data-id='kiro-second'] .chip\").dataset.state === 'disabled' \
             && !!document.querySelector(\"tr[data-id='kiro-second'] button[data-action='enable']\")",
            Duration::from_secs(10),
            "the row to show the account disabled",
        )
        .await;

    // A change made in the pool arrives through /events (the page counts the events it got).
    let events = "Number(document.getElementById('live').dataset.events || 0)";
    let before = browser.eval(events).await.as_u64().unwrap();
    pool.report_probe("kiro-main", Outcome::AuthInvalid)
        .unwrap();
    let updated = format!(
        "{events} > {before} && document.querySelector(\"tr[data-id='kiro-main'] .chip\").dataset.state === 'authInvalid'"
    );
    browser
        .wait_for(
            &updated,
            Duration::from_secs(10),
            "the live update of kiro-main",
        )
        .await;
    let after = browser
        .screenshot("admin-dashboard-after-disable.png")
        .await;

    browser
        .call(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
        )
        .await;
    browser.screenshot("admin-dashboard-dark.png").await;
    browser.viewport(420, 900).await;
    browser.screenshot("admin-dashboard-narrow.png").await;

    // Signing out forgets the token; the login form takes it again (a wrong one first).
    browser.viewport(WIDTH, HEIGHT).await;
    browser.click("#signout").await;
    browser
        .wait_for(
            "document.getElementById('login').classList.contains('open') \
             && sessionStorage.getItem('account-pool-admin-token') === null",
            Duration::from_secs(5),
            "the login form",
        )
        .await;
    browser.click("#token").await;
    browser
        .call(
            "Input.insertText",
            json!({ "text": "not-the-admin-token-000" }),
        )
        .await;
    browser.click("#login-form button[type='submit']").await;
    browser
        .wait_for(
            "document.getElementById('login-error').textContent === 'The admin token was rejected.'",
            Duration::from_secs(5),
            "the rejection message",
        )
        .await;
    browser.screenshot("admin-dashboard-login.png").await;
    browser.click("#token").await;
    browser
        .call("Input.insertText", json!({ "text": ADMIN_TOKEN }))
        .await;
    browser.click("#login-form button[type='submit']").await;
    browser
        .wait_for(
            "!document.getElementById('login').classList.contains('open') \
             && document.querySelectorAll('tbody tr[data-id]').length === 6",
            Duration::from_secs(10),
            "the accounts after signing in",
        )
        .await;

    eprintln!("screenshots in {}", after.parent().unwrap().display());
    drop(browser);
    server.abort();
}
