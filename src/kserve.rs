//! KServe `serving.kserve.io/v1beta1` InferenceService: typed manifest and the pure mapping
//! from an endpoint [`Intent`].
//!
//! [`render`] builds the typed [`InferenceService`] (k8s-openapi `ObjectMeta` and `Quantity`,
//! the worker's own serde types for the KServe spec, `#[derive(kube::CustomResource)]` so the
//! k8s deployer can server-side apply it; `kube` serializes it with serde_json, adding the
//! resourceVersion precondition first). [`render_json`] is the fast byte path, what
//! `deploy-worker render --output json` prints and what the mapping bench measures: it writes the
//! same manifest as JSON bytes straight from the validated [`ServingSpec`] with a small JSON writer
//! (constant keys copied whole, values escaped exactly as serde_json escapes them), so the only
//! allocation is the output buffer and no string is scanned that cannot need escaping. Both go
//! through [`Intent::validate`], and the tests assert
//! `render_json(i) == serde_json::to_vec(&render(i))` byte for byte for every generated intent:
//! the writer must keep the field order and skip rules of the owned types (ObjectMeta
//! serializes its fields alphabetically). Measured with `cargo bench --bench mapping`, it runs
//! in about the time (and 0.7x the instructions) of `serde_json::to_vec` on the finished
//! typed manifest.
//!
//! Output is deterministic: maps are `BTreeMap`s (or written in sorted order), never
//! `HashMap`s, so the same intent gives byte-identical manifests.
//!
//! Where fields live (checked against the v1beta1 CRD schema): `minReplicas`, `maxReplicas`,
//! `scaleTarget`, `scaleMetric`, `autoScaling`, `timeout`, `canaryTrafficPercent`, `batcher` and
//! `serviceAccountName` sit directly on `spec.predictor` (KServe's ComponentExtensionSpec is
//! inlined there); `modelFormat`, `protocolVersion`, `runtimeVersion`, `storageUri` and
//! `resources` sit on `spec.predictor.model`. The autoscaler class and deployment mode are
//! metadata annotations: this CRD version has no spec field for them.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::intent::{
    AutoscaleMetric, Autoscaler, Batching, DefaultResources, DeploymentMode, Intent, IntentError,
    QuantityRef, ResourceIter, ServingSpec, UtilizationMetric,
};
use crate::policy::TenantPolicy;

// Label and annotation keys are macros as well as constants so that the JSON writer can build
// its pre-quoted keys from the same literals with `concat!`.
macro_rules! label_managed_by {
    () => {
        "app.kubernetes.io/managed-by"
    };
}
macro_rules! label_tenant_id {
    () => {
        "mlops.platform/tenant-id"
    };
}
macro_rules! label_project_id {
    () => {
        "mlops.platform/project-id"
    };
}
macro_rules! label_endpoint_id {
    () => {
        "mlops.platform/endpoint-id"
    };
}
macro_rules! annotation_spec_generation {
    () => {
        "mlops.platform/spec-generation"
    };
}
macro_rules! annotation_autoscaler_class {
    () => {
        "serving.kserve.io/autoscalerClass"
    };
}
macro_rules! annotation_deployment_mode {
    () => {
        "serving.kserve.io/deploymentMode"
    };
}
macro_rules! annotation_prometheus_scraping {
    () => {
        "serving.kserve.io/enable-prometheus-scraping"
    };
}

/// `apiVersion` of the manifests.
pub const API_VERSION: &str = "serving.kserve.io/v1beta1";
/// `kind` of the manifests.
pub const KIND: &str = "InferenceService";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "deploy-worker";

/// Label marking objects the worker manages.
pub const LABEL_MANAGED_BY: &str = label_managed_by!();
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "deploy-worker";
/// Label carrying the tenant id.
pub const LABEL_TENANT_ID: &str = label_tenant_id!();
/// Label carrying the project id.
pub const LABEL_PROJECT_ID: &str = label_project_id!();
/// Label carrying the endpoint id; the worker only touches objects whose label matches.
pub const LABEL_ENDPOINT_ID: &str = label_endpoint_id!();

/// The endpoint label of the earlier (Python) worker's objects; with [`legacy_name`] it marks
/// an object the worker adopts instead of creating a second one beside it.
pub const LEGACY_LABEL_ENDPOINT_ID: &str = "mlops.platform/endpoint_id";

/// The earlier worker's InferenceService name for `endpoint_id`: `isvc-` and the first 8 hex
/// digits of the id.
pub fn legacy_name(endpoint_id: Uuid) -> String {
    let mut hex = endpoint_id.simple().to_string();
    hex.truncate(8);
    format!("isvc-{hex}")
}

/// Annotation carrying the endpoint's spec generation.
pub const ANNOTATION_SPEC_GENERATION: &str = annotation_spec_generation!();
/// Annotation carrying a hash of the spec the worker applied ([`spec_hash`]): an object whose
/// spec no longer hashes to it was changed by someone else and is repaired. Set at apply time
/// by the Kubernetes deployer, not by the renderers, so `render` output stays what the
/// platform's intent alone determines.
pub const ANNOTATION_SPEC_HASH: &str = "mlops.platform/spec-hash";
/// KServe's autoscaler class annotation.
pub const ANNOTATION_AUTOSCALER_CLASS: &str = annotation_autoscaler_class!();
/// KServe's deployment mode annotation.
pub const ANNOTATION_DEPLOYMENT_MODE: &str = annotation_deployment_mode!();
/// KServe's Prometheus scraping annotation.
pub const ANNOTATION_PROMETHEUS_SCRAPING: &str = annotation_prometheus_scraping!();

/// Hex digits of the endpoint-derived part of a name.
pub const NAME_HASH_LEN: usize = 16;

