//! Endpoint intent: what the platform asked for, and its validation.
//!
//! An [`Intent`] is an `endpoints` row's serving fields plus the `artifact_uri` of the model
//! version it points at. The same struct is the format of intent files (`render --intent FILE`).
//! [`Intent::validate`] turns it into a [`ServingSpec`]: every platform-level decision made
//! (model format, deployment mode, autoscaler, GPU resources...), every value checked, and
//! nothing yet spelled the KServe way. `crate::kserve` then spells a `ServingSpec` as an
//! InferenceService. Keeping the two apart means the KServe module never has to look at raw
//! JSON, and the JSON rules below live in one place.
//!
//! `ServingSpec` borrows from the intent (no string is copied): rendering is the worker's
//! hottest path and a copy per field would cost more than serializing the manifest.
//!
//! # Platform JSON shapes
//!
//! The three `jsonb` columns are JSON objects (SQL `NULL`, JSON `null` or an absent key all mean
//! "not set"). Keys are camelCase, as in the seed worker's README and in KServe. Unknown keys
//! are ignored and never copied into the manifest, so a column can carry settings for other
//! tools without leaking them into the cluster (no field injection).
//!
//! | column / key | JSON type | rule | InferenceService |
//! |---|---|---|---|
//! | `runtime` (text) | string | `kserve` (default) or a name containing `triton` (e.g. `kserve-triton`) | model format default (`triton` for Triton, else `sklearn`) |
//! | `traffic.canaryTrafficPercent` | integer | `0..=100`; needs Knative mode | `spec.predictor.canaryTrafficPercent`, Knative mode if none set |
//! | `autoscaling.minReplicas` | integer | `0..=2147483647`, ≤ `maxReplicas` | `spec.predictor.minReplicas` |
//! | `autoscaling.maxReplicas` | integer | `1..=2147483647` (omit for no bound) | `spec.predictor.maxReplicas` |
//! | `autoscaling.scaleMetric` | string | `cpu`, `memory` (Standard/KEDA) or `concurrency`, `rps` (Knative) | `spec.predictor.scaleMetric`, or a KEDA metric |
//! | `autoscaling.scaleTarget` | integer | `≥ 1`; `1..=100` for `cpu`/`memory` (a utilization %); required for `memory` | `spec.predictor.scaleTarget`, or the KEDA target |
//! | `autoscaling.keda` | boolean | `true` selects KEDA | see `autoscalerClass` |
//! | `runtime_config.modelFormat` | string | one of [`MODEL_FORMATS`] (case-insensitive) | `spec.predictor.model.modelFormat.name` |
//! | `runtime_config.protocolVersion` | string | `v1`, `v2`, `grpc-v1`, `grpc-v2`; Triton formats need `v2`/`grpc-v2` | `model.protocolVersion` |
//! | `runtime_config.runtimeVersion` | string | an image tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`) | `model.runtimeVersion` |
//! | `runtime_config.resources` | object | `{"requests": {name: quantity}, "limits": {name: quantity}}`; quantities are Kubernetes quantity strings or non-negative integers; requests ≤ limits; naming no entry at all means the worker's [`DefaultResources`] | `model.resources` |
//! | `runtime_config.gpu` | boolean | `true` adds `nvidia.com/gpu: 1` to requests and limits (an explicit count on one side is copied to the other) | `model.resources` |
//! | `runtime_config.batcher` | object | `{"maxBatchSize": int ≥ 1, "maxLatency": ms ≥ 1, "timeout": s ≥ 1}`, all optional | `spec.predictor.batcher` |
//! | `runtime_config.timeout` | integer | seconds, `≥ 1` | `spec.predictor.timeout` |
//! | `runtime_config.serviceAccountName` | string | a DNS-1123 subdomain | `spec.predictor.serviceAccountName` |
//! | `runtime_config.deploymentMode` | string | `Knative`/`Standard`, legacy `Serverless`/`RawDeployment` (case-insensitive) | annotation `serving.kserve.io/deploymentMode` |
//! | `runtime_config.autoscalerClass` | string | `keda` (same as `autoscaling.keda: true`) or `hpa` (KServe's default) | annotation `serving.kserve.io/autoscalerClass: keda`, Standard mode |
//! | `runtime_config.enablePrometheusScraping` | boolean | overrides the worker's global default | annotation `serving.kserve.io/enable-prometheus-scraping` |
//!
//! The tenant policy (`crate::policy`) further restricts `artifact_uri` schemes and
//! `serviceAccountName`; `crate::kserve` applies it together with the default resources.
//!
//! Numbers must be whole: `2` and `2.0` are accepted, `2.5` is not. Everything that cannot be
//! rendered into a manifest KServe accepts is an [`IntentError`] naming the field and what to do.
//!
//! # Deployment mode and autoscaler
//!
//! The mode is written only when the intent determines it: an explicit `deploymentMode`, a
//! canary (Knative, because canary rollouts are revision-based), or KEDA (Standard, the only
//! mode KServe runs KEDA in). Otherwise the annotation is left out and the cluster's configured
//! default applies, as with the seed worker. Contradictions (a canary with Standard mode or with
//! KEDA, KEDA with Knative) are errors. Scale metrics must suit the mode: Knative's pod
//! autoscaler scales on `concurrency`/`rps`, HPA and KEDA on `cpu`/`memory`. KServe rejects
//! `scaleMetric` under KEDA and creates no ScaledObject without `autoScaling.metrics`, so for
//! KEDA the metric becomes an `autoScaling` resource metric (default: CPU at 80 %, KServe's own
//! default utilization).

use std::fmt;

use serde_json::{Map, Value};
use uuid::Uuid;

/// An endpoint row's serving fields plus the model version's `artifact_uri`; also the format of
/// intent files.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Intent {
    /// `endpoints.id`; the InferenceService name is derived from it.
    pub endpoint_id: Uuid,
    /// `endpoints.tenant_id`, written as a label.
    pub tenant_id: Uuid,
    /// `endpoints.project_id`, written as a label.
    pub project_id: Uuid,
    /// `endpoints.name` (for people; the manifest does not use it).
    pub name: String,
    /// `endpoints.runtime`; `None` means the column default `kserve`.
    #[serde(default)]
    pub runtime: Option<String>,
    /// `endpoints.model_id`.
    #[serde(default)]
    pub model_id: Option<Uuid>,
    /// `endpoints.model_version_id`; required to deploy.
    #[serde(default)]
    pub model_version_id: Option<Uuid>,
    /// `model_versions.artifact_uri` of `model_version_id`; becomes `storageUri`.
    #[serde(default)]
    pub artifact_uri: Option<String>,
    /// `endpoints.traffic` (see the module doc for its shape).
    #[serde(default)]
    pub traffic: Option<Value>,
    /// `endpoints.autoscaling` (see the module doc for its shape).
    #[serde(default)]
    pub autoscaling: Option<Value>,
    /// `endpoints.runtime_config` (see the module doc for its shape).
    #[serde(default)]
    pub runtime_config: Option<Value>,
    /// The endpoint's spec generation, written as the `mlops.platform/spec-generation` annotation.
    #[serde(default = "default_generation")]
    pub generation: i64,
}

fn default_generation() -> i64 {
    1
}

