//! Every selection strategy, priority tiers, sticky sessions and exclusion.

use crate::support;

use std::time::Duration;

use support::{builder, picks, tally};
use tower_account_pool::credential::NoCredential;
use tower_account_pool::{
    select::Unavailable, Account, AccountId, Outcome, Pool, SelectRequest, Strategy,
};

#[test]
fn round_robin_visits_every_account_in_turn() {
    let pool = builder(4).build().unwrap();
    let order = picks(&pool, &SelectRequest::default(), 8);
    // Each window of four holds every account exactly once, in the same order.
    assert_eq!(order[..4], order[4..]);
    let mut first: Vec<_> = order[..4].to_vec();
    first.sort();
    assert_eq!(first, ["a0", "a1", "a2", "a3"]);
}

#[test]
fn round_robin_is_fair_across_a_run_of_unavailable_accounts() {
    let pool = builder(6).build().unwrap();
    for id in ["a1", "a2", "a3"] {
        pool.disable(id).unwrap();
    }
    let counts = tally(&pool, &SelectRequest::default(), 300);
    assert_eq!(counts.len(), 3);
    for id in ["a0", "a4", "a5"] {
        assert_eq!(counts[id], 100, "{counts:?}");
    }
}

#[test]
fn round_robin_is_fair_per_model() {
    // a0 does not serve "opus"; requests for the two models interleave.
    let pool = Pool::builder()
        .account(Account::new("a0", NoCredential).deny_models(["opus"]))
        .account(Account::new("a1", NoCredential))
        .account(Account::new("a2", NoCredential))
        .build()
        .unwrap();
    let mut opus = std::collections::BTreeMap::<String, usize>::new();
    let mut sonnet = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..300 {
        for (model, counts) in [("sonnet", &mut sonnet), ("opus", &mut opus)] {
            let lease = pool.select(&SelectRequest::for_model(model)).unwrap();
            *counts.entry(lease.id().to_string()).or_default() += 1;
            lease.report(Outcome::Success);
        }
    }
    assert_eq!(opus.get("a0"), None);
    assert_eq!(opus["a1"], 150, "{opus:?}");
    assert_eq!(opus["a2"], 150, "{opus:?}");
    for id in ["a0", "a1", "a2"] {
        assert_eq!(sonnet[id], 100, "{sonnet:?}");
    }
}

#[test]
fn model_allow_list_restricts_selection() {
    let pool = Pool::builder()
        .account(Account::new("haiku-only", NoCredential).allow_models(["haiku"]))
        .account(Account::new("any", NoCredential))
        .build()
        .unwrap();
    let counts = tally(&pool, &SelectRequest::for_model("sonnet"), 10);
    assert_eq!(counts["any"], 10);
    let err = pool
        .select(&SelectRequest::for_model("sonnet").excluding(&[AccountId::new("any")]))
        .unwrap_err();
    assert_eq!(err.count(Unavailable::ModelNotAllowed), 1);
    assert_eq!(err.count(Unavailable::Excluded), 1);
}

#[test]
fn least_recently_used_picks_the_account_idle_longest() {
    let pool = builder(3)
        .strategy(Strategy::LeastRecentlyUsed)
        .build()
        .unwrap();
    // Never-used accounts first, then strict rotation by last use.
    let order = picks(&pool, &SelectRequest::default(), 6);
    assert_eq!(order[..3], order[3..]);
    // Use a1 out of turn: it becomes the most recently used, so it is picked last.
    let excl = [AccountId::new("a0"), AccountId::new("a2")];
    let lease = pool
        .select(&SelectRequest::default().excluding(&excl))
        .unwrap();
    assert_eq!(lease.id().as_str(), "a1");
    lease.report(Outcome::Success);
    let next = picks(&pool, &SelectRequest::default(), 3);
    assert_eq!(next[2], "a1", "{next:?}");
}

#[test]
fn least_in_flight_prefers_the_idle_account() {
    let pool = builder(2)
        .strategy(Strategy::LeastInFlight)
        .build()
        .unwrap();
    let only_a0 = [AccountId::new("a1")];
    let held: Vec<_> = (0..3)
        .map(|_| {
            pool.select(&SelectRequest::default().excluding(&only_a0))
                .unwrap()
        })
        .collect();
    assert!(held.iter().all(|l| l.id().as_str() == "a0"));
    // With two accounts both are sampled: the idle one wins every time.
    for _ in 0..20 {
        let lease = pool.select(&SelectRequest::default()).unwrap();
        assert_eq!(lease.id().as_str(), "a1");
        lease.report(Outcome::Success);
    }
    drop(held);
    let snapshot = pool.snapshot();
    assert!(snapshot.accounts.iter().all(|a| a.in_flight == 0));
}

