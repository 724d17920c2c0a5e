//! [`Lease`]: one request's hold on one account.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::account::{AccountId, AccountSettings};
use crate::credential::SharedCredential;
use crate::health::{Host, Outcome};
use crate::select::{ModelRef, Slot};

/// One request's hold on one account.
///
/// It names the account, holds an in-flight slot, and takes exactly one
/// [`report`](Lease::report). Dropped without a report it counts as
/// [`Outcome::Cancelled`]: no health penalty.
pub struct Lease {
    pub(super) slot: Arc<Slot>,
    pub(super) model: ModelRef,
    pub(super) probe: bool,
    pub(super) reported: bool,
}

impl Lease {
    /// The account as the layer hands it to services and callers, for the request's `attempt`th
    /// upstream call.
    pub(crate) fn selected(&self, attempt: u32) -> crate::account::SelectedAccount {
        crate::account::SelectedAccount::new(self.slot.clone(), attempt)
    }

    /// The account's id.
    pub fn id(&self) -> &AccountId {
        &self.slot.id
    }

    /// The account's credential.
    pub fn credential(&self) -> &SharedCredential {
        &self.slot.credential
    }

    /// The account's settings when it was selected.
    pub fn settings(&self) -> &AccountSettings {
        &self.slot.settings
    }

    /// The model the lease was taken for.
    pub fn model(&self) -> Option<&str> {
        self.slot.models.name(&self.model).map(|m| &**m)
    }

    /// True when this request is the one probe let through a half-open account.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports how the request went and releases the in-flight slot.
    pub fn report(mut self, outcome: Outcome) {
        self.finish(outcome, None);
    }

    /// Reports an outcome with a short description for the account's last error (it must not
    /// contain secrets).
    pub fn report_with_message(mut self, outcome: Outcome, message: &str) {
        self.finish(outcome, Some(message));
    }

    fn finish(&mut self, outcome: Outcome, message: Option<&str>) {
        self.reported = true;
        let rt = &self.slot.runtime;
        rt.count(outcome.class());
        rt.in_flight.fetch_sub(1, Ordering::AcqRel);
        let harmless = matches!(
            outcome,
            Outcome::Success | Outcome::ClientError | Outcome::Cancelled
        );
        if harmless && !self.probe && rt.is_clean() {
            return; // the common case: nothing to change, no clock, no pool
        }
        if let Some(selector) = self.slot.selector.upgrade() {
            let model = self.slot.models.name(&self.model);
            selector.apply(self.slot.member(), model, self.probe, outcome, message);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.reported {
            self.finish(Outcome::Cancelled, None);
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("account", &self.slot.id)
            .field("model", &self.model)
            .field("probe", &self.probe)
            .finish()
    }
}
