//! One pass over an endpoint: read the intent, converge to it, record the outcome, answer.
//!
//! The endpoint actor runs passes one at a time; everything queued for the endpoint while a
//! pass runs is covered by the next one, so a burst of events becomes one deploy of the latest
//! intent (level-triggered, DESIGN §3). A pass:
//!
//! 1. loads the endpoint row (batched with other actors' loads);
//! 2. refuses deliveries whose tenant/project do not match the row (terminated, recorded; the
//!    endpoint is left alone so a forged event cannot disturb another tenant's endpoint);
//! 3. decides: delete if asked; nothing if the endpoint is deleted (`skipped`) or already Ready
//!    at its current spec generation (`unchanged`); otherwise deploy;
//! 4. for a deploy: validates and renders the manifest (an invalid intent ends `ERROR` with the
//!    validation message), waits for a fair-share [`Permit`](crate::admission::Permit), records
//!    `DEPLOYING`, runs the deployer, records `READY`/`ERROR` guarded by the spec generation;
//! 5. answers every covered message only after its outcome has committed.
//!
//! Database or deployer trouble hands the messages back to JetStream with a backoff delay.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use chrono::Utc;
use entity::status;
use tokio::sync::watch;
use uuid::Uuid;

use crate::admission::Admission;
use crate::delivery::{Backoff, Delivery, answer_all, hand_back_all, keep_alive};
use crate::deployer::{DeleteOutcome, DeployOutcome, DeployRequest, Deployer};
use crate::events::EventKind;
use crate::kserve::{self, RenderOptions};
use crate::store::{
    Applied, EndpointRecord, HistoryEntry, RejectedEvent, StatusWrite, Store, UrlChange, Write,
    outcome,
};

/// What every pass needs, shared by all endpoint actors.
pub struct PassContext {
    /// Postgres.
    pub store: Store,
    /// Where InferenceServices are made real.
    pub deployer: Deployer,
    /// Fair share of deploys across tenants.
    pub admission: Admission,
    /// Namespace, name prefix and annotation defaults for manifests.
    pub render: RenderOptions,
    /// Delays for handing messages back.
    pub backoff: Backoff,
    /// Interval of progress acks while a pass waits or deploys.
    pub progress_every: Duration,
    /// Where shutdown stands; see [`Phase`].
    pub phase: watch::Receiver<Phase>,
}

/// The worker's shutdown phase, as passes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Normal operation.
    Running,
    /// SIGTERM: passes still waiting for a permit hand their events back; deploys that
    /// started run on.
    Draining,
    /// The grace period is over: running deploys are abandoned and handed back too.
    Aborting,
}

/// How a pass ended, for the actor's bookkeeping and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassResult {
    /// Outcome committed and messages answered; the history row says which.
    Done(&'static str),
    /// Messages refused (terminated and recorded).
    Refused,
    /// Messages handed back for a retry.
    HandedBack,
}

/// Runs one pass over `endpoint_id` covering `batch` (never empty).
pub async fn run(ctx: Arc<PassContext>, endpoint_id: Uuid, batch: Vec<Delivery>) -> PassResult {
    let record = match ctx.store.load(endpoint_id).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            let reason = format!(
                "endpoint {endpoint_id} does not exist; the event names an endpoint the platform \
                 never created or already purged"
            );
            refuse(&ctx, &batch, &reason).await;
            return PassResult::Refused;
        }
        Err(err) => {
            tracing::warn!(%endpoint_id, error = %err, "cannot load endpoint; handing events back");
            hand_back_all(&batch, &ctx.backoff).await;
            return PassResult::HandedBack;
        }
    };

    let (batch, foreign): (Vec<Delivery>, Vec<Delivery>) =
        batch.into_iter().partition(|d| owner_matches(d, &record));
    for delivery in &foreign {
        let reason = mismatch_reason(delivery, &record);
        tracing::warn!(%endpoint_id, %reason, "refusing event");
        refuse(&ctx, std::slice::from_ref(delivery), &reason).await;
    }
    if batch.is_empty() {
        return PassResult::Refused;
    }

    let pass = Pass::new(&ctx, &record, &batch);
    if batch.iter().any(|d| d.kind == EventKind::Delete) {
        pass.delete().await
    } else if record.is_deleted() {
        pass.record_only(
            outcome::SKIPPED,
            Some("endpoint is deleted; deploy request ignored"),
        )
        .await
    } else if record.is_converged() {
        pass.record_only(outcome::UNCHANGED, None).await
    } else {
        pass.deploy().await
    }
}