/// Why an intent cannot be rendered. `Display` names the field and the problem, and says what
/// to change; it is what ends up as the endpoint's ERROR reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    /// The endpoint points at no model version.
    #[error(
        "model_version_id: the endpoint has no model version; set model_version_id to a registered model version before deploying"
    )]
    MissingModelVersion,
    /// The model version has no artifact to serve.
    #[error(
        "artifact_uri: model version {model_version_id} has no artifact_uri; register the model artifact's storage URI on that version or point the endpoint at a version that has one"
    )]
    MissingArtifact {
        /// The version without an artifact.
        model_version_id: Uuid,
    },
    /// `endpoints.runtime` names a runtime the worker cannot deploy.
    #[error(
        "runtime: {value:?} is not a supported runtime; use \"kserve\" (model format from runtime_config.modelFormat, default sklearn) or a Triton runtime such as \"kserve-triton\""
    )]
    UnknownRuntime {
        /// The rejected value.
        value: String,
    },
    /// A value has the wrong JSON type.
    #[error("{field}: expected {expected}, found {found}")]
    WrongType {
        /// Path of the field, e.g. `runtime_config.batcher`.
        field: String,
        /// What the field must be.
        expected: &'static str,
        /// What it was.
        found: &'static str,
    },
    /// A number that must be whole is not.
    #[error("{field}: {value} is not a whole number; use an integer")]
    NotAnInteger {
        /// Path of the field.
        field: String,
        /// The number as written.
        value: String,
    },
    /// A number is outside its allowed range.
    #[error("{field}: {value} is outside {range}")]
    OutOfRange {
        /// Path of the field.
        field: String,
        /// The number as written.
        value: String,
        /// The allowed range, e.g. `0..=100`.
        range: String,
    },
    /// A resource quantity is malformed or negative.
    #[error(
        "{field}: {value:?} is not a valid Kubernetes quantity ({reason}); write e.g. \"500m\", \"2\", \"4Gi\" or \"1e3\""
    )]
    InvalidQuantity {
        /// Path of the quantity.
        field: String,
        /// The quantity as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A model format KServe does not serve.
    #[error("{field}: {value:?} is not a supported model format; use one of {allowed}")]
    UnsupportedModelFormat {
        /// Path of the field.
        field: String,
        /// The format as written.
        value: String,
        /// The formats that are accepted here.
        allowed: String,
    },
    /// A string value is not acceptable.
    #[error("{field}: {value:?} is not valid; {reason}")]
    InvalidValue {
        /// Path of the field.
        field: String,
        /// The value as written.
        value: String,
        /// What is acceptable instead.
        reason: String,
    },
    /// Two settings contradict each other.
    #[error("{field}: {problem}")]
    Conflict {
        /// Path of the field reported first.
        field: String,
        /// The contradiction and how to resolve it.
        problem: String,
    },
    /// The tenant policy (`crate::policy`) does not allow the value.
    #[error("{field}: not allowed by the tenant policy: {rule}; {remedy}")]
    Policy {
        /// Path of the field.
        field: String,
        /// The rule that refuses it.
        rule: String,
        /// What the tenant can do, and the setting the operator can change.
        remedy: String,
    },
}

/// Model formats KServe's bundled serving runtimes declare (`supportedModelFormats` of the
/// ClusterServingRuntimes it ships: sklearn, xgboost, lightgbm, mlflow, tensorflow, pytorch,
/// triton, tensorrt, onnx, openvino, huggingface, pmml, paddle, autogluon).
pub const MODEL_FORMATS: &[&str] = &[
    "autogluon",
    "huggingface",
    "lightgbm",
    "mlflow",
    "onnx",
    "openvino",
    "paddle",
    "pmml",
    "pytorch",
    "sklearn",
    "tensorflow",
    "tensorrt",
    "triton",
    "xgboost",
];

/// Formats KServe's Triton runtime serves and auto-selects. Triton also lists `pytorch`, but
/// without auto-selection KServe would route such a model to TorchServe; a PyTorch model on
/// Triton is a `triton` model repository whose `config.pbtxt` names the backend.
pub const TRITON_MODEL_FORMATS: &[&str] = &["onnx", "tensorflow", "tensorrt", "triton"];

/// Inference protocols KServe knows (`protocolVersion`).
pub const PROTOCOL_VERSIONS: &[&str] = &["grpc-v1", "grpc-v2", "v1", "v2"];

/// Extended resource added by `runtime_config.gpu: true`.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Default `scaleTarget` for KEDA's CPU metric: KServe's own default utilization.
pub const DEFAULT_KEDA_CPU_UTILIZATION: i32 = 80;

/// KServe deployment mode, normalised from current or legacy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentMode {
    /// Knative Serving (legacy name `Serverless`): revisions, canary, scale to zero.
    Knative,
    /// Plain Deployments with HPA or KEDA (legacy name `RawDeployment`).
    Standard,
}

impl DeploymentMode {
    /// The mode a current or legacy name stands for, in any case.
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("knative") || name.eq_ignore_ascii_case("serverless") {
            Some(Self::Knative)
        } else if name.eq_ignore_ascii_case("standard")
            || name.eq_ignore_ascii_case("rawdeployment")
        {
            Some(Self::Standard)
        } else {
            None
        }
    }
}

/// The metric an autoscaler scales on, as the intent names it (`autoscaling.scaleMetric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AutoscaleMetric {
    /// CPU utilization (HPA).
    Cpu,
    /// Memory utilization (HPA).
    Memory,
    /// In-flight requests per pod (Knative).
    Concurrency,
    /// Requests per second (Knative).
    Rps,
}

impl AutoscaleMetric {
    /// Every value.
    pub const ALL: [AutoscaleMetric; 4] = [
        AutoscaleMetric::Cpu,
        AutoscaleMetric::Memory,
        AutoscaleMetric::Concurrency,
        AutoscaleMetric::Rps,
    ];

    /// The name the intent (and KServe) spells it with.
    pub fn as_str(self) -> &'static str {
        match self {
            AutoscaleMetric::Cpu => "cpu",
            AutoscaleMetric::Memory => "memory",
            AutoscaleMetric::Concurrency => "concurrency",
            AutoscaleMetric::Rps => "rps",
        }
    }
}

/// The container resource whose utilization KEDA scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UtilizationMetric {
    /// CPU.
    Cpu,
    /// Memory.
    Memory,
}

/// Request batching as the intent asks for it (`runtime_config.batcher`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batching {
    /// Requests per batch.
    pub max_batch_size: Option<i64>,
    /// Longest wait for a batch to fill, in milliseconds.
    pub max_latency: Option<i64>,
    /// Timeout of the batching sidecar's call to the model server, in seconds.
    pub timeout: Option<i64>,
}

/// How the predictor scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autoscaler {
    /// The mode's own autoscaler (Knative KPA or HPA), configured through
    /// `scaleMetric`/`scaleTarget` when set.
    Default {
        /// `autoscaling.scaleMetric`.
        metric: Option<AutoscaleMetric>,
        /// `autoscaling.scaleTarget`.
        target: Option<i32>,
    },
    /// KEDA, scaling on a resource utilization percentage.
    Keda {
        /// Resource whose utilization drives scaling.
        metric: UtilizationMetric,
        /// Target utilization in percent, `1..=100`.
        target: i32,
    },
}

/// A resource quantity as written in the intent, checked for syntax and sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityRef<'a> {
    /// A quantity string such as `500m` or `4Gi`.
    Str(&'a str),
    /// A JSON integer (or the `1` added for `gpu: true`).
    Int(u64),
}

impl fmt::Display for QuantityRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantityRef::Str(s) => f.write_str(s),
            QuantityRef::Int(n) => write!(f, "{n}"),
        }
    }
}

/// `model.resources` after validation and the GPU rule, borrowing the intent's JSON maps:
/// [`Resources::requests`] and [`Resources::limits`] list the entries sorted by name (as
/// Kubernetes' maps are), with the GPU added by `gpu: true` where a side lacked it. Nothing is
/// copied or allocated on the render path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources<'a> {
    requests: Option<&'a Map<String, Value>>,
    limits: Option<&'a Map<String, Value>>,
    gpu_request: Option<QuantityRef<'a>>,
    gpu_limit: Option<QuantityRef<'a>>,
    // whether each map iterates in name order (always, unless serde_json's `preserve_order`
    // feature is on); checked once during validation
    requests_sorted: bool,
    limits_sorted: bool,
}

