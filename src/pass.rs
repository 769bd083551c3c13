//! One pass over an endpoint: read the intent, converge to it, record the outcome.
//!
//! The scheduler admits an endpoint and its actor runs one pass over everything its claimed
//! request covers (ARCHITECTURE.md, "Actor lifecycle"): a burst of events is one request, so it
//! becomes one deploy of the latest intent (level-triggered). The events were acked when the
//! request was recorded, after the tenant check. A pass:
//!
//! 1. loads the endpoint row (batched with other actors' loads);
//! 2. decides: delete if asked; nothing if the endpoint is deleted (`skipped`) or already Ready
//!    at its current spec generation (`unchanged`); hold it if its tenant is paused (`paused`:
//!    recorded `DEPLOYING` with [`PAUSED_REASON`]; `deploy-worker tenant resume` asks for a pass
//!    over every endpoint so held); follow or repair what the informer reported; otherwise
//!    deploy;
//! 3. for a deploy: validates the intent and renders the manifest (k8s mode; simulate mode
//!    applies none, so it only validates; an invalid intent ends `ERROR` with the validation
//!    message), records `DEPLOYING`, runs the deployer, records `READY`/`ERROR` guarded by the
//!    spec generation.
//!
//! Database or deployer trouble hands the request back ([`PassResult::HandedBack`]): it stays
//! in Postgres and the scheduler runs it again after a backoff delay.
//!
//! Each pass runs in a `pass` span, a child of the `receive` span of the newest event it covers
//! and linked to the others', with one child span per step (see [`crate::telemetry`]); its
//! trace id goes into the history row. Outcomes, retries and durations are counted in
//! [`Metrics`].

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use dashmap::DashMap;
use entity::status;
use futures::FutureExt;
use tokio::sync::{Notify, watch};
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::delivery::{Delivery, Follow};
use crate::deployer::{
    DeleteOutcome, DeployError, DeployOutcome, DeployRequest, Deployer, FireInterrupt, Interrupt,
    Observation,
};
use crate::events::EventKind;
use crate::follow::RepairLimiter;
use crate::intent::{Intent, IntentError};
use crate::kserve::{self, InferenceService, RenderOptions};
use crate::metrics::{Metrics, follow, retry};
use crate::outcome::Outcome;
use crate::store::{
    Applied, EndpointRecord, HistoryEntry, PAUSED_REASON, StatusWrite, Store, UrlChange, Write,
};
use crate::telemetry::{self, SpanLabels, Step};

/// What every pass needs, shared by all endpoint actors.
pub struct PassContext {
    /// Postgres.
    pub store: Store,
    /// Where InferenceServices are made real.
    pub deployer: Deployer,
    /// Namespace, name prefix and annotation defaults for manifests.
    pub render: RenderOptions,
    /// Delays for handing messages back.
    pub backoff: Backoff,
    /// Where shutdown stands; see [`Phase`].
    pub phase: watch::Receiver<Phase>,
    /// The worker's metrics.
    pub metrics: Arc<Metrics>,
    /// Endpoints whose passes panicked: the generation and how many times in a row.
    pub panics: DashMap<Uuid, (i64, u32)>,
    /// Fault injection for tests: passes that panic on purpose (empty in production).
    pub failpoint_panic: Vec<PanicAt>,
    /// How long a `READY` endpoint's object may stay not Ready before the endpoint goes
    /// `ERROR` (k8s mode).
    pub follow_debounce: Duration,
    /// Spaces out the repairs of each endpoint.
    pub repairs: RepairLimiter,
    /// Endpoints whose object was first seen not Ready, and when (for objects whose Ready
    /// condition gives no transition time).
    pub unready_since: DashMap<Uuid, chrono::DateTime<Utc>>,
}

/// History action of a pass that follows an object after `READY` (`READY` ⇄ `ERROR`).
pub const ACTION_FOLLOW: &str = "follow";
/// History action of a deploy that re-applies an object deleted or changed out of band.
pub const ACTION_REPAIR: &str = "repair";

/// What arrived for the endpoint while its pass runs, as the actor tells the pass: enough to
/// decide whether the pass still converges to the newest intent. Every pass has one, so it is
/// an atomic and a [`Notify`], not a channel.
#[derive(Debug, Default)]
pub struct Newer {
    /// Whether a delivery that asks for a delete arrived.
    delete: AtomicBool,
    arrived: Notify,
}

impl Newer {
    /// Records that a delivery arrived for the endpoint (a delete, or not).
    pub fn arrived(&self, delete: bool) {
        if delete {
            self.delete.store(true, Ordering::Release);
        }
        // one waiter, the pass; a permit is kept when it is not waiting yet
        self.arrived.notify_one();
    }

    /// Waits until something arrives (at once if something arrived since the last wait), then
    /// says whether a delete has arrived.
    async fn next(&self) -> bool {
        self.arrived.notified().await;
        self.delete.load(Ordering::Acquire)
    }
}

/// A fault-injection point: a pass over `endpoint_id` at `generation` panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanicAt {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The spec generation.
    pub generation: i64,
}

impl std::str::FromStr for PanicAt {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (id, generation) = text
            .split_once('@')
            .ok_or_else(|| format!("{text:?}: expected <endpoint id>@<generation>"))?;
        Ok(Self {
            endpoint_id: id.trim().parse().map_err(|e| format!("{id:?}: {e}"))?,
            generation: generation
                .trim()
                .parse()
                .map_err(|e| format!("{generation:?}: {e}"))?,
        })
    }
}

