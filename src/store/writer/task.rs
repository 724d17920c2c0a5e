//! The writer task: writes what changed on its schedule (or when asked), retries a failing
//! store with backoff, applies other processes' changes, and flushes once more when stopped.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::remote::{join_remote, missing_from};
use super::tracked::{read_counters, Tracked};
use super::{Command, WriterConfig, WriterStats};
use crate::account::AccountId;
use crate::pool::{AccountHandle, Counters, Pool};
use crate::store::codec::{counters_from_array, counters_to_array, CounterArray};
use crate::store::{AccountWrite, CredentialConfig, Store, StoreError};

struct Pending {
    write: AccountWrite,
    counters: CounterArray,
    generation: u64,
    failures: u32,
    ejection_level: u32,
    model_epoch: u64,
    enabled_ms: u64,
}

pub(super) struct Writer<S> {
    pub(super) pool: Pool,
    pub(super) store: S,
    pub(super) config: WriterConfig,
    pub(super) tracked: HashMap<AccountId, Tracked>,
    pub(super) stats: Arc<Mutex<WriterStats>>,
    /// The last write error logged (each distinct one is logged once).
    pub(super) logged_error: Option<String>,
}

impl<S: Store> Writer<S> {
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<(), StoreError> {
        let config = self.config.clone();
        let start = Instant::now();
        let mut next_flush = start + config.interval;
        let mut next_sync = start + config.sync_interval;
        let mut next_maintenance = start;
        let mut failures: u32 = 0;
        let mut retry_at = start;
        loop {
            let deadline = next_flush.min(next_sync).min(next_maintenance);
            let command = tokio::time::timeout_at(deadline, async {
                // Wait for a command or the stop signal, whichever comes first.
                let mut stop = std::pin::Pin::new(&mut stop);
                std::future::poll_fn(|cx| {
                    use std::task::Poll;
                    if stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    match commands.poll_recv(cx) {
                        Poll::Ready(Some(command)) => Poll::Ready(Some(command)),
                        Poll::Ready(None) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await
            })
            .await;
            let now = Instant::now();
            match command {
                Ok(None) => break,
                Ok(Some(Command::Wake)) => {
                    next_flush = next_flush.min((now + config.coalesce).max(retry_at));
                    continue;
                }
                Ok(Some(Command::Flush(reply))) => {
                    let result = self.flush().await;
                    self.record(&result);
                    let _ = reply.send(result);
                    continue;
                }
                Ok(Some(Command::Sync(reply))) => {
                    let result = self.sync().await;
                    let _ = reply.send(result);
                    continue;
                }
                Err(_elapsed) => {}
            }
            if now >= next_maintenance {
                if let Err(e) = self.store.maintain().await {
                    tracing::warn!(store = self.store.name(), error = %e, "store maintenance failed");
                }
                next_maintenance = now + config.maintenance_interval;
            }
            if now >= next_sync {
                if let Err(e) = self.sync().await {
                    tracing::debug!(store = self.store.name(), error = %e, "polling the store for changes failed");
                }
                next_sync = Instant::now() + config.sync_interval;
            }
            if now >= next_flush {
                let result = self.flush().await;
                self.record(&result);
                match result {
                    Ok(()) => {
                        if failures > 0 {
                            tracing::info!(store = self.store.name(), "store writes work again");
                        }
                        failures = 0;
                        self.logged_error = None;
                        next_flush = Instant::now() + config.interval;
                    }
                    Err(e) => {
                        failures += 1;
                        let backoff = config
                            .interval
                            .saturating_mul(1 << failures.min(10))
                            .min(config.max_backoff)
                            .max(config.interval);
                        // Each distinct error is logged once (a file waiting to be fixed
                        // would otherwise log on every retry).
                        let message = e.to_string();
                        if self.logged_error.as_deref() != Some(message.as_str()) {
                            tracing::warn!(
                                store = self.store.name(), error = %e, attempt = failures,
                                retry_in_ms = backoff.as_millis() as u64,
                                "store write failed; the changes are kept and retried"
                            );
                            self.logged_error = Some(message);
                        }
                        retry_at = Instant::now() + backoff;
                        next_flush = retry_at;
                    }
                }
            }
        }
        // Final flush.
        let mut last = Ok(());
        for attempt in 0..config.shutdown_attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(config.interval.min(Duration::from_millis(200))).await;
            }
            last = self.flush().await;
            self.record(&last);
            if last.is_ok() {
                break;
            }
        }
        if let Err(e) = &last {
            tracing::error!(store = self.store.name(), error = %e, "final flush failed; recent state changes are lost");
        }
        last
    }

    fn record(&self, result: &Result<(), StoreError>) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => stats.last_error = None,
            Err(e) => {
                stats.failures += 1;
                stats.last_error = Some(e.to_string());
            }
        }
    }

    /// Writes every account that changed since its last successful write.
    async fn flush(&mut self) -> Result<(), StoreError> {
        let now = self.pool.health().clock.now_ms();
        let mut pending = Vec::new();
        let accounts = self.pool.accounts();
        for slot in &accounts {
            let tracked = self.tracked.entry(slot.id().clone()).or_insert_with(|| {
                // Added since the start: unknown to the store until written.
                let mut t = Tracked::observe(slot);
                t.fresh = true;
                t
            });
            let rt = &slot.runtime();
            let generation = rt.generation.load(Ordering::Acquire);
            let failures = rt.consecutive_failures.load(Ordering::Acquire);
            let ejection_level = rt.ejection_level.load(Ordering::Acquire);
            let model_epoch = rt.model_epoch.load(Ordering::Acquire);
            let enabled_ms = rt.lock_details().enabled_ms;
            let fresh = tracked.fresh;
            let state_changed = tracked.state_changed(slot) || fresh;
            let models_changed = tracked.models_changed(slot) || fresh;
            let enabled_changed = tracked.enabled_ms != enabled_ms;
            let settings_changed = tracked.settings != *slot.settings() || fresh;
            let counters = read_counters(rt);
            if !state_changed
                && !models_changed
                && !enabled_changed
                && !settings_changed
                && counters == tracked.baseline
            {
                continue;
            }
            let delta: CounterArray =
                std::array::from_fn(|i| counters[i].saturating_sub(tracked.baseline[i]));
            let mut state = self.pool.persisted(slot, now);
            state.counters = counters_from_array(&counters);
            pending.push(Pending {
                write: AccountWrite {
                    id: slot.id().clone(),
                    state,
                    state_changed,
                    models_changed,
                    delta: counters_from_array(&delta),
                    enabled: slot.settings().enabled,
                    enabled_changed,
                    settings: settings_changed.then(|| slot.settings().clone()),
                    // The credential of an account new to the store; an existing row keeps
                    // the one it names.
                    credential: fresh
                        .then(|| CredentialConfig::of(slot.credential()))
                        .flatten(),
                },
                counters,
                generation,
                failures,
                ejection_level,
                model_epoch,
                enabled_ms,
            });
        }
        // Accounts no longer in the pool: forgotten, so that one added again is new again.
        self.tracked
            .retain(|id, _| accounts.iter().any(|a| a.id() == id));
        for chunk in pending.chunks(self.config.max_batch.max(1)) {
            let batch: Vec<AccountWrite> = chunk.iter().map(|p| p.write.clone()).collect();
            let totals = self.store.write(batch).await?;
            for p in chunk {
                if let Some(tracked) = self.tracked.get_mut(&p.write.id) {
                    tracked.baseline = p.counters;
                    tracked.generation = p.generation;
                    tracked.failures = p.failures;
                    tracked.ejection_level = p.ejection_level;
                    tracked.model_epoch = p.model_epoch;
                    tracked.enabled_ms = p.enabled_ms;
                    if let Some(settings) = &p.write.settings {
                        tracked.settings = settings.clone();
                    }
                    tracked.fresh = false;
                }
            }
            for (id, totals) in totals {
                if let Some(slot) = accounts.iter().find(|a| *a.id() == id) {
                    self.fold(slot, &totals);
                }
            }
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.writes += 1;
            stats.accounts_written += chunk.len() as u64;
        }
        Ok(())
    }

    /// Adds other processes' increments (the store's totals minus what this process knows to
    /// be there) to the local counters.
    fn fold(&mut self, slot: &AccountHandle, totals: &Counters) {
        let Some(tracked) = self.tracked.get_mut(slot.id()) else {
            return;
        };
        let totals = counters_to_array(totals);
        for (i, (&total, known)) in totals.iter().zip(tracked.baseline.iter_mut()).enumerate() {
            if total > *known {
                // `requests` follows from the outcomes folded in beside it.
                if i > 0 {
                    slot.runtime().outcomes[i - 1].fetch_add(total - *known, Ordering::Relaxed);
                }
                *known = total;
            }
        }
    }

    /// Applies other processes' changes.
    async fn sync(&mut self) -> Result<(), StoreError> {
        let accounts = self.pool.accounts();
        let ids = accounts.iter().map(|a| a.id().clone()).collect();
        let changes = self.store.poll_changes(ids).await?;
        let mut applied = 0;
        for change in changes {
            let Some(slot) = accounts.iter().find(|a| *a.id() == change.id).cloned() else {
                continue;
            };
            self.fold(&slot, &change.state.counters);
            let Some(tracked) = self.tracked.get(slot.id()) else {
                continue;
            };
            // A local change still to be written stays pending (and is merged when written).
            let pending = tracked.pending(&slot);
            if join_remote(&self.pool, &slot, &change.state) {
                applied += 1;
            }
            let slot = self.pool.account(slot.id().as_str()).unwrap_or(slot);
            let (state_missing, models_missing) = missing_from(&self.pool, &slot, &change.state);
            if let Some(tracked) = self.tracked.get_mut(slot.id()) {
                if !pending {
                    tracked.resync(&slot);
                }
                // A cooldown this process holds that the store does not (it lost to one that
                // a probe ended since, say): written again, so that every process has it.
                if state_missing {
                    tracked.generation = tracked.generation.wrapping_sub(1);
                }
                if models_missing {
                    tracked.model_epoch = tracked.model_epoch.wrapping_sub(1);
                }
            }
        }
        if applied > 0 {
            self.stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remote_changes += applied;
        }
        Ok(())
    }
}