/// Longest InferenceService name the worker creates.
///
/// KServe and Knative derive further names from it, and the tightest is a Kubernetes Service
/// name, which must be a DNS-1035 label (at most 63 characters):
/// - KServe names the predictor component `<name>-predictor` (Knative Service, or Deployment,
///   Service and HPA/ScaledObject in Standard mode): `name + 10`;
/// - Knative names revisions `<ksvc>-<5-digit generation>`, i.e. `<name>-predictor-00001`
///   (also a label value, at most 63), and creates for every revision a Kubernetes Service of
///   that name and a private one, `<name>-predictor-00001-private`: `name + 24`;
/// - its Deployment `<name>-predictor-00001-deployment` is `name + 27` but Deployment names may
///   be DNS subdomains (253), so it is not the limit.
///
/// `name + 24 <= 63` gives 39. The hostnames are checked with the namespace by
/// [`RenderOptions::validate`]: KServe's default domain template
/// `{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}` makes `<name>-predictor-<namespace>` one
/// DNS label.
pub const MAX_NAME_LEN: usize = 39;

/// Longest name prefix: `MAX_NAME_LEN` minus `-` and the 16 hex digits.
pub const MAX_PREFIX_LEN: usize = MAX_NAME_LEN - NAME_HASH_LEN - 1;

const DNS_LABEL_MAX: usize = 63;
const PREDICTOR_HOST_INFIX: &str = "-predictor-";

/// The InferenceService name for an endpoint: `{prefix}-{16 lowercase hex}`, the hex being the
/// high 64 bits of the endpoint UUID XOR its low 64 bits (all 122 random bits of a v4 UUID
/// contribute, so names stay collision-resistant at 64 bits).
pub fn isvc_name(prefix: &str, endpoint_id: Uuid) -> String {
    let hex = name_hash(endpoint_id);
    let mut name = String::with_capacity(prefix.len() + 1 + NAME_HASH_LEN);
    name.push_str(prefix);
    name.push('-');
    name.push_str(hex.as_str());
    name
}

struct NameHash([u8; NAME_HASH_LEN]);

impl NameHash {
    fn as_str(&self) -> &str {
        // only ASCII hex digits are ever written into the buffer
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn name_hash(endpoint_id: Uuid) -> NameHash {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (hi, lo) = endpoint_id.as_u64_pair();
    let folded = hi ^ lo;
    let mut out = [0u8; NAME_HASH_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((folded >> (60 - 4 * i)) & 0xf) as usize];
    }
    NameHash(out)
}

/// Which names the deployment mode annotation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModeNames {
    /// `Knative` / `Standard` (current KServe).
    #[default]
    Current,
    /// `Serverless` / `RawDeployment`, for KServe releases before the rename.
    Legacy,
}

impl ModeNames {
    /// The annotation value for `mode`.
    pub fn name(self, mode: DeploymentMode) -> &'static str {
        match (self, mode) {
            (ModeNames::Current, DeploymentMode::Knative) => "Knative",
            (ModeNames::Current, DeploymentMode::Standard) => "Standard",
            (ModeNames::Legacy, DeploymentMode::Knative) => "Serverless",
            (ModeNames::Legacy, DeploymentMode::Standard) => "RawDeployment",
        }
    }
}

impl std::str::FromStr for ModeNames {
    type Err = OptionsError;

    /// `current` or `legacy` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("current") {
            Ok(ModeNames::Current)
        } else if s.eq_ignore_ascii_case("legacy") {
            Ok(ModeNames::Legacy)
        } else {
            Err(OptionsError::ModeNames { value: s.into() })
        }
    }
}

impl fmt::Display for ModeNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModeNames::Current => "current",
            ModeNames::Legacy => "legacy",
        })
    }
}

/// Worker-wide settings of the mapping (from the environment / CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// Namespace of the InferenceServices (`KSERVE_NAMESPACE`).
    pub namespace: String,
    /// Name prefix (`KSERVE_NAME_PREFIX`).
    pub name_prefix: String,
    /// Global default of the Prometheus scraping annotation (on unless configured off);
    /// `runtime_config.enablePrometheusScraping` overrides it per endpoint.
    pub prometheus_scraping: bool,
    /// Deployment mode names to write.
    pub mode_names: ModeNames,
    /// Resources of an endpoint that names none (`KSERVE_DEFAULT_REQUESTS`/`_LIMITS`).
    pub default_resources: DefaultResources,
    /// What a tenant may ask for (`TENANT_STORAGE_URI_SCHEMES`, `TENANT_SERVICE_ACCOUNTS`).
    pub policy: TenantPolicy,
}

/// Default of `KSERVE_DEFAULT_REQUESTS` (the earlier worker's requests).
pub const DEFAULT_REQUESTS: &str = "cpu=250m,memory=512Mi";
/// Default of `KSERVE_DEFAULT_LIMITS` (the earlier worker's limits).
pub const DEFAULT_LIMITS: &str = "cpu=1,memory=1Gi";

impl Default for RenderOptions {
    /// The settings' defaults: the earlier worker's default resources and the safe tenant
    /// policy.
    fn default() -> Self {
        let list = |s: &str| s.parse().unwrap_or_default();
        RenderOptions {
            namespace: "mlops-serving".into(),
            name_prefix: "isvc".into(),
            prometheus_scraping: true,
            mode_names: ModeNames::Current,
            default_resources: DefaultResources::new(list(DEFAULT_REQUESTS), list(DEFAULT_LIMITS)),
            policy: TenantPolicy::default(),
        }
    }
}

/// A worker setting that would produce names or hosts Kubernetes or KServe reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// The name prefix is not usable.
    #[error(
        "KSERVE_NAME_PREFIX {prefix:?}: {reason}; use a short lowercase prefix such as \"isvc\""
    )]
    Prefix {
        /// The rejected prefix.
        prefix: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The namespace is not usable.
    #[error("KSERVE_NAMESPACE {namespace:?}: {reason}")]
    Namespace {
        /// The rejected namespace.
        namespace: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The default requests and limits contradict each other.
    #[error(
        "KSERVE_DEFAULT_REQUESTS / KSERVE_DEFAULT_LIMITS: {0}; make every default request at most the default limit of the same resource"
    )]
    DefaultResources(String),
    /// Unknown mode-names setting.
    #[error(
        "deployment mode names {value:?}: use \"current\" (Knative/Standard) or \"legacy\" (Serverless/RawDeployment)"
    )]
    ModeNames {
        /// The rejected value.
        value: String,
    },
}

