//! Intent → InferenceService mapping: golden manifests for the example intents, property tests
//! against KServe's v1beta1 CRD schema, name rules, and field injection.
//!
//! Goldens live in `tests/golden/<example>.json` (the exact `render_json` bytes plus a final
//! newline) and `tests/golden/<example>.yaml` (`to_yaml`). Regenerate them after an intended
//! change with `UPDATE_GOLDEN=1 cargo test -p deploy-worker --test mapping` and review the diff.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use deploy_worker::intent::DefaultResources;
use deploy_worker::intent::Intent;
use deploy_worker::intent::{IntentError, MODEL_FORMATS, TRITON_MODEL_FORMATS};
use deploy_worker::kserve::{
    InferenceService, InferenceServiceStatus, MAX_NAME_LEN, ModeNames, RenderOptions, isvc_name,
    render, render_json, to_yaml, validate_prefix,
};
use deploy_worker::policy::TenantPolicy;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};
use uuid::Uuid;

const EXAMPLES: [&str; 4] = [
    "canary-knative",
    "keda-standard",
    "sklearn-minimal",
    "triton-gpu-batcher",
];

// ---------------------------------------------------------------------------------------------
// CRD schema validation

struct Crd {
    schema: Value,
    validator: jsonschema::Validator,
}

fn crd() -> &'static Crd {
    static CRD: OnceLock<Crd> = OnceLock::new();
    CRD.get_or_init(|| {
        let schema: Value =
            serde_json::from_str(kserve_sim::schema::EMBEDDED_SCHEMA).expect("CRD schema is JSON");
        let validator = jsonschema::validator_for(&schema).expect("CRD schema compiles");
        Crd { schema, validator }
    })
}

/// Every reason the API server would refuse `manifest`: JSON-schema violations, plus fields the
/// structural schema does not declare (refused under server-side apply's strict field
/// validation; plain JSON Schema lets them through because the CRD sets no
/// `additionalProperties: false`).
fn schema_errors(manifest: &Value) -> Vec<String> {
    let crd = crd();
    let mut errors: Vec<String> = crd
        .validator
        .iter_errors(manifest)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    unknown_fields(&crd.schema, manifest, "", &mut errors);
    errors
}

