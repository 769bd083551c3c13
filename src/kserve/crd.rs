//! The typed InferenceService: what the worker writes (owned, deterministic) and the status
//! it reads back (lenient, so another KServe version never breaks the watch).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::intent::{AutoscaleMetric, Batching, UtilizationMetric};

use super::*;

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