/// An event's tenant/project, when given, must be the row's.
fn owner_matches(delivery: &Delivery, record: &EndpointRecord) -> bool {
    delivery.event.as_ref().is_none_or(|event| {
        event.tenant_id.is_none_or(|t| t == record.tenant_id)
            && event.project_id.is_none_or(|p| p == record.project_id)
    })
}

fn mismatch_reason(delivery: &Delivery, record: &EndpointRecord) -> String {
    let show = |id: Option<Uuid>| id.map_or_else(|| "-".to_owned(), |id| id.to_string());
    let (tenant, project) = delivery
        .event
        .as_ref()
        .map_or((None, None), |e| (e.tenant_id, e.project_id));
    format!(
        "event names tenant {} / project {} but endpoint {} belongs to tenant {} / project {}; \
         refused without touching the endpoint",
        show(tenant),
        show(project),
        record.id,
        record.tenant_id,
        record.project_id
    )
}

/// Records why `batch` is refused, then terminates it; hands it back if recording fails.
pub async fn refuse(ctx: &PassContext, batch: &[Delivery], reason: &str) {
    for delivery in batch {
        if delivery.message.is_none() {
            continue;
        }
        let record = RejectedEvent::new(
            delivery.subject(),
            delivery.stream_sequence(),
            Some(delivery.endpoint_id),
            reason.to_owned(),
            delivery.payload(),
        );
        match ctx.store.write(Write::Rejected(record)).await {
            Ok(_) => delivery.answer(AckKind::Term).await,
            Err(err) => {
                tracing::warn!(error = %err, "cannot record a refused event; handing it back");
                delivery.hand_back(&ctx.backoff).await;
            }
        }
    }
}

/// One pass's state.
struct Pass<'a> {
    ctx: &'a PassContext,
    record: &'a EndpointRecord,
    batch: &'a [Delivery],
    name: String,
    started_at: chrono::DateTime<Utc>,
}

impl<'a> Pass<'a> {
    fn new(ctx: &'a PassContext, record: &'a EndpointRecord, batch: &'a [Delivery]) -> Self {
        Self {
            ctx,
            record,
            batch,
            name: kserve::isvc_name(&ctx.render.name_prefix, record.id),
            started_at: Utc::now(),
        }
    }

    fn history(
        &self,
        action: EventKind,
        outcome: &'static str,
        reason: Option<String>,
        url: Option<String>,
    ) -> HistoryEntry {
        HistoryEntry {
            endpoint_id: self.record.id,
            tenant_id: self.record.tenant_id,
            project_id: self.record.project_id,
            generation: self.record.spec_generation,
            action: action.as_str(),
            outcome,
            reason,
            isvc_name: self.name.clone(),
            url,
            events: i32::try_from(self.batch.len()).unwrap_or(i32::MAX),
            trace_id: None,
            event_published_at: self.batch.iter().filter_map(|d| d.published_at).min(),
            started_at: self.started_at,
            finished_at: Utc::now(),
        }
    }

    /// Commits `write`, then answers the batch with `answer`; hands back on a database error.
    async fn commit_then_answer(&self, write: Write, answer: AckKind) -> PassResult {
        let outcome = match &write {
            Write::Status(StatusWrite {
                history: Some(h), ..
            })
            | Write::History(h) => h.outcome,
            _ => outcome::ERROR,
        };
        match self.ctx.store.write(write).await {
            Ok(Applied::Yes) => {
                answer_all(self.batch, answer).await;
                PassResult::Done(outcome)
            }
            Ok(Applied::Superseded) => {
                // A newer intent (or a delete) got there first; its own event drives it.
                answer_all(self.batch, AckKind::Ack).await;
                PassResult::Done(outcome::SUPERSEDED)
            }
            Err(err) => self.retry_later("cannot record the outcome", &err).await,
        }
    }

    async fn record_only(&self, outcome: &'static str, reason: Option<&str>) -> PassResult {
        let entry = self.history(
            EventKind::Deploy,
            outcome,
            reason.map(str::to_owned),
            self.record.url.clone(),
        );
        self.commit_then_answer(Write::History(entry), AckKind::Ack)
            .await
    }

    fn status_write(
        &self,
        status: &'static str,
        url: UrlChange,
        reason: Option<String>,
        history: Option<HistoryEntry>,
    ) -> StatusWrite {
        StatusWrite {
            endpoint_id: self.record.id,
            status,
            url,
            reason,
            only_at_generation: Some(self.record.spec_generation),
            ready_generation: None,
            history,
        }
    }