#[test]
fn least_in_flight_spreads_load_over_many_accounts() {
    let pool = builder(10)
        .strategy(Strategy::LeastInFlight)
        .build()
        .unwrap();
    // Hold 100 leases on 10 accounts, then release them; 200 rounds. The power of two choices
    // keeps the spread (most minus fewest in flight) near 2.6 on average; a random pick would
    // average about 9.6, and one round alone says little (the spread of two choices exceeds 3
    // in about 11 % of rounds), so the test reads the mean.
    let rounds = 200;
    let mut spreads = 0;
    for _ in 0..rounds {
        let held: Vec<_> = (0..100)
            .map(|_| pool.select(&SelectRequest::default()).unwrap())
            .collect();
        let snapshot = pool.snapshot();
        let max = snapshot.accounts.iter().map(|a| a.in_flight).max().unwrap();
        let min = snapshot.accounts.iter().map(|a| a.in_flight).min().unwrap();
        spreads += max - min;
        drop(held);
    }
    let mean = f64::from(spreads) / f64::from(rounds);
    assert!(
        mean < 4.0,
        "mean in-flight spread {mean:.2} over {rounds} rounds"
    );
    assert!(pool.snapshot().accounts.iter().all(|a| a.in_flight == 0));
}

#[test]
fn weighted_follows_weights_smoothly() {
    let pool = Pool::builder()
        .account(Account::new("heavy", NoCredential).weight(5))
        .account(Account::new("b", NoCredential))
        .account(Account::new("c", NoCredential))
        .strategy(Strategy::Weighted)
        .build()
        .unwrap();
    let order = picks(&pool, &SelectRequest::default(), 7);
    // Smooth weighted round-robin never runs the heavy account five times in a row.
    assert_eq!(
        order,
        ["heavy", "heavy", "b", "heavy", "c", "heavy", "heavy"]
    );
    let counts = tally(&pool, &SelectRequest::default(), 700);
    assert_eq!(counts["heavy"], 500);
    assert_eq!(counts["b"], 100);
    assert_eq!(counts["c"], 100);
}

#[test]
fn weighted_skips_unavailable_accounts() {
    let pool = Pool::builder()
        .account(Account::new("heavy", NoCredential).weight(5))
        .account(Account::new("b", NoCredential).weight(2))
        .strategy(Strategy::Weighted)
        .build()
        .unwrap();
    pool.disable("heavy").unwrap();
    let counts = tally(&pool, &SelectRequest::default(), 10);
    assert_eq!(counts["b"], 10);
}

#[test]
fn fill_first_uses_one_account_until_it_is_unavailable() {
    let pool = builder(3).strategy(Strategy::FillFirst).build().unwrap();
    assert_eq!(tally(&pool, &SelectRequest::default(), 10)["a0"], 10);
    let lease = pool.select(&SelectRequest::default()).unwrap();
    lease.report(Outcome::QuotaExhausted { reset_at: None });
    assert_eq!(tally(&pool, &SelectRequest::default(), 10)["a1"], 10);
}

#[test]
fn soonest_reset_spends_the_quota_renewed_first() {
    use std::time::SystemTime;
    let pool = builder(4).strategy(Strategy::SoonestReset).build().unwrap();
    let in_days = |days: u64| Some(SystemTime::now() + Duration::from_secs(days * 86_400));
    // a0's reset is unknown; a1 resets in 20 days, a2 in 3, a3 in 9.
    pool.set_quota_reset("a1", in_days(20)).unwrap();
    pool.set_quota_reset("a2", in_days(3)).unwrap();
    pool.set_quota_reset("a3", in_days(9)).unwrap();
    assert_eq!(
        pool.snapshot().account("a2").unwrap().quota_reset,
        in_days(3).map(|t| {
            // Kept to the millisecond.
            std::time::UNIX_EPOCH
                + Duration::from_millis(
                    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
                )
        })
    );
    assert_eq!(tally(&pool, &SelectRequest::default(), 10)["a2"], 10);
    // Out of quota: the next soonest reset takes over, then the next; unknown comes last.
    let take_out = |id: &str| {
        pool.report_probe(id, Outcome::QuotaExhausted { reset_at: None })
            .unwrap()
    };
    take_out("a2");
    assert_eq!(tally(&pool, &SelectRequest::default(), 10)["a3"], 10);
    take_out("a3");
    assert_eq!(tally(&pool, &SelectRequest::default(), 10)["a1"], 10);
    take_out("a1");
    assert_eq!(tally(&pool, &SelectRequest::default(), 10)["a0"], 10);
    // Forgetting a reset puts the account among the unknown; so does a reset that has passed
    // (it says nothing about the next one).
    pool.reset("a2").unwrap();
    pool.set_quota_reset("a2", None).unwrap();
    pool.reset("a1").unwrap();
    pool.set_quota_reset("a1", Some(SystemTime::now() - Duration::from_secs(60)))
        .unwrap();
    pool.disable("a1").unwrap();
    let counts = tally(&pool, &SelectRequest::default(), 10);
    assert_eq!((counts["a0"], counts["a2"]), (5, 5), "ties go round-robin");
    pool.enable("a1").unwrap();
    let counts = tally(&pool, &SelectRequest::default(), 30);
    assert_eq!(
        (counts["a0"], counts["a1"], counts["a2"]),
        (10, 10, 10),
        "a past reset is an unknown one"
    );
    assert!(matches!(
        pool.set_quota_reset("nope", None),
        Err(tower_account_pool::pool::PoolError::UnknownAccount(_))
    ));
}

