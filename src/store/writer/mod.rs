//! The background writer that keeps a pool's runtime state in a [`Store`]: its configuration
//! ([`WriterConfig`]), what it has done ([`WriterStats`]) and its handle ([`StoreHandle`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::codec::counters_to_array;
use super::{merge, Store, StoreError, StoredAccount};
use crate::account::AccountId;
use crate::health::{HealthState, OutcomeClass};
use crate::pool::{PersistedState, Pool, StoreFailure};

mod remote;
mod task;
mod tracked;

use remote::join_remote;
use task::Writer;
use tracked::{has_local_events, Tracked};

/// How the background writer batches and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterConfig {
    /// Every account that changed is written at least this often (the max-wait). Default 500 ms.
    pub interval: Duration,
    /// A state change is written this soon after it happens (changes within it share one
    /// write). Default 20 ms.
    pub coalesce: Duration,
    /// At most this many accounts per [`Store::write`]. Default 256.
    pub max_batch: usize,
    /// How often shared stores are asked for other processes' changes. Default 200 ms.
    pub sync_interval: Duration,
    /// How often [`Store::maintain`] runs (first run at start). Default 1 h.
    pub maintenance_interval: Duration,
    /// Longest wait between retries of a failing store. Default 5 s.
    pub max_backoff: Duration,
    /// Attempts of the final flush at shutdown. Default 3.
    pub shutdown_attempts: u32,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            interval: Duration::from_millis(500),
            coalesce: Duration::from_millis(20),
            max_batch: 256,
            sync_interval: Duration::from_millis(200),
            maintenance_interval: Duration::from_secs(60 * 60),
            max_backoff: Duration::from_secs(5),
            shutdown_attempts: 3,
        }
    }
}

impl WriterConfig {
    /// Sets [`interval`](Self::interval).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets [`coalesce`](Self::coalesce).
    pub fn coalesce(mut self, coalesce: Duration) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// Sets [`shutdown_attempts`](Self::shutdown_attempts) (at least 1).
    pub fn shutdown_attempts(mut self, attempts: u32) -> Self {
        self.shutdown_attempts = attempts.max(1);
        self
    }

    /// Sets [`max_batch`](Self::max_batch) (at least 1).
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Sets [`sync_interval`](Self::sync_interval).
    pub fn sync_interval(mut self, sync_interval: Duration) -> Self {
        self.sync_interval = sync_interval;
        self
    }

    /// Sets [`maintenance_interval`](Self::maintenance_interval).
    pub fn maintenance_interval(mut self, maintenance_interval: Duration) -> Self {
        self.maintenance_interval = maintenance_interval;
        self
    }

    /// Sets [`max_backoff`](Self::max_backoff).
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }
}

/// What the writer has done so far, from [`StoreHandle::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Successful [`Store::write`] calls.
    pub writes: u64,
    /// Account records written.
    pub accounts_written: u64,
    /// Failed writes (each was retried).
    pub failures: u64,
    /// State changes from other processes applied here.
    pub remote_changes: u64,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
}

enum Command {
    Wake,
    Flush(oneshot::Sender<Result<(), StoreError>>),
    Sync(oneshot::Sender<Result<(), StoreError>>),
}

/// The running writer of one pool into one store. Dropping it stops the writer after a final
/// flush in the background; call [`shutdown`](Self::shutdown) to wait for that flush.
#[derive(Debug)]
pub struct StoreHandle {
    commands: mpsc::Sender<Command>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StoreError>>>,
    stats: Arc<Mutex<WriterStats>>,
}

impl StoreHandle {
    /// Restores the pool's accounts from `store`, then starts writing their changes to it with
    /// the default [`WriterConfig`]. Must be called inside a tokio runtime.
    pub async fn start<S: Store>(pool: &Pool, store: S) -> Result<StoreHandle, StoreError> {
        StoreHandle::start_with(pool, store, WriterConfig::default()).await
    }