impl<'a> Resources<'a> {
    /// Requests, sorted by resource name.
    pub fn requests(&self) -> ResourceIter<'a> {
        ResourceIter::new(self.requests, self.gpu_request, self.requests_sorted)
    }

    /// Limits, sorted by resource name.
    pub fn limits(&self) -> ResourceIter<'a> {
        ResourceIter::new(self.limits, self.gpu_limit, self.limits_sorted)
    }

    /// The limit set for `name`, if any.
    #[cfg(test)]
    fn limit(&self, name: &str) -> Option<QuantityRef<'a>> {
        match self.gpu_limit {
            Some(q) if name == GPU_RESOURCE => Some(q),
            _ => self.limits?.get(name).and_then(quantity_ref),
        }
    }

    /// An upper bound of the number of entries on both sides.
    pub fn max_entries(&self) -> usize {
        self.requests.map_or(0, Map::len) + self.limits.map_or(0, Map::len) + 2
    }
}

/// `name=quantity` pairs separated by commas (`cpu=250m,memory=512Mi`), the format of
/// `KSERVE_DEFAULT_REQUESTS` and `KSERVE_DEFAULT_LIMITS`; empty or `none` for no entries. Each
/// name and quantity is checked as an endpoint's are; extended resources such as GPUs are
/// refused (an endpoint asks for a GPU with `runtime_config.gpu`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceList(Map<String, Value>);

/// A malformed [`ResourceList`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResourceListError(String);

impl std::str::FromStr for ResourceList {
    type Err = ResourceListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map = Map::new();
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(Self(map));
        }
        for pair in s.split(',') {
            let Some((name, q)) = pair.split_once('=') else {
                return Err(ResourceListError(format!(
                    "{pair:?} is not name=quantity; write e.g. \"cpu=250m,memory=512Mi\" (or \"none\")"
                )));
            };
            let (name, q) = (name.trim(), Value::String(q.trim().to_owned()));
            resource_entry(name, &q, "default").map_err(|e| ResourceListError(e.to_string()))?;
            if is_extended_resource(name) {
                return Err(ResourceListError(format!(
                    "{name}: an extended resource such as a GPU cannot be a default; endpoints ask for GPUs with runtime_config.gpu"
                )));
            }
            if map.insert(name.to_owned(), q).is_some() {
                return Err(ResourceListError(format!("{name} is given twice")));
            }
        }
        Ok(Self(map))
    }
}

impl fmt::Display for ResourceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, (name, q)) in self.0.iter().enumerate() {
            let q = q.as_str().unwrap_or_default();
            write!(f, "{}{name}={q}", if i > 0 { "," } else { "" })?;
        }
        Ok(())
    }
}

/// Requests and limits for an endpoint that names no `runtime_config.resources`, so that no
/// model server runs as a BestEffort pod (first evicted, refused under a ResourceQuota). Kept
/// in the intent's own JSON shape: they pass through the same checks and rendering as an
/// endpoint's resources, and `gpu: true` adds the GPU on top.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DefaultResources {
    requests: Option<Map<String, Value>>,
    limits: Option<Map<String, Value>>,
}

impl DefaultResources {
    /// No defaults: an endpoint that names no resources gets none.
    pub const NONE: DefaultResources = DefaultResources {
        requests: None,
        limits: None,
    };

    /// Defaults from the two lists (an empty list sets nothing on its side).
    pub fn new(requests: ResourceList, limits: ResourceList) -> Self {
        let side = |l: ResourceList| (!l.0.is_empty()).then_some(l.0);
        Self {
            requests: side(requests),
            limits: side(limits),
        }
    }

    /// Checks the pair as an endpoint's resources are checked: a request may not exceed the
    /// limit of the same resource.
    pub fn check(&self) -> Result<(), IntentError> {
        resources(None, false, self).map(|_| ())
    }

    fn sides(&self) -> [Option<&Map<String, Value>>; 2] {
        [self.requests.as_ref(), self.limits.as_ref()]
    }
}

/// Entries of a validated resource map in name order, with an extra entry merged in.
pub struct ResourceIter<'a> {
    inner: ResourceIterInner<'a>,
}

enum ResourceIterInner<'a> {
    /// The map iterates in name order (a `BTreeMap`, serde_json's default).
    Sorted {
        entries: std::iter::Peekable<serde_json::map::Iter<'a>>,
        extra: Option<(&'a str, QuantityRef<'a>)>,
    },
    /// The map keeps insertion order (serde_json's `preserve_order` feature): sorted copy.
    Collected(std::vec::IntoIter<(&'a str, QuantityRef<'a>)>),
    /// No map: only the extra entry, if any.
    Extra(Option<(&'a str, QuantityRef<'a>)>),
}

impl<'a> ResourceIter<'a> {
    fn new(
        map: Option<&'a Map<String, Value>>,
        gpu: Option<QuantityRef<'a>>,
        sorted: bool,
    ) -> Self {
        let extra = gpu.map(|q| (GPU_RESOURCE, q));
        let inner = match map {
            None => ResourceIterInner::Extra(extra),
            Some(m) if !sorted => {
                let mut all: Vec<_> = m
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str(), quantity_ref(v)?)))
                    .chain(extra)
                    .collect();
                all.sort_unstable_by(|a, b| a.0.cmp(b.0));
                ResourceIterInner::Collected(all.into_iter())
            }
            Some(m) => ResourceIterInner::Sorted {
                entries: m.iter().peekable(),
                extra,
            },
        };
        ResourceIter { inner }
    }
}

impl<'a> Iterator for ResourceIter<'a> {
    type Item = (&'a str, QuantityRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            ResourceIterInner::Collected(it) => it.next(),
            ResourceIterInner::Extra(extra) => extra.take(),
            ResourceIterInner::Sorted { entries, extra } => loop {
                match (entries.peek(), *extra) {
                    (Some((k, _)), Some((name, _))) if name < k.as_str() => return extra.take(),
                    (Some(_), _) => {
                        let (k, v) = entries.next()?;
                        // `null` entries mean "not set"
                        if let Some(q) = quantity_ref(v) {
                            return Some((k.as_str(), q));
                        }
                    }
                    (None, _) => return extra.take(),
                }
            },
        }
    }
}

/// The quantity of a validated map entry (`None` for `null`).
fn quantity_ref(v: &Value) -> Option<QuantityRef<'_>> {
    match v {
        Value::String(s) => Some(QuantityRef::Str(s)),
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f as u64))
            .map(QuantityRef::Int),
        _ => None,
    }
}

/// A validated intent: every decision made, nothing spelled the KServe way yet.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingSpec<'a> {
    /// Canonical model format name (one of [`MODEL_FORMATS`]).
    pub model_format: &'static str,
    /// The model version's artifact URI.
    pub storage_uri: &'a str,
    /// Canonical protocol version (one of [`PROTOCOL_VERSIONS`]).
    pub protocol_version: Option<&'static str>,
    /// Serving runtime image tag.
    pub runtime_version: Option<&'a str>,
    /// Requests and limits; `None` when neither is set.
    pub resources: Option<Resources<'a>>,
    /// KServe request batching.
    pub batcher: Option<Batching>,
    /// Request timeout in seconds.
    pub timeout: Option<i64>,
    /// Service account of the predictor pods.
    pub service_account_name: Option<&'a str>,
    /// Lower replica bound.
    pub min_replicas: Option<i32>,
    /// Upper replica bound.
    pub max_replicas: Option<i32>,
    /// Autoscaler and its metric.
    pub autoscaler: Autoscaler,
    /// Canary traffic percentage (Knative only).
    pub canary_traffic_percent: Option<i64>,
    /// Mode to write, when the intent determines one.
    pub deployment_mode: Option<DeploymentMode>,
    /// Per-endpoint override of the Prometheus scraping default.
    pub prometheus_scraping: Option<bool>,
    /// Spec generation (non-negative).
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuntimeKind {
    Generic,
    Triton,
}

