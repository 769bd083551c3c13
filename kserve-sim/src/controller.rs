//! The simulated KServe controller.
//!
//! It watches the store (the same broadcast the HTTP watches use) and reconciles every object
//! whose *signature* changed — uid, `metadata.generation`, deletion state, or its simulated
//! behaviour (set through [`crate::SimHandle`] or `kserve-sim/*` annotations). Each reconcile is
//! one tokio task driven by timers; a newer signature aborts the older task, and every write is
//! conditional on the generation it was computed for, so a superseded reconcile can never
//! overwrite a newer state. The sequence after a spec change mirrors what KServe shows:
//!
//! 1. the finalizer `inferenceservice.finalizers` is added (first reconcile only);
//! 2. for `stale_status` nothing happens: the old status stays visible — after an update that
//!    is a stale `Ready=True` with the *old* `status.observedGeneration`, which a client must
//!    not take for the new generation being ready;
//! 3. the in-progress status, with the new `observedGeneration`: in Knative mode a new
//!    revision `<name>-predictor-NNNNN` is created when the predictor template changed
//!    (`latestCreatedRevision`), and `Ready`/`PredictorReady` are `Unknown` with reason
//!    `RevisionMissing`; in Standard (raw) mode they are `False` with reason
//!    `MinimumReplicasUnavailable` (a *non-terminal* False, as KServe reports a Deployment that
//!    is still rolling out); `modelStatus.transitionStatus` is `InProgress`;
//! 4. after `ready_delay`: every condition `True` (`IngressReady`, `LatestDeploymentReady`,
//!    `PredictorConfigurationReady`, `PredictorReady`, `PredictorRouteReady`, `Ready`,
//!    `RoutesReady`; Standard mode: `IngressReady`, `PredictorReady`, `Ready`), `status.url`,
//!    `status.address.url`, `status.components.predictor` (URL, revisions, traffic) and
//!    `modelStatus.transitionStatus: UpToDate`.
//!
//! A failing object instead ends at step 3 with `Ready=False`, `PredictorReady=False` (and
//! `LatestDeploymentReady=False` in Knative mode) carrying the given reason and message,
//! `modelStatus.transitionStatus: BlockedByFailedLoad` and `modelStatus.lastFailureInfo`; that
//! state is terminal until the spec or the behaviour changes. A never-ready object stays at
//! step 3.
//!
//! Traffic (Knative mode), as KServe computes it: with `spec.predictor.canaryTrafficPercent`
//! = p < 100 and a previously rolled-out revision different from the latest ready one, the
//! latest revision gets p % (tag `latest`) and `latestRolledoutRevision` gets 100 − p % (tag
//! `prev`) — so p = 0 is the rollback to the previous model; otherwise the latest revision gets
//! 100 % and becomes `latestRolledoutRevision` (the former one moves to
//! `previousRolledoutRevision`). A change of `canaryTrafficPercent` alone creates no revision.
//!
//! Deletion: once an object has a `deletionTimestamp`, the controller removes its finalizer
//! after `delete_linger`, and the object disappears (DELETED event).

use crate::fieldset::Scope;
use crate::meta;
use crate::resource::{Expect, Registry};
use crate::store::{Key, StoredEvent};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

/// The finalizer KServe puts on InferenceServices.
pub const FINALIZER: &str = "inferenceservice.finalizers";
/// Field manager of the controller's writes (controller-runtime's default name, as KServe's).
pub const MANAGER: &str = "manager";
/// Annotation: `"Reason: message"` makes the object fail with that reason and message.
pub const ANNOTATION_FAIL: &str = "kserve-sim/fail";
/// Annotation: `"true"` keeps the object from ever becoming ready.
pub const ANNOTATION_NEVER_READY: &str = "kserve-sim/never-ready";
/// Annotation: readiness delay for this object, in milliseconds.
pub const ANNOTATION_READY_DELAY_MS: &str = "kserve-sim/ready-delay-ms";
/// KServe's deployment mode annotation.
pub const ANNOTATION_DEPLOYMENT_MODE: &str = "serving.kserve.io/deploymentMode";

/// Simulated behaviour of one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectBehaviour {
    /// Fail with `(reason, message)`: `Ready=False`, terminal.
    pub fail: Option<(String, String)>,
    /// Never become ready (stays in progress).
    pub never_ready: bool,
    /// Readiness delay for this object instead of the global one.
    pub ready_delay: Option<Duration>,
}