/// Checks a name prefix: the names it produces must be DNS-1035 labels (a lowercase letter,
/// then lowercase letters, digits and '-') no longer than [`MAX_NAME_LEN`].
pub fn validate_prefix(prefix: &str) -> Result<(), OptionsError> {
    let err = |reason: String| OptionsError::Prefix {
        prefix: prefix.into(),
        reason,
    };
    let b = prefix.as_bytes();
    if b.is_empty() {
        return Err(err("the prefix is empty".into()));
    }
    if !b[0].is_ascii_lowercase() {
        return Err(err(
            "names must start with a lowercase letter (DNS-1035)".into()
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(err(format!(
            "{c:?} is not allowed: names may contain lowercase letters, digits and '-' only (DNS-1035)"
        )));
    }
    if b.len() > MAX_PREFIX_LEN {
        return Err(err(format!(
            "{} characters is too long: names are `<prefix>-<16 hex>` and KServe/Knative derive `<name>-predictor-00001-private`, a 63-character Service name, so the prefix can have at most {MAX_PREFIX_LEN}",
            b.len()
        )));
    }
    Ok(())
}

impl RenderOptions {
    /// Checks the settings once at start-up, so that no manifest rendered with them can be
    /// refused by Kubernetes for its name or hosts.
    pub fn validate(&self) -> Result<(), OptionsError> {
        validate_prefix(&self.name_prefix)?;
        self.default_resources
            .check()
            .map_err(|err| OptionsError::DefaultResources(err.to_string()))?;
        let ns = &self.namespace;
        let err = |reason: String| OptionsError::Namespace {
            namespace: ns.clone(),
            reason,
        };
        let b = ns.as_bytes();
        let label = !b.is_empty()
            && b.len() <= DNS_LABEL_MAX
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if !label {
            return Err(err(
                "a namespace is a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters".into(),
            ));
        }
        let name_len = self.name_prefix.len() + 1 + NAME_HASH_LEN;
        let host_label = name_len + PREDICTOR_HOST_INFIX.len() + ns.len();
        if host_label > DNS_LABEL_MAX {
            return Err(err(format!(
                "KServe's default host `<name>-predictor-<namespace>` would be {host_label} characters, over the 63 of a DNS label; shorten the namespace or KSERVE_NAME_PREFIX (together at most {} characters)",
                DNS_LABEL_MAX - PREDICTOR_HOST_INFIX.len() - 1 - NAME_HASH_LEN
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Typed manifest (owned). Every optional field is `Option` + `#[serde(default)]` so objects read
// back from the cluster (possibly defaulted by KServe's webhook) deserialize.

/// `spec` of a KServe v1beta1 InferenceService, as far as the worker writes it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "serving.kserve.io",
    version = "v1beta1",
    kind = "InferenceService",
    plural = "inferenceservices",
    shortname = "isvc",
    namespaced,
    status = "InferenceServiceStatus",
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// The predictor component.
    #[serde(default)]
    pub predictor: PredictorSpec,
}

/// `spec.predictor`: KServe's PredictorSpec with the inlined ComponentExtensionSpec fields.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PredictorSpec {
    /// Lower replica bound (0 allows scale to zero in Knative mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    /// Upper replica bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
    /// Target value of `scale_metric`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_target: Option<i32>,
    /// Metric the mode's autoscaler watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_metric: Option<ScaleMetric>,
    /// HPA/KEDA autoscaling metrics (used for KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_scaling: Option<AutoScalingSpec>,
    /// Request timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Percentage of traffic sent to the latest revision (Knative canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_traffic_percent: Option<i64>,
    /// KServe request batching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batcher: Option<Batcher>,
    /// Service account of the predictor pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The model to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
}

/// `spec.predictor.model`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Model format; KServe picks a serving runtime supporting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_format: Option<ModelFormat>,
    /// Inference protocol (`v1`, `v2`, `grpc-v1`, `grpc-v2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// Serving runtime image tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_version: Option<String>,
    /// Where the model artifact is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_uri: Option<String>,
    /// Container requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// `model.modelFormat`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ModelFormat {
    /// Format name, e.g. `sklearn` or `triton`.
    #[serde(default)]
    pub name: String,
    /// Format version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `spec.predictor.batcher`: KServe's request batching agent (a sidecar that batches v1
/// `:predict` requests; other requests pass through).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Batcher {
    /// Requests per batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<i64>,
    /// Longest wait for a batch to fill, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency: Option<i64>,
    /// Timeout of the sidecar's call to the model server, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// `scaleMetric` values (the CRD's enum).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ScaleMetric {
    /// CPU utilization (HPA).
    Cpu,
    /// Memory utilization (HPA).
    Memory,
    /// In-flight requests per pod (Knative).
    Concurrency,
    /// Requests per second (Knative).
    Rps,
}

impl ScaleMetric {
    /// Every value.
    pub const ALL: [ScaleMetric; 4] = [
        ScaleMetric::Cpu,
        ScaleMetric::Memory,
        ScaleMetric::Concurrency,
        ScaleMetric::Rps,
    ];

    /// The CRD spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleMetric::Cpu => "cpu",
            ScaleMetric::Memory => "memory",
            ScaleMetric::Concurrency => "concurrency",
            ScaleMetric::Rps => "rps",
        }
    }
}

impl From<AutoscaleMetric> for ScaleMetric {
    fn from(metric: AutoscaleMetric) -> Self {
        match metric {
            AutoscaleMetric::Cpu => ScaleMetric::Cpu,
            AutoscaleMetric::Memory => ScaleMetric::Memory,
            AutoscaleMetric::Concurrency => ScaleMetric::Concurrency,
            AutoscaleMetric::Rps => ScaleMetric::Rps,
        }
    }
}

impl From<Batching> for Batcher {
    fn from(b: Batching) -> Self {
        Batcher {
            max_batch_size: b.max_batch_size,
            max_latency: b.max_latency,
            timeout: b.timeout,
        }
    }
}

/// `spec.predictor.autoScaling`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoScalingSpec {
    /// Metrics to scale on.
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
}

/// One `autoScaling.metrics[]` entry. Only resource metrics are written; the other sources
/// deserialize without their details.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricSpec {
    /// Metric source.
    #[serde(rename = "type")]
    pub type_: MetricSourceType,
    /// Resource metric details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceMetricSource>,
}

/// `autoScaling.metrics[].type`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricSourceType {
    /// A container resource (cpu/memory).
    Resource,
    /// An external metric (KEDA).
    External,
    /// A pod metric (KEDA + OpenTelemetry).
    PodMetric,
}

