//! Files the user owns are never damaged (issue 11, points 8 and 9): the JSON store never
//! writes a pool file the loader rejects (it waits, logs once, and writes again once the file
//! loads), keeps the exact text of what the pool does not own, and each distinct warning about
//! a file is logged once.

use crate::support;

use std::path::Path;
use std::time::Duration;

use support::CapturedLogs;
use tower_account_pool::config::{FileWatcher, PoolBuilderExt};
use tower_account_pool::store::{JsonFileStore, StoreHandle, WriterConfig};
use tower_account_pool::{Outcome, Pool, SelectRequest};

const GOOD: &str = r#"{"accounts": [
  {"uuid": "a", "bearerToken": "token-a"},
  {"uuid": "b", "bearerToken": "token-b"}
]}"#;

fn fast() -> WriterConfig {
    WriterConfig::default()
        .interval(Duration::from_millis(20))
        .coalesce(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(40))
}

fn serve(pool: &Pool, n: usize) {
    for _ in 0..n {
        pool.select(&SelectRequest::default())
            .unwrap()
            .report(Outcome::Success);
    }
}

/// Replaces the file at once (as an editor saving it does), so the store never reads half of it.
fn replace(path: &Path, text: &str) {
    let temp = path.with_extension("tmp-edit");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Every content the loader refuses: the store leaves it alone and says so once.
#[tokio::test]
async fn a_file_the_loader_rejects_is_never_written_and_is_written_again_once_fixed() {
    let rejected = [
        (
            "duplicate id",
            r#"{"accounts": [{"uuid": "a", "bearerToken": "token-a"}, {"uuid": "a", "bearerToken": "token-b"}]}"#,
        ),
        (
            "key with a newline",
            r#"{"accounts": [{"uuid": "a", "apiKey": "key\nwith-newline"}, {"uuid": "b", "bearerToken": "token-b"}]}"#,
        ),
        (
            "negative weight",
            r#"{"accounts": [{"uuid": "a", "bearerToken": "token-a", "weight": -1}, {"uuid": "b", "bearerToken": "token-b"}]}"#,
        ),
        ("empty pool", r#"{"accounts": []}"#),
    ];
    for (what, bad) in rejected {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("account_pool.json");
        std::fs::write(&path, GOOD).unwrap();
        let logs = CapturedLogs::default();
        let _guard = logs.start(tracing::Level::INFO);
        let pool = Pool::builder().build_from_file(&path).unwrap();
        let handle = StoreHandle::start_with(&pool, JsonFileStore::open(&path).unwrap(), fast())
            .await
            .unwrap();
        replace(&path, bad);
        serve(&pool, 4);
        // Many retry intervals.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            bad,
            "{what}: written"
        );
        assert!(handle.flush().await.is_err(), "{what}");
        let text = logs.text();
        assert_eq!(
            count(&text, "store write failed"),
            1,
            "{what}: logged once\n{text}"
        );
        assert!(
            text.contains("it does not load as a pool file") || text.contains("lists no accounts"),
            "{what}: {text}"
        );

        // Fixed: written again.
        replace(&path, GOOD);
        handle.flush().await.unwrap();
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let successes: u64 = saved["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["usageCount"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(successes, 4, "{what}: {saved}");
        handle.shutdown().await.unwrap();
    }
}

/// Fields the pool does not own keep their exact text: numbers of any size, key order,
/// duplicate keys.
#[tokio::test]
async fn fields_the_pool_does_not_own_keep_their_exact_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("account_pool.json");
    let text = r#"{
  "zFirst": 12345678901234567890123,
  "accounts": [
    {
      "uuid": "a",
      "bearerToken": "token-a",
      "big": 12345678901234567890123,
      "precise": 0.10000000000000000000001,
      "nested": {"z": 1, "a": 2, "z": 3},
      "yLast": "x"
    },
    {"uuid": "b", "bearerToken": "token-b", "untouched": 1.50e300}
  ],
  "aLast": [1, 2]
}
"#;
    std::fs::write(&path, text).unwrap();
    let pool = Pool::builder().build_from_file(&path).unwrap();
    let handle = StoreHandle::start(&pool, JsonFileStore::open(&path).unwrap())
        .await
        .unwrap();
    serve(&pool, 4);
    handle.shutdown().await.unwrap();
    let saved = std::fs::read_to_string(&path).unwrap();
    for kept in [
        "\"zFirst\": 12345678901234567890123",
        "\"big\": 12345678901234567890123",
        "\"precise\": 0.10000000000000000000001",
        "\"nested\": {\"z\": 1, \"a\": 2, \"z\": 3}",
        "\"aLast\": [1, 2]",
        "\"untouched\": 1.50e300",
    ] {
        assert!(saved.contains(kept), "{kept} lost:\n{saved}");
    }
    let order = |needle: &str| saved.find(needle).unwrap();
    assert!(order("zFirst") < order("\"accounts\"") && order("\"accounts\"") < order("aLast"));
    assert!(order("\"big\"") < order("\"yLast\""), "{saved}");
    // The file still loads, with the state written.
    let again = Pool::builder().build_from_file(&path).unwrap();
    assert_eq!(
        again
            .snapshot()
            .accounts
            .iter()
            .map(|a| a.counters.successes)
            .sum::<u64>(),
        4
    );
}

fn grouped_with_comment(path: &Path) {
    std::fs::write(
        path,
        r#"{"claude-kiro-oauth": [{"uuid": "a", "bearerToken": "token-a"}], "_comment": "x"}"#,
    )
    .unwrap();
}

/// Each store write makes the watch reload the file; its warnings are logged once.
#[tokio::test]
async fn warnings_about_a_file_are_logged_once_not_on_every_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provider_pools.json");
    grouped_with_comment(&path);
    let logs = CapturedLogs::default();
    let _guard = logs.start(tracing::Level::INFO);
    let pool = Pool::builder().build_from_file(&path).unwrap();
    let handle = StoreHandle::start_with(&pool, JsonFileStore::open(&path).unwrap(), fast())
        .await
        .unwrap();
    let watch = FileWatcher::new(&pool, &path)
        .interval(Duration::from_millis(10))
        .start();
    for _ in 0..8 {
        serve(&pool, 1);
        handle.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        watch.check_now();
    }
    assert!(watch.status().changes_seen >= 4, "{:?}", watch.status());
    let text = logs.text();
    assert_eq!(
        count(&text, "top-level keys not loaded as accounts"),
        1,
        "{text}"
    );
    assert_eq!(count(&text, "convert it to"), 1, "{text}");

    // A rejected edit: the same rejection, read again after each touch, is logged once.
    for spaces in 0..4 {
        std::fs::write(
            &path,
            format!(
                r#"{{"claude-kiro-oauth": [{{"uuid": "a"}},{}{{"uuid": "a"}}]}}"#,
                " ".repeat(spaces)
            ),
        )
        .unwrap();
        watch.check_now();
    }
    let text = logs.text();
    assert_eq!(count(&text, "repeats uuid"), 1, "{text}");
    handle.shutdown().await.unwrap();
}