impl Intent {
    /// Parses an intent file (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Intent, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Validates the intent and makes every mapping decision (see the module doc), with no
    /// default resources: an endpoint that names none gets none. The worker and `render` use
    /// [`validate_with`](Self::validate_with) through `crate::kserve`, which also applies the
    /// configured defaults and the tenant policy.
    pub fn validate(&self) -> Result<ServingSpec<'_>, IntentError> {
        self.validate_with(&DefaultResources::NONE)
    }

    /// [`validate`](Self::validate), giving an endpoint that names no
    /// `runtime_config.resources` the worker's `defaults` (the GPU of `gpu: true` is added on
    /// top).
    pub fn validate_with<'a>(
        &'a self,
        defaults: &'a DefaultResources,
    ) -> Result<ServingSpec<'a>, IntentError> {
        let generation = u64::try_from(self.generation).map_err(|_| IntentError::OutOfRange {
            field: "generation".into(),
            value: self.generation.to_string(),
            range: "0 or more".into(),
        })?;
        let runtime = runtime_kind(self.runtime.as_deref())?;
        let model_version_id = self
            .model_version_id
            .ok_or(IntentError::MissingModelVersion)?;
        let storage_uri = match self.artifact_uri.as_deref() {
            Some(uri) if !uri.trim().is_empty() => uri,
            _ => return Err(IntentError::MissingArtifact { model_version_id }),
        };
        if let Some(bad) = uri_forbidden_char(storage_uri) {
            return Err(IntentError::InvalidValue {
                field: "artifact_uri".into(),
                value: storage_uri.into(),
                reason: format!(
                    "a storage URI cannot contain {bad:?}; fix the model version's artifact_uri"
                ),
            });
        }

        let traffic = object(self.traffic.as_ref(), "traffic")?;
        let autoscaling = object(self.autoscaling.as_ref(), "autoscaling")?;
        let rc = object(self.runtime_config.as_ref(), "runtime_config")?;

        // one pass over each map (cheaper than a lookup per key on the hot path)
        let a = AutoscalingFields::read(autoscaling);
        let c = RuntimeConfigFields::read(rc);

        // traffic
        let canary = member(traffic, "canaryTrafficPercent")
            .map(|v| int_in(v, "traffic.canaryTrafficPercent", 0, 100, "0..=100"))
            .transpose()?;

        // autoscaling
        let min_replicas = a
            .min_replicas
            .map(|v| int32_in(v, "autoscaling.minReplicas", 0, "0..=2147483647"))
            .transpose()?;
        let max_replicas = a
            .max_replicas
            .map(|v| int32_in(v, "autoscaling.maxReplicas", 1, "1..=2147483647"))
            .transpose()?;
        if let (Some(min), Some(max)) = (min_replicas, max_replicas)
            && min > max
        {
            return Err(IntentError::Conflict {
                field: "autoscaling.minReplicas".into(),
                problem: format!(
                    "{min} is greater than autoscaling.maxReplicas ({max}); lower minReplicas or raise maxReplicas"
                ),
            });
        }
        let scale_target = a
            .scale_target
            .map(|v| int32_in(v, "autoscaling.scaleTarget", 1, "1..=2147483647"))
            .transpose()?;
        let scale_metric = a
            .scale_metric
            .map(|v| scale_metric(v, "autoscaling.scaleMetric"))
            .transpose()?;
        let keda_flag = a.keda.map(|v| boolean(v, "autoscaling.keda")).transpose()?;

        // runtime_config
        let format_setting = c
            .model_format
            .map(|v| model_format(v, "runtime_config.modelFormat"))
            .transpose()?;
        let protocol_version = c
            .protocol_version
            .map(|v| protocol_version(v, "runtime_config.protocolVersion"))
            .transpose()?;
        let runtime_version = c
            .runtime_version
            .map(|v| runtime_version(v, "runtime_config.runtimeVersion"))
            .transpose()?;
        let gpu = c
            .gpu
            .map(|v| boolean(v, "runtime_config.gpu"))
            .transpose()?
            .unwrap_or(false);
        let resources = resources(c.resources, gpu, defaults)?;
        let batcher = c.batcher.map(batcher).transpose()?;
        let timeout = c
            .timeout
            .map(|v| {
                int_in(
                    v,
                    "runtime_config.timeout",
                    1,
                    i64::MAX,
                    "1 or more seconds",
                )
            })
            .transpose()?;
        let service_account_name = c
            .service_account_name
            .map(|v| service_account(v, "runtime_config.serviceAccountName"))
            .transpose()?;
        let explicit_mode = c
            .deployment_mode
            .map(|v| deployment_mode(v, "runtime_config.deploymentMode"))
            .transpose()?;
        let class_keda = c
            .autoscaler_class
            .map(|v| autoscaler_class(v, "runtime_config.autoscalerClass"))
            .transpose()?;
        let prometheus_scraping = c
            .prometheus_scraping
            .map(|v| boolean(v, "runtime_config.enablePrometheusScraping"))
            .transpose()?;

        // model format: an explicit setting wins, the runtime supplies the default
        let model_format = match (format_setting, runtime) {
            (Some(f), RuntimeKind::Triton) if !TRITON_MODEL_FORMATS.contains(&f) => {
                return Err(IntentError::UnsupportedModelFormat {
                    field: "runtime_config.modelFormat".into(),
                    value: f.into(),
                    allowed: format!(
                        "{} with runtime {:?} (for a PyTorch model on Triton use \"triton\" and name the backend in config.pbtxt)",
                        TRITON_MODEL_FORMATS.join(", "),
                        self.runtime.as_deref().unwrap_or_default()
                    ),
                });
            }
            (Some(f), _) => f,
            (None, RuntimeKind::Triton) => "triton",
            (None, RuntimeKind::Generic) => "sklearn",
        };
        if matches!(model_format, "triton" | "tensorrt")
            && let Some(p) = protocol_version
            && !matches!(p, "v2" | "grpc-v2")
        {
            return Err(IntentError::Conflict {
                field: "runtime_config.protocolVersion".into(),
                problem: format!(
                    "Triton serves the v2 inference protocol only, but {p:?} was asked for; use \"v2\" or \"grpc-v2\""
                ),
            });
        }

        // KEDA: either switch turns it on; contradicting switches are an error
        let keda = match (keda_flag, class_keda) {
            (Some(a), Some(b)) if a != b => {
                return Err(IntentError::Conflict {
                    field: "autoscaling.keda".into(),
                    problem: format!(
                        "is {a} but runtime_config.autoscalerClass says {}; make them agree",
                        if b { "\"keda\"" } else { "\"hpa\"" }
                    ),
                });
            }
            (a, b) => a.unwrap_or(false) || b.unwrap_or(false),
        };

        let deployment_mode = resolve_mode(explicit_mode, canary.is_some(), keda)?;

        let autoscaler = if keda {
            keda_autoscaler(scale_metric, scale_target)?
        } else {
            check_scaling(deployment_mode, scale_metric, scale_target)?;
            Autoscaler::Default {
                metric: scale_metric,
                target: scale_target,
            }
        };

        Ok(ServingSpec {
            model_format,
            storage_uri,
            protocol_version,
            runtime_version,
            resources,
            batcher,
            timeout,
            service_account_name,
            min_replicas,
            max_replicas,
            autoscaler,
            canary_traffic_percent: canary,
            deployment_mode,
            prometheus_scraping,
            generation,
        })
    }
}