/// `autoScaling.metrics[].resource`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceMetricSource {
    /// Which resource.
    pub name: ResourceMetricName,
    /// Target value.
    pub target: MetricTarget,
}

/// Resource a metric watches.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ResourceMetricName {
    /// CPU.
    Cpu,
    /// Memory.
    Memory,
}

impl From<UtilizationMetric> for ResourceMetricName {
    fn from(metric: UtilizationMetric) -> Self {
        match metric {
            UtilizationMetric::Cpu => ResourceMetricName::Cpu,
            UtilizationMetric::Memory => ResourceMetricName::Memory,
        }
    }
}

/// `...target` of a metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricTarget {
    /// Kind of target.
    #[serde(rename = "type")]
    pub type_: MetricTargetType,
    /// Utilization percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_utilization: Option<i32>,
    /// Average value per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<Quantity>,
    /// Absolute value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Quantity>,
}

/// `target.type`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricTargetType {
    /// Percentage of the request.
    Utilization,
    /// Absolute value.
    Value,
    /// Average value per pod.
    AverageValue,
}

// ---------------------------------------------------------------------------------------------
// Status (read from the cluster; lenient: every field optional and defaulted, unknown fields
// ignored, so a newer or older KServe never breaks the watcher).

/// `status` of an InferenceService, as the KServe controller reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct InferenceServiceStatus {
    /// External URL of the service, once routable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Cluster-internal address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// `metadata.generation` the controller last reconciled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (`Ready`, `PredictorReady`, `IngressReady`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per-component status, keyed `predictor`, `transformer`, `explainer`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentStatus>,
    /// Model loading state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_status: Option<ModelStatus>,
    /// Mode the controller deployed with (it refuses later changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_mode: Option<String>,
    /// Serving runtime chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving_runtime_name: Option<String>,
    /// Cluster serving runtime chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_serving_runtime_name: Option<String>,
}

/// An address (`status.address`, `components.*.address`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Addressable {
    /// URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Name of the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A Knative-style condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status last changed (RFC 3339, kept as text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// `Error`, `Warning` or `Info`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

/// `status.components.<component>`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ComponentStatus {
    /// Component URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// REST URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rest_url: Option<String>,
    /// gRPC URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_url: Option<String>,
    /// Component address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// Latest revision that became ready (Knative).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision: Option<String>,
    /// Latest revision created (Knative).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_created_revision: Option<String>,
    /// Revision rolled out before the latest one (the canary's baseline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_rolledout_revision: Option<String>,
    /// Latest revision rolled out with traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_rolledout_revision: Option<String>,
    /// Traffic split between revisions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

/// One `traffic[]` entry of a component.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficTarget {
    /// Revision receiving the traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// Configuration the revision belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    /// Percentage of traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// Whether this entry follows the latest ready revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    /// Traffic tag (`prev`, `latest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Tag URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `status.modelStatus`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ModelStatus {
    /// `UpToDate`, `InProgress`, `BlockedByFailedLoad`, `InvalidSpec`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition_status: Option<String>,
    /// Model states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub states: Option<ModelStates>,
    /// Last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_info: Option<FailureInfo>,
}

/// `modelStatus.states`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ModelStates {
    /// State of the active model (`Loaded`, `FailedToLoad`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_model_state: Option<String>,
    /// State of the model being rolled out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_model_state: Option<String>,
}

/// `modelStatus.lastFailureInfo`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct FailureInfo {
    /// Failure reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Failure message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Where it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Container exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

impl InferenceServiceStatus {
    /// The condition of type `type_`, if reported.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// The predictor's component status, if reported.
    pub fn predictor(&self) -> Option<&ComponentStatus> {
        self.components.get("predictor")
    }
}

impl InferenceService {
    /// True when the controller has observed this object's generation, published a URL and
    /// reports `Ready=True`: right after an update KServe still shows the previous generation's
    /// `Ready`, so all three are needed.
    pub fn is_ready(&self) -> bool {
        let Some(status) = &self.status else {
            return false;
        };
        let observed = match (status.observed_generation, self.metadata.generation) {
            (Some(seen), Some(current)) => seen >= current,
            (Some(_), None) => true,
            (None, _) => false,
        };
        observed
            && status.url.as_deref().is_some_and(|u| !u.is_empty())
            && status
                .condition("Ready")
                .is_some_and(|c| c.status == "True")
    }

    /// The `mlops.platform/spec-generation` annotation, if present and numeric.
    pub fn spec_generation(&self) -> Option<i64> {
        self.metadata
            .annotations
            .as_ref()?
            .get(ANNOTATION_SPEC_GENERATION)?
            .parse()
            .ok()
    }

