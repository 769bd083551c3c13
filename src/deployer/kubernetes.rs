//! k8s mode: apply the InferenceService through the Kubernetes API and watch it until KServe
//! reports this generation Ready.
//!
//! Credentials come from `kube`'s usual inference: `KUBECONFIG` or `~/.kube/config` outside a
//! cluster, the service-account token and CA inside one.
//!
//! **Apply.** The object is read first, and the worker refuses to touch it when its
//! `mlops.platform/endpoint-id` label names another endpoint (or none: it was not made by the
//! worker) — an `ERROR` with a reason, never an overwrite. When the object records a newer spec
//! generation (another replica applied a newer intent) this pass is superseded and writes
//! nothing. Otherwise it is written with server-side apply (field manager `deploy-worker`,
//! `force`, as a controller that owns the spec does) carrying the `resourceVersion` it was read
//! at, so a concurrent writer makes the apply fail with 409 and the read-check-apply starts
//! over; a missing object is created with `POST` so two creators cannot both win. KServe also
//! refuses to change an object's deployment mode; such an intent ends `ERROR` with a reason
//! instead of a rejected apply.
//!
//! **Wait.** A watch on the object (kube-runtime's watcher: relists after `410 Gone`, reconnects
//! with backoff after a cut) until `status.observedGeneration` reaches the generation the apply
//! produced, `status.url` is set and `Ready` is `True`. Right after an update KServe still shows
//! the previous generation's `Ready=True`; the generation check is what keeps that from being
//! believed. `Ready=False` with a terminal reason ends `ERROR` with KServe's reason and message;
//! no outcome within `DEPLOY_TIMEOUT_SECONDS` ends `ERROR` saying so. There is no polling loop.
//!
//! **Delete.** Delete with the object's uid as precondition, then watch until it is gone
//! (a 404 counts as gone).
//!
//! API errors 429, 5xx, 409 conflicts, timeouts and connection failures are retried with
//! backoff within the deploy's time budget; when the budget runs out the deploy is handed back
//! to JetStream as a transient failure. 400/422 (the manifest itself is refused) are final.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use super::informer::{Informer, Router, Sighting};
use super::lean::LeanInferenceService;
use super::{
    Alarm, DeleteOutcome, DeployError, DeployOutcome, DeployRequest, DeployStep, Interrupt,
    Observation, deploy_step_span,
};
use crate::backoff::Backoff;
use crate::intent::DeploymentMode;
use crate::kserve::{
    self, ANNOTATION_DEPLOYMENT_MODE, ANNOTATION_SPEC_HASH, FIELD_MANAGER, InferenceService,
    spec_hash,
};
use crate::metrics::Metrics;
use crate::telemetry;

/// `Ready=False` reasons after which KServe will not become Ready without a new spec.
const TERMINAL_REASONS: &[&str] = &[
    "RevisionFailed",
    "ProgressDeadlineExceeded",
    "InvalidSpec",
    "ModelLoadFailed",
];
/// `status.modelStatus.transitionStatus` values that mean the rollout failed for good.
const TERMINAL_TRANSITIONS: &[&str] = &["BlockedByFailedLoad", "InvalidSpec"];

/// Delays between retries of a transient API error, and between reconnects of a deploy's
/// watch: 100 ms, doubling to 5 s.
const API_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

/// Could not set up the Kubernetes client.
#[derive(Debug, thiserror::Error)]
pub enum KubeConfigError {
    /// No usable credentials were found.
    #[error(
        "cannot configure the Kubernetes client: {0}; run inside a cluster with a service \
         account, or set KUBECONFIG (or provide ~/.kube/config)"
    )]
    Client(#[source] kube::Error),
    /// The kubeconfig given could not be used.
    #[error("cannot use kubeconfig {}: {source}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong with it.
        #[source]
        source: kube::config::KubeconfigError,
    },
}