/// The `autoscaling` keys the mapping reads (JSON `null` counts as absent).
#[derive(Default)]
struct AutoscalingFields<'a> {
    min_replicas: Option<&'a Value>,
    max_replicas: Option<&'a Value>,
    scale_target: Option<&'a Value>,
    scale_metric: Option<&'a Value>,
    keda: Option<&'a Value>,
}

impl<'a> AutoscalingFields<'a> {
    fn read(m: Option<&'a Map<String, Value>>) -> Self {
        let mut f = Self::default();
        for (k, v) in m.into_iter().flatten() {
            let slot = match k.as_str() {
                "minReplicas" => &mut f.min_replicas,
                "maxReplicas" => &mut f.max_replicas,
                "scaleTarget" => &mut f.scale_target,
                "scaleMetric" => &mut f.scale_metric,
                "keda" => &mut f.keda,
                _ => continue, // unknown keys are ignored, never copied
            };
            *slot = (!v.is_null()).then_some(v);
        }
        f
    }
}

/// The `runtime_config` keys the mapping reads (JSON `null` counts as absent).
#[derive(Default)]
struct RuntimeConfigFields<'a> {
    model_format: Option<&'a Value>,
    protocol_version: Option<&'a Value>,
    runtime_version: Option<&'a Value>,
    gpu: Option<&'a Value>,
    resources: Option<&'a Value>,
    batcher: Option<&'a Value>,
    timeout: Option<&'a Value>,
    service_account_name: Option<&'a Value>,
    deployment_mode: Option<&'a Value>,
    autoscaler_class: Option<&'a Value>,
    prometheus_scraping: Option<&'a Value>,
}

impl<'a> RuntimeConfigFields<'a> {
    fn read(m: Option<&'a Map<String, Value>>) -> Self {
        let mut f = Self::default();
        for (k, v) in m.into_iter().flatten() {
            let slot = match k.as_str() {
                "modelFormat" => &mut f.model_format,
                "protocolVersion" => &mut f.protocol_version,
                "runtimeVersion" => &mut f.runtime_version,
                "gpu" => &mut f.gpu,
                "resources" => &mut f.resources,
                "batcher" => &mut f.batcher,
                "timeout" => &mut f.timeout,
                "serviceAccountName" => &mut f.service_account_name,
                "deploymentMode" => &mut f.deployment_mode,
                "autoscalerClass" => &mut f.autoscaler_class,
                "enablePrometheusScraping" => &mut f.prometheus_scraping,
                _ => continue, // unknown keys are ignored, never copied
            };
            *slot = (!v.is_null()).then_some(v);
        }
        f
    }
}

fn resolve_mode(
    explicit: Option<DeploymentMode>,
    canary: bool,
    keda: bool,
) -> Result<Option<DeploymentMode>, IntentError> {
    if canary && keda {
        return Err(IntentError::Conflict {
            field: "traffic.canaryTrafficPercent".into(),
            problem: "canary rollouts need Knative mode but KEDA autoscaling needs Standard mode; drop the canary or KEDA".into(),
        });
    }
    match explicit {
        Some(DeploymentMode::Standard) if canary => Err(IntentError::Conflict {
            field: "traffic.canaryTrafficPercent".into(),
            problem: "canary rollouts need Knative mode but runtime_config.deploymentMode is Standard; set deploymentMode to Knative or remove the canary".into(),
        }),
        Some(DeploymentMode::Knative) if keda => Err(IntentError::Conflict {
            field: "runtime_config.deploymentMode".into(),
            problem: "is Knative but KEDA autoscaling runs in Standard mode only; set deploymentMode to Standard or turn KEDA off".into(),
        }),
        Some(mode) => Ok(Some(mode)),
        None if canary => Ok(Some(DeploymentMode::Knative)),
        None if keda => Ok(Some(DeploymentMode::Standard)),
        None => Ok(None),
    }
}

fn is_utilization(metric: AutoscaleMetric) -> bool {
    matches!(metric, AutoscaleMetric::Cpu | AutoscaleMetric::Memory)
}

fn check_target(metric: AutoscaleMetric, target: Option<i32>) -> Result<(), IntentError> {
    match target {
        Some(t) if is_utilization(metric) && t > 100 => Err(IntentError::OutOfRange {
            field: "autoscaling.scaleTarget".into(),
            value: t.to_string(),
            range: format!("1..=100 (a utilization percentage for {})", metric.as_str()),
        }),
        None if metric == AutoscaleMetric::Memory => Err(IntentError::Conflict {
            field: "autoscaling.scaleTarget".into(),
            problem: "is required when scaleMetric is memory (KServe has no default memory target); set a utilization percentage 1..=100".into(),
        }),
        _ => Ok(()),
    }
}

fn check_scaling(
    mode: Option<DeploymentMode>,
    metric: Option<AutoscaleMetric>,
    target: Option<i32>,
) -> Result<(), IntentError> {
    let effective = match (metric, mode) {
        (Some(m), _) => m,
        // the autoscaler's own default metric, for the range check
        (None, Some(DeploymentMode::Standard)) => AutoscaleMetric::Cpu,
        (None, _) => AutoscaleMetric::Concurrency,
    };
    match (mode, effective) {
        (Some(DeploymentMode::Knative), AutoscaleMetric::Cpu | AutoscaleMetric::Memory) => {
            return Err(IntentError::Conflict {
                field: "autoscaling.scaleMetric".into(),
                problem: format!(
                    "{:?} needs Standard mode (HPA) but the endpoint runs in Knative mode, whose autoscaler scales on concurrency or rps",
                    effective.as_str()
                ),
            });
        }
        (Some(DeploymentMode::Standard), AutoscaleMetric::Concurrency | AutoscaleMetric::Rps) => {
            return Err(IntentError::Conflict {
                field: "autoscaling.scaleMetric".into(),
                problem: format!(
                    "{:?} needs Knative mode but the endpoint runs in Standard mode, whose HPA scales on cpu or memory",
                    effective.as_str()
                ),
            });
        }
        _ => {}
    }
    check_target(effective, target)
}

fn keda_autoscaler(
    metric: Option<AutoscaleMetric>,
    target: Option<i32>,
) -> Result<Autoscaler, IntentError> {
    let metric = metric.unwrap_or(AutoscaleMetric::Cpu);
    let resource = match metric {
        AutoscaleMetric::Cpu => UtilizationMetric::Cpu,
        AutoscaleMetric::Memory => UtilizationMetric::Memory,
        AutoscaleMetric::Concurrency | AutoscaleMetric::Rps => {
            return Err(IntentError::Conflict {
                field: "autoscaling.scaleMetric".into(),
                problem: format!(
                    "{:?} is a Knative autoscaler metric; KEDA scales on cpu or memory",
                    metric.as_str()
                ),
            });
        }
    };
    check_target(metric, target)?;
    Ok(Autoscaler::Keda {
        metric: resource,
        target: target.unwrap_or(DEFAULT_KEDA_CPU_UTILIZATION),
    })
}

// ---------------------------------------------------------------------------------------------
// JSON access helpers. A JSON `null` anywhere means "not set", as for SQL NULL.

/// First whitespace or control character of a URI, checking bytes when it is ASCII (the
/// common case) and characters otherwise.
fn uri_forbidden_char(s: &str) -> Option<char> {
    if s.is_ascii() {
        // a branch-free scan first (the common answer is "none"), then find the culprit
        let bad = s
            .bytes()
            .fold(false, |acc, b| acc | (b <= b' ') | (b == 0x7f));
        if !bad {
            return None;
        }
        s.bytes().find(|&b| b <= b' ' || b == 0x7f).map(char::from)
    } else {
        s.chars().find(|c| c.is_whitespace() || c.is_control())
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &str, expected: &'static str, v: &Value) -> IntentError {
    IntentError::WrongType {
        field: field.into(),
        expected,
        found: type_name(v),
    }
}

fn object<'a>(
    v: Option<&'a Value>,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, IntentError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(wrong_type(field, "an object", other)),
    }
}