impl ObjectBehaviour {
    /// Layers `over` on top of `self`.
    fn overlay(mut self, over: &ObjectBehaviour) -> Self {
        if over.fail.is_some() {
            self.fail = over.fail.clone();
        }
        self.never_ready |= over.never_ready;
        if over.ready_delay.is_some() {
            self.ready_delay = over.ready_delay;
        }
        self
    }

    /// The behaviour requested by `kserve-sim/*` annotations.
    pub fn from_annotations(obj: &Value) -> Self {
        let fail = meta::annotation(obj, ANNOTATION_FAIL).map(|v| match v.split_once(':') {
            Some((reason, message)) => (reason.trim().to_string(), message.trim().to_string()),
            None => (v.trim().to_string(), v.trim().to_string()),
        });
        Self {
            fail,
            never_ready: meta::annotation(obj, ANNOTATION_NEVER_READY)
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            ready_delay: meta::annotation(obj, ANNOTATION_READY_DELAY_MS)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis),
        }
    }
}

/// Controller timings (changeable at run time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// From the in-progress status to Ready.
    pub ready_delay: Duration,
    /// How long the previous status stays untouched after a change.
    pub stale_status: Duration,
    /// How long a deleted object lingers before its finalizer is removed.
    pub delete_linger: Duration,
}

enum Command {
    Reconsider(Key),
    ReconsiderAll,
}