    /// [`start`](Self::start) with a configuration.
    pub async fn start_with<S: Store>(
        pool: &Pool,
        store: S,
        config: WriterConfig,
    ) -> Result<StoreHandle, StoreError> {
        let loaded = store.load().await?;
        let mut writer = Writer {
            pool: pool.clone(),
            store,
            config,
            tracked: HashMap::new(),
            stats: Arc::new(Mutex::new(WriterStats::default())),
            logged_error: None,
        };
        let accounts = pool.accounts();
        let mut stored: HashMap<AccountId, StoredAccount> =
            loaded.into_iter().map(|a| (a.id.clone(), a)).collect();
        for slot in &accounts {
            let Some(saved) = stored.remove(slot.id()) else {
                // Not in the store: written once in full, every change since it was built
                // included.
                let mut tracked = Tracked::observe(slot);
                tracked.fresh = true;
                writer.tracked.insert(slot.id().clone(), tracked);
                continue;
            };
            // Restoring is not a change: what the store holds is applied here and not written
            // back. Changes made in this process before the start (an operator's disable, a
            // cooldown) are kept, merged with it, and written.
            let local_events = has_local_events(slot);
            let before = Tracked::observe(slot);
            // Requests counted here before the start (beyond what a pool file seeded) are
            // increments on the stored totals.
            let restored = slot.runtime().lock_details().restored_outcomes;
            let local_counts: Vec<u64> = OutcomeClass::ALL
                .iter()
                .map(|&class| {
                    slot.runtime().outcomes[class as usize]
                        .load(Ordering::Relaxed)
                        .saturating_sub(restored[class as usize])
                })
                .collect();
            if local_events {
                join_remote(pool, slot, &saved.state);
            } else {
                if let Err(e) = pool.restore_state(saved.id.as_str(), &saved.state) {
                    tracing::warn!(account = %saved.id, error = %e, "could not restore the stored state");
                    continue;
                }
                join_remote(
                    pool,
                    slot,
                    &PersistedState {
                        model_cooldowns: Vec::new(),
                        state: HealthState::Healthy,
                        ..saved.state.clone()
                    },
                );
            }
            let slot = pool
                .account(slot.id().as_str())
                .unwrap_or_else(|_| slot.clone());
            for (&class, local) in OutcomeClass::ALL.iter().zip(&local_counts) {
                slot.runtime().outcomes[class as usize].store(
                    saved.state.counters.outcome(class).saturating_add(*local),
                    Ordering::Relaxed,
                );
            }
            let mut tracked = Tracked::observe(&slot);
            // The stored totals: what was counted here before the start is written as an
            // increment at the first flush.
            tracked.baseline = counters_to_array(&saved.state.counters);
            if local_events {
                // Written at the first flush (merged with the store's state there).
                tracked.generation = before.generation.wrapping_sub(1);
                tracked.model_epoch = before.model_epoch.wrapping_sub(1);
                tracked.enabled_ms = merge::ms(&saved.state.enabled_at);
            }
            writer.tracked.insert(saved.id.clone(), tracked);
        }
        drop(accounts);
        let (commands, receiver) = mpsc::channel(16);
        let (stop, stopped) = oneshot::channel();
        let mut events = pool.subscribe();
        let wake = commands.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if wake.try_send(Command::Wake).is_err() && wake.is_closed() {
                            return;
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        // `Pool::shutdown` flushes through a weak sender: the pool never keeps a writer alive.
        let flush_commands = commands.downgrade();
        let name = writer.store.name();
        pool.add_flusher(Box::new(move || {
            let commands = flush_commands.upgrade();
            Box::pin(async move {
                let Some(commands) = commands else {
                    return Ok(()); // stopped, after its final flush
                };
                let (reply, answer) = oneshot::channel();
                if commands.send(Command::Flush(reply)).await.is_err() {
                    return Ok(());
                }
                answer
                    .await
                    .unwrap_or(Ok(()))
                    .map_err(|e| StoreFailure::new(name, e))
            })
        }));
        let stats = writer.stats.clone();
        let task = tokio::spawn(writer.run(receiver, stopped));
        Ok(StoreHandle {
            commands,
            stop: Some(stop),
            task: Some(task),
            stats,
        })
    }

    /// Writes everything that changed now, and waits for the write.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.ask(Command::Flush).await
    }

    /// Applies the changes other processes wrote to a shared store now, and waits for that
    /// (it otherwise happens every [`WriterConfig::sync_interval`]).
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.ask(Command::Sync).await
    }

    /// Sends the writer a command that answers when done, and waits for the answer.
    async fn ask(
        &self,
        command: fn(oneshot::Sender<Result<(), StoreError>>) -> Command,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| StoreError::stopped())?;
        answer.await.map_err(|_| StoreError::stopped())?
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> WriterStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the writer after a final flush (retried up to
    /// [`WriterConfig::shutdown_attempts`] times) and returns its result.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|_| StoreError::stopped())?,
            None => Ok(()),
        }
    }
}

impl Drop for StoreHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