/// Panics in a row at one generation after which an endpoint ends `ERROR` instead of being
/// retried again.
pub const PANICS_BEFORE_ERROR: u32 = 3;

/// The worker's shutdown phase, as passes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Normal operation.
    Running,
    /// SIGTERM: passes about to start a deploy hand their requests back; deploys that started
    /// run on.
    Draining,
    /// The grace period is over: running deploys are abandoned and handed back too.
    Aborting,
}

/// The endpoint's row as a pass starts with it.
#[derive(Debug, Clone)]
pub enum Row {
    /// Not read yet: the pass reads it first.
    Unread,
    /// Read with the claim (`None`: the endpoint does not exist), so the pass needs no query.
    Read(Option<Box<EndpointRecord>>),
}

/// How a pass ended, for the actor's bookkeeping and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassResult {
    /// Outcome committed; the history row says which.
    Done(Outcome),
    /// Nothing to converge: the endpoint no longer exists.
    Refused,
    /// Handed back: the request stays and is retried after the given delay, or after the
    /// backoff for its attempts so far (`None`).
    HandedBack(Option<Duration>),
}

impl PassResult {
    /// The outcome as a metric label / span attribute.
    pub fn label(&self) -> Outcome {
        match self {
            Self::Done(outcome) => *outcome,
            Self::Refused => Outcome::Refused,
            Self::HandedBack(_) => Outcome::HandedBack,
        }
    }
}

/// Runs one pass over `endpoint_id` covering `batch` (never empty), in a `pass` span: a child
/// of the newest delivery's `receive` span (the intent it converges to is at least that new),
/// linked to the others'.
///
/// A panic inside the pass (a worker bug) is caught here: the request is handed back, and the
/// endpoint's actor lives on. When passes panic [`PANICS_BEFORE_ERROR`] times in a row at the
/// same spec generation, the endpoint ends `ERROR` with the panic message, so a bug cannot
/// retry forever.
///
/// `newer` tells the pass what arrives for the endpoint meanwhile: a deploy that is waiting —
/// between retries, for Ready — stops waiting once a delete or a newer spec
/// generation shows up, and records `superseded` so the next pass starts at once.
pub fn run(
    ctx: Arc<PassContext>,
    endpoint_id: Uuid,
    mut batch: Vec<Delivery>,
    row: Row,
    newer: Arc<Newer>,
) -> impl Future<Output = PassResult> {
    let traceparents: Vec<&str> = batch
        .iter()
        .flat_map(|d| d.traceparents.iter().map(String::as_str))
        .collect();
    let pass_span = telemetry::pass_span(&traceparents, endpoint_id, events_covered(&batch));
    let trace_id = pass_span.trace_id().map(str::to_owned);
    let span = pass_span.span().clone();
    pass_span.run_inside(Box::pin(async move {
        let owner = OnceLock::new();
        let work = AssertUnwindSafe(run_pass(
            &ctx,
            endpoint_id,
            &mut batch,
            row,
            &owner,
            newer,
            &trace_id,
        ))
        .catch_unwind();
        let result = match work.await {
            Ok(result) => {
                if !ctx.panics.is_empty() {
                    ctx.panics.remove(&endpoint_id);
                }
                result
            }
            Err(panic) => {
                let owner = owner.get().copied();
                recover(&ctx, endpoint_id, &batch, owner, panic.as_ref(), trace_id).await
            }
        };
        telemetry::record_outcome(&span, result.label().as_str());
        result
    }))
}

/// Who owns the endpoint a pass works on, and at which generation: known once the row is read,
/// kept outside the pass so a panic can still be attributed.
#[derive(Debug, Clone, Copy)]
struct Owner {
    tenant_id: Uuid,
    project_id: Uuid,
    generation: i64,
}

/// After a pass panicked: hand the request back for a retry, or after repeated panics at one
/// generation end the endpoint in `ERROR`.
async fn recover(
    ctx: &PassContext,
    endpoint_id: Uuid,
    batch: &[Delivery],
    owner: Option<Owner>,
    panic: &(dyn std::any::Any + Send),
    trace_id: Option<String>,
) -> PassResult {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned());
    let in_a_row = match owner {
        Some(owner) => {
            let mut entry = ctx
                .panics
                .entry(endpoint_id)
                .or_insert((owner.generation, 0));
            if entry.0 != owner.generation {
                *entry = (owner.generation, 0);
            }
            entry.1 += 1;
            entry.1
        }
        None => 1,
    };
    telemetry::record_error(&Span::current(), &message);
    tracing::error!(%endpoint_id, panic = %message, in_a_row, "a pass panicked (a worker bug)");
    if let Some(owner) = owner.filter(|_| in_a_row >= PANICS_BEFORE_ERROR) {
        ctx.panics.remove(&endpoint_id);
        let reason = format!(
            "the worker failed {in_a_row} times in a row on spec generation {} ({message}); \
             this is a deploy-worker bug: report it with this message. The endpoint is retried on \
             its next change or on `deploy-worker reconcile`",
            owner.generation
        );
        let action = if batch.iter().any(|d| d.kind == EventKind::Delete) {
            EventKind::Delete
        } else {
            EventKind::Deploy
        };
        let now = Utc::now();
        let history = HistoryEntry {
            endpoint_id,
            tenant_id: owner.tenant_id,
            project_id: owner.project_id,
            generation: owner.generation,
            action: action.as_str(),
            outcome: Outcome::Error,
            reason: Some(reason.clone()),
            isvc_name: ctx.deployer.name_for(&ctx.render.name_prefix, endpoint_id),
            url: None,
            events: i32::try_from(events_covered(batch)).unwrap_or(i32::MAX),
            trace_id,
            event_published_at: batch.iter().filter_map(|d| d.published_at).min(),
            started_at: now,
            finished_at: now,
        };
        let write = StatusWrite {
            endpoint_id,
            status: status::ERROR,
            url: UrlChange::Keep,
            reason: Some(reason),
            only_at_generation: Some(owner.generation),
            ready_generation: None,
            history: Some(history),
        };
        match ctx.store.write(Write::Status(write)).await {
            Ok(_) => {
                for delivery in batch {
                    answered(ctx, delivery, Outcome::Error);
                }
                return PassResult::Done(Outcome::Error);
            }
            Err(err) => {
                tracing::warn!(%endpoint_id, error = %err, "cannot record the ERROR; handing events back");
            }
        }
    }
    hand_back(ctx, batch, retry::PANIC)
}