/// The credentials of a kubeconfig user (or the in-cluster service account): bearer token,
/// password, client key, and the contents of the token and key files they name. Read through
/// the user's serialized form, which spells the secret fields out.
fn credential_secrets(auth: &kube::config::AuthInfo) -> telemetry::Secrets {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(auth) else {
        return telemetry::Secrets::default();
    };
    let text = |key: &str| fields.get(key).and_then(|v| v.as_str());
    let mut found: Vec<String> = ["token", "password", "client-key-data"]
        .into_iter()
        .filter_map(text)
        .map(str::to_owned)
        .collect();
    for file in ["tokenFile", "client-key"].into_iter().filter_map(text) {
        if let Ok(contents) = std::fs::read_to_string(file) {
            found.push(contents.trim().to_owned());
        }
    }
    telemetry::Secrets::new(found)
}

/// Deployer for `DEPLOY_MODE=k8s`.
#[derive(Clone)]
pub struct KubernetesDeployer {
    /// Parses objects without their managed fields (see [`LeanInferenceService`]).
    api: Api<LeanInferenceService>,
    namespace: String,
    timeout: Duration,
    metrics: Arc<Metrics>,
    alarm: Alarm,
    informer: Arc<Informer>,
    /// Objects the earlier worker made, by endpoint (see [`kserve::legacy_name`]): found by one
    /// list at start-up; their endpoints keep these names.
    legacy: Arc<DashMap<Uuid, String>>,
}

/// What one read-check-apply round decided.
enum ApplyDecision {
    /// Written; the object as the API server returned it.
    Written(Box<InferenceService>),
    /// Final refusal (foreign object, mode change, invalid manifest).
    Refused(String),
    /// The object records a newer spec generation.
    Superseded,
}

/// Why a retried operation stopped without an answer.
enum Halt {
    /// The time budget ran out: a transient failure, handed back.
    Budget(DeployError),
    /// A newer intent fired the interrupt between two attempts.
    Interrupted,
    /// The cluster refuses the worker itself (401/403, no such namespace); the reason says
    /// what an operator must fix.
    Misconfigured(String),
}

/// How an observed object relates to the deploy being waited for.
enum Observed {
    Ready(String),
    Failed(String),
    Superseded,
    Pending(String),
}

