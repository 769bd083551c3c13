//! Validation: an [`Intent`] checked field by field into a [`ServingSpec`], the KServe-free
//! description of what to serve.

use serde_json::{Map, Value};

use super::*;

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
pub(super) enum RuntimeKind {
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
pub(super) struct AutoscalingFields<'a> {
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
pub(super) struct RuntimeConfigFields<'a> {
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

pub(super) fn resolve_mode(
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

pub(super) fn is_utilization(metric: AutoscaleMetric) -> bool {
    matches!(metric, AutoscaleMetric::Cpu | AutoscaleMetric::Memory)
}

pub(super) fn check_target(
    metric: AutoscaleMetric,
    target: Option<i32>,
) -> Result<(), IntentError> {
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

pub(super) fn check_scaling(
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

pub(super) fn keda_autoscaler(
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
