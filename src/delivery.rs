//! What a pass is asked to cover: a claimed convergence request, as deliveries.
//!
//! The JetStream message behind an event is acked as soon as its request is recorded
//! ([`crate::requests`]); what reaches an endpoint's actor afterwards is a [`Delivery`] built
//! from the claimed request. It says what the events asked for (deploy or delete), how many
//! there were, when the oldest was published and the trace contexts of their `receive` spans,
//! so the pass continues the newest event's trace and links to the others. The worker's own
//! requests (a start-up resume, the informer's follow-ups) are deliveries too, with no events.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::events::{DELETE_SUBJECT, DEPLOY_SUBJECT, EventKind};
use crate::requests::Claim;

/// What a pass over one endpoint is asked to cover.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// What it asks for.
    pub kind: EventKind,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Serving events it stands for (0 for the worker's own requests).
    pub events: u32,
    /// When the oldest of those events reached the stream.
    pub published_at: Option<DateTime<Utc>>,
    /// W3C `traceparent`s of the events' `receive` spans, oldest first: the pass is a child of
    /// the last and links to the others.
    pub traceparents: Vec<String>,
    /// Set when the informer, not an event, asks for the pass (see [`Follow`]).
    pub follow: Option<Follow>,
}

/// Why the informer asks for a pass over an endpoint no event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Its object changed (readiness, spec edited by someone else, deleted): compare it with
    /// the endpoint's row and follow, repair or leave it.
    Check,
    /// Its object outlived the endpoint (`DELETED`, or no row at all): remove it. Only the
    /// guarded start-up reconcile asks for this.
    Collect,
}

impl Delivery {
    /// A delivery that resumes an endpoint (left `DEPLOYING`, or released from a pause).
    pub fn resume(endpoint_id: Uuid) -> Self {
        Self::own(endpoint_id, None)
    }

    /// A delivery from the informer: look at the endpoint's object (see [`Follow`]).
    pub fn follow(endpoint_id: Uuid, follow: Follow) -> Self {
        Self::own(endpoint_id, Some(follow))
    }

    fn own(endpoint_id: Uuid, follow: Option<Follow>) -> Self {
        Self {
            kind: EventKind::Deploy,
            endpoint_id,
            events: 0,
            published_at: None,
            traceparents: Vec::new(),
            follow,
        }
    }

    /// What a claimed request asks for: its events (if any) and the informer's follow-up (if
    /// any), or a resume when it holds neither. Never empty.
    pub fn from_claim(claim: Claim) -> Vec<Self> {
        let follow = claim.follow();
        let mut batch = Vec::with_capacity(1);
        if claim.events > 0 {
            batch.push(Self {
                kind: if claim.wants_delete {
                    EventKind::Delete
                } else {
                    EventKind::Deploy
                },
                endpoint_id: claim.endpoint_id,
                events: u32::try_from(claim.events).unwrap_or(0),
                published_at: claim.first_published_at,
                traceparents: split_traceparents(claim.traceparents),
                follow: None,
            });
        } else if claim.wants_delete {
            // a delete whose events were counted by an earlier, handed-back pass
            let mut delete = Self::resume(claim.endpoint_id);
            delete.kind = EventKind::Delete;
            batch.push(delete);
        }
        if let Some(follow) = follow {
            batch.push(Self::follow(claim.endpoint_id, follow));
        }
        if batch.is_empty() {
            batch.push(Self::resume(claim.endpoint_id));
        }
        batch
    }

    /// The subject it is counted under: the event's, or `resume`, `follow` or `collect` for
    /// the worker's own requests.
    pub fn subject(&self) -> &'static str {
        match (self.events, self.kind, self.follow) {
            (1.., EventKind::Deploy, _) => DEPLOY_SUBJECT,
            (1.., EventKind::Delete, _) => DELETE_SUBJECT,
            (0, _, None) => "resume",
            (0, _, Some(Follow::Check)) => "follow",
            (0, _, Some(Follow::Collect)) => "collect",
        }
    }
}

/// The `traceparent`s of a claim, stored space-separated: the usual single one is kept as it
/// is, not copied.
fn split_traceparents(joined: Option<String>) -> Vec<String> {
    match joined {
        None => Vec::new(),
        Some(one) if !one.is_empty() && !one.bytes().any(|b| b.is_ascii_whitespace()) => {
            vec![one]
        }
        Some(many) => many.split_ascii_whitespace().map(str::to_owned).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_traceparents_split_on_whitespace() {
        let split = |s: Option<&str>| split_traceparents(s.map(str::to_owned));
        assert!(split(None).is_empty());
        assert!(split(Some("")).is_empty());
        assert!(split(Some("  ")).is_empty());
        assert_eq!(split(Some("00-a-b-01")), ["00-a-b-01"]);
        assert_eq!(
            split(Some("00-a-b-01 00-c-d-00")),
            ["00-a-b-01", "00-c-d-00"]
        );
        assert_eq!(split(Some(" 00-a-b-01\t")), ["00-a-b-01"]);
    }
}