impl KubernetesDeployer {
    /// A deployer using `kubeconfig`, or else credentials inferred from the environment
    /// (`~/.kube/config`, then the in-cluster service account). Its informer routes changes
    /// to objects nobody waits on through `router`, and an object that stops being Ready again
    /// after `debounce`.
    pub async fn connect(
        kubeconfig: Option<&Path>,
        namespace: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
        router: Router,
        debounce: Duration,
    ) -> Result<Self, KubeConfigError> {
        let config = match kubeconfig {
            None => kube::Config::infer()
                .await
                .map_err(|err| KubeConfigError::Client(kube::Error::InferConfig(err)))?,
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|source| KubeConfigError::File {
                    path: path.to_owned(),
                    source,
                })?;
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|source| KubeConfigError::File {
                        path: path.to_owned(),
                        source,
                    })?
            }
        };
        telemetry::register_secrets(credential_secrets(&config.auth_info));
        let client = kube::Client::try_from(config).map_err(KubeConfigError::Client)?;
        let api: Api<LeanInferenceService> = Api::namespaced(client, namespace);
        let legacy = Arc::new(DashMap::new());
        // one list of objects carrying the earlier worker's endpoint label: those get adopted
        let params = ListParams::default().labels(kserve::LEGACY_LABEL_ENDPOINT_ID);
        match api.list(&params).await {
            Ok(list) => {
                for object in list {
                    let object = InferenceService::from(object);
                    let id = object.endpoint_id().and_then(|id| id.parse::<Uuid>().ok());
                    if let (Some(id), Some(name)) = (id, object.metadata.name)
                        && name == kserve::legacy_name(id)
                    {
                        legacy.insert(id, name);
                    }
                }
                if !legacy.is_empty() {
                    tracing::info!(
                        objects = legacy.len(),
                        "found InferenceServices of the earlier worker; their endpoints adopt them"
                    );
                }
            }
            Err(err) => tracing::warn!(error = %describe(&err),
                "cannot list the earlier worker's InferenceServices; none will be adopted"),
        }
        let informer = Arc::new(Informer::start(
            api.clone(),
            metrics.clone(),
            router,
            debounce,
        ));
        Ok(Self {
            api,
            namespace: namespace.to_owned(),
            timeout,
            metrics,
            alarm: Alarm::default(),
            informer,
            legacy,
        })
    }

    /// The InferenceService name of `endpoint_id`: the earlier worker's, when it made one.
    pub fn name_for(&self, prefix: &str, endpoint_id: Uuid) -> String {
        self.legacy.get(&endpoint_id).map_or_else(
            || kserve::isvc_name(prefix, endpoint_id),
            |name| name.clone(),
        )
    }

    /// Endpoints whose objects the earlier worker made (adopted or not yet).
    pub fn legacy_endpoints(&self) -> Vec<Uuid> {
        self.legacy.iter().map(|entry| *entry.key()).collect()
    }

    /// The shared watch.
    pub fn informer(&self) -> &Arc<Informer> {
        &self.informer
    }

    /// What the informer's cache shows of `endpoint_id`'s object `name` at spec `generation`.
    pub(super) fn observe(&self, endpoint_id: Uuid, name: &str, generation: i64) -> Observation {
        if !self.informer.is_synced() {
            return Observation::Unknown;
        }
        let Some(object) = self.informer.cached(name) else {
            return Observation::Missing;
        };
        if object.endpoint_id() != Some(endpoint_id.to_string().as_str())
            || object.spec_generation() != Some(generation)
        {
            return Observation::Unknown;
        }
        if object.has_drifted() {
            return Observation::Drifted;
        }
        if object.is_ready() {
            return match object.status.as_ref().and_then(|s| s.url.clone()) {
                Some(url) => Observation::Ready { url },
                None => Observation::Unknown,
            };
        }
        let Some(status) = &object.status else {
            return Observation::Unknown;
        };
        let observed = status.observed_generation.unwrap_or(0);
        match status.condition("Ready") {
            Some(ready) if observed >= object.metadata.generation.unwrap_or(1) => {
                Observation::NotReady {
                    reason: format!(
                        "InferenceService {}/{name} is no longer Ready: {}: {}",
                        self.namespace,
                        ready.reason.as_deref().unwrap_or("no reason"),
                        ready.message.as_deref().unwrap_or("no message")
                    ),
                    since: ready
                        .last_transition_time
                        .as_deref()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&chrono::Utc)),
                }
            }
            _ => Observation::Unknown,
        }
    }

    /// Reads the object called `name` (no managed fields), if it exists.
    async fn get(&self, name: &str) -> Result<Option<InferenceService>, kube::Error> {
        Ok(self.api.get_opt(name).await?.map(InferenceService::from))
    }

    /// The misconfiguration alarm (see [`Alarm`]).
    pub fn alarm(&self) -> Alarm {
        self.alarm.clone()
    }

    /// When `err` says the cluster refuses the worker itself, what an operator must fix.
    fn misconfiguration(&self, err: &kube::Error, what: &str) -> Option<String> {
        let kube::Error::Api(status) = err else {
            return None;
        };
        if webhook_denied(status) {
            return None;
        }
        let fix = match status.code {
            401 => {
                "the Kubernetes API does not accept the worker's credentials; check the \
                    service-account token or the KUBECONFIG the worker runs with"
            }
            403 => {
                "grant the worker's service account this verb on inferenceservices \
                    (group serving.kserve.io) in the namespace: see deploy/k8s/rbac.yaml"
            }
            404 if status.message.starts_with("namespaces ") => {
                "create the namespace, or set KSERVE_NAMESPACE to the one KServe serves from"
            }
            _ => return None,
        };
        Some(format!(
            "cannot {what}: {} ({} {}); {fix}. Deploys are retried and converge by themselves \
             once this is fixed",
            status.message, status.code, status.reason
        ))
    }

    /// Counts an API error and says whether retrying can help.
    fn retryable(&self, err: &kube::Error) -> bool {
        match err {
            kube::Error::Api(status) if webhook_denied(status) => {
                // the manifest is refused (KServe's validator), not the worker: final
                self.metrics.kube_webhook_denied();
                false
            }
            kube::Error::Api(status) => {
                self.metrics.kube_error(status.code);
                // Conflicts, throttling and server trouble pass; so do 401/403/404, which a
                // fixed RBAC rule or a created namespace turns into success without a new intent.
                !matches!(status.code, 400 | 422)
            }
            _ => {
                self.metrics.kube_error(0);
                true
            }
        }
    }

    pub(super) async fn deploy(
        &self,
        request: DeployRequest<'_>,
    ) -> Result<DeployOutcome, DeployError> {
        let Some(manifest) = request.manifest else {
            return Ok(DeployOutcome::Failed {
                reason: "no manifest was rendered for this deploy; this is a deploy-worker bug: \
                         report it"
                    .to_owned(),
            });
        };
        // what every attempt applies, its spec hash computed once
        let manifest = with_spec_hash(manifest, request.name);
        let deadline = Instant::now() + self.timeout;
        // An object that vanishes during the wait (deleted out of band, an API server restored
        // empty) is applied again within the same budget.
        loop {
            let object = match self.apply_step(&request, &manifest, deadline).await {
                Ok(object) => object,
                Err(outcome) => return outcome,
            };
            let wait = deploy_step_span(DeployStep::WaitReady, &request);
            let waited = self
                .wait_ready(&request, &object, deadline)
                .instrument(wait.clone())
                .await;
            match &waited {
                Ok(Some(DeployOutcome::Ready { .. })) => telemetry::record_outcome(&wait, "ready"),
                Ok(Some(DeployOutcome::Failed { reason })) => {
                    telemetry::record_outcome(&wait, "failed");
                    telemetry::record_error(&wait, reason);
                }
                Ok(Some(DeployOutcome::Superseded)) => {
                    telemetry::record_outcome(&wait, "superseded")
                }
                Ok(Some(DeployOutcome::Interrupted)) => {
                    telemetry::record_outcome(&wait, "interrupted")
                }
                Ok(None) => telemetry::record_outcome(&wait, "vanished"),
                Err(err) => telemetry::record_error(&wait, err),
            }
            match waited {
                Ok(Some(outcome)) => return Ok(outcome),
                Ok(None) => {
                    tracing::info!(
                        name = request.name,
                        "InferenceService vanished while waiting for Ready; applying it again"
                    );
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// One traced apply: the object written, or the deploy's result when there is nothing to
    /// wait for.
    async fn apply_step(
        &self,
        request: &DeployRequest<'_>,
        manifest: &InferenceService,
        deadline: Instant,
    ) -> Result<Box<InferenceService>, Result<DeployOutcome, DeployError>> {
        let apply = deploy_step_span(DeployStep::Apply, request);
        let applied = self
            .apply(request, manifest, deadline)
            .instrument(apply.clone())
            .await;
        match applied {
            Ok(ApplyDecision::Written(object)) => {
                telemetry::record_outcome(&apply, "applied");
                Ok(object)
            }
            Ok(ApplyDecision::Refused(reason)) => {
                telemetry::record_outcome(&apply, "refused");
                telemetry::record_error(&apply, &reason);
                Err(Ok(DeployOutcome::Failed { reason }))
            }
            Ok(ApplyDecision::Superseded) => {
                telemetry::record_outcome(&apply, "superseded");
                Err(Ok(DeployOutcome::Superseded))
            }
            Err(Halt::Interrupted) => {
                telemetry::record_outcome(&apply, "interrupted");
                Err(Ok(DeployOutcome::Interrupted))
            }
            Err(Halt::Budget(err)) => {
                telemetry::record_error(&apply, &err);
                Err(Err(err))
            }
            Err(Halt::Misconfigured(reason)) => {
                telemetry::record_error(&apply, &reason);
                Err(Err(DeployError::Misconfigured(reason)))
            }
        }
    }

    /// Read, check, apply — repeated after conflicts and transient errors until `deadline`.
    async fn apply(
        &self,
        request: &DeployRequest<'_>,
        manifest: &InferenceService,
        deadline: Instant,
    ) -> Result<ApplyDecision, Halt> {
        let what = format!("apply InferenceService {}/{}", self.namespace, request.name);
        let conflicted = &std::sync::atomic::AtomicBool::new(false);
        match self
            .with_retries(deadline, &what, Some(request.interrupt), || async {
                // after a conflict the cache is behind: read the object fresh
                let fresh = conflicted.swap(false, std::sync::atomic::Ordering::Relaxed);
                let result = self.apply_once(request, manifest, fresh).await;
                if matches!(&result, Err(kube::Error::Api(status)) if status.code == 409) {
                    conflicted.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                result
            })
            .await?
        {
            Ok(applied) => Ok(applied),
            Err(err) => Ok(ApplyDecision::Refused(format!(
                "Kubernetes refused InferenceService {}/{}: {}",
                self.namespace,
                request.name,
                describe(&err)
            ))),
        }
    }

    /// Runs `op` until it succeeds or fails for good (`Ok`; the caller words a final error),
    /// backing off between transient errors; `Err` when the next retry would pass `deadline`
    /// or `interrupt` fires while backing off (never during `op` itself: a write is never cut
    /// off half-way).
    async fn with_retries<T, Fut>(
        &self,
        deadline: Instant,
        what: &str,
        interrupt: Option<&Interrupt>,
        mut op: impl FnMut() -> Fut,
    ) -> Result<Result<T, kube::Error>, Halt>
    where
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut attempt = 0;
        loop {
            let err = match op().await {
                Err(err) => {
                    if let Some(reason) = self.misconfiguration(&err, what) {
                        self.retryable(&err);
                        self.alarm.raise(&reason);
                        return Err(Halt::Misconfigured(reason));
                    }
                    if !self.retryable(&err) {
                        return Ok(Err(err));
                    }
                    err
                }
                Ok(done) => {
                    self.alarm.clear();
                    return Ok(Ok(done));
                }
            };
            attempt += 1;
            let delay = API_BACKOFF.delay(attempt);
            if Instant::now() + delay >= deadline {
                return Err(Halt::Budget(DeployError::Api {
                    what: what.to_owned(),
                    reason: describe(&err),
                    source: std::sync::Arc::new(err),
                }));
            }
            tracing::debug!(error = %describe(&err), ?delay, "{what} failed; retrying");
            let never = Interrupt::never();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = interrupt.unwrap_or(&never).fired() => return Err(Halt::Interrupted),
            }
        }
    }

    /// One read-check-apply. The read is the informer's cache once it has synced (no request:
    /// a stale entry shows up as a 409, after which `fresh` reads from the API server).
    async fn apply_once(
        &self,
        request: &DeployRequest<'_>,
        manifest: &InferenceService,
        fresh: bool,
    ) -> Result<ApplyDecision, kube::Error> {
        // an object of the earlier worker is not in the cache until adopted: read it
        let adopting = self.legacy.contains_key(&request.endpoint_id);
        let existing = if !fresh && !adopting && self.informer.is_synced() {
            self.informer.cached(request.name)
        } else {
            self.get(request.name).await?.map(Arc::new)
        };
        let Some(existing) = existing else {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..Default::default()
            };
            let created = self
                .api
                .create(&params, &LeanInferenceService::from(manifest.clone()))
                .await?;
            return Ok(ApplyDecision::Written(Box::new(created.into())));
        };
        if let Some(reason) = self.refusal(request, manifest, &existing) {
            return Ok(ApplyDecision::Refused(reason));
        }
        if !request.overwrite_newer
            && existing
                .spec_generation()
                .is_some_and(|theirs| theirs > request.generation)
        {
            return Ok(ApplyDecision::Superseded);
        }
        let mut manifest = manifest.clone();
        // Precondition: only if nobody wrote the object since we checked it.
        manifest.metadata.resource_version = existing.metadata.resource_version.clone();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = self
            .api
            .patch(request.name, &params, &Patch::Apply(&manifest))
            .await?;
        Ok(ApplyDecision::Written(Box::new(written.into())))
    }

    /// Why an existing object must not be overwritten by this request, if it must not.
    fn refusal(
        &self,
        request: &DeployRequest<'_>,
        manifest: &InferenceService,
        existing: &InferenceService,
    ) -> Option<String> {
        let ours = request.endpoint_id.to_string();
        match existing.endpoint_id() {
            Some(id) if id == ours => {}
            Some(other) => {
                return Some(format!(
                    "InferenceService {}/{} belongs to endpoint {other}, not {ours}; it was left \
                     untouched — remove it, or change KSERVE_NAME_PREFIX",
                    self.namespace, request.name
                ));
            }
            None => {
                return Some(format!(
                    "InferenceService {}/{} exists but was not created by deploy-worker (no \
                     endpoint label); it was left untouched — remove it to let the endpoint deploy",
                    self.namespace, request.name
                ));
            }
        }
        let wanted = manifest
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_DEPLOYMENT_MODE))
            .map(|m| normalise_mode(m))?;
        let current = existing
            .status
            .as_ref()
            .and_then(|s| s.deployment_mode.as_deref())
            .or_else(|| {
                existing
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_DEPLOYMENT_MODE))
                    .map(String::as_str)
            })
            .map(normalise_mode)?;
        (current != wanted).then(|| {
            format!(
                "InferenceService {}/{} runs in {current} mode and KServe cannot switch an \
                 existing InferenceService to {wanted} mode; keep runtime_config.deploymentMode \
                 (and canary settings) compatible, or delete and recreate the endpoint",
                self.namespace, request.name
            )
        })
    }

    /// Watches the object until this generation is Ready, fails for good, or `deadline`;
    /// `None` when the object vanished (deleted, or missing from a relist) and must be applied
    /// again. A deadline reached while the API server could not be watched is a transient
    /// failure, never a timeout the endpoint is blamed for.
    async fn wait_ready(
        &self,
        request: &DeployRequest<'_>,
        applied: &InferenceService,
        deadline: Instant,
    ) -> Result<Option<DeployOutcome>, DeployError> {
        let target = applied.metadata.generation.unwrap_or(1);
        let mut last = match classify(request, applied, target).settled() {
            Ok(outcome) => return Ok(Some(outcome)),
            Err(state) => state,
        };
        let ours = applied.metadata.uid.as_ref();
        let mut subscription = self.informer.subscribe(request.name);
        loop {
            match subscription.latest() {
                Sighting::Seen(object) if object.metadata.uid.as_ref() == ours => {
                    match classify(request, &object, target).settled() {
                        Ok(outcome) => return Ok(Some(outcome)),
                        Err(state) => last = state,
                    }
                }
                Sighting::Gone { uid: Some(uid) } if Some(&uid) == ours => return Ok(None),
                Sighting::Gone { uid: None } => {
                    // missing from a relist: read it to be sure
                    match self.get(request.name).await {
                        Ok(Some(object)) if object.metadata.uid.as_ref() == ours => {
                            match classify(request, &object, target).settled() {
                                Ok(outcome) => return Ok(Some(outcome)),
                                Err(state) => last = state,
                            }
                        }
                        Ok(_) => return Ok(None),
                        Err(err) => {
                            self.retryable(&err);
                        }
                    }
                }
                // another incarnation (a stale cache entry from before our create; a re-creation
                // after ours was deleted comes after a sighting of that deletion) or nothing yet
                Sighting::Seen(_) | Sighting::Gone { .. } | Sighting::Unknown => {}
            }
            tokio::select! {
                waited = tokio::time::timeout_at(deadline, subscription.changed()) => {
                    if waited.is_err() {
                        return self.deadline_passed(request.name, &last);
                    }
                }
                () = request.interrupt.fired() => return Ok(Some(DeployOutcome::Interrupted)),
            }
        }
    }

    /// The deploy's time ran out: a timeout the endpoint is blamed for, unless the API server
    /// could not be watched at the end (then a transient failure, handed back).
    fn deadline_passed(
        &self,
        name: &str,
        last: &str,
    ) -> Result<Option<DeployOutcome>, DeployError> {
        if let Some(trouble) = self.informer.trouble() {
            return Err(DeployError::Transient(format!(
                "the Kubernetes API could not be watched for InferenceService {}/{name} \
                 ({trouble}); handed back to retry",
                self.namespace
            )));
        }
        Ok(Some(DeployOutcome::Failed {
            reason: format!(
                "InferenceService {}/{name} was not Ready within {} s (DEPLOY_TIMEOUT_SECONDS); last seen: {last}",
                self.namespace,
                self.timeout.as_secs()
            ),
        }))
    }

    pub(super) async fn delete(
        &self,
        endpoint_id: Uuid,
        name: &str,
    ) -> Result<DeleteOutcome, DeployError> {
        let deadline = Instant::now() + self.timeout;
        let what = format!("delete InferenceService {}/{name}", self.namespace);
        let deleted = match self
            .with_retries(deadline, &what, None, || {
                self.delete_once(endpoint_id, name)
            })
            .await
        {
            Ok(deleted) => deleted,
            Err(Halt::Budget(err)) => return Err(err),
            Err(Halt::Misconfigured(reason)) => return Err(DeployError::Misconfigured(reason)),
            Err(Halt::Interrupted) => {
                return Err(DeployError::Transient(format!("{what}: interrupted")));
            }
        };
        let uid = match deleted {
            Ok(Ok(uid)) => uid,
            Ok(Err(outcome)) => return Ok(outcome),
            Err(err) => {
                return Ok(DeleteOutcome::Failed {
                    reason: format!(
                        "Kubernetes refused to delete InferenceService {}/{name}: {}",
                        self.namespace,
                        describe(&err)
                    ),
                });
            }
        };
        self.wait_gone(name, uid, deadline).await
    }

    /// Deletes the object if it is ours: `Ok(Ok(uid))` once deletion started, `Ok(Err(outcome))`
    /// when there is nothing (more) to do.
    async fn delete_once(
        &self,
        endpoint_id: Uuid,
        name: &str,
    ) -> Result<Result<Option<String>, DeleteOutcome>, kube::Error> {
        let Some(existing) = self.get(name).await? else {
            return Ok(Err(DeleteOutcome::Deleted));
        };
        let ours = endpoint_id.to_string();
        if existing.endpoint_id() != Some(ours.as_str()) {
            return Ok(Err(DeleteOutcome::Failed {
                reason: format!(
                    "InferenceService {}/{name} does not belong to endpoint {ours} (its endpoint \
                     label is {:?}); it was left in place",
                    self.namespace,
                    existing.endpoint_id()
                ),
            }));
        }
        let uid = existing.metadata.uid.clone();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api.delete(name, &params).await {
            Ok(_) => Ok(Ok(uid)),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(Err(DeleteOutcome::Deleted)),
            Err(err) => Err(err),
        }
    }

    /// Waits until the object with `uid` is gone, as the informer sees it; objects it does not
    /// follow (or a relist that misses one) are confirmed with a read now and then.
    async fn wait_gone(
        &self,
        name: &str,
        uid: Option<String>,
        deadline: Instant,
    ) -> Result<DeleteOutcome, DeployError> {
        const RECHECK: Duration = Duration::from_secs(2);
        let mut subscription = self.informer.subscribe(name);
        let same = |object: &InferenceService| uid.is_none() || object.metadata.uid == uid;
        loop {
            let confirm = match subscription.latest() {
                Sighting::Gone { uid: Some(gone) }
                    if uid.is_none() || Some(&gone) == uid.as_ref() =>
                {
                    return Ok(DeleteOutcome::Deleted);
                }
                // replaced by a new object of the same name: ours is gone
                Sighting::Seen(object) if !same(&object) => return Ok(DeleteOutcome::Deleted),
                Sighting::Seen(_) | Sighting::Gone { uid: Some(_) } => false,
                Sighting::Gone { uid: None } | Sighting::Unknown => true,
            };
            if confirm {
                match self.get(name).await {
                    Ok(None) => return Ok(DeleteOutcome::Deleted),
                    Ok(Some(object)) if !same(&object) => return Ok(DeleteOutcome::Deleted),
                    Ok(Some(_)) => {}
                    Err(err) => {
                        self.retryable(&err);
                    }
                }
            }
            let next = tokio::time::timeout_at(
                deadline.min(Instant::now() + RECHECK),
                subscription.changed(),
            )
            .await;
            if next.is_err() && Instant::now() >= deadline {
                return Ok(DeleteOutcome::Failed {
                    reason: format!(
                        "InferenceService {}/{name} was still terminating after {} s \
                         (DEPLOY_TIMEOUT_SECONDS); check its finalizers",
                        self.namespace,
                        self.timeout.as_secs()
                    ),
                });
            }
        }
    }
}