    /// Whether someone changed the spec since the worker applied it: the spec no longer hashes
    /// to the [`ANNOTATION_SPEC_HASH`] annotation. Objects without the annotation (applied by
    /// an earlier version) never count as drifted. Only the fields the worker models take part,
    /// so fields a server defaults beside them are not mistaken for edits.
    pub fn has_drifted(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_SPEC_HASH))
            .is_some_and(|applied| *applied != spec_hash(&self.spec))
    }

    /// The endpoint the object belongs to: its `mlops.platform/endpoint-id` label, or for an
    /// object the earlier worker made (see [`LEGACY_LABEL_ENDPOINT_ID`]) its
    /// `mlops.platform/endpoint_id` label — only when the object also carries that worker's
    /// name for that endpoint, so a label alone never makes an object the worker's.
    pub fn endpoint_id(&self) -> Option<&str> {
        let labels = self.metadata.labels.as_ref()?;
        if let Some(id) = labels.get(LABEL_ENDPOINT_ID) {
            return Some(id);
        }
        let legacy = labels.get(LEGACY_LABEL_ENDPOINT_ID)?;
        let id: Uuid = legacy.parse().ok()?;
        (self.metadata.name.as_deref() == Some(legacy_name(id).as_str())).then_some(legacy)
    }
}

/// A short, stable hash of `spec` as the worker serializes it: 16 hex digits of its SHA-256.
pub fn spec_hash(spec: &InferenceServiceSpec) -> String {
    use sha2::{Digest, Sha256};
    // serializing a typed spec cannot fail (no maps with non-string keys, no custom Serialize)
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Renders the typed InferenceService for an intent.
pub fn render(intent: &Intent, opts: &RenderOptions) -> Result<InferenceService, IntentError> {
    let spec = validate(intent, opts)?;
    Ok(build(intent, &spec, opts))
}

/// What both renderers render: the intent validated with the worker's default resources, then
/// checked against the tenant policy.
fn validate<'a>(
    intent: &'a Intent,
    opts: &'a RenderOptions,
) -> Result<ServingSpec<'a>, IntentError> {
    let spec = intent.validate_with(&opts.default_resources)?;
    opts.policy.check(intent, &spec)?;
    Ok(spec)
}

/// Renders the manifest as compact JSON bytes; byte-identical to
/// `serde_json::to_vec(&render(intent, opts)?)`.
///
/// The manifest is written into a per-thread scratch buffer and returned as an exact-size copy:
/// one small allocation per manifest. (Reserving a generous estimate instead costs more than
/// the copy: a ~1 KiB manifest then needs a block too large for the allocator's per-thread
/// cache.)
pub fn render_json(intent: &Intent, opts: &RenderOptions) -> Result<Vec<u8>, IntentError> {
    /// Scratch buffers above this size are released after use rather than kept per thread.
    const KEEP: usize = 64 * 1024;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            render_json_into(intent, opts, &mut buf)?;
            let out = buf.to_vec();
            if buf.capacity() > KEEP {
                *buf = Vec::new();
            }
            Ok(out)
        }
        // only reachable if rendering re-entered itself on this thread, which it does not
        Err(_) => {
            let mut out = Vec::new();
            render_json_into(intent, opts, &mut out)?;
            Ok(out)
        }
    })
}

/// Like [`render_json`], appending to `out` (reuse one buffer across renders to skip even the
/// buffer allocation).
pub fn render_json_into(
    intent: &Intent,
    opts: &RenderOptions,
    out: &mut Vec<u8>,
) -> Result<(), IntentError> {
    let spec = validate(intent, opts)?;
    out.reserve(size_hint(&spec, opts));
    write_manifest(out, intent, &spec, opts);
    Ok(())
}

/// The manifest as YAML (what `kubectl get -o yaml` users read). Annotation values such as
/// `"true"` and `"3"` stay quoted strings.
pub fn to_yaml(isvc: &InferenceService) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(isvc)
}

/// Bytes a manifest needs, so the output buffer is allocated once: ~700 bytes of fixed keys
/// and ids plus the variable strings.
fn size_hint(spec: &ServingSpec<'_>, opts: &RenderOptions) -> usize {
    let resources = spec.resources.as_ref().map_or(0, |r| r.max_entries() * 40);
    768 + opts.namespace.len()
        + opts.name_prefix.len()
        + spec.storage_uri.len()
        + spec.runtime_version.map_or(0, str::len)
        + spec.service_account_name.map_or(0, str::len)
        + resources
}

/// Annotation values, shared by both renderers so they cannot disagree.
struct Annotations {
    autoscaler_class: Option<&'static str>,
    deployment_mode: Option<&'static str>,
    prometheus_scraping: &'static str,
}

fn annotations(spec: &ServingSpec<'_>, opts: &RenderOptions) -> Annotations {
    Annotations {
        autoscaler_class: matches!(spec.autoscaler, Autoscaler::Keda { .. }).then_some("keda"),
        deployment_mode: spec.deployment_mode.map(|m| opts.mode_names.name(m)),
        prometheus_scraping: if spec.prometheus_scraping.unwrap_or(opts.prometheus_scraping) {
            "true"
        } else {
            "false"
        },
    }
}

fn keda_metrics(metric: ResourceMetricName, target: i32) -> MetricSpec {
    MetricSpec {
        type_: MetricSourceType::Resource,
        resource: Some(ResourceMetricSource {
            name: metric,
            target: MetricTarget {
                type_: MetricTargetType::Utilization,
                average_utilization: Some(target),
                average_value: None,
                value: None,
            },
        }),
    }
}

fn owned_list(list: ResourceIter<'_>) -> Option<BTreeMap<String, Quantity>> {
    let map: BTreeMap<String, Quantity> = list
        .map(|(name, q)| (name.to_owned(), Quantity(q.to_string())))
        .collect();
    (!map.is_empty()).then_some(map)
}

