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
//!
//! One concern per file: `vocabulary` (what an intent can say), `validate` (intent to
//! [`ServingSpec`]), `resources` (requests, limits, defaults), `json` (typed access to the
//! JSON fields) and `syntax` (Kubernetes quantities and DNS names). Everything public is
//! re-exported here.

use serde_json::Value;
use uuid::Uuid;

mod json;
mod resources;
mod syntax;
mod validate;
mod vocabulary;

use json::*;
pub use resources::*;
pub use syntax::*;
pub use validate::*;
pub use vocabulary::*;

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