async fn run_pass(
    ctx: &PassContext,
    endpoint_id: Uuid,
    batch: &mut [Delivery],
    row: Row,
    owner: &OnceLock<Owner>,
    newer: Arc<Newer>,
    trace_id: &Option<String>,
) -> PassResult {
    let started = Instant::now();
    let load = telemetry::step_span(Step::LoadIntent);
    load.record("endpoint_id", tracing::field::display(endpoint_id));
    let loaded = match row {
        Row::Read(row) => Ok(row.map(|row| *row)),
        Row::Unread => ctx.store.load(endpoint_id).instrument(load.clone()).await,
    };
    let (mut record, name) = match loaded {
        Ok(Some(record)) => {
            let name = ctx.deployer.name_for(&ctx.render.name_prefix, record.id);
            let labels = labels(&record, &name);
            labels.record(&load);
            if telemetry::spans_exported() {
                labels.record(&Span::current());
            } else {
                // Only log lines read the pass's context then: it names the endpoint and the
                // trace already, and formatting the tenant's and project's ids for every pass
                // (which logs nothing when all goes well) cost a few per cent of the worker's CPU.
                telemetry::record_pass_generation(record.spec_generation);
            }
            telemetry::record_outcome(&load, "found");
            let _ = owner.set(Owner {
                tenant_id: record.tenant_id,
                project_id: record.project_id,
                generation: record.spec_generation,
            });
            let here = PanicAt {
                endpoint_id,
                generation: record.spec_generation,
            };
            if ctx.failpoint_panic.contains(&here) {
                panic!(
                    "failpoint DEPLOY_WORKER_FAILPOINT_PANIC={endpoint_id}@{}",
                    here.generation
                );
            }
            (record, name)
        }
        Ok(None) => {
            telemetry::record_outcome(&load, "missing");
            if batch.iter().any(|d| d.follow == Some(Follow::Collect)) {
                let name = ctx.deployer.name_for(&ctx.render.name_prefix, endpoint_id);
                collect(ctx, endpoint_id, &name).await;
            }
            tracing::warn!(%endpoint_id, "the endpoint no longer exists; nothing to converge");
            for delivery in batch.iter() {
                answered(ctx, delivery, Outcome::Refused);
            }
            return PassResult::Refused;
        }
        Err(err) => {
            telemetry::record_error(&load, &err);
            telemetry::record_error(&Span::current(), &err);
            tracing::warn!(%endpoint_id, error = %err, "cannot load endpoint; handing events back");
            return hand_back(ctx, batch, retry::DATABASE);
        }
    };
    drop(load);

    let batch: &[Delivery] = batch;
    let follow_only = batch.iter().all(|d| d.follow.is_some());
    let deletes = batch.iter().any(|d| d.kind == EventKind::Delete);
    let follows =
        follow_only || (record.is_converged() && batch.iter().any(|d| d.follow.is_some()));
    let deploys = !deletes
        && !follows
        && !record.is_deleted()
        && !record.is_converged()
        && !record.tenant_paused;
    let rendered = deploys.then(|| {
        // What the deploy needs goes into the manifest (or the intent is refused): the row's
        // JSON documents need not stay in memory for as long as the deploy waits.
        let intent = record.take_intent();
        render_intent(ctx, &record, intent, &name)
    });
    let pass = Pass::new(ctx, &record, batch, name, newer, trace_id.clone());
    // Only the deploy's future is inline: the others are boxed, so a pass future (moved whole
    // at each call that starts it) is only as large as the deploy path needs.
    if deletes {
        Box::pin(pass.delete()).await
    } else if follows {
        Box::pin(pass.follow()).await
    } else if let Some(rendered) = rendered {
        let result = pass.deploy_rendered_intent(rendered).await;
        ctx.metrics
            .deploy_finished(result.label(), started.elapsed().as_secs_f64());
        result
    } else if record.is_deleted() {
        Box::pin(pass.record_only(
            Outcome::Skipped,
            Some("endpoint is deleted; deploy request ignored"),
        ))
        .await
    } else if record.is_converged() {
        Box::pin(pass.record_only(Outcome::Unchanged, None)).await
    } else {
        // what `deploys` leaves: the tenant is paused
        Box::pin(pass.hold_for_pause()).await
    }
}