#[test]
fn priority_tiers_spill_over_only_when_the_tier_above_is_unavailable() {
    let pool = Pool::builder()
        .account(Account::new("backup", NoCredential).priority(1))
        .account(Account::new("p1", NoCredential).priority(0))
        .account(Account::new("p2", NoCredential).priority(0))
        .build()
        .unwrap();
    let counts = tally(&pool, &SelectRequest::default(), 20);
    assert_eq!(counts.get("backup"), None);
    assert_eq!(counts["p1"], 10);
    pool.disable("p1").unwrap();
    let lease = pool.select(&SelectRequest::default()).unwrap();
    assert_eq!(lease.id().as_str(), "p2");
    lease.report(Outcome::Suspended);
    assert_eq!(tally(&pool, &SelectRequest::default(), 5)["backup"], 5);
    pool.enable("p1").unwrap();
    assert_eq!(tally(&pool, &SelectRequest::default(), 5)["p1"], 5);
}

#[test]
fn max_in_flight_caps_concurrent_leases() {
    let pool = Pool::builder()
        .account(Account::new("small", NoCredential).max_in_flight(2))
        .build()
        .unwrap();
    let first = pool.select(&SelectRequest::default()).unwrap();
    let second = pool.select(&SelectRequest::default()).unwrap();
    let err = pool.select(&SelectRequest::default()).unwrap_err();
    assert_eq!(err.count(Unavailable::AtCapacity), 1);
    assert!(!err.is_rate_limited());
    first.report(Outcome::Success);
    let third = pool.select(&SelectRequest::default()).unwrap();
    drop((second, third));
    assert_eq!(pool.snapshot().accounts[0].in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn sticky_sessions_pin_and_repin() {
    let pool = builder(4).build().unwrap();
    let conversation = SelectRequest::default().with_affinity_key("conversation-1");
    let pinned = picks(&pool, &conversation, 1)[0].clone();
    // Other traffic moves the round-robin cursor; the conversation stays put.
    for _ in 0..10 {
        picks(&pool, &SelectRequest::default(), 3);
        assert_eq!(picks(&pool, &conversation, 1)[0], pinned);
    }
    assert_eq!(pool.sticky_sessions(), 1);

    // Different keys spread over the pool.
    let spread: std::collections::BTreeSet<String> = (0..8)
        .map(|i| {
            let key = format!("conv-{i}");
            picks(&pool, &SelectRequest::default().with_affinity_key(&key), 1)[0].clone()
        })
        .collect();
    assert!(spread.len() >= 3, "{spread:?}");

    // The pinned account becomes unavailable: the key is re-pinned and stays on its new account.
    pool.disable(&pinned).unwrap();
    let repinned = picks(&pool, &conversation, 1)[0].clone();
    assert_ne!(repinned, pinned);
    pool.enable(&pinned).unwrap();
    for _ in 0..5 {
        assert_eq!(picks(&pool, &conversation, 1)[0], repinned);
    }
}

#[tokio::test(start_paused = true)]
async fn sticky_sessions_expire_after_their_ttl() {
    let pool = builder(3)
        .affinity_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    picks(&pool, &SelectRequest::default().with_affinity_key("k"), 1);
    assert_eq!(pool.sticky_sessions(), 1);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(pool.sticky_sessions(), 1);
    // Each use extends the pin.
    picks(&pool, &SelectRequest::default().with_affinity_key("k"), 1);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(pool.sticky_sessions(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(pool.sticky_sessions(), 0);
}

#[test]
fn default_affinity_ttl_is_one_hour() {
    assert_eq!(
        tower_account_pool::pool::DEFAULT_AFFINITY_TTL,
        Duration::from_secs(3600)
    );
}

#[test]
fn excluded_accounts_are_skipped_and_counted() {
    let pool = builder(3).build().unwrap();
    let tried = [AccountId::new("a0"), AccountId::new("a1")];
    for _ in 0..5 {
        let lease = pool
            .select(&SelectRequest::default().excluding(&tried))
            .unwrap();
        assert_eq!(lease.id().as_str(), "a2");
    }
    let all = [tried[0].clone(), tried[1].clone(), AccountId::new("a2")];
    let err = pool
        .select(&SelectRequest::default().excluding(&all))
        .unwrap_err();
    assert_eq!(err.count(Unavailable::Excluded), 3);
    assert_eq!(err.total(), 3);
}

#[test]
fn every_strategy_honours_the_eligibility_predicate() {
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastRecentlyUsed,
        Strategy::LeastInFlight,
        Strategy::Weighted,
        Strategy::FillFirst,
        Strategy::SoonestReset,
    ] {
        let pool = builder(5).strategy(strategy).build().unwrap();
        pool.disable("a0").unwrap();
        pool.disable("a3").unwrap();
        let counts = tally(&pool, &SelectRequest::default(), 60);
        assert!(
            !counts.contains_key("a0") && !counts.contains_key("a3"),
            "{strategy:?}: {counts:?}"
        );
        assert_eq!(counts.values().sum::<usize>(), 60);
    }
}