fn unknown_fields(schema: &Value, instance: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match instance {
        Value::Object(fields) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (key, value) in fields {
                    match props.get(key) {
                        Some(sub) => unknown_fields(sub, value, &format!("{path}/{key}"), out),
                        None => out.push(format!("unknown field {path}/{key}")),
                    }
                }
            } else if let Some(sub) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for (key, value) in fields {
                    unknown_fields(sub, value, &format!("{path}/{key}"), out);
                }
            }
            // `metadata` is a bare object in the CRD: the API server checks ObjectMeta itself.
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(sub, item, &format!("{path}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn crate_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn example(name: &str) -> Intent {
    let path = crate_path(&format!("examples/intents/{name}.json"));
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Intent::from_json(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The settings' defaults (default resources included), with a tenant policy that lets every
/// generated intent through: the schemes they use and any service account. The policy's own
/// rules are tested below and in `deploy_worker::policy`.
fn opts() -> RenderOptions {
    RenderOptions {
        policy: permissive(),
        ..RenderOptions::default()
    }
}

fn permissive() -> TenantPolicy {
    TenantPolicy {
        storage_schemes: "s3,gs,pvc,https,hf,oci".parse().expect("schemes"),
        service_accounts: "*".parse().expect("rule"),
    }
}

fn manifest(intent: &Intent, opts: &RenderOptions) -> Value {
    let bytes = render_json(intent, opts).unwrap_or_else(|e| panic!("render failed: {e}"));
    serde_json::from_slice(&bytes).expect("render_json writes JSON")
}

fn check_golden(path: &Path, actual: &[u8]) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let expected = fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the rendered manifest\n--- golden\n{}\n--- rendered\n{}\n(if the change is intended, run with UPDATE_GOLDEN=1 and review the diff)",
        path.display(),
        String::from_utf8_lossy(&expected),
        String::from_utf8_lossy(actual)
    );
}

fn obj(slot: &mut Option<Value>) -> &mut Map<String, Value> {
    if !matches!(slot, Some(Value::Object(_))) {
        *slot = Some(json!({}));
    }
    match slot {
        Some(Value::Object(m)) => m,
        _ => unreachable!("just set to an object"),
    }
}

fn is_dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

// ---------------------------------------------------------------------------------------------
// Goldens and the examples

#[test]
fn every_example_has_a_golden() {
    let found: BTreeSet<String> = fs::read_dir(crate_path("examples/intents"))
        .expect("examples/intents/ exists")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    let expected: BTreeSet<String> = EXAMPLES.iter().map(|s| s.to_string()).collect();
    assert_eq!(found, expected, "add new example intents to EXAMPLES");
}

#[test]
fn examples_match_golden_manifests() {
    for name in EXAMPLES {
        let intent = example(name);
        let isvc = render(&intent, &opts()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut json = render_json(&intent, &opts()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            json,
            serde_json::to_vec(&isvc).expect("serializes"),
            "{name}: render_json and render disagree"
        );
        let value: Value = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(schema_errors(&value), Vec::<String>::new(), "{name}");
        json.push(b'\n');
        check_golden(&crate_path(&format!("tests/golden/{name}.json")), &json);
        let yaml = to_yaml(&isvc).expect("YAML");
        check_golden(
            &crate_path(&format!("tests/golden/{name}.yaml")),
            yaml.as_bytes(),
        );
    }
}

#[test]
fn triton_example_runs_triton_on_a_gpu_with_the_batcher() {
    let intent = example("triton-gpu-batcher");
    let m = manifest(&intent, &opts());
    assert_eq!(m["apiVersion"], "serving.kserve.io/v1beta1");
    assert_eq!(m["kind"], "InferenceService");
    let meta = &m["metadata"];
    assert_eq!(meta["name"], isvc_name("isvc", intent.endpoint_id));
    assert_eq!(meta["namespace"], "mlops-serving");
    assert_eq!(
        meta["labels"]["app.kubernetes.io/managed-by"],
        "deploy-worker"
    );
    assert_eq!(
        meta["labels"]["mlops.platform/endpoint-id"],
        intent.endpoint_id.to_string()
    );
    assert_eq!(
        meta["labels"]["mlops.platform/tenant-id"],
        intent.tenant_id.to_string()
    );
    assert_eq!(
        meta["labels"]["mlops.platform/project-id"],
        intent.project_id.to_string()
    );
    assert_eq!(meta["annotations"]["mlops.platform/spec-generation"], "3");
    assert_eq!(
        meta["annotations"]["serving.kserve.io/enable-prometheus-scraping"],
        "true"
    );
    assert!(
        meta["annotations"]
            .get("serving.kserve.io/deploymentMode")
            .is_none()
    );
    let p = &m["spec"]["predictor"];
    assert_eq!(p["batcher"], json!({"maxBatchSize": 32, "maxLatency": 500}));
    assert_eq!(p["timeout"], 60);
    assert_eq!(
        (p["minReplicas"].clone(), p["maxReplicas"].clone()),
        (json!(1), json!(4))
    );
    let model = &p["model"];
    assert_eq!(model["modelFormat"], json!({"name": "triton"}));
    assert_eq!(model["protocolVersion"], "v2");
    assert_eq!(model["runtimeVersion"], "24.08-py3");
    assert_eq!(
        model["storageUri"],
        intent.artifact_uri.clone().unwrap_or_default()
    );
    assert_eq!(model["resources"]["requests"]["nvidia.com/gpu"], "1");
    assert_eq!(model["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(model["resources"]["limits"]["memory"], "4Gi");
}

#[test]
fn canary_example_selects_knative() {
    let m = manifest(&example("canary-knative"), &opts());
    assert_eq!(
        m["metadata"]["annotations"]["serving.kserve.io/deploymentMode"],
        "Knative"
    );
    let p = &m["spec"]["predictor"];
    assert_eq!(p["canaryTrafficPercent"], 10);
    assert_eq!(p["minReplicas"], 0);
    assert_eq!(p["scaleMetric"], "concurrency");
    assert_eq!(p["scaleTarget"], 8);
    assert_eq!(p["model"]["modelFormat"]["name"], "xgboost");
}

#[test]
fn keda_example_uses_keda_in_standard_mode() {
    let m = manifest(&example("keda-standard"), &opts());
    let ann = &m["metadata"]["annotations"];
    assert_eq!(ann["serving.kserve.io/autoscalerClass"], "keda");
    // the example says RawDeployment: legacy names are normalised
    assert_eq!(ann["serving.kserve.io/deploymentMode"], "Standard");
    assert_eq!(ann["serving.kserve.io/enable-prometheus-scraping"], "false");
    let p = &m["spec"]["predictor"];
    // KServe refuses scaleMetric under KEDA: the metric moves to autoScaling
    assert!(p.get("scaleMetric").is_none() && p.get("scaleTarget").is_none());
    assert_eq!(
        p["autoScaling"],
        json!({"metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]})
    );
    assert_eq!(
        p["serviceAccountName"],
        "tenant-0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e-models"
    );
    assert_eq!(
        (p["minReplicas"].clone(), p["maxReplicas"].clone()),
        (json!(2), json!(20))
    );
}

#[test]
fn minimal_example_is_sklearn_with_defaults_only() {
    let intent = example("sklearn-minimal");
    let m = manifest(&intent, &opts());
    assert_eq!(
        m["metadata"]["annotations"],
        json!({"mlops.platform/spec-generation": "1", "serving.kserve.io/enable-prometheus-scraping": "true"})
    );
    assert_eq!(
        m["spec"],
        json!({"predictor": {"model": {
            "modelFormat": {"name": "sklearn"},
            "storageUri": intent.artifact_uri,
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "250m", "memory": "512Mi"}},
        }}})
    );
}

fn model_resources(intent: &Intent, opts: &RenderOptions) -> Value {
    let isvc = render(intent, opts).unwrap_or_else(|e| panic!("render failed: {e}"));
    let typed = serde_json::to_value(&isvc).expect("serializes");
    // the two renderers agree on the defaults too
    assert_eq!(typed, manifest(intent, opts));
    typed["spec"]["predictor"]["model"]
        .get("resources")
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn default_resources_apply_only_when_an_endpoint_names_none() {
    let old_worker = json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "250m", "memory": "512Mi"}});
    let mut intent = example("sklearn-minimal");
    assert_eq!(model_resources(&intent, &opts()), old_worker);
    // `{}`, empty sides and null entries name nothing either
    for empty in [
        json!({}),
        json!({"requests": {}, "limits": null}),
        json!({"requests": {"cpu": null}}),
    ] {
        intent.runtime_config = Some(json!({ "resources": empty }));
        assert_eq!(model_resources(&intent, &opts()), old_worker, "{empty}");
    }
    // a GPU endpoint keeps its GPU on top of the defaults
    intent.runtime_config = Some(json!({"gpu": true}));
    assert_eq!(
        model_resources(&intent, &opts()),
        json!({"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}, "requests": {"cpu": "250m", "memory": "512Mi", "nvidia.com/gpu": "1"}})
    );
    // anything the endpoint names replaces the defaults entirely
    intent.runtime_config = Some(json!({"resources": {"limits": {"memory": "256Mi"}}}));
    assert_eq!(
        model_resources(&intent, &opts()),
        json!({"limits": {"memory": "256Mi"}})
    );
    // configurable, including off
    let custom = RenderOptions {
        default_resources: DefaultResources::new(
            "cpu=100m".parse().expect("list"),
            "none".parse().expect("list"),
        ),
        ..opts()
    };
    intent.runtime_config = None;
    assert_eq!(
        model_resources(&intent, &custom),
        json!({"requests": {"cpu": "100m"}})
    );
    let off = RenderOptions {
        default_resources: DefaultResources::NONE,
        ..opts()
    };
    assert_eq!(model_resources(&intent, &off), Value::Null);
}

#[test]
fn default_resource_settings_are_checked() {
    for bad in [
        "cpu",
        "cpu=lots",
        "cpu=-1",
        "c pu=1",
        "nvidia.com/gpu=1",
        "cpu=1,cpu=2",
    ] {
        assert!(
            bad.parse::<deploy_worker::intent::ResourceList>().is_err(),
            "{bad}"
        );
    }
    let inverted = RenderOptions {
        default_resources: DefaultResources::new(
            "memory=2Gi".parse().expect("list"),
            "memory=1Gi".parse().expect("list"),
        ),
        ..opts()
    };
    let err = inverted
        .validate()
        .expect_err("request above limit")
        .to_string();
    assert!(
        err.contains("KSERVE_DEFAULT_REQUESTS") && err.contains("memory"),
        "{err}"
    );
    assert!(RenderOptions::default().validate().is_ok());
}

/// Both renderers refuse `intent` under `opts` with a reason starting `start` and naming
/// `setting`.
fn assert_refused(intent: &Intent, opts: &RenderOptions, start: &str, setting: &str) {
    for err in [
        render(intent, opts).map(|_| ()),
        render_json(intent, opts).map(|_| ()),
    ] {
        let err = err.expect_err(start).to_string();
        assert!(err.starts_with(start) && err.contains(setting), "{err}");
    }
}

#[test]
fn both_renderers_apply_the_default_tenant_policy() {
    let strict = RenderOptions::default();
    let keda = example("keda-standard");
    assert_refused(
        &keda,
        &strict,
        "runtime_config.serviceAccountName: not allowed by the tenant policy",
        "TENANT_SERVICE_ACCOUNTS",
    );
    let tenant_accounts = RenderOptions {
        policy: TenantPolicy {
            service_accounts: "tenant-{tenant_id}-*".parse().expect("rule"),
            ..TenantPolicy::default()
        },
        ..RenderOptions::default()
    };
    assert!(render(&keda, &tenant_accounts).is_ok());
    let mut pvc = example("sklearn-minimal");
    pvc.artifact_uri = Some("pvc://another-tenants-claim/model".into());
    assert_refused(
        &pvc,
        &strict,
        "artifact_uri: not allowed by the tenant policy",
        "TENANT_STORAGE_URI_SCHEMES",
    );
}

#[test]
fn legacy_mode_names_are_written_when_configured() {
    let legacy = RenderOptions {
        mode_names: ModeNames::Legacy,
        ..opts()
    };
    let knative = manifest(&example("canary-knative"), &legacy);
    assert_eq!(
        knative["metadata"]["annotations"]["serving.kserve.io/deploymentMode"],
        "Serverless"
    );
    let standard = manifest(&example("keda-standard"), &legacy);
    assert_eq!(
        standard["metadata"]["annotations"]["serving.kserve.io/deploymentMode"],
        "RawDeployment"
    );
}

#[test]
fn a_canary_without_a_mode_selects_knative() {
    let mut intent = example("sklearn-minimal");
    intent.traffic = Some(json!({"canaryTrafficPercent": 0}));
    let m = manifest(&intent, &opts());
    assert_eq!(
        m["metadata"]["annotations"]["serving.kserve.io/deploymentMode"],
        "Knative"
    );
    assert_eq!(m["spec"]["predictor"]["canaryTrafficPercent"], 0);
}

#[test]
fn keda_from_runtime_config_autoscaler_class() {
    let mut intent = example("sklearn-minimal");
    intent.runtime_config = Some(json!({"autoscalerClass": "keda"}));
    intent.autoscaling = Some(json!({"scaleMetric": "memory", "scaleTarget": 60}));
    let m = manifest(&intent, &opts());
    let ann = &m["metadata"]["annotations"];
    assert_eq!(ann["serving.kserve.io/autoscalerClass"], "keda");
    assert_eq!(ann["serving.kserve.io/deploymentMode"], "Standard");
    assert_eq!(
        m["spec"]["predictor"]["autoScaling"]["metrics"][0]["resource"],
        json!({"name": "memory", "target": {"type": "Utilization", "averageUtilization": 60}})
    );
    // without a metric, KEDA gets KServe's default CPU target instead of no trigger at all
    intent.autoscaling = None;
    let m = manifest(&intent, &opts());
    assert_eq!(
        m["spec"]["predictor"]["autoScaling"]["metrics"][0]["resource"],
        json!({"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}})
    );
}

#[test]
fn prometheus_scraping_has_a_global_default_and_a_per_endpoint_override() {
    let key = "serving.kserve.io/enable-prometheus-scraping";
    let off = RenderOptions {
        prometheus_scraping: false,
        ..opts()
    };
    let mut intent = example("sklearn-minimal");
    assert_eq!(
        manifest(&intent, &off)["metadata"]["annotations"][key],
        "false"
    );
    intent.runtime_config = Some(json!({"enablePrometheusScraping": true}));
    assert_eq!(
        manifest(&intent, &off)["metadata"]["annotations"][key],
        "true"
    );
    intent.runtime_config = Some(json!({"enablePrometheusScraping": false}));
    assert_eq!(
        manifest(&intent, &opts())["metadata"]["annotations"][key],
        "false"
    );
}

#[test]
fn triton_comes_from_the_runtime_or_the_model_format() {
    let mut intent = example("sklearn-minimal");
    intent.runtime = Some("kserve-triton".into());
    assert_eq!(
        manifest(&intent, &opts())["spec"]["predictor"]["model"]["modelFormat"]["name"],
        "triton"
    );
    intent.runtime = Some("kserve".into());
    intent.runtime_config = Some(json!({"modelFormat": "Triton"}));
    assert_eq!(
        manifest(&intent, &opts())["spec"]["predictor"]["model"]["modelFormat"]["name"],
        "triton"
    );
    // a Triton runtime serving ONNX keeps the explicit format
    intent.runtime = Some("triton".into());
    intent.runtime_config = Some(json!({"modelFormat": "onnx"}));
    assert_eq!(
        manifest(&intent, &opts())["spec"]["predictor"]["model"]["modelFormat"]["name"],
        "onnx"
    );
}

#[test]
fn gpu_copies_an_explicit_count_to_the_other_side() {
    let mut intent = example("sklearn-minimal");
    intent.runtime_config =
        Some(json!({"gpu": true, "resources": {"limits": {"nvidia.com/gpu": 2}}}));
    let r = &manifest(&intent, &opts())["spec"]["predictor"]["model"]["resources"];
    assert_eq!(r["requests"]["nvidia.com/gpu"], "2");
    assert_eq!(r["limits"]["nvidia.com/gpu"], "2");
}

type Mutation = Box<dyn Fn(&mut Intent)>;
type Breakage = fn(&mut Value);

#[test]
fn errors_name_the_field_and_the_problem() {
    let cases: [(Mutation, &str); 6] = [
        (
            Box::new(|i: &mut Intent| i.traffic = Some(json!({"canaryTrafficPercent": 150}))),
            "traffic.canaryTrafficPercent: 150 is outside 0..=100",
        ),
        (
            Box::new(|i: &mut Intent| {
                i.autoscaling = Some(json!({"minReplicas": 5, "maxReplicas": 2}))
            }),
            "autoscaling.minReplicas: 5 is greater than autoscaling.maxReplicas (2); lower minReplicas or raise maxReplicas",
        ),
        (
            Box::new(|i: &mut Intent| i.autoscaling = Some(json!({"maxReplicas": 2.5}))),
            "autoscaling.maxReplicas: 2.5 is not a whole number; use an integer",
        ),
        (
            Box::new(|i: &mut Intent| i.traffic = Some(json!([10]))),
            "traffic: expected an object, found an array",
        ),
        (
            Box::new(|i: &mut Intent| {
                i.runtime_config = Some(json!({"resources": {"limits": {"memory": "4 GB"}}}))
            }),
            "runtime_config.resources.limits.memory: \"4 GB\" is not a valid Kubernetes quantity",
        ),
        (
            Box::new(|i: &mut Intent| i.runtime = Some("seldon".into())),
            "runtime: \"seldon\" is not a supported runtime",
        ),
    ];
    for (mutate, expected) in cases {
        let mut intent = example("sklearn-minimal");
        mutate(&mut intent);
        let err = render(&intent, &opts()).expect_err(expected).to_string();
        assert!(
            err.starts_with(expected),
            "{err:?} should start with {expected:?}"
        );
    }
    let mut intent = example("sklearn-minimal");
    intent.artifact_uri = None;
    assert_eq!(
        render(&intent, &opts()),
        Err(IntentError::MissingArtifact {
            model_version_id: intent.model_version_id.unwrap_or_default()
        })
    );
    intent.model_version_id = None;
    assert_eq!(
        render(&intent, &opts()),
        Err(IntentError::MissingModelVersion)
    );
}

#[test]
fn deliberately_broken_manifests_fail_schema_validation() {
    let good = manifest(&example("triton-gpu-batcher"), &opts());
    assert_eq!(schema_errors(&good), Vec::<String>::new());
    let breakages: [(&str, Breakage); 10] = [
        ("canary as a string", |m| {
            m["spec"]["predictor"]["canaryTrafficPercent"] = json!("10")
        }),
        ("scaleMetric outside the enum", |m| {
            m["spec"]["predictor"]["scaleMetric"] = json!("gpu")
        }),
        ("malformed quantity", |m| {
            m["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"] = json!("2 cores")
        }),
        ("modelFormat without name", |m| {
            m["spec"]["predictor"]["model"]["modelFormat"] = json!({})
        }),
        ("fractional replicas", |m| {
            m["spec"]["predictor"]["minReplicas"] = json!(1.5)
        }),
        ("storageUri as a number", |m| {
            m["spec"]["predictor"]["model"]["storageUri"] = json!(5)
        }),
        ("field that does not exist in v1beta1", |m| {
            m["spec"]["predictor"]["autoscalerClass"] = json!("keda")
        }),
        ("batcher size as a string", |m| {
            m["spec"]["predictor"]["batcher"]["maxBatchSize"] = json!("32")
        }),
        ("no predictor", |m| {
            if let Some(spec) = m["spec"].as_object_mut() {
                spec.remove("predictor");
            }
        }),
        ("autoScaling metric with unknown type", |m| {
            m["spec"]["predictor"]["autoScaling"] = json!({"metrics": [{"type": "Magic", "resource": {"name": "cpu", "target": {"type": "Utilization"}}}]})
        }),
    ];
    for (what, breakage) in breakages {
        let mut broken = good.clone();
        breakage(&mut broken);
        assert!(
            !schema_errors(&broken).is_empty(),
            "{what}: the schema check accepted a broken manifest"
        );
    }
}

#[test]
fn status_from_kserve_deserializes_leniently() {
    let status: InferenceServiceStatus = serde_json::from_value(json!({
        "url": "http://isvc-1.mlops-serving.example.com",
        "observedGeneration": 4,
        "deploymentMode": "Knative",
        "somethingNew": {"nested": true},
        "conditions": [
            {"type": "PredictorReady", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Ready", "status": "False", "reason": "RevisionMissing", "message": "not yet", "severity": "Info"}
        ],
        "components": {"predictor": {
            "latestReadyRevision": "isvc-1-predictor-00002",
            "latestCreatedRevision": "isvc-1-predictor-00003",
            "previousRolledoutRevision": "isvc-1-predictor-00001",
            "latestRolledoutRevision": "isvc-1-predictor-00002",
            "traffic": [
                {"revisionName": "isvc-1-predictor-00002", "percent": 90, "latestRevision": false, "tag": "prev"},
                {"revisionName": "isvc-1-predictor-00003", "percent": 10, "latestRevision": true}
            ]
        }}
    }))
    .expect("lenient status");
    assert_eq!(status.observed_generation, Some(4));
    assert_eq!(
        status.condition("Ready").and_then(|c| c.reason.as_deref()),
        Some("RevisionMissing")
    );
    let predictor = status.predictor().expect("predictor status");
    assert_eq!(predictor.traffic[1].percent, Some(10));
    assert_eq!(predictor.traffic[0].tag.as_deref(), Some("prev"));
    assert_eq!(
        predictor.previous_rolledout_revision.as_deref(),
        Some("isvc-1-predictor-00001")
    );
    let empty: InferenceServiceStatus = serde_json::from_value(json!({})).expect("empty");
    assert_eq!(empty, InferenceServiceStatus::default());
}

#[test]
fn readiness_needs_the_current_generation_a_url_and_ready_true() {
    let mut isvc = render(&example("sklearn-minimal"), &opts()).expect("renders");
    isvc.metadata.generation = Some(2);
    assert!(!isvc.is_ready());
    let ready = |observed: i64, url: Option<&str>, ready: &str| InferenceServiceStatus {
        url: url.map(str::to_owned),
        observed_generation: Some(observed),
        conditions: vec![deploy_worker::kserve::Condition {
            type_: "Ready".into(),
            status: ready.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    isvc.status = Some(ready(1, Some("http://x"), "True"));
    assert!(!isvc.is_ready(), "stale Ready from the previous generation");
    isvc.status = Some(ready(2, None, "True"));
    assert!(!isvc.is_ready(), "no URL yet");
    isvc.status = Some(ready(2, Some("http://x"), "False"));
    assert!(!isvc.is_ready());
    isvc.status = Some(ready(2, Some("http://x"), "True"));
    assert!(isvc.is_ready());
    assert_eq!(isvc.spec_generation(), Some(1));
}

// ---------------------------------------------------------------------------------------------
// Names

#[test]
fn one_million_endpoint_ids_give_one_million_names() {
    let mut names = HashSet::with_capacity(1_000_000);
    for _ in 0..1_000_000 {
        let name = isvc_name("isvc", Uuid::new_v4());
        assert!(name.len() <= MAX_NAME_LEN);
        names.insert(name);
    }
    assert_eq!(names.len(), 1_000_000);
}

proptest! {
    #[test]
    fn valid_prefixes_give_dns1035_names_within_the_limit(
        prefix in "[a-z][a-z0-9-]{0,21}",
        id in any::<u128>(),
    ) {
        prop_assert!(validate_prefix(&prefix).is_ok());
        let name = isvc_name(&prefix, Uuid::from_u128(id));
        prop_assert!(is_dns1035_label(&name), "{}", name);
        prop_assert!(name.len() <= MAX_NAME_LEN);
        prop_assert_eq!(name.len(), prefix.len() + 17);
    }

    #[test]
    fn prefix_validation_never_lets_a_bad_name_through(
        prefix in prop_oneof![".{0,30}", "[a-zA-Z0-9_.-]{0,30}"],
        id in any::<u128>(),
    ) {
        let name = isvc_name(&prefix, Uuid::from_u128(id));
        let good = is_dns1035_label(&name) && name.len() <= MAX_NAME_LEN;
        prop_assert_eq!(validate_prefix(&prefix).is_ok(), good, "{:?}", prefix);
    }
}

// ---------------------------------------------------------------------------------------------
// Generated intents

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// A CPU quantity of `m` millicores, in one of the spellings people use.
fn cpu(m: u64, style: u8) -> Value {
    match style % 3 {
        0 => json!(format!("{m}m")),
        1 => json!(format!("{}", m as f64 / 1000.0)),
        _ if m.is_multiple_of(1000) => json!(m / 1000),
        _ => json!(format!("{m}m")),
    }
}

/// A memory quantity of `mi` MiB.
fn memory(mi: u64, style: u8) -> Value {
    match style % 3 {
        0 => json!(format!("{mi}Mi")),
        1 => json!(format!("{}Ki", mi * 1024)),
        _ => json!(mi * 1024 * 1024),
    }
}

#[derive(Debug, Clone)]
struct ResourceChoice {
    /// 0 none, 1 request only, 2 limit only, 3 both (per resource: cpu, memory, storage)
    sides: [u8; 3],
    amounts: [u64; 3],
    factor: u64,
    style: u8,
    gpu: Option<bool>,
    /// explicit GPU count and on which side (0 request, 1 limit, 2 both)
    gpu_count: Option<(u64, u8)>,
}

fn resource_choice() -> impl Strategy<Value = ResourceChoice> {
    (
        [0u8..4, 0u8..4, 0u8..4],
        [1u64..4000, 1u64..8192, 1u64..100],
        1u64..4,
        any::<u8>(),
        proptest::option::of(any::<bool>()),
        proptest::option::of((1u64..8, 0u8..3)),
    )
        .prop_map(
            |(sides, amounts, factor, style, gpu, gpu_count)| ResourceChoice {
                sides,
                amounts,
                factor,
                style,
                gpu,
                gpu_count,
            },
        )
}

impl ResourceChoice {
    fn write(&self, rc: &mut Map<String, Value>) {
        let mut requests = Map::new();
        let mut limits = Map::new();
        let values = |i: usize, amount: u64| match i {
            0 => cpu(amount, self.style),
            1 => memory(amount, self.style),
            _ => json!(format!("{amount}Gi")),
        };
        for (i, name) in ["cpu", "memory", "ephemeral-storage"].iter().enumerate() {
            let req = self.amounts[i];
            if self.sides[i] & 1 != 0 {
                requests.insert(name.to_string(), values(i, req));
            }
            if self.sides[i] & 2 != 0 {
                limits.insert(name.to_string(), values(i, req * self.factor));
            }
        }
        if let Some((count, side)) = self.gpu_count {
            // a request-only GPU is invalid unless gpu: true fills in the limit
            let side = if self.gpu != Some(true) && side == 0 {
                2
            } else {
                side
            };
            if side != 1 {
                requests.insert("nvidia.com/gpu".into(), json!(count));
            }
            if side != 0 {
                limits.insert("nvidia.com/gpu".into(), json!(count.to_string()));
            }
        }
        let mut res = Map::new();
        if !requests.is_empty() {
            res.insert("requests".into(), Value::Object(requests));
        }
        if !limits.is_empty() {
            res.insert("limits".into(), Value::Object(limits));
        }
        if !res.is_empty() || self.style.is_multiple_of(7) {
            rc.insert("resources".into(), Value::Object(res));
        }
        if let Some(gpu) = self.gpu {
            rc.insert("gpu".into(), json!(gpu));
        }
    }
}

#[derive(Debug, Clone)]
struct ScalingChoice {
    /// 0 unset, 1 Knative, 2 Standard, 3 KEDA
    plan: u8,
    spelling: u8,
    canary: Option<u8>,
    min: Option<i32>,
    max: Option<i32>,
    metric: u8,
    target: Option<i32>,
    keda_switch: u8,
    explicit_mode: bool,
}

fn scaling_choice() -> impl Strategy<Value = ScalingChoice> {
    (
        0u8..4,
        any::<u8>(),
        proptest::option::of(0u8..=100),
        proptest::option::of(0i32..10),
        proptest::option::of(1i32..30),
        any::<u8>(),
        proptest::option::of(1i32..2000),
        0u8..3,
        any::<bool>(),
    )
        .prop_map(
            |(plan, spelling, canary, min, max, metric, target, keda_switch, explicit_mode)| {
                ScalingChoice {
                    plan,
                    spelling,
                    canary,
                    min,
                    max,
                    metric,
                    target,
                    keda_switch,
                    explicit_mode,
                }
            },
        )
}

impl ScalingChoice {
    fn write(&self, intent: &mut Intent) {
        let knative = ["Knative", "Serverless", "knative"];
        let standard = ["Standard", "RawDeployment", "STANDARD"];
        let spelled = |names: [&str; 3]| json!(names[usize::from(self.spelling) % 3]);
        let (max, min) = match (self.min, self.max) {
            (Some(min), Some(max)) if min > max => (Some(min.max(1)), Some(min)),
            (min, max) => (max, min),
        };
        let mut autoscaling = Map::new();
        let mut rc_mode = None;
        let mut keda = false;
        let metrics: &[Option<&str>] = match self.plan {
            0 => &[
                None,
                Some("cpu"),
                Some("memory"),
                Some("concurrency"),
                Some("rps"),
            ],
            1 => &[None, Some("concurrency"), Some("rps")],
            _ => &[None, Some("cpu"), Some("memory")],
        };
        let metric = metrics[usize::from(self.metric) % metrics.len()];
        match self.plan {
            1 => {
                if self.canary.is_some() {
                    intent.traffic = Some(json!({"canaryTrafficPercent": self.canary}));
                }
                if self.explicit_mode || self.canary.is_none() {
                    rc_mode = Some(spelled(knative));
                }
            }
            2 => rc_mode = Some(spelled(standard)),
            3 => {
                keda = true;
                if self.explicit_mode {
                    rc_mode = Some(spelled(standard));
                }
            }
            _ => {}
        }
        if let Some(m) = metric {
            autoscaling.insert("scaleMetric".into(), json!(m));
        }
        let utilization = matches!(metric, Some("cpu" | "memory"))
            || (metric.is_none() && matches!(self.plan, 2 | 3));
        let target = match (self.target, metric) {
            (None, Some("memory")) => Some(50),
            (t, _) if utilization => t.map(|t| t % 100 + 1),
            (t, _) => t,
        };
        if let Some(t) = target {
            autoscaling.insert("scaleTarget".into(), json!(t));
        }
        if let Some(min) = min {
            autoscaling.insert("minReplicas".into(), json!(min));
        }
        if let Some(max) = max {
            autoscaling.insert("maxReplicas".into(), json!(max));
        }
        let rc = obj(&mut intent.runtime_config);
        if keda && self.keda_switch != 1 {
            autoscaling.insert("keda".into(), json!(true));
        }
        if keda && self.keda_switch != 0 {
            rc.insert("autoscalerClass".into(), json!("keda"));
        }
        if let Some(mode) = rc_mode {
            rc.insert("deploymentMode".into(), mode);
        }
        if !autoscaling.is_empty() {
            intent.autoscaling = Some(Value::Object(autoscaling));
        }
    }
}

#[derive(Debug, Clone)]
struct CoreChoice {
    runtime: u8,
    format: u8,
    upper_format: bool,
    protocol: u8,
    runtime_version: Option<u8>,
    service_account: Option<u8>,
    timeout: Option<i64>,
    batcher: Option<(Option<i64>, Option<i64>, Option<i64>)>,
    prometheus: Option<bool>,
    generation: i64,
}

fn core_choice() -> impl Strategy<Value = CoreChoice> {
    (
        0u8..5,
        any::<u8>(),
        any::<bool>(),
        any::<u8>(),
        proptest::option::of(0u8..4),
        proptest::option::of(0u8..3),
        proptest::option::of(1i64..3600),
        proptest::option::of((
            proptest::option::of(1i64..256),
            proptest::option::of(1i64..10_000),
            proptest::option::of(1i64..600),
        )),
        proptest::option::of(any::<bool>()),
        0i64..1_000_000_000_000,
    )
        .prop_map(
            |(
                runtime,
                format,
                upper_format,
                protocol,
                runtime_version,
                service_account,
                timeout,
                batcher,
                prometheus,
                generation,
            )| CoreChoice {
                runtime,
                format,
                upper_format,
                protocol,
                runtime_version,
                service_account,
                timeout,
                batcher,
                prometheus,
                generation,
            },
        )
}

impl CoreChoice {
    fn write(&self, intent: &mut Intent) {
        let runtimes = [
            None,
            Some("kserve"),
            Some("kserve-triton"),
            Some("triton"),
            Some("KServe"),
        ];
        let runtime = runtimes[usize::from(self.runtime)];
        intent.runtime = runtime.map(str::to_owned);
        let triton = matches!(self.runtime, 2 | 3);
        let formats = if triton {
            TRITON_MODEL_FORMATS
        } else {
            MODEL_FORMATS
        };
        // one slot more than there are formats: "not set"
        let pick = usize::from(self.format) % (formats.len() + 1);
        let format = formats.get(pick).copied();
        let effective = format.unwrap_or(if triton { "triton" } else { "sklearn" });
        let protocols: &[&str] = if matches!(effective, "triton" | "tensorrt") {
            &["v2", "grpc-v2"]
        } else {
            &["v1", "v2", "grpc-v1", "grpc-v2"]
        };
        let rc = obj(&mut intent.runtime_config);
        if let Some(f) = format {
            let f = if self.upper_format {
                f.to_uppercase()
            } else {
                f.to_owned()
            };
            rc.insert("modelFormat".into(), json!(f));
        }
        let p = usize::from(self.protocol) % (protocols.len() + 1);
        if let Some(p) = protocols.get(p) {
            rc.insert("protocolVersion".into(), json!(p));
        }
        if let Some(v) = self.runtime_version {
            let versions = ["24.08-py3", "1.7.1", "latest", "v2_0"];
            rc.insert("runtimeVersion".into(), json!(versions[usize::from(v)]));
        }
        if let Some(sa) = self.service_account {
            let names = ["default", "model-reader", "sa.team-a"];
            rc.insert("serviceAccountName".into(), json!(names[usize::from(sa)]));
        }
        if let Some(t) = self.timeout {
            rc.insert("timeout".into(), json!(t));
        }
        if let Some((size, latency, timeout)) = self.batcher {
            let mut b = Map::new();
            for (key, v) in [
                ("maxBatchSize", size),
                ("maxLatency", latency),
                ("timeout", timeout),
            ] {
                if let Some(v) = v {
                    b.insert(key.into(), json!(v));
                }
            }
            rc.insert("batcher".into(), Value::Object(b));
        }
        if let Some(p) = self.prometheus {
            rc.insert("enablePrometheusScraping".into(), json!(p));
        }
        intent.generation = self.generation;
    }
}

fn valid_intent() -> impl Strategy<Value = Intent> {
    (
        [uuid(), uuid(), uuid(), uuid(), uuid()],
        core_choice(),
        scaling_choice(),
        resource_choice(),
        // storage URIs may hold any printable character, including JSON's `"` and `\`
        r#"(s3|gs|pvc|https|hf|oci)://[a-z0-9-]{1,12}(/[A-Za-z0-9._\-"\\é✓%?=&]{1,12}){0,3}"#,
        0u8..4,
    )
        .prop_map(|(ids, core, scaling, resources, uri, nulls)| {
            let mut intent = Intent {
                endpoint_id: ids[0],
                tenant_id: ids[1],
                project_id: ids[2],
                name: "generated".into(),
                runtime: None,
                model_id: Some(ids[3]),
                model_version_id: Some(ids[4]),
                artifact_uri: Some(uri),
                traffic: None,
                autoscaling: None,
                runtime_config: None,
                generation: 1,
            };
            core.write(&mut intent);
            scaling.write(&mut intent);
            resources.write(obj(&mut intent.runtime_config));
            // SQL NULL, JSON null and {} all mean "not set"
            match nulls {
                1 if intent.traffic.is_none() => intent.traffic = Some(Value::Null),
                2 if intent.traffic.is_none() => {
                    intent.traffic = Some(json!({"canaryTrafficPercent": null}))
                }
                3 if intent.autoscaling.is_none() => intent.autoscaling = Some(json!({})),
                _ => {}
            }
            intent
        })
}

fn options() -> impl Strategy<Value = RenderOptions> {
    (
        "[a-z][a-z0-9-]{0,21}",
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(name_prefix, namespace, prometheus_scraping, legacy, defaults)| RenderOptions {
                namespace,
                name_prefix,
                prometheus_scraping,
                mode_names: if legacy {
                    ModeNames::Legacy
                } else {
                    ModeNames::Current
                },
                default_resources: if defaults {
                    RenderOptions::default().default_resources
                } else {
                    DefaultResources::NONE
                },
                policy: permissive(),
            },
        )
}

fn check_valid(intent: &Intent, opts: &RenderOptions) -> Result<(), TestCaseError> {
    prop_assert!(opts.validate().is_ok());
    let isvc = render(intent, opts).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let bytes = render_json(intent, opts).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    prop_assert_eq!(&bytes, &serde_json::to_vec(&isvc).expect("serializes"));
    prop_assert_eq!(&render_json(intent, opts).expect("renders again"), &bytes);
    let value: Value = serde_json::from_slice(&bytes).expect("JSON");
    let errors = schema_errors(&value);
    prop_assert!(errors.is_empty(), "{:?}\n{}", errors, value);
    let back: InferenceService = serde_json::from_slice(&bytes).expect("deserializes");
    prop_assert_eq!(&back, &isvc);
    let yaml = to_yaml(&isvc).expect("YAML");
    let from_yaml: Value = serde_yaml::from_str(&yaml).expect("YAML parses");
    prop_assert_eq!(&from_yaml, &value);

    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    prop_assert!(
        is_dns1035_label(name) && name.len() <= MAX_NAME_LEN,
        "{}",
        name
    );
    prop_assert_eq!(name, isvc_name(&opts.name_prefix, intent.endpoint_id));
    let ann = &value["metadata"]["annotations"];
    let generation = intent.generation.to_string();
    prop_assert_eq!(
        ann["mlops.platform/spec-generation"].as_str(),
        Some(generation.as_str())
    );
    let p = &value["spec"]["predictor"];
    prop_assert_eq!(
        p["model"]["storageUri"].as_str(),
        intent.artifact_uri.as_deref()
    );
    let mode = ann["serving.kserve.io/deploymentMode"].as_str();
    if p.get("canaryTrafficPercent").is_some() {
        prop_assert!(matches!(mode, Some("Knative" | "Serverless")));
    }
    if ann.get("serving.kserve.io/autoscalerClass").is_some() {
        prop_assert!(matches!(mode, Some("Standard" | "RawDeployment")));
        prop_assert!(p.get("scaleMetric").is_none() && p.get("autoScaling").is_some());
    }
    let gpu = intent
        .runtime_config
        .as_ref()
        .and_then(|rc| rc.get("gpu"))
        .and_then(Value::as_bool);
    if gpu == Some(true) {
        let r = &p["model"]["resources"];
        prop_assert!(r["requests"]["nvidia.com/gpu"].is_string());
        prop_assert_eq!(
            &r["requests"]["nvidia.com/gpu"],
            &r["limits"]["nvidia.com/gpu"]
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_intents_render_schema_valid_manifests(intent in valid_intent(), opts in options()) {
        check_valid(&intent, &opts)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid intents: a valid intent with one thing broken must be refused, naming that thing.

/// Breaks `intent` in way `which`; returns the field the error must name first.
fn break_intent(intent: &mut Intent, which: usize, n: u32) -> &'static str {
    let n64 = i64::from(n);
    let no_keda = |i: &mut Intent| {
        obj(&mut i.autoscaling).remove("keda");
        obj(&mut i.runtime_config).remove("autoscalerClass");
    };
    match which {
        0 => {
            intent.traffic = Some(json!({"canaryTrafficPercent": 101 + n64 % 1000}));
            "traffic.canaryTrafficPercent"
        }
        1 => {
            intent.traffic = Some(json!({"canaryTrafficPercent": -1 - n64 % 1000}));
            "traffic.canaryTrafficPercent"
        }
        2 => {
            intent.traffic = Some(json!({"canaryTrafficPercent": n64 % 101}));
            obj(&mut intent.runtime_config).insert("deploymentMode".into(), json!("Standard"));
            "traffic.canaryTrafficPercent"
        }
        3 => {
            let max = 1 + n64 % 10;
            let a = obj(&mut intent.autoscaling);
            a.insert("maxReplicas".into(), json!(max));
            a.insert("minReplicas".into(), json!(max + 1 + n64 % 5));
            "autoscaling.minReplicas"
        }
        4 => {
            obj(&mut intent.autoscaling).insert("minReplicas".into(), json!(-1 - n64 % 3));
            "autoscaling.minReplicas"
        }
        5 => {
            obj(&mut intent.runtime_config).insert("timeout".into(), json!(n64 as f64 + 0.5));
            "runtime_config.timeout"
        }
        6 => {
            obj(&mut intent.runtime_config)
                .insert("resources".into(), json!({"requests": {"cpu": "2 cores"}}));
            "runtime_config.resources.requests.cpu"
        }
        7 => {
            obj(&mut intent.runtime_config).insert(
                "resources".into(),
                json!({"limits": {"memory": format!("-{}Mi", 1 + n)}}),
            );
            "runtime_config.resources.limits.memory"
        }
        8 => {
            obj(&mut intent.runtime_config).insert("modelFormat".into(), json!(""));
            "runtime_config.modelFormat"
        }
        9 => {
            let bogus = ["caffe", "theano", "keras3", "scikit"];
            obj(&mut intent.runtime_config)
                .insert("modelFormat".into(), json!(bogus[n as usize % bogus.len()]));
            "runtime_config.modelFormat"
        }
        10 => {
            intent.artifact_uri = if n.is_multiple_of(2) {
                None
            } else {
                Some("  ".into())
            };
            "artifact_uri"
        }
        11 => {
            intent.model_version_id = None;
            "model_version_id"
        }
        12 => {
            intent.traffic =
                Some([json!([1]), json!("10"), json!(10), json!(true)][n as usize % 4].clone());
            "traffic"
        }
        13 => {
            intent.runtime_config = Some(json!(["gpu"]));
            "runtime_config"
        }
        14 => {
            let bogus = ["seldon", "torchserve", "", "kserve triton"];
            intent.runtime = Some(bogus[n as usize % bogus.len()].into());
            "runtime"
        }
        15 => {
            obj(&mut intent.runtime_config).remove("autoscalerClass");
            obj(&mut intent.runtime_config).remove("deploymentMode");
            obj(&mut intent.autoscaling).insert("keda".into(), json!(true));
            intent.traffic = Some(json!({"canaryTrafficPercent": n64 % 101}));
            "traffic.canaryTrafficPercent"
        }
        16 => {
            obj(&mut intent.runtime_config).insert("batcher".into(), json!({"maxBatchSize": 0}));
            "runtime_config.batcher.maxBatchSize"
        }
        17 => {
            obj(&mut intent.autoscaling).insert("scaleMetric".into(), json!("gpu"));
            "autoscaling.scaleMetric"
        }
        18 => {
            obj(&mut intent.runtime_config).insert("gpu".into(), json!("yes"));
            "runtime_config.gpu"
        }
        19 => {
            obj(&mut intent.autoscaling).insert("maxReplicas".into(), json!(0));
            "autoscaling.maxReplicas"
        }
        20 => {
            obj(&mut intent.autoscaling)
                .insert("minReplicas".into(), json!(i64::from(i32::MAX) + 1 + n64));
            "autoscaling.minReplicas"
        }
        21 => {
            intent.runtime = Some("kserve-triton".into());
            obj(&mut intent.runtime_config).insert("modelFormat".into(), json!("sklearn"));
            "runtime_config.modelFormat"
        }
        22 => {
            obj(&mut intent.runtime_config).insert("gpu".into(), json!(false));
            obj(&mut intent.runtime_config).insert(
                "resources".into(),
                json!({"requests": {"cpu": format!("{}", 2 + n % 8)}, "limits": {"cpu": "1"}}),
            );
            "runtime_config.resources.requests.cpu"
        }
        23 => {
            obj(&mut intent.runtime_config).insert("deploymentMode".into(), json!("ModelMesh"));
            "runtime_config.deploymentMode"
        }
        24 => {
            intent.generation = -1 - n64;
            "generation"
        }
        25 => {
            no_keda(intent);
            intent.traffic = None;
            obj(&mut intent.runtime_config).insert("deploymentMode".into(), json!("Knative"));
            obj(&mut intent.autoscaling).insert("scaleMetric".into(), json!("cpu"));
            "autoscaling.scaleMetric"
        }
        26 => {
            intent.traffic = None;
            obj(&mut intent.runtime_config).remove("autoscalerClass");
            obj(&mut intent.runtime_config).remove("deploymentMode");
            let a = obj(&mut intent.autoscaling);
            a.insert("keda".into(), json!(true));
            a.insert(
                "scaleMetric".into(),
                json!(if n.is_multiple_of(2) {
                    "rps"
                } else {
                    "concurrency"
                }),
            );
            "autoscaling.scaleMetric"
        }
        27 => {
            no_keda(intent);
            intent.traffic = None;
            obj(&mut intent.runtime_config).insert("deploymentMode".into(), json!("Standard"));
            let a = obj(&mut intent.autoscaling);
            a.insert("scaleMetric".into(), json!("cpu"));
            a.insert("scaleTarget".into(), json!(101 + n64 % 1000));
            "autoscaling.scaleTarget"
        }
        28 => {
            intent.traffic = None;
            obj(&mut intent.runtime_config).insert("deploymentMode".into(), json!("Standard"));
            let a = obj(&mut intent.autoscaling);
            a.insert("scaleMetric".into(), json!("memory"));
            a.remove("scaleTarget");
            "autoscaling.scaleTarget"
        }
        29 => {
            obj(&mut intent.autoscaling).insert("keda".into(), json!(false));
            obj(&mut intent.runtime_config).insert("autoscalerClass".into(), json!("keda"));
            "autoscaling.keda"
        }
        30 => {
            intent.runtime = Some("kserve-triton".into());
            let rc = obj(&mut intent.runtime_config);
            rc.remove("modelFormat");
            rc.insert(
                "protocolVersion".into(),
                json!(if n.is_multiple_of(2) { "v1" } else { "grpc-v1" }),
            );
            "runtime_config.protocolVersion"
        }
        31 => {
            let rc = obj(&mut intent.runtime_config);
            rc.insert("gpu".into(), json!(false));
            rc.insert(
                "resources".into(),
                json!({"limits": {"nvidia.com/gpu": "500m"}}),
            );
            "runtime_config.resources.limits.nvidia.com/gpu"
        }
        32 => {
            let rc = obj(&mut intent.runtime_config);
            rc.insert("gpu".into(), json!(false));
            rc.insert(
                "resources".into(),
                json!({"requests": {"nvidia.com/gpu": 1 + n % 4}}),
            );
            "runtime_config.resources.limits.nvidia.com/gpu"
        }
        33 => {
            obj(&mut intent.runtime_config)
                .insert("resources".into(), json!({"requests": {"CPU cores": "1"}}));
            "runtime_config.resources.requests.CPU cores"
        }
        34 => {
            obj(&mut intent.runtime_config)
                .insert("serviceAccountName".into(), json!("Model_Reader"));
            "runtime_config.serviceAccountName"
        }
        35 => {
            obj(&mut intent.runtime_config).insert("runtimeVersion".into(), json!("24.08 py3"));
            "runtime_config.runtimeVersion"
        }
        36 => {
            obj(&mut intent.runtime_config).insert("protocolVersion".into(), json!("v3"));
            "runtime_config.protocolVersion"
        }
        37 => {
            obj(&mut intent.runtime_config)
                .insert("enablePrometheusScraping".into(), json!("true"));
            "runtime_config.enablePrometheusScraping"
        }
        38 => {
            intent.artifact_uri = Some(format!("s3://bucket/model {n}"));
            "artifact_uri"
        }
        39 => {
            obj(&mut intent.runtime_config).insert("batcher".into(), json!(32));
            "runtime_config.batcher"
        }
        40 => {
            intent.autoscaling = Some(json!([{"minReplicas": 1}]));
            "autoscaling"
        }
        41 => {
            obj(&mut intent.runtime_config).insert("autoscalerClass".into(), json!("kpa"));
            "runtime_config.autoscalerClass"
        }
        42 => {
            obj(&mut intent.runtime_config).insert("timeout".into(), json!("60"));
            "runtime_config.timeout"
        }
        _ => {
            obj(&mut intent.runtime_config)
                .insert("resources".into(), json!({"limits": {"cpu": true}}));
            "runtime_config.resources.limits.cpu"
        }
    }
}

const BREAKAGES: usize = 44;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn invalid_intents_are_refused_naming_the_field(
        intent in valid_intent(),
        which in 0..BREAKAGES,
        n in any::<u32>(),
        opts in options(),
    ) {
        let mut bad = intent;
        let field = break_intent(&mut bad, which, n);
        match render(&bad, &opts) {
            Ok(_) => return Err(TestCaseError::fail(format!("breakage {which} ({field}) rendered: {bad:?}"))),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(
                    msg.starts_with(&format!("{field}:")),
                    "breakage {}: {:?} should name {}", which, msg, field
                );
                prop_assert_eq!(render_json(&bad, &opts), Err(e));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field injection: keys the mapping does not know never reach the manifest.

const KNOWN_RUNTIME_CONFIG: &[&str] = &[
    "modelFormat",
    "protocolVersion",
    "runtimeVersion",
    "resources",
    "gpu",
    "batcher",
    "timeout",
    "serviceAccountName",
    "deploymentMode",
    "autoscalerClass",
    "enablePrometheusScraping",
];
const KNOWN_AUTOSCALING: &[&str] = &[
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "keda",
];
const KNOWN_TRAFFIC: &[&str] = &["canaryTrafficPercent"];
const KNOWN_RESOURCES: &[&str] = &["requests", "limits"];
const KNOWN_BATCHER: &[&str] = &["maxBatchSize", "maxLatency", "timeout"];
const SENTINEL: &str = "INJECTED-7f3a";

fn injected_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(SENTINEL)),
        Just(json!({"image": SENTINEL, "command": ["sh", "-c", SENTINEL]})),
        Just(json!([{"name": SENTINEL, "value": SENTINEL}])),
        Just(json!({SENTINEL: true})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn unknown_keys_are_never_copied(
        intent in valid_intent(),
        injections in proptest::collection::vec((0u8..5, "[A-Za-z][A-Za-z0-9_.-]{0,15}", injected_value()), 1..6),
    ) {
        let clean = render_json(&intent, &opts()).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let mut dirty = intent.clone();
        for (target, key, value) in injections {
            let key = format!("{key}{SENTINEL}");
            let (map, known): (&mut Map<String, Value>, &[&str]) = match target {
                0 => (obj(&mut dirty.runtime_config), KNOWN_RUNTIME_CONFIG),
                1 => (obj(&mut dirty.autoscaling), KNOWN_AUTOSCALING),
                2 => (obj(&mut dirty.traffic), KNOWN_TRAFFIC),
                3 => match obj(&mut dirty.runtime_config).get_mut("resources") {
                    Some(Value::Object(m)) => (m, KNOWN_RESOURCES),
                    _ => continue,
                },
                _ => match obj(&mut dirty.runtime_config).get_mut("batcher") {
                    Some(Value::Object(m)) => (m, KNOWN_BATCHER),
                    _ => continue,
                },
            };
            prop_assert!(!known.contains(&key.as_str()));
            map.insert(key, value);
        }
        let out = render_json(&dirty, &opts()).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(!String::from_utf8_lossy(&out).contains(SENTINEL));
        prop_assert_eq!(out, clean);
    }
}

#[test]
fn container_level_keys_in_runtime_config_are_ignored() {
    let mut intent = example("triton-gpu-batcher");
    let rc = obj(&mut intent.runtime_config);
    for key in [
        "image",
        "command",
        "args",
        "env",
        "containers",
        "nodeSelector",
        "annotations",
        "labels",
        "securityContext",
        "hostNetwork",
    ] {
        rc.insert(key.into(), json!({"evil": SENTINEL}));
    }
    let out = render_json(&intent, &opts()).expect("renders");
    assert!(!String::from_utf8_lossy(&out).contains(SENTINEL));
    assert_eq!(
        out,
        render_json(&example("triton-gpu-batcher"), &opts()).expect("renders")
    );
}
