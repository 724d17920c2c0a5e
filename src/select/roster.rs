//! The roster selection owns: the accounts as [`Slot`]s in priority tiers, their [`Gate`]s,
//! the per-model round-robin [`Cursor`]s ([`Models`]) and the sticky-session pins ([`Sticky`]).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use super::Selector;
use crate::account::{AccountId, AccountSettings};
use crate::credential::SharedCredential;
use crate::health::{Member, Runtime};

/// How many distinct model names get their own round-robin cursor.
const MAX_INTERNED_MODELS: usize = 64;

const STICKY_SHARDS: usize = 64;

/// slot); the runtime state is shared across such swaps.
///
/// Selection checks an account through the roster's copy of its [`Gate`]; the slot is read for
/// the account picked, whose lease holds it. What a lease reads comes first (`repr(C)` keeps
/// the order), next to the reference count the lease bumps.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Slot {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) id: AccountId,
    pub(crate) credential: SharedCredential,
    pub(crate) settings: AccountSettings,
    /// The selection engine, reached only off the fast path (leases hold slots, not the
    /// pool, so the pool-wide reference count is never touched per request).
    pub(crate) selector: Weak<Selector>,
    pub(crate) models: Arc<Models>,
}

impl crate::account::AccountRecord for Slot {
    fn id(&self) -> &AccountId {
        &self.id
    }

    fn credential(&self) -> &SharedCredential {
        &self.credential
    }
}

impl Slot {
    pub(crate) fn new(
        id: AccountId,
        credential: SharedCredential,
        settings: AccountSettings,
        runtime: Arc<Runtime>,
        selector: Weak<Selector>,
        models: Arc<Models>,
    ) -> Arc<Slot> {
        Arc::new(Slot {
            runtime,
            id,
            credential,
            settings,
            selector,
            models,
        })
    }

    /// The account as the health machine acts on it.
    pub(crate) fn member(&self) -> Member<'_> {
        Member {
            runtime: &self.runtime,
            credential: &self.credential,
        }
    }
}

/// What selection reads of an account to decide whether it may take a request, copied out of
/// its [`Slot`] into the roster's contiguous `gates` (16 bytes each).
///
/// A round-robin visit then reads memory that is already streaming into cache (the gates, in
/// order) and the account's runtime state, whose address is right there: one cache miss at a
/// large pool's scale, where going through the slot to reach the runtime made two dependent
/// ones. The slot itself is only touched for the account that is picked (and for model rules).
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) runtime: Arc<Runtime>,
    /// `settings.max_in_flight`, `u32::MAX` when unlimited (a limit of 0 is refused).
    pub(crate) max_in_flight: u32,
    /// `settings.enabled`.
    pub(crate) enabled: bool,
    /// Whether the settings restrict models at all (else no model check is needed).
    pub(crate) model_rules: bool,
}

impl Gate {
    fn of(slot: &Slot) -> Gate {
        Gate {
            runtime: slot.runtime.clone(),
            max_in_flight: slot.settings.max_in_flight.unwrap_or(u32::MAX),
            enabled: slot.settings.enabled,
            model_rules: slot.settings.restricts_models(),
        }
    }
}

/// The atomically swapped list of accounts, ordered by priority tier.
#[derive(Debug, Default)]
pub(crate) struct Roster {
    pub(crate) slots: Vec<Arc<Slot>>,
    /// `gates[i]` is what selection checks of `slots[i]`.
    pub(crate) gates: Vec<Gate>,
    pub(crate) tiers: Vec<Range<usize>>,
    pub(crate) index: HashMap<AccountId, usize>,
}

impl Roster {
    pub(crate) fn new(mut slots: Vec<Arc<Slot>>) -> Roster {
        slots.sort_by_key(|s| s.settings.priority);
        let mut tiers: Vec<Range<usize>> = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            match tiers.last_mut() {
                Some(t) if slots[t.start].settings.priority == slot.settings.priority => t.end += 1,
                _ => tiers.push(i..i + 1),
            }
        }
        let index = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let gates = slots.iter().map(|s| Gate::of(s)).collect();
        Roster {
            slots,
            gates,
            tiers,
            index,
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Arc<Slot>> {
        self.index.get(id).map(|&i| &self.slots[i])
    }
}

#[repr(align(64))]
#[derive(Debug, Default)]
pub(crate) struct Cursor(pub(crate) AtomicU64);

/// Interned model names, each with its own round-robin cursor. Append-only: a name once
/// interned keeps its index, so leases carry an index instead of a reference-counted name.
#[derive(Debug)]
pub(crate) struct Models {
    names: Box<[OnceLock<Arc<str>>]>,
    interned: AtomicUsize,
    adding: Mutex<()>,
    cursors: Box<[Cursor]>,
}

/// A model as a lease carries it.
#[derive(Debug, Clone)]
pub(crate) enum ModelRef {
    /// The request named no model.
    None,
    /// An interned model: its index in the table.
    Interned(usize),
    /// A model past the interning limit, allocated per lease.
    Owned(Arc<str>),
}

impl Models {
    pub(crate) fn new() -> Self {
        Models {
            names: (0..MAX_INTERNED_MODELS).map(|_| OnceLock::new()).collect(),
            interned: AtomicUsize::new(0),
            adding: Mutex::new(()),
            cursors: (0..MAX_INTERNED_MODELS + 2)
                .map(|_| Cursor::default())
                .collect(),
        }
    }