/// State shared between the controller task and [`crate::SimHandle`].
pub struct ControllerShared {
    timings: Mutex<Timings>,
    behaviours: Mutex<HashMap<Key, ObjectBehaviour>>,
    default_behaviour: Mutex<ObjectBehaviour>,
    commands: mpsc::UnboundedSender<Command>,
    domain: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ControllerShared {
    /// Current timings.
    pub fn timings(&self) -> Timings {
        *lock(&self.timings)
    }

    /// Replaces the timings (applies to waits that start afterwards).
    pub fn set_timings(&self, t: Timings) {
        *lock(&self.timings) = t;
    }

    /// Sets the behaviour of one object (kept across re-creation) and reconciles it.
    pub fn set_behaviour(&self, key: Key, b: ObjectBehaviour) {
        lock(&self.behaviours).insert(key.clone(), b);
        let _ = self.commands.send(Command::Reconsider(key));
    }

    /// The behaviour set for one object.
    pub fn behaviour(&self, key: &Key) -> ObjectBehaviour {
        lock(&self.behaviours).get(key).cloned().unwrap_or_default()
    }

    /// Sets the behaviour of every object without its own, and reconciles all.
    pub fn set_default_behaviour(&self, b: ObjectBehaviour) {
        *lock(&self.default_behaviour) = b;
        let _ = self.commands.send(Command::ReconsiderAll);
    }

    fn effective(&self, key: &Key, obj: &Value) -> ObjectBehaviour {
        let base = lock(&self.default_behaviour).clone();
        let own = lock(&self.behaviours).get(key).cloned().unwrap_or_default();
        base.overlay(&own)
            .overlay(&ObjectBehaviour::from_annotations(obj))
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Signature {
    uid: String,
    generation: i64,
    deleting: bool,
    behaviour: ObjectBehaviour,
}

struct Running {
    signature: Signature,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Revisions {
    uid: String,
    count: u32,
    template: Option<Value>,
}

/// The controller loop's state.
pub struct Controller {
    registry: Arc<Registry>,
    shared: Arc<ControllerShared>,
    running: HashMap<Key, Running>,
    revisions: Arc<Mutex<HashMap<Key, Revisions>>>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: broadcast::Receiver<Arc<StoredEvent>>,
}

impl Controller {
    /// A controller over `registry`; run it with [`Controller::run`].
    pub fn new(
        registry: Arc<Registry>,
        timings: Timings,
        domain: String,
    ) -> (Self, Arc<ControllerShared>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(ControllerShared {
            timings: Mutex::new(timings),
            behaviours: Mutex::new(HashMap::new()),
            default_behaviour: Mutex::new(ObjectBehaviour::default()),
            commands: tx,
            domain,
        });
        let events = registry.store.subscribe();
        (
            Self {
                registry,
                shared: shared.clone(),
                running: HashMap::new(),
                revisions: Arc::new(Mutex::new(HashMap::new())),
                commands: rx,
                events,
            },
            shared,
        )
    }

    /// Reconciles until the store's broadcast closes (server shutdown).
    pub async fn run(mut self) {
        self.reconsider_all();
        loop {
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Ok(ev) => {
                        let key = key_of(&ev.object);
                        self.reconsider(key);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.reconsider_all(),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Reconsider(key)) => self.reconsider(key),
                    Some(Command::ReconsiderAll) => self.reconsider_all(),
                    None => break,
                },
            }
        }
        for (_, r) in self.running.drain() {
            r.task.abort();
        }
    }

    fn reconsider_all(&mut self) {
        let mut keys: Vec<Key> = {
            let st = self.registry.store.lock();
            st.iter_ns(None).map(|(k, _)| k.clone()).collect()
        };
        keys.extend(self.running.keys().cloned());
        keys.sort();
        keys.dedup();
        for k in keys {
            self.reconsider(k);
        }
    }

    fn reconsider(&mut self, key: Key) {
        let current = self.registry.store.lock().get(&key).cloned();
        let Some(obj) = current else {
            if let Some(r) = self.running.remove(&key) {
                r.task.abort();
            }
            lock(&self.revisions).remove(&key);
            return;
        };
        let signature = Signature {
            uid: meta::meta_str(&obj, "uid").unwrap_or_default().to_string(),
            generation: meta::generation(&obj),
            deleting: meta::is_deleting(&obj),
            behaviour: self.shared.effective(&key, &obj),
        };
        if self
            .running
            .get(&key)
            .is_some_and(|r| r.signature == signature)
        {
            return;
        }
        if let Some(r) = self.running.remove(&key) {
            r.task.abort();
        }
        let ctx = Reconcile {
            registry: self.registry.clone(),
            shared: self.shared.clone(),
            revisions: self.revisions.clone(),
            key: key.clone(),
            signature: signature.clone(),
        };
        let task = tokio::spawn(ctx.run());
        self.running.insert(key, Running { signature, task });
    }
}

fn key_of(obj: &Value) -> Key {
    (
        meta::meta_str(obj, "namespace")
            .unwrap_or_default()
            .to_string(),
        meta::name(obj).to_string(),
    )
}

/// One reconcile of one object at one signature.
struct Reconcile {
    registry: Arc<Registry>,
    shared: Arc<ControllerShared>,
    revisions: Arc<Mutex<HashMap<Key, Revisions>>>,
    key: Key,
    signature: Signature,
}

/// Whether the object runs in Knative (serverless) mode.
fn is_knative(obj: &Value) -> bool {
    !matches!(
        meta::annotation(obj, ANNOTATION_DEPLOYMENT_MODE),
        Some("Standard" | "RawDeployment" | "ModelMesh")
    )
}

/// The predictor template: what makes Knative create a new revision.
fn template(obj: &Value) -> Value {
    let mut p = obj
        .pointer("/spec/predictor")
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(m) = p.as_object_mut() {
        m.remove("canaryTrafficPercent");
    }
    p
}

fn revision_name(name: &str, n: u32) -> String {
    format!("{name}-predictor-{n:05}")
}

impl Reconcile {
    async fn run(self) {
        // Errors from the registry here can only be validation failures of the controller's own
        // status (a bug) — log and stop rather than loop.
        if let Err(e) = self.steps().await {
            tracing::warn!(namespace = %self.key.0, name = %self.key.1, error = %e, "kserve-sim controller write failed");
        }
    }

    fn write(
        &self,
        scope: Scope,
        f: impl FnOnce(&mut Value),
    ) -> Result<bool, crate::error::ApiError> {
        let generation = (!self.signature.deleting).then_some(self.signature.generation);
        let target = Expect {
            namespace: &self.key.0,
            name: &self.key.1,
            uid: &self.signature.uid,
            generation,
        };
        Ok(self.registry.modify(&target, MANAGER, scope, f)?.is_some())
    }

    fn current(&self) -> Option<Arc<Value>> {
        self.registry.store.lock().get(&self.key).cloned()
    }

    async fn steps(&self) -> Result<(), crate::error::ApiError> {
        let timings = self.shared.timings();
        if self.signature.deleting {
            tokio::time::sleep(timings.delete_linger).await;
            self.write(Scope::Main, |o| {
                if let Some(f) = o
                    .pointer_mut("/metadata/finalizers")
                    .and_then(Value::as_array_mut)
                {
                    f.retain(|v| v != FINALIZER);
                }
            })?;
            return Ok(());
        }
        let Some(obj) = self.current() else {
            return Ok(());
        };
        if !meta::finalizers(&obj).iter().any(|f| f == FINALIZER) {
            let wrote = self.write(Scope::Main, |o| {
                let m = &mut o["metadata"];
                match m.get_mut("finalizers").and_then(Value::as_array_mut) {
                    Some(f) => f.push(json!(FINALIZER)),
                    None => m["finalizers"] = json!([FINALIZER]),
                }
            })?;
            if !wrote {
                return Ok(());
            }
        }
        tokio::time::sleep(timings.stale_status).await;
        let Some(obj) = self.current() else {
            return Ok(());
        };
        let knative = is_knative(&obj);
        let revision = knative.then(|| self.latest_revision(&obj));
        let b = &self.signature.behaviour;
        let domain = self.shared.domain.clone();
        let now = meta::now();
        if let Some((reason, message)) = &b.fail {
            self.write(Scope::Status, |o| {
                failed(o, knative, revision.as_deref(), reason, message, &now)
            })?;
            return Ok(());
        }
        if !self.write(Scope::Status, |o| {
            progressing(o, knative, revision.as_deref(), &now)
        })? {
            return Ok(());
        }
        if b.never_ready {
            return Ok(());
        }
        tokio::time::sleep(b.ready_delay.unwrap_or(timings.ready_delay)).await;
        let now = meta::now();
        self.write(Scope::Status, |o| {
            ready(o, knative, revision.as_deref(), &domain, &now)
        })?;
        Ok(())
    }

    /// The latest created revision, creating a new one when the template changed.
    fn latest_revision(&self, obj: &Value) -> String {
        let t = template(obj);
        let mut revs = lock(&self.revisions);
        let r = revs.entry(self.key.clone()).or_default();
        if r.uid != self.signature.uid {
            *r = Revisions {
                uid: self.signature.uid.clone(),
                ..Revisions::default()
            };
        }
        if r.template.as_ref() != Some(&t) {
            r.count += 1;
            r.template = Some(t);
        }
        revision_name(&self.key.1, r.count)
    }
}

/// Sets a condition, keeping `lastTransitionTime` when the status does not change.
fn set_condition(
    status: &mut Value,
    ty: &str,
    state: &str,
    reason: Option<&str>,
    message: Option<&str>,
    info: bool,
    now: &str,
) {
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    let Some(conds) = status["conditions"].as_array_mut() else {
        return;
    };
    let previous = conds
        .iter()
        .position(|c| c["type"] == ty)
        .map(|i| conds.remove(i));
    let since = previous
        .as_ref()
        .filter(|p| p["status"] == state)
        .and_then(|p| p.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    let mut c = json!({"type": ty, "status": state, "lastTransitionTime": since});
    if info {
        c["severity"] = json!("Info");
    }
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    conds.push(c);
    conds.sort_by(|a, b| {
        a["type"]
            .as_str()
            .unwrap_or_default()
            .cmp(b["type"].as_str().unwrap_or_default())
    });
}

fn condition_is_true(status: &Value, ty: &str) -> bool {
    status["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

fn status_of(o: &mut Value) -> &mut Value {
    if !o["status"].is_object() {
        o["status"] = json!({});
    }
    &mut o["status"]
}

fn common(o: &mut Value, knative: bool) {
    let generation = meta::generation(o);
    let s = status_of(o);
    s["observedGeneration"] = json!(generation);
    s["deploymentMode"] = json!(if knative { "Knative" } else { "Standard" });
}

fn progressing(o: &mut Value, knative: bool, revision: Option<&str>, now: &str) {
    let name = meta::name(o).to_string();
    common(o, knative);
    let s = status_of(o);
    if knative {
        let msg = format!(
            "Configuration \"{name}-predictor\" is waiting for a Revision to become ready."
        );
        for ty in ["LatestDeploymentReady", "PredictorConfigurationReady"] {
            set_condition(
                s,
                ty,
                "Unknown",
                Some("RevisionMissing"),
                Some(&msg),
                true,
                now,
            );
        }
        for ty in ["PredictorReady", "Ready"] {
            set_condition(
                s,
                ty,
                "Unknown",
                Some("RevisionMissing"),
                Some(&msg),
                false,
                now,
            );
        }
        for (ty, info) in [
            ("IngressReady", false),
            ("PredictorRouteReady", true),
            ("RoutesReady", true),
        ] {
            if !condition_is_true(s, ty) {
                set_condition(
                    s,
                    ty,
                    "Unknown",
                    Some("RevisionMissing"),
                    Some(&msg),
                    info,
                    now,
                );
            }
        }
        if let Some(rev) = revision {
            s["components"]["predictor"]["latestCreatedRevision"] = json!(rev);
        }
    } else {
        let msg = "Deployment does not have minimum availability.";
        for ty in ["PredictorReady", "Ready"] {
            set_condition(
                s,
                ty,
                "False",
                Some("MinimumReplicasUnavailable"),
                Some(msg),
                false,
                now,
            );
        }
        if !condition_is_true(s, "IngressReady") {
            set_condition(
                s,
                "IngressReady",
                "Unknown",
                Some("PredictorNotReady"),
                Some(msg),
                false,
                now,
            );
        }
    }
    let active = s
        .pointer("/modelStatus/states/activeModelState")
        .cloned()
        .filter(|a| a == "Loaded")
        .unwrap_or_else(|| json!("Pending"));
    s["modelStatus"] = json!({
        "transitionStatus": "InProgress",
        "states": {"activeModelState": active, "targetModelState": "Loading"},
        "copies": {"failedCopies": 0}
    });
}

fn failed(
    o: &mut Value,
    knative: bool,
    revision: Option<&str>,
    reason: &str,
    message: &str,
    now: &str,
) {
    common(o, knative);
    let s = status_of(o);
    let mut types = vec![("PredictorReady", false), ("Ready", false)];
    if knative {
        types.push(("LatestDeploymentReady", true));
        types.push(("PredictorConfigurationReady", true));
        if let Some(rev) = revision {
            s["components"]["predictor"]["latestCreatedRevision"] = json!(rev);
        }
    }
    for (ty, info) in types {
        set_condition(s, ty, "False", Some(reason), Some(message), info, now);
    }
    let mut failure = json!({"reason": "ModelLoadFailed", "message": message, "time": now});
    if let Some(rev) = revision {
        failure["modelRevisionName"] = json!(rev);
    }
    s["modelStatus"] = json!({
        "transitionStatus": "BlockedByFailedLoad",
        "states": {"activeModelState": "FailedToLoad", "targetModelState": "FailedToLoad"},
        "copies": {"failedCopies": 1, "totalCopies": 1},
        "lastFailureInfo": failure
    });
}

fn ready(o: &mut Value, knative: bool, revision: Option<&str>, domain: &str, now: &str) {
    let name = meta::name(o).to_string();
    let ns = meta::meta_str(o, "namespace")
        .unwrap_or_default()
        .to_string();
    let canary = o
        .pointer("/spec/predictor/canaryTrafficPercent")
        .and_then(Value::as_i64);
    common(o, knative);
    let s = status_of(o);
    s["url"] = json!(format!("http://{name}.{ns}.{domain}"));
    s["address"] = json!({"url": format!("http://{name}.{ns}.svc.cluster.local")});
    let pred_url = format!("http://{name}-predictor.{ns}.{domain}");
    let pred_addr = format!("http://{name}-predictor.{ns}.svc.cluster.local");
    let mut component = s["components"]["predictor"].take();
    if !component.is_object() {
        component = json!({});
    }
    component["url"] = json!(pred_url);
    component["address"] = json!({"url": pred_addr});
    let types: &[(&str, bool)] = if knative {
        &[
            ("IngressReady", false),
            ("LatestDeploymentReady", true),
            ("PredictorConfigurationReady", true),
            ("PredictorReady", false),
            ("PredictorRouteReady", true),
            ("Ready", false),
            ("RoutesReady", true),
        ]
    } else {
        &[
            ("IngressReady", false),
            ("PredictorReady", false),
            ("Ready", false),
        ]
    };
    if let (true, Some(latest)) = (knative, revision) {
        let rolled = component["latestRolledoutRevision"]
            .as_str()
            .map(str::to_string);
        component["latestCreatedRevision"] = json!(latest);
        component["latestReadyRevision"] = json!(latest);
        let tag_url = |tag: &str| format!("http://{tag}-{name}-predictor.{ns}.{domain}");
        match (canary, rolled) {
            (Some(p), Some(prev)) if p < 100 && prev != latest => {
                let p = p.clamp(0, 100);
                component["traffic"] = json!([
                    {"revisionName": latest, "percent": p, "latestRevision": true,
                     "tag": "latest", "url": tag_url("latest")},
                    {"revisionName": prev, "percent": 100 - p, "latestRevision": false,
                     "tag": "prev", "url": tag_url("prev")}
                ]);
            }
            (_, rolled) => {
                component["traffic"] =
                    json!([{"revisionName": latest, "percent": 100, "latestRevision": true}]);
                if rolled.as_deref() != Some(latest) {
                    if let Some(prev) = rolled {
                        component["previousRolledoutRevision"] = json!(prev);
                    }
                    component["latestRolledoutRevision"] = json!(latest);
                }
            }
        }
    } else if let Some(m) = component.as_object_mut() {
        for k in [
            "traffic",
            "latestCreatedRevision",
            "latestReadyRevision",
            "latestRolledoutRevision",
            "previousRolledoutRevision",
        ] {
            m.remove(k);
        }
    }
    s["components"]["predictor"] = component;
    for (ty, info) in types {
        set_condition(s, ty, "True", None, None, *info, now);
    }
    s["modelStatus"] = json!({
        "transitionStatus": "UpToDate",
        "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
        "copies": {"failedCopies": 0, "totalCopies": 1}
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(canary: Option<i64>) -> Value {
        let mut o = json!({"metadata": {"name": "m", "namespace": "ns", "generation": 2},
                           "spec": {"predictor": {"model": {"storageUri": "s3://x"}}}});
        if let Some(c) = canary {
            o["spec"]["predictor"]["canaryTrafficPercent"] = json!(c);
        }
        o
    }

    fn traffic(o: &Value) -> Vec<(String, i64)> {
        o["status"]["components"]["predictor"]["traffic"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        (
                            t["revisionName"].as_str().unwrap_or_default().to_string(),
                            t["percent"].as_i64().unwrap_or(-1),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn canary_promote_and_rollback_traffic() {
        let mut o = obj(None);
        ready(&mut o, true, Some("m-predictor-00001"), "example.com", "t");
        assert_eq!(traffic(&o), vec![("m-predictor-00001".into(), 100)]);
        // New model with a 10 % canary.
        o["spec"] = obj(Some(10))["spec"].clone();
        ready(&mut o, true, Some("m-predictor-00002"), "example.com", "t");
        assert_eq!(
            traffic(&o),
            vec![
                ("m-predictor-00002".into(), 10),
                ("m-predictor-00001".into(), 90)
            ]
        );
        // Rollback: 0 % to the canary.
        o["spec"] = obj(Some(0))["spec"].clone();
        ready(&mut o, true, Some("m-predictor-00002"), "example.com", "t");
        assert_eq!(
            traffic(&o),
            vec![
                ("m-predictor-00002".into(), 0),
                ("m-predictor-00001".into(), 100)
            ]
        );
        // Promote.
        o["spec"] = obj(None)["spec"].clone();
        ready(&mut o, true, Some("m-predictor-00002"), "example.com", "t");
        assert_eq!(traffic(&o), vec![("m-predictor-00002".into(), 100)]);
        let c = &o["status"]["components"]["predictor"];
        assert_eq!(c["latestRolledoutRevision"], "m-predictor-00002");
        assert_eq!(c["previousRolledoutRevision"], "m-predictor-00001");
        assert!(condition_is_true(&o["status"], "Ready"));
        assert_eq!(o["status"]["observedGeneration"], 2);
    }

    #[test]
    fn annotations_define_behaviour() {
        let o = json!({"metadata": {"annotations": {
            ANNOTATION_FAIL: "RevisionFailed: image not found",
            ANNOTATION_READY_DELAY_MS: "250"}}});
        let b = ObjectBehaviour::from_annotations(&o);
        assert_eq!(
            b.fail,
            Some(("RevisionFailed".into(), "image not found".into()))
        );
        assert_eq!(b.ready_delay, Some(Duration::from_millis(250)));
        assert!(!b.never_ready);
    }

    #[test]
    fn condition_transition_time_kept_when_status_unchanged() {
        let mut s = json!({});
        set_condition(&mut s, "Ready", "True", None, None, false, "t1");
        set_condition(&mut s, "Ready", "True", None, None, false, "t2");
        assert_eq!(s["conditions"][0]["lastTransitionTime"], "t1");
        set_condition(&mut s, "Ready", "False", Some("X"), None, false, "t3");
        assert_eq!(s["conditions"][0]["lastTransitionTime"], "t3");
    }
}
