//! Deployers: where an InferenceService is made real.
//!
//! The endpoint actor decides *what* should exist; a [`Deployer`] makes it so and reports how
//! it went. Two implementations share one interface:
//!
//! - [`simulate`]: no cluster; after a configurable delay the endpoint is Ready at
//!   `http://<name>.example.local` (local development, the demo, load tests);
//! - `kubernetes`: server-side apply through the `kube` client, then a watch until KServe
//!   reports this generation Ready (k8s mode).
//!
//! The split between outcomes and errors matters for delivery: a [`DeployOutcome`] is final
//! and is written to Postgres (the message is then acked or terminated), while a
//! [`DeployError`] is transient and the message is handed back to JetStream to retry later.
//!
//! Tracing: the pass wraps a deploy in a `deploy` span; each deployer opens its `apply` and
//! `wait_ready` children with [`deploy_step_span`]
//! so both modes produce the same span tree. Kubernetes API error responses are counted with
//! [`Metrics::kube_error`](crate::metrics::Metrics::kube_error).

pub mod informer;
pub mod kubernetes;
pub mod lean;
pub mod simulate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::Span;
use uuid::Uuid;

use crate::kserve::InferenceService;
use crate::telemetry::{self, SpanLabels, Step};

/// Every verb the worker uses on `inferenceservices` (group `serving.kserve.io`) in its
/// namespace: `patch` (server-side apply), `get`, `list` and `watch` (waiting for Ready),
/// `create` and `delete`. This is the contract the RBAC Role in `deploy/k8s/` must match
/// exactly — no more, no wildcard; a test checks it. Change both together.
pub const INFERENCESERVICE_VERBS: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// The final result of a deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployOutcome {
    /// Ready at this generation, serving at `url`.
    Ready {
        /// Where the endpoint serves.
        url: String,
    },
    /// Failed for good; `reason` says why in words a person can act on.
    Failed {
        /// What went wrong and what to do.
        reason: String,
    },
    /// The cluster already holds a newer spec generation (applied by another replica); this
    /// pass records nothing, the newer intent's own pass does.
    Superseded,
    /// A newer intent (or a delete) arrived while the deploy waited — for Ready or between
    /// retries — and the [`Interrupt`] fired: the wait stopped, the next pass converges to
    /// the newer intent.
    Interrupted,
}

/// Fires when a newer intent makes the running deploy moot. Deployers stop *waiting* when it
/// fires (for Ready, between retries), never in the middle of a write, so the writes of two
/// passes over one object never interleave.
#[derive(Debug, Clone)]
pub struct Interrupt(Arc<InterruptState>);

/// The switch that fires an [`Interrupt`].
#[derive(Debug)]
pub struct FireInterrupt(Arc<InterruptState>);

/// A flag and its waiters: every pass makes one, so it is an atomic and a [`Notify`], not a
/// channel.
#[derive(Debug, Default)]
struct InterruptState {
    fired: AtomicBool,
    waiters: Notify,
}

impl Interrupt {
    /// An interrupt and the switch that fires it.
    pub fn new() -> (FireInterrupt, Self) {
        let state = Arc::new(InterruptState::default());
        (FireInterrupt(state.clone()), Self(state))
    }

    /// An interrupt that never fires.
    pub fn never() -> Self {
        Self::new().1
    }

    /// Resolves once it has fired; never, if it cannot fire any more.
    pub async fn fired(&self) {
        let notified = self.0.waiters.notified();
        tokio::pin!(notified);
        // registered before the flag is read, so a firing in between is not missed
        notified.as_mut().enable();
        if !self.is_fired() {
            notified.await;
        }
    }

    /// Whether it has fired.
    pub fn is_fired(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }
}

impl FireInterrupt {
    /// Fires the interrupt: every wait on it ends, now and later.
    pub fn fire(&self) {
        self.0.fired.store(true, Ordering::Release);
        self.0.waiters.notify_waiters();
    }
}

/// What the cluster shows of an endpoint's object, for following it after a pass (see
/// [`crate::follow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Nothing to act on: simulate mode, the informer has not synced, or the object is of
    /// another spec generation or mid-rollout (a pass for that generation is its business).
    Unknown,
    /// Ready at the endpoint's generation.
    Ready {
        /// Where it serves.
        url: String,
    },
    /// The controller observed the endpoint's generation and it is not Ready.
    NotReady {
        /// KServe's reason and message, in words.
        reason: String,
        /// Since when, from the Ready condition's `lastTransitionTime` (`None`: not given).
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// No object (deleted out of band).
    Missing,
    /// Someone else changed its spec since the worker applied it.
    Drifted,
}

/// The final result of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The InferenceService is gone (or never existed).
    Deleted,
    /// Refused for good (for example the object belongs to another endpoint).
    Failed {
        /// What went wrong and what to do.
        reason: String,
    },
}

/// A failure that is not the endpoint's fault: the deploy is retried later, never `ERROR`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeployError {
    /// A Kubernetes API call kept failing with a passing error (5xx, 429, conflicts,
    /// unreachable) until the deploy's time budget ran out: retry with backoff.
    #[error("cannot {what}: {reason}")]
    Api {
        /// What was being done (`apply InferenceService ns/name`, …).
        what: String,
        /// The API server's answer, readably (its message, code and reason).
        reason: String,
        /// The client's error.
        #[source]
        source: Arc<kube::Error>,
    },
    /// The cluster could not be watched, or the wait was interrupted: retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// The cluster refuses the worker itself (401/403, a missing namespace): nothing an
    /// endpoint's owner can fix. The reason says what an operator must grant or create; it is
    /// shown as the endpoint's `status_reason` and on `/readyz` until a deploy gets through.
    #[error("{0}")]
    Misconfigured(String),
}