impl Observed {
    /// The outcome, once there is one; otherwise what the object currently shows.
    fn settled(self) -> Result<DeployOutcome, String> {
        match self {
            Observed::Ready(url) => Ok(DeployOutcome::Ready { url }),
            Observed::Failed(reason) => Ok(DeployOutcome::Failed { reason }),
            Observed::Superseded => Ok(DeployOutcome::Superseded),
            Observed::Pending(state) => Err(state),
        }
    }
}

/// Decides what `object` says about the deploy that produced generation `target`.
fn classify(request: &DeployRequest<'_>, object: &InferenceService, target: i64) -> Observed {
    if !request.overwrite_newer
        && object
            .spec_generation()
            .is_some_and(|theirs| theirs > request.generation)
    {
        return Observed::Superseded;
    }
    let Some(status) = &object.status else {
        return Observed::Pending("no status yet".into());
    };
    let observed = status.observed_generation.unwrap_or(0);
    let ready = status.condition("Ready");
    let state = ready.map_or_else(
        || format!("observedGeneration {observed} of {target}, no Ready condition"),
        |c| {
            format!(
                "observedGeneration {observed} of {target}, Ready={} {}{}",
                c.status,
                c.reason.as_deref().unwrap_or(""),
                c.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )
        },
    );
    if observed < target {
        // Whatever it says is about an older generation (the stale Ready after an update).
        return Observed::Pending(state);
    }
    if object.is_ready() {
        return match status.url.as_deref() {
            Some(url) => Observed::Ready(url.to_owned()),
            None => Observed::Pending(state),
        };
    }
    if let Some(ready) = ready.filter(|c| c.status == "False") {
        let transition = status
            .model_status
            .as_ref()
            .and_then(|m| m.transition_status.as_deref());
        let reason = ready.reason.as_deref().unwrap_or("");
        if TERMINAL_REASONS.contains(&reason)
            || transition.is_some_and(|t| TERMINAL_TRANSITIONS.contains(&t))
        {
            let failure = status
                .model_status
                .as_ref()
                .and_then(|m| m.last_failure_info.as_ref())
                .and_then(|f| f.message.as_deref());
            let message = ready.message.as_deref().or(failure).unwrap_or("no message");
            return Observed::Failed(format!(
                "KServe reports InferenceService {} not Ready: {reason}: {message}",
                request.name
            ));
        }
    }
    Observed::Pending(state)
}