/// What a deploy of `intent` (`record`'s) applies: the rendered manifest in k8s mode, nothing
/// in simulate mode (which applies none, so the intent is only validated); the intent's refusal
/// when it is invalid. Runs in a `render` step span.
fn render_intent(
    ctx: &PassContext,
    record: &EndpointRecord,
    intent: Intent,
    name: &str,
) -> Result<Option<Box<InferenceService>>, IntentError> {
    let render = telemetry::labelled_step_span(Step::Render, &labels(record, name));
    let rendered = render.in_scope(|| {
        if ctx.deployer.applies_manifests() {
            // boxed: the manifest lives across the deploy's awaits, in the pass future
            kserve::render(&intent, &ctx.render).map(|m| Some(Box::new(m)))
        } else {
            kserve::check(&intent, &ctx.render).map(|()| None)
        }
    });
    match &rendered {
        Ok(_) => telemetry::record_outcome(&render, "rendered"),
        Err(err) => {
            telemetry::record_outcome(&render, "invalid");
            telemetry::record_error(&render, err);
        }
    }
    rendered
}

/// The span attributes of a pass over `record`, whose InferenceService is `name`.
fn labels<'a>(record: &EndpointRecord, name: &'a str) -> SpanLabels<'a> {
    SpanLabels {
        tenant_id: record.tenant_id,
        project_id: record.project_id,
        endpoint_id: record.id,
        isvc_name: name,
        generation: record.spec_generation,
    }
}

/// Counts the events `delivery` stands for as ended with `outcome`.
fn answered(ctx: &PassContext, delivery: &Delivery, outcome: Outcome) {
    ctx.metrics
        .events(delivery.subject(), outcome, delivery.events.max(1));
}

/// Events a pass over `batch` covers, for its span and history row (the worker's own requests
/// count one each).
fn events_covered(batch: &[Delivery]) -> usize {
    batch
        .iter()
        .map(|d| usize::try_from(d.events.max(1)).unwrap_or(usize::MAX))
        .sum()
}

/// Hands `batch` back because of `reason` (see [`retry`]): the request stays, and the
/// scheduler retries it after a backoff delay (at once on another replica when this one is
/// stopping).
fn hand_back(ctx: &PassContext, batch: &[Delivery], reason: &'static str) -> PassResult {
    ctx.metrics.retries(reason, batch.len());
    for delivery in batch {
        answered(ctx, delivery, Outcome::HandedBack);
    }
    PassResult::HandedBack(None)
}

/// Removes the object of an endpoint that is `DELETED` or gone (garbage collection, asked for
/// by the guarded start-up reconcile); the delete itself still checks the object's endpoint
/// label. Failures are logged: the next start tries again.
async fn collect(ctx: &PassContext, endpoint_id: Uuid, name: &str) {
    match Box::pin(ctx.deployer.delete(endpoint_id, name)).await {
        Ok(DeleteOutcome::Deleted) => {
            ctx.metrics.followed(follow::COLLECTED, 1);
            tracing::info!(%endpoint_id, name, "collected the InferenceService of a deleted endpoint");
        }
        Ok(DeleteOutcome::Failed { reason }) => {
            tracing::warn!(%endpoint_id, %reason, "cannot collect the InferenceService");
        }
        Err(err) => {
            tracing::warn!(%endpoint_id, error = %err, "cannot collect the InferenceService yet");
        }
    }
}

/// One pass's state.
#[derive(Clone)]
struct Pass<'a> {
    ctx: &'a PassContext,
    record: &'a EndpointRecord,
    batch: &'a [Delivery],
    name: String,
    started_at: chrono::DateTime<Utc>,
    /// The pass span (current when the pass is built) and its trace id.
    span: Span,
    trace_id: Option<String>,
    /// What arrived for the endpoint since the pass started.
    newer: Arc<Newer>,
    /// History action of a deploy: `deploy`, or [`ACTION_REPAIR`].
    deploy_action: &'static str,
}

impl<'a> Pass<'a> {
    fn new(
        ctx: &'a PassContext,
        record: &'a EndpointRecord,
        batch: &'a [Delivery],
        name: String,
        newer: Arc<Newer>,
        trace_id: Option<String>,
    ) -> Self {
        Self {
            ctx,
            record,
            batch,
            name,
            newer,
            started_at: Utc::now(),
            span: Span::current(),
            trace_id,
            deploy_action: EventKind::Deploy.as_str(),
        }
    }

