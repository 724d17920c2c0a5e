//! [`StateChange`]: what the machine tells [`Pool::subscribe`](crate::Pool::subscribe)
//! receivers and the logs.

use std::time::SystemTime;

use serde::Serialize;

use super::{Health, HealthState, Runtime};
use crate::account::AccountId;

/// A change of an account's state, as sent to [`Pool::subscribe`](crate::Pool::subscribe)
/// receivers and logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChange {
    /// The account.
    pub account: AccountId,
    /// The model, for changes scoped to one (account, model) pair.
    pub model: Option<String>,
    /// State before.
    pub from: HealthState,
    /// State after.
    pub to: HealthState,
    /// Why.
    pub reason: String,
    /// When the new state ends by itself, if it does.
    #[serde(with = "crate::time::epoch_ms::option")]
    pub until: Option<SystemTime>,
    /// When it happened.
    #[serde(with = "crate::time::epoch_ms")]
    pub at: SystemTime,
}

impl Health {
    /// Logs a state change and sends it to subscribers, if any.
    pub(crate) fn emit(
        &self,
        rt: &Runtime,
        from: HealthState,
        to: HealthState,
        model: Option<&str>,
        reason: String,
        until: Option<SystemTime>,
    ) {
        match model {
            Some(model) => tracing::info!(
                account = %rt.id, model, from = %from, to = %to, reason = %reason,
                "account state changed for model"
            ),
            None => tracing::info!(
                account = %rt.id, from = %from, to = %to, reason = %reason,
                "account state changed"
            ),
        }
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(StateChange {
                account: rt.id.clone(),
                model: model.map(str::to_owned),
                from,
                to,
                reason,
                until,
                at: SystemTime::now(),
            });
        }
    }
}