    async fn fail(&self, action: EventKind, reason: String) -> PassResult {
        tracing::info!(endpoint_id = %self.record.id, %reason, "endpoint ends in ERROR");
        let history = self.history(action, outcome::ERROR, Some(reason.clone()), None);
        let write = self.status_write(status::ERROR, UrlChange::Keep, Some(reason), Some(history));
        self.commit_then_answer(Write::Status(write), AckKind::Term)
            .await
    }

    /// Runs `work` with progress acks, unless shutdown reaches `stop_at` first (`None`).
    async fn guarded<F: std::future::Future>(&self, stop_at: Phase, work: F) -> Option<F::Output> {
        let mut phase = self.ctx.phase.clone();
        let stopped = async move {
            // An error means the worker is gone: treat it as stopped too.
            let _ = phase.wait_for(|phase| *phase >= stop_at).await;
        };
        tokio::select! {
            output = keep_alive(self.batch, self.ctx.progress_every, work) => Some(output),
            () = stopped => None,
        }
    }

    /// A transient failure: hand the events back with a backoff delay.
    async fn retry_later(&self, what: &str, err: &dyn std::fmt::Display) -> PassResult {
        tracing::warn!(endpoint_id = %self.record.id, error = %err, "{what}; handing events back");
        hand_back_all(self.batch, &self.ctx.backoff).await;
        PassResult::HandedBack
    }

    /// Shutdown interrupted the pass: hand the events back for immediate redelivery to
    /// another replica (or this worker's successor).
    async fn release(&self) -> PassResult {
        answer_all(self.batch, AckKind::Nak(None)).await;
        PassResult::HandedBack
    }

    async fn deploy(&self) -> PassResult {
        let intent = self.record.intent();
        let manifest = match kserve::render(&intent, &self.ctx.render) {
            Ok(manifest) => manifest,
            Err(err) => return self.fail(EventKind::Deploy, err.to_string()).await,
        };
        let admitted = self.guarded(
            Phase::Draining,
            self.ctx.admission.acquire(self.record.tenant_id),
        );
        let Some(_permit) = admitted.await else {
            return self.release().await;
        };
        let deploying = self.status_write(status::DEPLOYING, UrlChange::Keep, None, None);
        match self.ctx.store.write(Write::Status(deploying)).await {
            Ok(Applied::Yes) => {}
            Ok(Applied::Superseded) => {
                answer_all(self.batch, AckKind::Ack).await;
                return PassResult::Done(outcome::SUPERSEDED);
            }
            Err(err) => return self.retry_later("cannot record DEPLOYING", &err).await,
        }
        let request = DeployRequest {
            endpoint_id: self.record.id,
            generation: self.record.spec_generation,
            manifest: &manifest,
            name: &self.name,
        };
        match self
            .guarded(Phase::Aborting, self.ctx.deployer.deploy(request))
            .await
        {
            Some(Ok(DeployOutcome::Ready { url })) => {
                let history =
                    self.history(EventKind::Deploy, outcome::READY, None, Some(url.clone()));
                let mut write =
                    self.status_write(status::READY, UrlChange::Set(url), None, Some(history));
                write.ready_generation = Some(self.record.spec_generation);
                self.commit_then_answer(Write::Status(write), AckKind::Ack)
                    .await
            }
            Some(Ok(DeployOutcome::Failed { reason })) => {
                self.fail(EventKind::Deploy, reason).await
            }
            Some(Err(err)) => self.retry_later("deploy failed transiently", &err).await,
            None => self.release().await,
        }
    }

    async fn delete(&self) -> PassResult {
        let deleted = self.guarded(
            Phase::Aborting,
            self.ctx.deployer.delete(self.record.id, &self.name),
        );
        match deleted.await {
            Some(Ok(DeleteOutcome::Deleted)) => {
                let history = self.history(EventKind::Delete, outcome::DELETED, None, None);
                let mut write =
                    self.status_write(status::DELETED, UrlChange::Clear, None, Some(history));
                // A delete applies whatever the generation.
                write.only_at_generation = None;
                self.commit_then_answer(Write::Status(write), AckKind::Ack)
                    .await
            }
            Some(Ok(DeleteOutcome::Failed { reason })) => {
                self.fail(EventKind::Delete, reason).await
            }
            Some(Err(err)) => self.retry_later("delete failed transiently", &err).await,
            None => self.release().await,
        }
    }
}