fn member<'a>(m: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a Value> {
    match m?.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    }
}

/// 2^63 as a float: every whole float in `[-2^63, 2^63)` converts to `i64` exactly.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// A whole JSON number (`2` or `2.0`).
fn integer(v: &Value, field: &str) -> Result<i64, IntentError> {
    let Value::Number(n) = v else {
        return Err(wrong_type(field, "an integer", v));
    };
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.is_u64() {
        return Err(IntentError::OutOfRange {
            field: field.into(),
            value: n.to_string(),
            range: format!("..={}", i64::MAX),
        });
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&f) => Ok(f as i64),
        Some(f) if f.fract() == 0.0 => Err(IntentError::OutOfRange {
            field: field.into(),
            value: n.to_string(),
            range: format!("..={}", i64::MAX),
        }),
        _ => Err(IntentError::NotAnInteger {
            field: field.into(),
            value: n.to_string(),
        }),
    }
}

fn int_in(v: &Value, field: &str, min: i64, max: i64, range: &str) -> Result<i64, IntentError> {
    let i = integer(v, field)?;
    if i < min || i > max {
        return Err(IntentError::OutOfRange {
            field: field.into(),
            value: i.to_string(),
            range: range.into(),
        });
    }
    Ok(i)
}

fn int32_in(v: &Value, field: &str, min: i32, range: &str) -> Result<i32, IntentError> {
    let i = int_in(v, field, i64::from(min), i64::from(i32::MAX), range)?;
    // int_in bounded it to i32, so this conversion cannot fail; map rather than unwrap anyway
    i32::try_from(i).map_err(|_| IntentError::OutOfRange {
        field: field.into(),
        value: i.to_string(),
        range: range.into(),
    })
}

fn boolean(v: &Value, field: &str) -> Result<bool, IntentError> {
    v.as_bool().ok_or_else(|| wrong_type(field, "a boolean", v))
}

fn string<'a>(v: &'a Value, field: &str) -> Result<&'a str, IntentError> {
    v.as_str().ok_or_else(|| wrong_type(field, "a string", v))
}

fn invalid(field: &str, value: &str, reason: impl Into<String>) -> IntentError {
    IntentError::InvalidValue {
        field: field.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// The list's spelling of `value`, compared case-insensitively (lengths first, so most
/// entries are skipped without looking at their bytes).
fn canonical(list: &[&'static str], value: &str) -> Option<&'static str> {
    list.iter()
        .copied()
        .find(|c| c.len() == value.len() && c.eq_ignore_ascii_case(value))
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn runtime_kind(runtime: Option<&str>) -> Result<RuntimeKind, IntentError> {
    let rt = match runtime {
        None | Some("kserve") => return Ok(RuntimeKind::Generic),
        Some("kserve-triton" | "triton") => return Ok(RuntimeKind::Triton),
        Some(rt) => rt,
    };
    let identifier = !rt.is_empty()
        && rt.len() <= 253
        && rt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if identifier && rt.eq_ignore_ascii_case("kserve") {
        Ok(RuntimeKind::Generic)
    } else if identifier && contains_ignore_ascii_case(rt, "triton") {
        Ok(RuntimeKind::Triton)
    } else {
        Err(IntentError::UnknownRuntime { value: rt.into() })
    }
}

fn model_format(v: &Value, field: &str) -> Result<&'static str, IntentError> {
    let s = string(v, field)?;
    if s.trim().is_empty() {
        return Err(invalid(
            field,
            s,
            format!(
                "the model format cannot be empty; use one of {}",
                MODEL_FORMATS.join(", ")
            ),
        ));
    }
    canonical(MODEL_FORMATS, s).ok_or_else(|| IntentError::UnsupportedModelFormat {
        field: field.into(),
        value: s.into(),
        allowed: MODEL_FORMATS.join(", "),
    })
}

fn protocol_version(v: &Value, field: &str) -> Result<&'static str, IntentError> {
    let s = string(v, field)?;
    canonical(PROTOCOL_VERSIONS, s).ok_or_else(|| {
        invalid(
            field,
            s,
            format!("use one of {}", PROTOCOL_VERSIONS.join(", ")),
        )
    })
}

fn runtime_version<'a>(v: &'a Value, field: &str) -> Result<&'a str, IntentError> {
    let s = string(v, field)?;
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(s)
    } else {
        Err(invalid(
            field,
            s,
            "a runtime version is a container image tag: letters, digits, '_', '.', '-', at most 128 characters, not starting with '.' or '-' (e.g. \"24.08-py3\")",
        ))
    }
}

fn scale_metric(v: &Value, field: &str) -> Result<AutoscaleMetric, IntentError> {
    let s = string(v, field)?;
    AutoscaleMetric::ALL
        .iter()
        .copied()
        .find(|m| m.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| invalid(field, s, "use cpu, memory, concurrency or rps"))
}

fn deployment_mode(v: &Value, field: &str) -> Result<DeploymentMode, IntentError> {
    let s = string(v, field)?;
    DeploymentMode::from_name(s).ok_or_else(|| {
        invalid(
            field,
            s,
            "use Knative or Standard (legacy Serverless and RawDeployment are accepted)",
        )
    })
}

/// `Some(true)` for KEDA, `Some(false)` for HPA (KServe's default).
fn autoscaler_class(v: &Value, field: &str) -> Result<bool, IntentError> {
    let s = string(v, field)?;
    if s.eq_ignore_ascii_case("keda") {
        Ok(true)
    } else if s.eq_ignore_ascii_case("hpa") {
        Ok(false)
    } else {
        Err(invalid(
            field,
            s,
            "use \"keda\" (or \"hpa\", KServe's default)",
        ))
    }
}

fn service_account<'a>(v: &'a Value, field: &str) -> Result<&'a str, IntentError> {
    let s = string(v, field)?;
    if is_dns1123_subdomain(s) {
        Ok(s)
    } else {
        Err(invalid(
            field,
            s,
            "a service account name is a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters",
        ))
    }
}

fn batcher(v: &Value) -> Result<Batching, IntentError> {
    let m = object(Some(v), "runtime_config.batcher")?;
    let field = |key: &str, path: &str, range: &str| {
        member(m, key)
            .map(|v| int_in(v, path, 1, i64::from(i32::MAX), range))
            .transpose()
    };
    Ok(Batching {
        max_batch_size: field(
            "maxBatchSize",
            "runtime_config.batcher.maxBatchSize",
            "1..=2147483647",
        )?,
        max_latency: field(
            "maxLatency",
            "runtime_config.batcher.maxLatency",
            "1..=2147483647 milliseconds",
        )?,
        timeout: field(
            "timeout",
            "runtime_config.batcher.timeout",
            "1..=2147483647 seconds",
        )?,
    })
}

// ---------------------------------------------------------------------------------------------
// Resources