/// `manifest`, named `name`, with the hash of its spec in [`ANNOTATION_SPEC_HASH`], so the
/// informer can tell when someone else changes the spec.
fn with_spec_hash(manifest: &InferenceService, name: &str) -> InferenceService {
    let mut manifest = manifest.clone();
    // the request's name: an adopted object keeps the earlier worker's
    manifest.metadata.name = Some(name.to_owned());
    manifest
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_SPEC_HASH.to_owned(), spec_hash(&manifest.spec));
    manifest
}

/// A deployment mode as KServe spells it: `Standard`/`RawDeployment` → `Standard`, `ModelMesh`
/// as is, anything else (`Knative`, `Serverless`, unknown) → `Knative`, KServe's default.
fn normalise_mode(mode: &str) -> &'static str {
    match DeploymentMode::from_name(mode) {
        Some(DeploymentMode::Standard) => "Standard",
        None if mode.eq_ignore_ascii_case("modelmesh") => "ModelMesh",
        Some(DeploymentMode::Knative) | None => "Knative",
    }
}

/// Whether an admission webhook (KServe's validator) denied the request: a 403 like RBAC's,
/// but about the manifest, so final rather than a misconfiguration.
fn webhook_denied(status: &kube::core::Status) -> bool {
    status.code == 403 && status.message.starts_with("admission webhook")
}

/// A kube error in words: the API server's message when there is one.
fn describe(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}
