//! A delivered event and what the worker can answer JetStream about it.
//!
//! A [`Delivery`] is one JetStream message on its way through the worker (or a synthetic one
//! made at start-up to resume an endpoint left `DEPLOYING`). Whoever holds it answers exactly
//! once, through one of:
//!
//! - `ack`: the outcome is committed in Postgres;
//! - `term`: refused for good (bad payload, unknown endpoint, invalid intent…) and recorded;
//! - [`Delivery::hand_back`]: a transient failure — `nak` with a delay from [`Backoff`], so
//!   JetStream redelivers it later, to this replica or another;
//! - [`Delivery::progress`]: not an answer but "still working" (`+WPI`), sent while a long
//!   deploy outlives the consumer's ack wait.
//!
//! If the answer itself cannot be sent (NATS is down), JetStream redelivers after the ack wait
//! and the next pass finds the outcome already recorded: every pass is idempotent.
//!
//! Each delivery carries its `receive` span ([`crate::telemetry::receive_span`]), which stays
//! open until the delivery is answered and dropped and records the final answer as `answer`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::events::{EventKind, ServingEvent};

/// One event for one endpoint.
#[derive(Debug)]
pub struct Delivery {
    /// What it asks for.
    pub kind: EventKind,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The decoded payload; `None` for a start-up resume.
    pub event: Option<ServingEvent>,
    /// The JetStream message to answer; `None` for a start-up resume.
    pub message: Option<jetstream::Message>,
    /// When the publisher's message reached the stream.
    pub published_at: Option<DateTime<Utc>>,
    /// When this worker received it.
    pub received_at: Instant,
    /// Its `receive` span (parent: the publisher's span); passes covering it are its children
    /// or link to it.
    pub span: tracing::Span,
    /// Set once it has been answered (ack, nak or term; progress does not count), so a pass
    /// that panics can hand back exactly what it had not answered yet.
    pub answered: AtomicBool,
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
    /// A synthetic deploy delivery that resumes an endpoint found `DEPLOYING` at start-up.
    pub fn resume(endpoint_id: Uuid) -> Self {
        Self::synthetic(endpoint_id, None)
    }

    /// A synthetic delivery from the informer: look at the endpoint's object (see [`Follow`]).
    pub fn follow(endpoint_id: Uuid, follow: Follow) -> Self {
        Self::synthetic(endpoint_id, Some(follow))
    }

    fn synthetic(endpoint_id: Uuid, follow: Option<Follow>) -> Self {
        let source = match follow {
            None => "resume",
            Some(Follow::Check) => "follow",
            Some(Follow::Collect) => "collect",
        };
        Self {
            kind: EventKind::Deploy,
            endpoint_id,
            event: None,
            message: None,
            published_at: None,
            received_at: Instant::now(),
            span: crate::telemetry::synthetic_span(endpoint_id, source),
            answered: AtomicBool::new(false),
            follow,
        }
    }

    /// Whether it has been answered (see [`Delivery::answered`]).
    pub fn is_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// Subject the message arrived on (`resume`, `follow` or `collect` for synthetic
    /// deliveries).
    pub fn subject(&self) -> &str {
        match (&self.message, self.follow) {
            (Some(message), _) => message.subject.as_str(),
            (None, None) => "resume",
            (None, Some(Follow::Check)) => "follow",
            (None, Some(Follow::Collect)) => "collect",
        }
    }

    /// The stream sequence, when known.
    pub fn stream_sequence(&self) -> Option<u64> {
        self.message
            .as_ref()
            .and_then(|m| m.info().ok())
            .map(|info| info.stream_sequence)
    }

    /// How many times JetStream has delivered this message (1 for the first delivery).
    pub fn delivered(&self) -> i64 {
        self.message
            .as_ref()
            .and_then(|m| m.info().ok())
            .map_or(1, |info| info.delivered)
    }

    /// Raw payload (empty for synthetic deliveries).
    pub fn payload(&self) -> &[u8] {
        self.message.as_ref().map_or(&[][..], |m| &m.payload[..])
    }

    /// Sends `kind` for this message; a failure is logged (JetStream will redeliver).
    pub async fn answer(&self, kind: AckKind) {
        let Some(message) = &self.message else {
            self.answered
                .store(!matches!(kind, AckKind::Progress), Ordering::Relaxed);
            return;
        };
        let what = ack_name(&kind);
        if !matches!(kind, AckKind::Progress) {
            self.answered.store(true, Ordering::Relaxed);
            self.span.record("answer", what);
        }
        if let Err(err) = message.ack_with(kind).await {
            tracing::warn!(endpoint_id = %self.endpoint_id, error = %err, answer = what,
                "could not answer JetStream; the message will be redelivered after the ack wait");
        }
    }

    /// Hands the message back for a later retry, delayed by `backoff`.
    pub async fn hand_back(&self, backoff: &Backoff) {
        self.answer(AckKind::Nak(Some(backoff.delay(self.delivered()))))
            .await;
    }

    /// Tells JetStream the message is still being worked on.
    pub async fn progress(&self) {
        self.answer(AckKind::Progress).await;
    }
}

fn ack_name(kind: &AckKind) -> &'static str {
    match kind {
        AckKind::Ack => "ack",
        AckKind::Nak(_) => "nak",
        AckKind::Progress => "progress",
        AckKind::Next => "next",
        AckKind::Term => "term",
    }
}

/// Answers every delivery in `batch` with the same kind.
pub async fn answer_all(batch: &[Delivery], kind: AckKind) {
    for delivery in batch {
        delivery.answer(kind).await;
    }
}

/// Hands every delivery in `batch` back.
pub async fn hand_back_all(batch: &[Delivery], backoff: &Backoff) {
    for delivery in batch {
        delivery.hand_back(backoff).await;
    }
}

/// Runs `work` while sending progress acks for `batch` every `every`, so JetStream does not
/// redeliver messages whose deploy outlives the ack wait.
pub async fn keep_alive<F: std::future::Future>(
    batch: &[Delivery],
    every: Duration,
    work: F,
) -> F::Output {
    let mut work = std::pin::pin!(work);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => {
                for delivery in batch {
                    delivery.progress().await;
                }
            }
        }
    }
}