fn build(intent: &Intent, spec: &ServingSpec<'_>, opts: &RenderOptions) -> InferenceService {
    let ann = annotations(spec, opts);
    let mut annotations = BTreeMap::new();
    annotations.insert(
        ANNOTATION_SPEC_GENERATION.to_owned(),
        spec.generation.to_string(),
    );
    if let Some(class) = ann.autoscaler_class {
        annotations.insert(ANNOTATION_AUTOSCALER_CLASS.to_owned(), class.to_owned());
    }
    if let Some(mode) = ann.deployment_mode {
        annotations.insert(ANNOTATION_DEPLOYMENT_MODE.to_owned(), mode.to_owned());
    }
    annotations.insert(
        ANNOTATION_PROMETHEUS_SCRAPING.to_owned(),
        ann.prometheus_scraping.to_owned(),
    );
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_ENDPOINT_ID.to_owned(), intent.endpoint_id.to_string()),
        (LABEL_PROJECT_ID.to_owned(), intent.project_id.to_string()),
        (LABEL_TENANT_ID.to_owned(), intent.tenant_id.to_string()),
    ]);
    let (scale_metric, scale_target, auto_scaling) = match spec.autoscaler {
        Autoscaler::Default { metric, target } => (metric.map(ScaleMetric::from), target, None),
        Autoscaler::Keda { metric, target } => (
            None,
            None,
            Some(AutoScalingSpec {
                metrics: vec![keda_metrics(metric.into(), target)],
            }),
        ),
    };
    InferenceService {
        metadata: ObjectMeta {
            name: Some(isvc_name(&opts.name_prefix, intent.endpoint_id)),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: InferenceServiceSpec {
            predictor: PredictorSpec {
                min_replicas: spec.min_replicas,
                max_replicas: spec.max_replicas,
                scale_target,
                scale_metric,
                auto_scaling,
                timeout: spec.timeout,
                canary_traffic_percent: spec.canary_traffic_percent,
                batcher: spec.batcher.map(Batcher::from),
                service_account_name: spec.service_account_name.map(str::to_owned),
                model: Some(ModelSpec {
                    model_format: Some(ModelFormat {
                        name: spec.model_format.to_owned(),
                        version: None,
                    }),
                    protocol_version: spec.protocol_version.map(str::to_owned),
                    runtime_version: spec.runtime_version.map(str::to_owned),
                    storage_uri: Some(spec.storage_uri.to_owned()),
                    resources: spec.resources.as_ref().map(|r| ResourceRequirements {
                        claims: None,
                        limits: owned_list(r.limits()),
                        requests: owned_list(r.requests()),
                    }),
                }),
            },
        },
        status: None,
    }
}

// ---------------------------------------------------------------------------------------------
// `render_json`'s writer. serde_json spends most of its time scanning every key and value for
// characters to escape; here keys are constants known to need no escaping, and values are
// checked with a branch-free scan before being copied. The writer emits exactly what
// `serde_json::to_vec(&build(..))` emits (same field order and skip rules as the owned types,
// same escapes); the tests compare the bytes for every generated intent.

/// `,"<key>":` for a literal key, as [`Object::key`] takes it (the comma is dropped for an
/// object's first key): one copy per key instead of four writes.
macro_rules! key {
    ($k:expr) => {
        concat!(",\"", $k, "\":")
    };
}

/// A JSON value position in the output.
struct Json<'o>(&'o mut Vec<u8>);

/// An open JSON object; `key` writes the separator and the key, `end` the closing brace.
struct Object<'w, 'o> {
    w: &'w mut Json<'o>,
    empty: bool,
}

impl<'o> Json<'o> {
    #[inline]
    fn object(&mut self) -> Object<'_, 'o> {
        self.0.push(b'{');
        Object {
            w: self,
            empty: true,
        }
    }

    /// A string value, escaped as serde_json escapes it.
    #[inline]
    fn str(&mut self, s: &str) {
        write_json_str(self.0, s);
    }

    /// A string value that needs no escaping by construction (constants, digits, hex, UUIDs).
    #[inline]
    fn plain(&mut self, s: &str) {
        debug_assert!(!needs_escape(s.as_bytes()), "{s}");
        self.0.push(b'"');
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(b'"');
    }

    #[inline]
    fn uint(&mut self, n: u64) {
        write_u64(self.0, n);
    }

    /// A number as a JSON string (`"3"`).
    #[inline]
    fn uint_str(&mut self, n: u64) {
        self.0.push(b'"');
        write_u64(self.0, n);
        self.0.push(b'"');
    }

    #[inline]
    fn int(&mut self, n: i64) {
        if n < 0 {
            self.0.push(b'-');
        }
        self.uint(n.unsigned_abs());
    }
}

impl<'o> Object<'_, 'o> {
    /// Writes the separator and the key; `key` comes from `key!` (`,"<key>":`).
    #[inline]
    fn key(&mut self, key: &'static str) -> &mut Json<'o> {
        let bytes = key.as_bytes();
        debug_assert!(
            bytes.starts_with(b",\"")
                && bytes.ends_with(b"\":")
                && !needs_escape(&bytes[2..bytes.len() - 2]),
            "{key}"
        );
        let bytes = if self.empty { &bytes[1..] } else { bytes };
        self.empty = false;
        self.w.0.extend_from_slice(bytes);
        self.w
    }

    #[inline]
    fn end(self) {
        self.w.0.push(b'}');
    }
}

/// Whether serde_json would escape any byte of `b` (`"`, `\` or a control character).
/// Eight bytes at a time with the classic SWAR tests: `has_zero(v)` flags a zero byte (here: a
/// byte equal to `"` or `\` after the XOR), `(v - 0x2020..) & !v & 0x8080..` a byte below 0x20
/// (bytes >= 0x80 never match). They can over-report only in a word that also holds a true
/// match, so `false` is exact and a `true` merely takes the careful escaping path.
#[inline]
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(w);
        let v = u64::from_le_bytes(bytes);
        let control = v.wrapping_sub(0x20 * ONES) & !v & HIGHS;
        if control | has_zero(v ^ QUOTES) | has_zero(v ^ BACKSLASHES) != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// Writes `s` as a JSON string with serde_json's escapes: `\"`, `\\`, `\b`, `\t`, `\n`, `\f`,