fn resources<'a>(
    v: Option<&'a Value>,
    gpu: bool,
    defaults: &'a DefaultResources,
) -> Result<Option<Resources<'a>>, IntentError> {
    let m = object(v, "runtime_config.resources")?;
    let mut requests = object(member(m, "requests"), REQUESTS)?;
    let mut limits = object(member(m, "limits"), LIMITS)?;
    if !names_any(requests) && !names_any(limits) {
        // the endpoint names no resources: the worker's defaults (checked at start-up)
        [requests, limits] = defaults.sides();
    }
    if requests.is_none() && limits.is_none() && !gpu {
        return Ok(None);
    }
    let requests_sorted = requests.is_none_or(|m| m.keys().is_sorted());
    let limits_sorted = limits.is_none_or(|m| m.keys().is_sorted());

    // One merge-join over both sides in name order: every entry is checked and parsed once,
    // each request meets its limit without a lookup.
    let mut reqs = SortedEntries::new(requests, requests_sorted).peekable();
    let mut lims = SortedEntries::new(limits, limits_sorted).peekable();
    let (mut gpu_request, mut gpu_limit) = (None, None);
    let mut gpu_seen = false;
    let mut entries = 0usize;
    loop {
        let (req, lim) = match (reqs.peek(), lims.peek()) {
            (None, None) => break,
            (Some(_), None) => (reqs.next(), None),
            (None, Some(_)) => (None, lims.next()),
            (Some(r), Some(l)) => match r.0.cmp(l.0) {
                std::cmp::Ordering::Less => (reqs.next(), None),
                std::cmp::Ordering::Greater => (None, lims.next()),
                std::cmp::Ordering::Equal => (reqs.next(), lims.next()),
            },
        };
        let name = req.or(lim).map_or("", |e| e.0);
        let req = req
            .map(|(_, v)| resource_entry(name, v, REQUESTS))
            .transpose()?;
        let lim = lim
            .map(|(_, v)| resource_entry(name, v, LIMITS))
            .transpose()?;
        entries += 1;
        let extended = is_extended_resource(name);
        let lim = if name == GPU_RESOURCE && gpu {
            // `gpu: true` puts the GPU on both sides (extended resources must be equal in
            // both): an explicit count on one side is copied to the other
            gpu_seen = true;
            match (req, lim) {
                (Some(r), None) => {
                    gpu_limit = Some(r.0);
                    Some(r)
                }
                (None, Some(l)) => {
                    gpu_request = Some(l.0);
                    None // the copied request equals its limit
                }
                _ => lim,
            }
        } else {
            lim
        };
        let Some((req, r)) = req else { continue };
        match lim {
            None if extended => {
                return Err(IntentError::Conflict {
                    field: format!("{LIMITS}.{name}"),
                    problem: format!(
                        "must be set because requests sets it ({req}); Kubernetes does not overcommit extended resources (or use runtime_config.gpu: true for GPUs)"
                    ),
                });
            }
            None => {}
            Some((lim, l)) if extended && r != l => {
                return Err(IntentError::Conflict {
                    field: format!("{REQUESTS}.{name}"),
                    problem: format!(
                        "{req} differs from limits.{name} ({lim}); an extended resource's request must equal its limit"
                    ),
                });
            }
            Some((lim, l)) if r > l => {
                return Err(IntentError::Conflict {
                    field: format!("{REQUESTS}.{name}"),
                    problem: format!(
                        "{req} is more than limits.{name} ({lim}); a request cannot exceed its limit"
                    ),
                });
            }
            Some(_) => {}
        }
    }
    if gpu && !gpu_seen {
        // no count on either side: one GPU
        gpu_request = Some(QuantityRef::Int(1));
        gpu_limit = Some(QuantityRef::Int(1));
        entries += 1;
    }
    if entries == 0 {
        return Ok(None);
    }
    Ok(Some(Resources {
        requests,
        limits,
        gpu_request,
        gpu_limit,
        requests_sorted,
        limits_sorted,
    }))
}

/// Whether a resource map has an entry that is not `null`.
fn names_any(side: Option<&Map<String, Value>>) -> bool {
    side.is_some_and(|m| m.values().any(|v| !v.is_null()))
}

const REQUESTS: &str = "runtime_config.resources.requests";
const LIMITS: &str = "runtime_config.resources.limits";

/// Non-null entries of a resource map in name order: the map's own order when it is sorted
/// (serde_json's default `BTreeMap`), else a sorted copy.
enum SortedEntries<'a> {
    Map(serde_json::map::Iter<'a>),
    Sorted(std::vec::IntoIter<(&'a String, &'a Value)>),
    Empty,
}

impl<'a> SortedEntries<'a> {
    fn new(map: Option<&'a Map<String, Value>>, sorted: bool) -> Self {
        match map {
            None => SortedEntries::Empty,
            Some(m) if sorted => SortedEntries::Map(m.iter()),
            Some(m) => {
                let mut all: Vec<_> = m.iter().collect();
                all.sort_unstable_by(|a, b| a.0.cmp(b.0));
                SortedEntries::Sorted(all.into_iter())
            }
        }
    }
}

impl<'a> Iterator for SortedEntries<'a> {
    type Item = (&'a str, &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (k, v) = match self {
                SortedEntries::Map(it) => it.next()?,
                SortedEntries::Sorted(it) => it.next()?,
                SortedEntries::Empty => return None,
            };
            if !v.is_null() {
                return Some((k.as_str(), v));
            }
        }
    }
}

/// Checks one entry (name, quantity syntax and sign, whole extended resources) and returns its
/// quantity and value.
fn resource_entry<'a>(
    name: &str,
    v: &'a Value,
    path: &str,
) -> Result<(QuantityRef<'a>, f64), IntentError> {
    // the field path is only built for an error: this runs on the hot path
    let field = || format!("{path}.{name}");
    if !is_resource_name(name) {
        return Err(invalid(
            &field(),
            name,
            "a resource name is a Kubernetes qualified name such as cpu, memory, ephemeral-storage or nvidia.com/gpu",
        ));
    }
    let (q, value) = quantity(v, field)?;
    if value.fract() != 0.0 && is_extended_resource(name) {
        return Err(IntentError::InvalidQuantity {
            field: format!("{path}.{name}"),
            value: q.to_string(),
            reason: "an extended resource such as a GPU is counted in whole units",
        });
    }
    Ok((q, value))
}

/// `(prefix, name)` of a qualified name, split at the first '/'.
fn split_prefix(name: &str) -> (Option<&str>, &str) {
    match name.bytes().position(|b| b == b'/') {
        Some(i) => (Some(&name[..i]), &name[i + 1..]),
        None => (None, name),
    }
}

/// Extended resources (a domain-prefixed name outside `kubernetes.io`, such as
/// `nvidia.com/gpu`) are whole numbers and never overcommitted: Kubernetes requires a limit, and
/// the request equal to it.
pub fn is_extended_resource(name: &str) -> bool {
    match split_prefix(name) {
        (Some(domain), _) => domain != "kubernetes.io" && !domain.ends_with(".kubernetes.io"),
        (None, _) => false,
    }
}

fn quantity(v: &Value, field: impl Fn() -> String) -> Result<(QuantityRef<'_>, f64), IntentError> {
    let invalid = |value: String, reason| IntentError::InvalidQuantity {
        field: field(),
        value,
        reason,
    };
    match v {
        Value::String(s) => match parse_quantity(s) {
            Some(x) if x < 0.0 || s.starts_with('-') => {
                Err(invalid(s.clone(), "resources cannot be negative"))
            }
            Some(x) => Ok((QuantityRef::Str(s), x)),
            None => Err(invalid(s.clone(), "not the Kubernetes quantity syntax")),
        },
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return Ok((QuantityRef::Int(u), u as f64));
            }
            if n.is_i64() {
                return Err(invalid(n.to_string(), "resources cannot be negative"));
            }
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && (0.0..1.8e19).contains(&f) => {
                    Ok((QuantityRef::Int(f as u64), f))
                }
                _ => Err(invalid(
                    n.to_string(),
                    "a JSON number must be a non-negative integer; write fractions as a string such as \"500m\" or \"0.5\"",
                )),
            }
        }
        other => Err(wrong_type(
            &field(),
            "a quantity string or a non-negative integer",
            other,
        )),
    }
}

