//! What an intent can say, in its own words: model formats, protocols, the KServe deployment
//! mode, autoscaling and batching. `crate::kserve` maps these to the CRD's spelling; the
//! intent never names a KServe type.

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