/// `\r`, other control characters as `\u00xx`; everything else (including `/` and non-ASCII)
/// as is.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
    } else {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let control;
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                0x08 => b"\\b",
                b'\t' => b"\\t",
                b'\n' => b"\\n",
                0x0c => b"\\f",
                b'\r' => b"\\r",
                0x00..=0x1f => {
                    control = [
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 0xf)],
                    ];
                    &control
                }
                _ => continue,
            };
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(escape);
            start = i + 1;
        }
        out.extend_from_slice(&bytes[start..]);
    }
    out.push(b'"');
}

/// Appends the decimal digits of `n`.
fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while n > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[i..]);
}

/// The manifest, in the field order of the owned types (ObjectMeta's is alphabetical).
fn write_manifest(
    out: &mut Vec<u8>,
    intent: &Intent,
    spec: &ServingSpec<'_>,
    opts: &RenderOptions,
) {
    let mut json = Json(out);
    let mut root = json.object();
    root.key(key!("apiVersion")).plain(API_VERSION);
    root.key(key!("kind")).plain(KIND);
    write_metadata(root.key(key!("metadata")), intent, spec, opts);
    let mut spec_obj = root.key(key!("spec")).object();
    write_predictor(spec_obj.key(key!("predictor")), spec);
    spec_obj.end();
    root.end();
}

fn write_metadata(w: &mut Json<'_>, intent: &Intent, spec: &ServingSpec<'_>, opts: &RenderOptions) {
    let mut meta = w.object();

    // BTreeMap order: the key constants sort in this order (a unit test checks it)
    let ann = annotations(spec, opts);
    let mut a = meta.key(key!("annotations")).object();
    a.key(key!(annotation_spec_generation!()))
        .uint_str(spec.generation);
    if let Some(class) = ann.autoscaler_class {
        a.key(key!(annotation_autoscaler_class!())).plain(class);
    }
    if let Some(mode) = ann.deployment_mode {
        a.key(key!(annotation_deployment_mode!())).plain(mode);
    }
    a.key(key!(annotation_prometheus_scraping!()))
        .plain(ann.prometheus_scraping);
    a.end();

    let mut uuid_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let mut l = meta.key(key!("labels")).object();
    l.key(key!(label_managed_by!())).plain(MANAGED_BY);
    l.key(key!(label_endpoint_id!()))
        .plain(intent.endpoint_id.hyphenated().encode_lower(&mut uuid_buf));
    l.key(key!(label_project_id!()))
        .plain(intent.project_id.hyphenated().encode_lower(&mut uuid_buf));
    l.key(key!(label_tenant_id!()))
        .plain(intent.tenant_id.hyphenated().encode_lower(&mut uuid_buf));
    l.end();

    // `<prefix>-<hash>` as one string, without building it first
    let out = &mut *meta.key(key!("name")).0;
    write_json_str(out, &opts.name_prefix);
    out.pop(); // reopen the string after the prefix
    out.push(b'-');
    out.extend_from_slice(&name_hash(intent.endpoint_id).0);
    out.push(b'"');

    meta.key(key!("namespace")).str(&opts.namespace);
    meta.end();
}

fn write_predictor(w: &mut Json<'_>, spec: &ServingSpec<'_>) {
    let mut p = w.object();
    if let Some(v) = spec.min_replicas {
        p.key(key!("minReplicas")).int(v.into());
    }
    if let Some(v) = spec.max_replicas {
        p.key(key!("maxReplicas")).int(v.into());
    }
    match spec.autoscaler {
        Autoscaler::Default { metric, target } => {
            if let Some(t) = target {
                p.key(key!("scaleTarget")).int(t.into());
            }
            if let Some(m) = metric {
                p.key(key!("scaleMetric")).plain(m.as_str());
            }
        }
        Autoscaler::Keda { metric, target } => {
            // {"metrics":[{"type":"Resource","resource":{"name":..,"target":{..}}}]}
            let mut scaling = p.key(key!("autoScaling")).object();
            let metrics = scaling.key(key!("metrics"));
            metrics.0.push(b'[');
            let mut m = metrics.object();
            m.key(key!("type")).plain("Resource");
            let mut resource = m.key(key!("resource")).object();
            resource.key(key!("name")).plain(match metric {
                UtilizationMetric::Cpu => "cpu",
                UtilizationMetric::Memory => "memory",
            });
            let mut t = resource.key(key!("target")).object();
            t.key(key!("type")).plain("Utilization");
            t.key(key!("averageUtilization")).int(target.into());
            t.end();
            resource.end();
            m.end();
            metrics.0.push(b']');
            scaling.end();
        }
    }
    if let Some(v) = spec.timeout {
        p.key(key!("timeout")).int(v);
    }
    if let Some(v) = spec.canary_traffic_percent {
        p.key(key!("canaryTrafficPercent")).int(v);
    }
    if let Some(b) = spec.batcher {
        let mut batcher = p.key(key!("batcher")).object();
        if let Some(v) = b.max_batch_size {
            batcher.key(key!("maxBatchSize")).int(v);
        }
        if let Some(v) = b.max_latency {
            batcher.key(key!("maxLatency")).int(v);
        }
        if let Some(v) = b.timeout {
            batcher.key(key!("timeout")).int(v);
        }
        batcher.end();
    }
    if let Some(sa) = spec.service_account_name {
        // validated as a DNS subdomain: nothing JSON escapes
        p.key(key!("serviceAccountName")).plain(sa);
    }

    let mut model = p.key(key!("model")).object();
    let mut format = model.key(key!("modelFormat")).object();
    format.key(key!("name")).plain(spec.model_format);
    format.end();
    if let Some(v) = spec.protocol_version {
        model.key(key!("protocolVersion")).plain(v);
    }
    if let Some(v) = spec.runtime_version {
        // validated as an image tag: nothing JSON escapes
        model.key(key!("runtimeVersion")).plain(v);
    }
    model.key(key!("storageUri")).str(spec.storage_uri);
    if let Some(r) = &spec.resources {
        // ResourceRequirements order: claims (never set), limits, requests
        let mut res = model.key(key!("resources")).object();
        let mut limits = r.limits().peekable();
        if limits.peek().is_some() {
            write_resource_list(res.key(key!("limits")), limits);
        }
        let mut requests = r.requests().peekable();
        if requests.peek().is_some() {
            write_resource_list(res.key(key!("requests")), requests);
        }
        res.end();
    }
    model.end();
    p.end();
}

