//! Rendering: an intent, validated with the worker's defaults and the tenant policy, becomes
//! the typed manifest ([`render`]) or its JSON bytes ([`render_json`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::intent::{Autoscaler, Intent, IntentError, ResourceIter, ServingSpec};

use super::*;

/// Renders the typed InferenceService for an intent.
pub fn render(intent: &Intent, opts: &RenderOptions) -> Result<InferenceService, IntentError> {
    let spec = validate(intent, opts)?;
    Ok(build(intent, &spec, opts))
}

/// Checks an intent exactly as [`render`] does (validation with the worker's defaults, then the
/// tenant policy) without building the manifest: what a deployer that applies nothing needs.
pub fn check(intent: &Intent, opts: &RenderOptions) -> Result<(), IntentError> {
    validate(intent, opts).map(drop)
}

/// What both renderers render: the intent validated with the worker's default resources, then
/// checked against the tenant policy.
pub(super) fn validate<'a>(
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
pub(super) fn size_hint(spec: &ServingSpec<'_>, opts: &RenderOptions) -> usize {
    let resources = spec.resources.as_ref().map_or(0, |r| r.max_entries() * 40);
    768 + opts.namespace.len()
        + opts.name_prefix.len()
        + spec.storage_uri.len()
        + spec.runtime_version.map_or(0, str::len)
        + spec.service_account_name.map_or(0, str::len)
        + resources
}

/// Annotation values, shared by both renderers so they cannot disagree.
pub(super) struct Annotations {
    pub(super) autoscaler_class: Option<&'static str>,
    pub(super) deployment_mode: Option<&'static str>,
    pub(super) prometheus_scraping: &'static str,
}

pub(super) fn annotations(spec: &ServingSpec<'_>, opts: &RenderOptions) -> Annotations {
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

pub(super) fn keda_metrics(metric: ResourceMetricName, target: i32) -> MetricSpec {
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

pub(super) fn owned_list(list: ResourceIter<'_>) -> Option<BTreeMap<String, Quantity>> {
    let map: BTreeMap<String, Quantity> = list
        .map(|(name, q)| (name.to_owned(), Quantity(q.to_string())))
        .collect();
    (!map.is_empty()).then_some(map)
}

pub(super) fn build(
    intent: &Intent,
    spec: &ServingSpec<'_>,
    opts: &RenderOptions,
) -> InferenceService {
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
