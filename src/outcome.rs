//! How the handling of an event ended: one vocabulary for the history row, the metric label and
//! the span attribute.
//!
//! A pass's outcome is written to `deployment_history.outcome`, counted in
//! `deploy_worker_events_total{outcome}` and recorded as the `outcome` attribute of the `pass`
//! and `receive` spans. Keeping these as one enum means the three cannot drift apart: an
//! operator who reads `error` in the history table finds the same word on the dashboard and in
//! the trace. The strings are a contract (dashboards, alerts, stored rows): [`Outcome::as_str`]
//! must keep returning them unchanged.

use std::fmt;

/// How the handling of an event ended.
///
/// The first seven are pass outcomes recorded in `deployment_history`; [`Outcome::Refused`] and
/// [`Outcome::HandedBack`] are answers that are not a pass outcome (no history row), counted
/// and traced all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The InferenceService is Ready at the pass's generation.
    Ready,
    /// The pass ended in `ERROR`.
    Error,
    /// The InferenceService was removed.
    Deleted,
    /// Nothing to do: this generation was already Ready.
    Unchanged,
    /// A newer intent arrived while the pass ran; its own pass records the outcome.
    Superseded,
    /// The endpoint was deleted; a deploy request for it does nothing.
    Skipped,
    /// The endpoint's tenant is paused: the endpoint is recorded `DEPLOYING` with
    /// [`PAUSED_REASON`](crate::store::PAUSED_REASON) and deployed when the tenant is resumed.
    Paused,
    /// Terminated and recorded in `rejected_events`.
    Refused,
    /// Handed back (nak) for a later retry.
    HandedBack,
}

impl Outcome {
    /// Every outcome, so metric labels can start at zero before the first occurrence.
    pub const ALL: [Self; 9] = [
        Self::Ready,
        Self::Error,
        Self::Deleted,
        Self::Unchanged,
        Self::Superseded,
        Self::Skipped,
        Self::Paused,
        Self::Refused,
        Self::HandedBack,
    ];

    /// The outcome's place in [`ALL`](Self::ALL).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The outcome as stored in `deployment_history.outcome`, as the metric label and as the
    /// span attribute.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Error => "error",
            Self::Deleted => "deleted",
            Self::Unchanged => "unchanged",
            Self::Superseded => "superseded",
            Self::Skipped => "skipped",
            Self::Paused => "paused",
            Self::Refused => "refused",
            Self::HandedBack => "handed_back",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_a_distinct_label() {
        let labels: std::collections::HashSet<_> =
            Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }

    #[test]
    fn an_outcome_sits_at_its_index_in_all() {
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome.index(), i, "{outcome:?}");
        }
    }
}