/// The last misconfiguration a deployer met, until a later write succeeds; cheap to clone.
/// `/readyz` reports it so a broken RBAC rule is loud, not a silent retry loop.
#[derive(Debug, Clone, Default)]
pub struct Alarm(Arc<Mutex<Option<String>>>);

impl Alarm {
    /// The current alarm, if any.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Raises the alarm with `reason`.
    pub fn raise(&self, reason: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
    }

    /// Clears the alarm (a write went through).
    pub fn clear(&self) {
        let mut alarm = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if alarm.is_some() {
            *alarm = None;
        }
    }
}

/// What a deploy is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct DeployRequest<'a> {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Its tenant (for span attributes and logs).
    pub tenant_id: Uuid,
    /// Its project (for span attributes and logs).
    pub project_id: Uuid,
    /// Its spec generation.
    pub generation: i64,
    /// The manifest to apply; `None` for a deployer that applies none (simulate mode, see
    /// [`Deployer::applies_manifests`]), whose intent the pass only validated.
    pub manifest: Option<&'a InferenceService>,
    /// The InferenceService name.
    pub name: &'a str,
    /// Fires when a newer intent makes this deploy moot.
    pub interrupt: &'a Interrupt,
    /// Apply even over an object that records a newer spec generation: set once the database
    /// (the source of truth) confirmed it holds no newer intent, e.g. after a restore.
    pub overwrite_newer: bool,
}

/// The deployer the worker runs with.
#[derive(Clone)]
pub enum Deployer {
    /// No cluster (DEPLOY_MODE=simulate).
    Simulate(simulate::SimulateDeployer),
    /// A Kubernetes cluster with KServe (DEPLOY_MODE=k8s).
    Kubernetes(Box<kubernetes::KubernetesDeployer>),
}

impl Deployer {
    /// Converges the cluster to `request` and waits for the outcome.
    pub async fn deploy(&self, request: DeployRequest<'_>) -> Result<DeployOutcome, DeployError> {
        match self {
            Self::Simulate(d) => d.deploy(request).await,
            // boxed: the Kubernetes future is ~4 KiB, and inline it would size every deploy
            // future, simulate mode's included
            Self::Kubernetes(d) => Box::pin(d.deploy(request)).await,
        }
    }

    /// Whether deploys apply a manifest: simulate mode applies nothing, so a pass only
    /// validates the intent (the same checks, without building the manifest it would throw
    /// away).
    pub fn applies_manifests(&self) -> bool {
        !matches!(self, Self::Simulate(_))
    }

    /// The deployer's misconfiguration alarm (simulate mode never raises one).
    pub fn alarm(&self) -> Alarm {
        match self {
            Self::Simulate(_) => Alarm::default(),
            Self::Kubernetes(d) => d.alarm(),
        }
    }

    /// The InferenceService name of `endpoint_id` under name prefix `prefix`: the worker's own
    /// naming, or the earlier worker's for an object it adopts.
    pub fn name_for(&self, prefix: &str, endpoint_id: Uuid) -> String {
        match self {
            Self::Simulate(_) => crate::kserve::isvc_name(prefix, endpoint_id),
            Self::Kubernetes(d) => d.name_for(prefix, endpoint_id),
        }
    }

    /// What the cluster shows of `endpoint_id`'s object `name`, judged against spec
    /// `generation` (no request: the informer's cache).
    pub fn observe(&self, endpoint_id: Uuid, name: &str, generation: i64) -> Observation {
        match self {
            Self::Simulate(_) => Observation::Unknown,
            Self::Kubernetes(d) => d.observe(endpoint_id, name, generation),
        }
    }

    /// Asks for a follow-up pass over `endpoint_id` after `delay` (k8s mode; simulate mode has
    /// nothing to follow).
    pub fn follow_after(&self, endpoint_id: Uuid, delay: std::time::Duration) {
        if let Self::Kubernetes(d) = self {
            d.informer()
                .router()
                .route_after(endpoint_id, crate::delivery::Follow::Check, delay);
        }
    }

    /// Removes the endpoint's InferenceService and waits until it is gone.
    pub async fn delete(
        &self,
        endpoint_id: Uuid,
        name: &str,
    ) -> Result<DeleteOutcome, DeployError> {
        match self {
            Self::Simulate(d) => d.delete(endpoint_id, name).await,
            Self::Kubernetes(d) => Box::pin(d.delete(endpoint_id, name)).await,
        }
    }
}

/// Which part of a deploy a deployer is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployStep {
    /// Sending the manifest.
    Apply,
    /// Waiting for Ready.
    WaitReady,
}

/// The span a deployer opens for `step` of `request` (a child of the pass's `deploy` span),
/// labelled like every other step. Deployers instrument the work with it and record the
/// outcome with [`telemetry::record_outcome`] or the failure with [`telemetry::record_error`].
pub fn deploy_step_span(step: DeployStep, request: &DeployRequest<'_>) -> Span {
    let step = match step {
        DeployStep::Apply => Step::Apply,
        DeployStep::WaitReady => Step::WaitReady,
    };
    let labels = SpanLabels {
        tenant_id: request.tenant_id,
        project_id: request.project_id,
        endpoint_id: request.endpoint_id,
        isvc_name: request.name,
        generation: request.generation,
    };
    telemetry::labelled_step_span(step, &labels)
}