    fn labels(&self) -> SpanLabels<'_> {
        labels(self.record, &self.name)
    }

    /// A child span for `step`, labelled.
    fn step(&self, step: Step) -> Span {
        telemetry::labelled_step_span(step, &self.labels())
    }

    fn hand_back(&self, reason: &'static str) -> PassResult {
        hand_back(self.ctx, self.batch, reason)
    }

    fn history(
        &self,
        action: EventKind,
        outcome: Outcome,
        reason: Option<String>,
        url: Option<String>,
    ) -> HistoryEntry {
        let action = match action {
            EventKind::Deploy => self.deploy_action,
            EventKind::Delete => action.as_str(),
        };
        self.history_as(action, outcome, reason, url)
    }

    fn history_as(
        &self,
        action: &'static str,
        outcome: Outcome,
        reason: Option<String>,
        url: Option<String>,
    ) -> HistoryEntry {
        HistoryEntry {
            endpoint_id: self.record.id,
            tenant_id: self.record.tenant_id,
            project_id: self.record.project_id,
            generation: self.record.spec_generation,
            action,
            outcome,
            reason,
            isvc_name: self.name.clone(),
            url,
            events: i32::try_from(events_covered(self.batch)).unwrap_or(i32::MAX),
            trace_id: self.trace_id.clone(),
            event_published_at: self.batch.iter().filter_map(|d| d.published_at).min(),
            started_at: self.started_at,
            finished_at: Utc::now(),
        }
    }

    /// Commits `write` and counts the events the pass covered; hands back on a database error.
    ///
    /// Queues the write when called (see [`persist`](Self::persist)); the future holds what it
    /// needs to answer, not the write.
    fn commit_outcome(&self, write: Write) -> impl Future<Output = PassResult> + '_ {
        let outcome = match &write {
            Write::Status(StatusWrite {
                history: Some(h), ..
            })
            | Write::History(h) => h.outcome,
            _ => Outcome::Error,
        };
        let write_kind = match &write {
            Write::Status(s) => Some(s.status),
            _ => None,
        };
        let persisting = self.persist(write, "the outcome");
        async move {
            let (persist, applied) = match persisting.await {
                Ok(written) => written,
                Err(handed_back) => return handed_back,
            };
            match applied {
                Applied::Yes => {
                    telemetry::record_outcome(&persist, outcome.as_str());
                    if outcome == Outcome::Ready {
                        let now = Utc::now();
                        for published in self.batch.iter().filter_map(|d| d.published_at) {
                            let micros = (now - published).num_microseconds().unwrap_or(i64::MAX);
                            self.ctx.metrics.event_to_ready(micros as f64 / 1e6);
                        }
                    }
                    for delivery in self.batch {
                        answered(self.ctx, delivery, outcome);
                    }
                    self.log_committed(outcome);
                    PassResult::Done(outcome)
                }
                Applied::Superseded => {
                    self.log_committed(Outcome::Superseded);
                    if matches!(&write_kind, Some(s) if *s != status::DELETED) {
                        // rare: boxed, so every pass future does not carry its room
                        Box::pin(self.remove_if_deleted()).await;
                    }
                    self.superseded(&persist).await
                }
            }
        }
    }

    /// Commits `write` in a `persist` step span, returned with what the store did. A database
    /// error is recorded on the step and the pass, and the batch handed back: `Err` is then the
    /// pass's result. `what` names the write in the log.
    ///
    /// The write is queued when this is called; the future holds the answer's receiver, not
    /// the write (a few hundred bytes less in every pass future, which moves whole).
    fn persist(
        &self,
        write: Write,
        what: &'static str,
    ) -> impl Future<Output = Result<(Span, Applied), PassResult>> + '_ {
        let persist = self.step(Step::Persist);
        let written = self.ctx.store.write(write).instrument(persist.clone());
        async move {
            match written.await {
                Ok(applied) => Ok((persist, applied)),
                Err(err) => {
                    telemetry::record_error(&persist, &err);
                    telemetry::record_error(&self.span, &err);
                    tracing::warn!(endpoint_id = %self.record.id, error = %err,
                        "cannot record {what}; handing events back");
                    Err(self.hand_back(retry::DATABASE))
                }
            }
        }
    }

    /// Acks the batch as superseded: a newer intent (or a delete) got there first, and its own
    /// event drives it.
    async fn superseded(&self, persist: &Span) -> PassResult {
        telemetry::record_outcome(persist, Outcome::Superseded.as_str());
        for delivery in self.batch {
            answered(self.ctx, delivery, Outcome::Superseded);
        }
        PassResult::Done(Outcome::Superseded)
    }

    /// Logs a committed outcome with the trace id that leads to the pass's trace.
    ///
    /// At DEBUG: a line per outcome is too many for a shared worker at INFO (tens of µs each at
    /// thousands of events a second); the history row and the metrics carry every outcome, and
    /// an endpoint that ends `ERROR` is logged at INFO where that is decided.
    fn log_committed(&self, outcome: Outcome) {
        let trace_id = self.trace_id.as_deref().unwrap_or("-");
        tracing::debug!(endpoint_id = %self.record.id, generation = self.record.spec_generation,
            outcome = outcome.as_str(), trace_id, "outcome committed");
    }

    /// A pass the informer asked for (see [`crate::follow`]): compares the endpoint's object
    /// with its row. A `READY` endpoint whose object stayed not Ready past the debounce goes
    /// `ERROR` with KServe's reason; an `ERROR` endpoint whose object is Ready at its spec
    /// generation goes `READY` (both history action `follow`); a `READY` endpoint whose object
    /// was deleted or edited out of band is deployed again (action `repair`, rate-limited).
    /// Anything else is some other pass's business and changes nothing.
    async fn follow(&self) -> PassResult {
        let record = self.record;
        if record.is_deleted() {
            if self.batch.iter().any(|d| d.follow == Some(Follow::Collect)) {
                collect(self.ctx, record.id, &self.name).await;
            }
            return self.nothing_to_follow().await;
        }
        let ready = record.is_converged();
        let errored = record.status == status::ERROR;
        if !ready && !errored {
            return self.nothing_to_follow().await;
        }
        let observed = self
            .ctx
            .deployer
            .observe(record.id, &self.name, record.spec_generation);
        if !matches!(observed, Observation::NotReady { .. }) {
            self.ctx.unready_since.remove(&record.id);
        }
        match observed {
            Observation::Ready { url } if errored => {
                self.ctx.metrics.followed(follow::RECOVERED, 1);
                tracing::info!(endpoint_id = %record.id, "InferenceService Ready again; endpoint READY");
                let history = self.history_as(
                    ACTION_FOLLOW,
                    Outcome::Ready,
                    Some("the InferenceService is Ready again".to_owned()),
                    Some(url.clone()),
                );
                let mut write =
                    self.status_write(status::READY, UrlChange::Set(url), None, Some(history));
                write.ready_generation = Some(record.spec_generation);
                self.commit_outcome(Write::Status(write)).await
            }
            Observation::NotReady { reason, since } if ready => {
                let first_seen = *self
                    .ctx
                    .unready_since
                    .entry(record.id)
                    .or_insert_with(Utc::now);
                let since = since.map_or(first_seen, |since| since.min(first_seen));
                let elapsed = (Utc::now() - since).to_std().unwrap_or_default();
                if let Some(left) = self.ctx.follow_debounce.checked_sub(elapsed)
                    && !left.is_zero()
                {
                    // judged again once the debounce has passed
                    self.ctx
                        .deployer
                        .follow_after(record.id, left + Duration::from_millis(200));
                    return self.nothing_to_follow().await;
                }
                self.ctx.unready_since.remove(&record.id);
                self.ctx.metrics.followed(follow::NOT_READY, 1);
                tracing::info!(endpoint_id = %record.id, %reason, "InferenceService not Ready past the debounce; endpoint ERROR");
                let history =
                    self.history_as(ACTION_FOLLOW, Outcome::Error, Some(reason.clone()), None);
                let write =
                    self.status_write(status::ERROR, UrlChange::Keep, Some(reason), Some(history));
                self.commit_outcome(Write::Status(write)).await
            }
            // a paused tenant's objects are left as they are until the pause is lifted
            Observation::Missing | Observation::Drifted if ready && !record.tenant_paused => {
                let what = if observed == Observation::Missing {
                    follow::REPAIR_MISSING
                } else {
                    follow::REPAIR_DRIFT
                };
                if let Err(wait) = self.ctx.repairs.take(record.id) {
                    self.ctx.metrics.followed(follow::REPAIR_THROTTLED, 1);
                    tracing::warn!(endpoint_id = %record.id, ?wait,
                        "InferenceService changed out of band again; repair throttled");
                    self.ctx.deployer.follow_after(record.id, wait);
                    return self.nothing_to_follow().await;
                }
                self.ctx.metrics.followed(what, 1);
                tracing::info!(endpoint_id = %record.id, cause = what.1,
                    "InferenceService deleted or changed out of band; applying it again");
                let repair = Pass {
                    deploy_action: ACTION_REPAIR,
                    ..self.clone()
                };
                repair.deploy().await
            }
            _ => self.nothing_to_follow().await,
        }
    }

    /// A follow-up with nothing to do: no write; deliveries from the stream in the batch (a
    /// duplicate event of a converged endpoint) are recorded as `unchanged` as usual.
    async fn nothing_to_follow(&self) -> PassResult {
        if self.batch.iter().any(|d| d.events > 0) {
            return self.record_only(Outcome::Unchanged, None).await;
        }
        for delivery in self.batch {
            answered(self.ctx, delivery, Outcome::Unchanged);
        }
        PassResult::Done(Outcome::Unchanged)
    }

    async fn record_only(&self, outcome: Outcome, reason: Option<&str>) -> PassResult {
        let entry = self.history(
            EventKind::Deploy,
            outcome,
            reason.map(str::to_owned),
            self.record.url.clone(),
        );
        self.commit_outcome(Write::History(entry)).await
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

    /// The tenant is paused: records the endpoint `DEPLOYING` with [`PAUSED_REASON`] (the
    /// durable intent to deploy it, which the resume re-publishes) and acks.
    async fn hold_for_pause(&self) -> PassResult {
        tracing::info!(endpoint_id = %self.record.id, tenant_id = %self.record.tenant_id,
            "tenant paused; deploy held until it is resumed");
        let reason = PAUSED_REASON.to_owned();
        let history = self.history(
            EventKind::Deploy,
            Outcome::Paused,
            Some(reason.clone()),
            self.record.url.clone(),
        );
        let write = self.status_write(
            status::DEPLOYING,
            UrlChange::Keep,
            Some(reason),
            Some(history),
        );
        self.commit_outcome(Write::Status(write)).await
    }

    async fn fail(&self, action: EventKind, reason: String) -> PassResult {
        telemetry::record_error(&self.span, &reason);
        tracing::info!(endpoint_id = %self.record.id, %reason, "endpoint ends in ERROR");
        let history = self.history(action, Outcome::Error, Some(reason.clone()), None);
        let write = self.status_write(status::ERROR, UrlChange::Keep, Some(reason), Some(history));
        self.commit_outcome(Write::Status(write)).await
    }

    /// Runs `work`, unless shutdown reaches `stop_at` first (`None`).
    async fn guarded<F: std::future::Future>(&self, stop_at: Phase, work: F) -> Option<F::Output> {
        let mut phase = self.ctx.phase.clone();
        let stopped = async move {
            // An error means the worker is gone: treat it as stopped too.
            let _ = phase.wait_for(|phase| *phase >= stop_at).await;
        };
        tokio::select! {
            output = work => Some(output),
            () = stopped => None,
        }
    }

    async fn deploy(&self) -> PassResult {
        let rendered = render_intent(self.ctx, self.record, self.record.intent(), &self.name);
        self.deploy_rendered_intent(rendered).await
    }

    /// Deploys what [`render_intent`] made of the intent; an invalid intent ends `ERROR`.
    async fn deploy_rendered_intent(
        &self,
        rendered: Result<Option<Box<InferenceService>>, IntentError>,
    ) -> PassResult {
        let manifest = match rendered {
            Ok(manifest) => manifest,
            Err(err) => return self.fail(EventKind::Deploy, err.to_string()).await,
        };
        let (fire, interrupt) = Interrupt::new();
        // Runs beside the deploy for as long as it waits, and fires the interrupt once the
        // intent has moved on; it never finishes by itself.
        let watching = self.watch_for_newer(fire);
        tokio::select! {
            result = self.deploy_rendered(manifest.as_deref(), &interrupt) => result,
            never = watching => match never {},
        }
    }

    /// Resolves (firing `fire`) only once the intent this pass converges to has moved on: a
    /// delete arrived, or the row's spec generation is newer than the pass's (a re-read tells,
    /// so events of the same generation — a retry, a duplicate — change nothing).
    async fn watch_for_newer(&self, fire: FireInterrupt) -> std::convert::Infallible {
        loop {
            // once the actor is gone nothing more arrives, and this waits forever
            let delete = self.newer.next().await;
            let moved_on = delete
                || match self.ctx.store.load(self.record.id).await {
                    Ok(Some(row)) => {
                        row.is_deleted() || row.spec_generation > self.record.spec_generation
                    }
                    Ok(None) => true,
                    // cannot tell: keep converging to what we have
                    Err(_) => false,
                };
            if moved_on {
                fire.fire();
                return std::future::pending().await;
            }
        }
    }

    /// The cluster refuses the worker itself: the endpoint stays `DEPLOYING` with the reason
    /// an operator acts on, and the request runs again after the longest retry delay — no pass
    /// slot is held meanwhile, and once the cause is fixed it converges with no new event.
    async fn misconfigured(&self, reason: String) -> PassResult {
        tracing::warn!(endpoint_id = %self.record.id, %reason, "the cluster refuses the worker");
        telemetry::record_error(&self.span, &reason);
        let write = self.status_write(status::DEPLOYING, UrlChange::Keep, Some(reason), None);
        if let Err(handed_back) = self.persist(Write::Status(write), "the reason").await {
            return handed_back;
        }
        self.ctx
            .metrics
            .retries(retry::MISCONFIGURED, self.batch.len());
        for delivery in self.batch {
            answered(self.ctx, delivery, Outcome::HandedBack);
        }
        PassResult::HandedBack(Some(self.ctx.backoff.max))
    }

    /// After a deploy's outcome was refused: if the endpoint was deleted meanwhile (by another
    /// replica's delete pass, say), whatever this pass applied is an orphan — remove it before
    /// answering, so nothing keeps running for a deleted endpoint.
    async fn remove_if_deleted(&self) {
        match self.ctx.store.load(self.record.id).await {
            Ok(Some(row)) if row.is_deleted() => {
                tracing::info!(endpoint_id = %self.record.id,
                    "the endpoint was deleted during the deploy; removing what it applied");
                let removed = Box::pin(self.ctx.deployer.delete(self.record.id, &self.name)).await;
                if let Err(err) = removed {
                    tracing::warn!(endpoint_id = %self.record.id, error = %err,
                        "cannot remove the deleted endpoint's InferenceService yet");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(endpoint_id = %self.record.id, error = %err,
                "cannot tell whether the endpoint was deleted meanwhile"),
        }
    }

    /// Records that a newer intent interrupted this pass while it waited for `what`.
    async fn interrupted(&self, what: &str) -> PassResult {
        let reason = format!(
            "a newer intent arrived while waiting for {what}; the next pass converges to it"
        );
        self.record_only(Outcome::Superseded, Some(&reason)).await
    }

    async fn deploy_rendered(
        &self,
        manifest: Option<&InferenceService>,
        interrupt: &Interrupt,
    ) -> PassResult {
        if *self.ctx.phase.borrow() >= Phase::Draining {
            return self.hand_back(retry::SHUTDOWN);
        }
        let deploying = self.status_write(status::DEPLOYING, UrlChange::Keep, None, None);
        if self.ctx.deployer.applies_manifests() {
            // Nothing reaches the cluster before the database has said the intent is still
            // this one (a deleted or newer endpoint's manifest is never applied).
            match self.persist(Write::Status(deploying), "DEPLOYING").await {
                Ok((persist, Applied::Yes)) => telemetry::record_outcome(&persist, "deploying"),
                Ok((persist, Applied::Superseded)) => return self.superseded(&persist).await,
                Err(handed_back) => return handed_back,
            }
        } else {
            // A deployer that touches nothing outside the database has nothing to guard: the
            // report is queued, and the outcome's write (under the same guard) decides. A
            // deploy that ends before the report commits folds it into the outcome: one row
            // update instead of two, and no one could have seen the `DEPLOYING` in between.
            // Its step span stays in the trace (the write's place in the pass), without a wait.
            let persist = self.step(Step::Persist);
            self.ctx.store.queue(Write::Status(deploying));
            telemetry::record_outcome(&persist, "deploying");
        }
        let deploy = self.step(Step::Deploy);
        let mut overwrite_newer = false;
        let deployed = loop {
            let request = DeployRequest {
                endpoint_id: self.record.id,
                tenant_id: self.record.tenant_id,
                project_id: self.record.project_id,
                generation: self.record.spec_generation,
                manifest,
                name: &self.name,
                interrupt,
                overwrite_newer,
            };
            let deployed = self
                .guarded(
                    Phase::Aborting,
                    // boxed: a Kubernetes deploy future is several KiB, and every pass future
                    // (one per in-flight deploy) would otherwise carry it inline, several
                    // times over
                    Box::pin(self.ctx.deployer.deploy(request).instrument(deploy.clone())),
                )
                .await;
            if overwrite_newer || !matches!(deployed, Some(Ok(DeployOutcome::Superseded))) {
                break deployed;
            }
            // The object records a newer generation than this pass's. Normally another
            // replica applied a newer intent, and the database says so; if the database holds
            // nothing newer (it was restored from a backup), it is the source of truth.
            match self.ctx.store.load(self.record.id).await {
                Ok(Some(row))
                    if !row.is_deleted() && row.spec_generation <= self.record.spec_generation =>
                {
                    tracing::warn!(endpoint_id = %self.record.id,
                        generation = self.record.spec_generation,
                        "the InferenceService records a newer spec generation than the database \
                         holds; the database is the source of truth, applying its intent");
                    overwrite_newer = true;
                }
                Ok(_) => break deployed,
                Err(err) => {
                    tracing::warn!(endpoint_id = %self.record.id, error = %err,
                        "cannot re-read the endpoint; handing events back");
                    return self.hand_back(retry::DATABASE);
                }
            }
        };
        match &deployed {
            Some(Ok(DeployOutcome::Ready { .. })) => telemetry::record_outcome(&deploy, "ready"),
            Some(Ok(DeployOutcome::Superseded)) => {
                telemetry::record_outcome(&deploy, Outcome::Superseded.as_str())
            }
            Some(Ok(DeployOutcome::Interrupted)) => {
                telemetry::record_outcome(&deploy, "interrupted")
            }
            Some(Ok(DeployOutcome::Failed { reason })) => {
                telemetry::record_outcome(&deploy, "failed");
                telemetry::record_error(&deploy, reason);
            }
            Some(Err(err)) => {
                telemetry::record_outcome(&deploy, "retry");
                telemetry::record_error(&deploy, err);
                telemetry::record_error(&self.span, err);
            }
            None => telemetry::record_outcome(&deploy, "aborted"),
        }
        drop(deploy);
        match deployed {
            Some(Ok(DeployOutcome::Ready { url })) => {
                let history =
                    self.history(EventKind::Deploy, Outcome::Ready, None, Some(url.clone()));
                let mut write =
                    self.status_write(status::READY, UrlChange::Set(url), None, Some(history));
                write.ready_generation = Some(self.record.spec_generation);
                self.commit_outcome(Write::Status(write)).await
            }
            // The other endings are rare: boxed, their futures take no room in every pass's
            // (which the happy path moves whole at each call).
            Some(Ok(DeployOutcome::Failed { reason })) => {
                Box::pin(self.fail(EventKind::Deploy, reason)).await
            }
            Some(Ok(DeployOutcome::Superseded)) => {
                let reason = "the InferenceService already records a newer spec generation";
                Box::pin(self.record_only(Outcome::Superseded, Some(reason))).await
            }
            Some(Ok(DeployOutcome::Interrupted)) => Box::pin(self.interrupted("the deploy")).await,
            Some(Err(DeployError::Misconfigured(reason))) => {
                Box::pin(self.misconfigured(reason)).await
            }
            Some(Err(err)) => {
                tracing::warn!(endpoint_id = %self.record.id, error = %err, "deploy failed transiently; handing events back");
                self.hand_back(retry::DEPLOYER)
            }
            None => self.hand_back(retry::SHUTDOWN),
        }
    }

    async fn delete(&self) -> PassResult {
        let delete = self.step(Step::Delete);
        let deleted = self
            .guarded(
                Phase::Aborting,
                // boxed for the same reason as the deploy future
                Box::pin(
                    self.ctx
                        .deployer
                        .delete(self.record.id, &self.name)
                        .instrument(delete.clone()),
                ),
            )
            .await;
        match &deleted {
            Some(Ok(DeleteOutcome::Deleted)) => telemetry::record_outcome(&delete, "deleted"),
            Some(Ok(DeleteOutcome::Failed { reason })) => {
                telemetry::record_outcome(&delete, "failed");
                telemetry::record_error(&delete, reason);
            }
            Some(Err(err)) => {
                telemetry::record_outcome(&delete, "retry");
                telemetry::record_error(&delete, err);
                telemetry::record_error(&self.span, err);
            }
            None => telemetry::record_outcome(&delete, "aborted"),
        }
        drop(delete);
        match deleted {
            Some(Ok(DeleteOutcome::Deleted)) => {
                let history = self.history(EventKind::Delete, Outcome::Deleted, None, None);
                let mut write =
                    self.status_write(status::DELETED, UrlChange::Clear, None, Some(history));
                // A delete applies whatever the generation.
                write.only_at_generation = None;
                self.commit_outcome(Write::Status(write)).await
            }
            Some(Ok(DeleteOutcome::Failed { reason })) => {
                self.fail(EventKind::Delete, reason).await
            }
            Some(Err(err)) => {
                tracing::warn!(endpoint_id = %self.record.id, error = %err, "delete failed transiently; handing events back");
                self.hand_back(retry::DEPLOYER)
            }
            None => self.hand_back(retry::SHUTDOWN),
        }
    }
}