/// Parses the Kubernetes quantity syntax (`<sign><number><suffix>`, where the suffix is a binary
/// SI suffix `Ki..Ei`, a decimal SI suffix `n u m k M G T P E`, or a decimal exponent `e<int>`)
/// and returns its approximate value. `None` if the syntax is wrong. The exponent is an integer
/// as in Kubernetes' own parser (the CRD's regular expression is looser).
///
/// Hand-written rather than built on `str::parse::<f64>`: it runs for every resource of every
/// render, and the value is only used for comparisons.
pub fn parse_quantity(s: &str) -> Option<f64> {
    const MANTISSA_LIMIT: u64 = 1_000_000_000_000_000_000;
    let b = s.as_bytes();
    let (negative, mut i) = match b.first() {
        Some(b'+') => (false, 1),
        Some(b'-') => (true, 1),
        _ => (false, 0),
    };
    // up to 19 significant digits in `mantissa`; `scale` is the power of ten applied to it
    let mut mantissa: u64 = 0;
    let mut scale: i32 = 0;
    let mut digits = 0usize;
    while let Some(&c) = b.get(i).filter(|c| c.is_ascii_digit()) {
        if mantissa < MANTISSA_LIMIT {
            mantissa = mantissa * 10 + u64::from(c - b'0');
        } else {
            scale = scale.saturating_add(1);
        }
        digits += 1;
        i += 1;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        while let Some(&c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if mantissa < MANTISSA_LIMIT {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                scale -= 1;
            }
            digits += 1;
            i += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    let (binary_exp, decimal_exp): (i32, i32) = match &b[i..] {
        [] => (0, 0),
        [c] => match c {
            b'n' => (0, -9),
            b'u' => (0, -6),
            b'm' => (0, -3),
            b'k' => (0, 3),
            b'M' => (0, 6),
            b'G' => (0, 9),
            b'T' => (0, 12),
            b'P' => (0, 15),
            b'E' => (0, 18),
            _ => return None,
        },
        [c, b'i'] => match c {
            b'K' => (10, 0),
            b'M' => (20, 0),
            b'G' => (30, 0),
            b'T' => (40, 0),
            b'P' => (50, 0),
            b'E' => (60, 0),
            _ => return None,
        },
        [b'e' | b'E', exp @ ..] => {
            let (sign, exp_digits) = match exp {
                [b'+', d @ ..] => (1, d),
                [b'-', d @ ..] => (-1, d),
                d => (1, d),
            };
            if exp_digits.is_empty()
                || exp_digits.len() > 9
                || !exp_digits.iter().all(u8::is_ascii_digit)
            {
                return None;
            }
            let e = exp_digits
                .iter()
                .fold(0i32, |acc, d| acc * 10 + i32::from(d - b'0'));
            (0, sign * e)
        }
        _ => return None,
    };
    // binary suffixes are 2^(10k), k <= 6: exact as a shifted integer
    let value =
        mantissa as f64 * pow10(scale.saturating_add(decimal_exp)) * (1u64 << binary_exp) as f64;
    Some(if negative { -value } else { value })
}

/// `10^e`, exact for `|e| <= 22`.
fn pow10(e: i32) -> f64 {
    const EXACT: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let i = e.unsigned_abs() as usize;
    match EXACT.get(i) {
        Some(p) if e >= 0 => *p,
        Some(p) => 1.0 / p,
        None => 10f64.powi(e),
    }
}

/// A Kubernetes resource name: a qualified name, optionally prefixed by a DNS subdomain.
fn is_resource_name(name: &str) -> bool {
    if matches!(name, "cpu" | "memory" | "ephemeral-storage" | GPU_RESOURCE) {
        return true; // the usual ones, without the general check
    }
    let (prefix, local) = split_prefix(name);
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return false;
    }
    let b = local.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// DNS-1123 subdomain: dot-separated labels of lowercase alphanumerics and '-', each starting
/// and ending alphanumeric, at most 253 characters in all. One pass over the bytes.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 253 {
        return false;
    }
    let mut prev = b'.'; // a label boundary before the first byte
    for &c in b {
        let ok = match c {
            b'a'..=b'z' | b'0'..=b'9' => true,
            // '-' inside a label only; '.' only after an alphanumeric
            b'-' => prev != b'.',
            b'.' => prev != b'.' && prev != b'-',
            _ => false,
        };
        if !ok {
            return false;
        }
        prev = c;
    }
    prev != b'-' && prev != b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_syntax_follows_kubernetes() {
        for ok in [
            "1", "0", "500m", "0.5", ".5", "1.", "2Gi", "4Ki", "1e3", "1E3", "1E", "+1", "1e-3",
            "1.5Mi", "100n", "3u",
        ] {
            assert!(parse_quantity(ok).is_some(), "{ok} should parse");
        }
        for bad in [
            "", "m", "Gi", "1GB", "2 Gi", " 2", "1.2.3", "1e", "1e1.5", "1KI", "1ki", "--1", "1e+",
            "0x10", "NaN", "inf", ".",
        ] {
            assert!(parse_quantity(bad).is_none(), "{bad:?} should not parse");
        }
        assert_eq!(parse_quantity("2Gi"), Some(2.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("-1"), Some(-1.0));
    }

    #[test]
    fn dns_subdomains() {
        for ok in [
            "default",
            "triton-sa.v2",
            "nvidia.com",
            "a",
            "0",
            "a-b.c-d.e",
            &"a".repeat(253),
        ] {
            assert!(is_dns1123_subdomain(ok), "{ok:?}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a..b",
            "a_b",
            ".a",
            "a.",
            "a.-b",
            "a-.b",
            "é",
            &"a".repeat(254),
        ] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_gpu_is_merged_in_name_order() {
        let rc = serde_json::json!({
            "gpu": true,
            "resources": {
                "requests": {"cpu": "1", "pods": null, "zz.example/dev": 2},
                "limits": {"cpu": "2", "zz.example/dev": "2", "nvidia.com/gpu": 3}
            }
        });
        let m = rc.as_object();
        let res = resources(member(m, "resources"), true, &DefaultResources::NONE)
            .expect("valid")
            .expect("not empty");
        let names = |it: ResourceIter<'_>| it.map(|(n, q)| format!("{n}={q}")).collect::<Vec<_>>();
        assert_eq!(
            names(res.requests()),
            ["cpu=1", "nvidia.com/gpu=3", "zz.example/dev=2"]
        );
        assert_eq!(
            names(res.limits()),
            ["cpu=2", "nvidia.com/gpu=3", "zz.example/dev=2"]
        );
        assert_eq!(res.limit("nvidia.com/gpu"), Some(QuantityRef::Int(3)));
    }

    #[test]
    fn resource_names() {
        for ok in [
            "cpu",
            "memory",
            "nvidia.com/gpu",
            "hugepages-2Mi",
            "ephemeral-storage",
        ] {
            assert!(is_resource_name(ok), "{ok}");
        }
        for bad in ["", "/gpu", "nvidia.com/", "Nvidia.com/gpu", "a b", "-cpu"] {
            assert!(!is_resource_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn runtimes() {
        assert_eq!(runtime_kind(None), Ok(RuntimeKind::Generic));
        assert_eq!(runtime_kind(Some("kserve")), Ok(RuntimeKind::Generic));
        assert_eq!(runtime_kind(Some("KServe")), Ok(RuntimeKind::Generic));
        assert_eq!(runtime_kind(Some("kserve-triton")), Ok(RuntimeKind::Triton));
        assert_eq!(runtime_kind(Some("Triton")), Ok(RuntimeKind::Triton));
        for bad in ["", "seldon", "kserve-sklearn", "my triton"] {
            assert!(runtime_kind(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