    fn find(&self, model: &str) -> Option<usize> {
        let interned = self.interned.load(Ordering::Acquire);
        self.names[..interned]
            .iter()
            .position(|n| n.get().is_some_and(|n| &**n == model))
    }

    /// The lease-side reference of `model`, interning it on first sight.
    pub(crate) fn key(&self, model: Option<&str>) -> ModelRef {
        let Some(model) = model else {
            return ModelRef::None;
        };
        if let Some(i) = self.find(model) {
            return ModelRef::Interned(i);
        }
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.find(model) {
            return ModelRef::Interned(i);
        }
        let i = self.interned.load(Ordering::Acquire);
        if i >= MAX_INTERNED_MODELS {
            return ModelRef::Owned(Arc::from(model));
        }
        let _ = self.names[i].set(Arc::from(model));
        self.interned.store(i + 1, Ordering::Release);
        ModelRef::Interned(i)
    }

    pub(crate) fn name<'a>(&'a self, model: &'a ModelRef) -> Option<&'a Arc<str>> {
        match model {
            ModelRef::None => None,
            ModelRef::Interned(i) => self.names[*i].get(),
            ModelRef::Owned(name) => Some(name),
        }
    }

    /// Cursor 0 is for requests without a model; the last one is shared by models past the
    /// interning limit.
    pub(crate) fn cursor(&self, model: &ModelRef) -> &AtomicU64 {
        let index = match model {
            ModelRef::None => 0,
            ModelRef::Interned(i) => i + 1,
            ModelRef::Owned(_) => MAX_INTERNED_MODELS + 1,
        };
        &self.cursors[index].0
    }
}

#[derive(Debug)]
struct Pin {
    id: AccountId,
    expires_ms: u64,
}

#[derive(Debug, Default)]
struct StickyShard {
    pins: HashMap<u64, Pin>,
    prune_at: usize,
}

/// Sticky sessions: affinity-key hash → account, sharded so no lock is pool-wide.
#[derive(Debug)]
pub(crate) struct Sticky {
    shards: Box<[Mutex<StickyShard>]>,
    hasher: RandomState,
    ttl_ms: u64,
}

impl Sticky {
    pub(crate) fn new(ttl: Duration) -> Self {
        Sticky {
            shards: (0..STICKY_SHARDS)
                .map(|_| Mutex::new(StickyShard::default()))
                .collect(),
            hasher: RandomState::new(),
            ttl_ms: ttl.as_millis() as u64,
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, StickyShard> {
        self.shards[(hash as usize) % STICKY_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The account `key` is pinned to, if the pin is still alive.
    pub(crate) fn get(&self, hash: u64, now_ms: u64) -> Option<AccountId> {
        let shard = self.shard(hash);
        shard
            .pins
            .get(&hash)
            .filter(|p| p.expires_ms > now_ms)
            .map(|p| p.id.clone())
    }

    /// Pins (or re-pins, or refreshes) `key` to `id`.
    pub(crate) fn pin(&self, hash: u64, id: &AccountId, now_ms: u64) {
        let expires_ms = now_ms.saturating_add(self.ttl_ms);
        let mut shard = self.shard(hash);
        match shard.pins.get_mut(&hash) {
            Some(pin) if pin.id == *id => pin.expires_ms = expires_ms,
            _ => {
                shard.pins.insert(
                    hash,
                    Pin {
                        id: id.clone(),
                        expires_ms,
                    },
                );
                if shard.pins.len() >= shard.prune_at {
                    shard.pins.retain(|_, p| p.expires_ms > now_ms);
                    shard.prune_at = (shard.pins.len() * 2).max(1024);
                }
            }
        }
    }

    pub(crate) fn len(&self, now_ms: u64) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.pins.values().filter(|p| p.expires_ms > now_ms).count()
            })
            .sum()
    }
}