/// A quantity is always a JSON string, as `Quantity` serializes.
fn write_resource_list<'a>(
    w: &mut Json<'_>,
    list: impl Iterator<Item = (&'a str, QuantityRef<'a>)>,
) {
    let out = &mut *w.0;
    out.push(b'{');
    for (i, (name, quantity)) in list.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // validation admits only qualified names and quantity syntax: nothing JSON escapes
        let mut value = Json(out);
        value.plain(name);
        value.0.push(b':');
        match quantity {
            QuantityRef::Str(s) => value.plain(s),
            QuantityRef::Int(n) => value.uint_str(n),
        }
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_coded_key_orders_are_sorted() {
        // AnnotationsView and LabelsView write keys in this order; BTreeMap sorts them.
        let ann = [
            ANNOTATION_SPEC_GENERATION,
            ANNOTATION_AUTOSCALER_CLASS,
            ANNOTATION_DEPLOYMENT_MODE,
            ANNOTATION_PROMETHEUS_SCRAPING,
        ];
        assert!(ann.windows(2).all(|w| w[0] < w[1]), "{ann:?}");
        let labels = [
            LABEL_MANAGED_BY,
            LABEL_ENDPOINT_ID,
            LABEL_PROJECT_ID,
            LABEL_TENANT_ID,
        ];
        assert!(labels.windows(2).all(|w| w[0] < w[1]), "{labels:?}");
    }

    #[test]
    fn name_is_prefix_and_folded_hex() {
        let id = Uuid::from_u64_pair(0x0123_4567_89ab_cdef, 0xffff_0000_ffff_0000);
        assert_eq!(isvc_name("isvc", id), "isvc-fedc45677654cdef");
        let mut out = Vec::new();
        let opts = RenderOptions {
            name_prefix: "p\"q".into(),
            ..RenderOptions::default()
        };
        let intent = crate::intent::Intent::from_json(
            br#"{"endpoint_id":"01234567-89ab-cdef-ffff-0000ffff0000","tenant_id":"01234567-89ab-cdef-ffff-0000ffff0000","project_id":"01234567-89ab-cdef-ffff-0000ffff0000","name":"n","model_version_id":"01234567-89ab-cdef-ffff-0000ffff0000","artifact_uri":"s3://x"}"#,
        )
        .expect("intent");
        write_metadata(
            &mut Json(&mut out),
            &intent,
            &intent.validate().expect("valid"),
            &opts,
        );
        let meta: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(meta["name"], "p\"q-fedc45677654cdef");
    }

    #[test]
    fn strings_are_escaped_exactly_like_serde_json() {
        let mut all_bytes = String::new();
        for c in (0u8..0x80).map(char::from) {
            all_bytes.push(c);
        }
        for s in [
            "",
            "plain",
            "quote\" backslash\\ slash/",
            "tab\tnl\ncr\rbs\u{8}ff\u{c}nul\u{0}esc\u{1b}del\u{7f}",
            "unicode é ✓ \u{2028}",
            &all_bytes,
        ] {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).expect("serializes"), "{s:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn swar_escape_check_agrees_with_the_bytewise_definition(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            special in proptest::collection::vec((0usize..40, proptest::sample::select(vec![b'"', b'\\', 0u8, 0x1f, 0x20, 0x7f, 0x80, 0xff])), 0..3),
        ) {
            let mut b = b;
            for (at, byte) in special {
                if at < b.len() {
                    b[at] = byte;
                }
            }
            let expected = b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
            proptest::prop_assert_eq!(needs_escape(&b), expected, "{:?}", b);
        }

        #[test]
        fn any_string_is_escaped_exactly_like_serde_json(s in proptest::prelude::any::<String>()) {
            let mut out = Vec::new();
            write_json_str(&mut out, &s);
            proptest::prop_assert_eq!(out, serde_json::to_vec(&s).expect("serializes"));
        }
    }

    #[test]
    fn u64_formatting() {
        for n in [0, 7, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn prefix_limits() {
        assert!(validate_prefix("isvc").is_ok());
        assert!(validate_prefix(&"a".repeat(MAX_PREFIX_LEN)).is_ok());
        for bad in [
            "",
            "1abc",
            "-a",
            "Isvc",
            "a_b",
            "a.b",
            &"a".repeat(MAX_PREFIX_LEN + 1),
        ] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
        assert_eq!(MAX_NAME_LEN, 63 - "-predictor-00001-private".len());
    }

    #[test]
    fn options_check_namespace_and_hosts() {
        assert!(RenderOptions::default().validate().is_ok());
        let mut o = RenderOptions {
            namespace: "Bad_NS".into(),
            ..RenderOptions::default()
        };
        assert!(o.validate().is_err());
        // name 21 + "-predictor-" 11 + namespace 31 = 63: fits; one more does not
        o.namespace = "a".repeat(31);
        assert!(o.validate().is_ok());
        o.namespace = "a".repeat(32);
        assert!(o.validate().is_err());
    }

    #[test]
    fn mode_names_parse() {
        assert_eq!("legacy".parse::<ModeNames>(), Ok(ModeNames::Legacy));
        assert_eq!("Current".parse::<ModeNames>(), Ok(ModeNames::Current));
        assert!("new".parse::<ModeNames>().is_err());
        assert_eq!(
            ModeNames::Legacy.name(DeploymentMode::Standard),
            "RawDeployment"
        );
    }
}
