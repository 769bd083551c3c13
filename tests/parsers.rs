//! Property tests over the entry points the fuzz targets (`fuzz/`) exercise, so CI covers them
//! on every run: the event decoder, intent validation with both renderers, and the KServe
//! stand-in's request parsing (selectors, body decoding, patches, `fieldsV1`). Whatever the input,
//! each either succeeds or refuses with an error — never a panic — and the renderers agree.
//! Inputs the fuzzers found problems with are kept below as regression tests.

use deploy_worker::events::{MAX_EVENT_BYTES, ServingEvent};
use deploy_worker::intent::{DefaultResources, Intent};
use deploy_worker::kserve::{RenderOptions, render, render_json};
use kserve_sim::api::decode;
use kserve_sim::fieldset::FieldSet;
use kserve_sim::patch::{json_patch, merge_patch};
use kserve_sim::selector::Selectors;
use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

/// JSON values biased towards the keys and values the code under test reads.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        3 => prop::sample::select(vec![
            "endpoint_id", "tenant_id", "project_id", "canaryTrafficPercent", "minReplicas",
            "maxReplicas", "scaleMetric", "scaleTarget", "keda", "modelFormat", "protocolVersion",
            "runtimeVersion", "resources", "requests", "limits", "gpu", "batcher", "timeout",
            "serviceAccountName", "deploymentMode", "autoscalerClass", "cpu", "memory",
            "nvidia.com/gpu", "op", "path", "value", "from", "f:metadata", "f:spec", "k:{\"a\":1}",
            ".",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-5i64..300).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "500m",
            "2Gi",
            "1e3",
            "-1",
            "Knative",
            "Standard",
            "keda",
            "cpu",
            "rps",
            "v2",
            "triton",
            "add",
            "remove",
            "replace",
            "move",
            "copy",
            "test",
            "/spec",
            "/a/0",
            "/-",
            "6d0c5e8e-5f0e-4f4e-9d2b-3f1f0c1a2b3c",
        ])
        .prop_map(Value::from),
        ".{0,10}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_decoder_decodes_or_refuses_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        match ServingEvent::decode(&bytes) {
            Ok(_) => prop_assert!(bytes.len() <= MAX_EVENT_BYTES),
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }

    #[test]
    fn the_decoder_reads_endpoint_id_from_any_object(value in json_value(), id in any::<u128>()) {
        let id = Uuid::from_u128(id);
        let mut object = match value {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        object.insert("endpoint_id".into(), Value::from(id.to_string()));
        let bytes = serde_json::to_vec(&object).expect("serializes");
        match ServingEvent::decode(&bytes) {
            Ok(event) => prop_assert_eq!(event.endpoint_id, id),
            // other known fields of the wrong type are refused, with a reason
            Err(err) => prop_assert!(err.to_string().contains("not a valid serving event")),
        }
    }

    #[test]
    fn any_intent_renders_the_same_with_both_renderers_or_neither(
        traffic in prop::option::of(json_value()),
        autoscaling in prop::option::of(json_value()),
        runtime_config in prop::option::of(json_value()),
        runtime in prop::option::of(prop::sample::select(vec!["kserve", "kserve-triton", "seldon", ""])),
        uri in prop::option::of("(s3|gs|pvc|hf|file)://[a-z\"\\\\ ]{0,8}"),
        defaults in any::<bool>(),
    ) {
        let intent = Intent {
            endpoint_id: Uuid::new_v4(),
            tenant_id: Uuid::new_v4(),
            project_id: Uuid::new_v4(),
            name: "any".into(),
            runtime: runtime.map(str::to_owned),
            model_id: None,
            model_version_id: Some(Uuid::new_v4()),
            artifact_uri: uri,
            traffic,
            autoscaling,
            runtime_config,
            generation: 1,
        };
        let mut opts = RenderOptions::default();
        if !defaults {
            opts.default_resources = DefaultResources::NONE;
        }
        match (render(&intent, &opts), render_json(&intent, &opts)) {
            (Ok(typed), Ok(bytes)) => {
                prop_assert_eq!(bytes, serde_json::to_vec(&typed).expect("serializes"));
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "renderers disagree: {:?} / {:?}", a, b),
        }
    }

    #[test]
    fn any_selector_parses_or_is_a_400(label in ".{0,40}", field in ".{0,40}") {
        match Selectors::parse(Some(&label), Some(&field)) {
            Ok(selectors) => {
                let _ = selectors.matches(&json!({"metadata": {"name": "n", "labels": {"a": "1"}}}));
            }
            Err(err) => prop_assert_eq!(err.code, 400),
        }
    }

    #[test]
    fn well_formed_label_selectors_parse(
        terms in prop::collection::vec(
            (
                "[a-z]([a-z0-9.-]{0,8}[a-z0-9])?(/[a-z][a-z0-9]{0,6})?",
                prop::sample::select(vec!["=", "==", "!=", " in ", " notin ", "", "!"]),
                prop::collection::vec("[a-z0-9]{1,6}", 1..3),
            ),
            1..4,
        ),
    ) {
        let text = terms
            .iter()
            .map(|(key, op, values)| match *op {
                "" => key.clone(),
                "!" => format!("!{key}"),
                " in " | " notin " => format!("{key}{op}({})", values.join(",")),
                _ => format!("{key}{op}{}", values[0]),
            })
            .collect::<Vec<_>>()
            .join(",");
        prop_assert!(Selectors::parse(Some(&text), None).is_ok(), "{}", text);
    }

    #[test]
    fn any_body_decodes_and_patches_or_is_refused(body in prop::collection::vec(any::<u8>(), 0..128), patch in json_value()) {
        for content_type in ["application/json", "application/apply-patch+yaml"] {
            if let Ok(value) = decode(&body, content_type) {
                let _ = FieldSet::from_fields_v1(&value);
            }
        }
        let object = json!({"metadata": {"name": "n"}, "spec": {"a": [1, 2]}});
        let mut merged = object.clone();
        merge_patch(&mut merged, &patch);
        let mut patched = object.clone();
        if json_patch(&mut patched, &patch).is_err() {
            prop_assert_eq!(&patched, &object);
        }
        let set = FieldSet::from_fields_v1(&patch);
        prop_assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()), set);
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: inputs the fuzz targets and the properties above found problems with.

/// `fieldsV1` with `"."` at the root made the whole object a member, which the stand-in then
/// could not write back (the API server never tracks the root).
#[test]
fn a_root_dot_in_fields_v1_is_not_a_member() {
    let set = FieldSet::from_fields_v1(&json!({".": {}, "f:spec": {}}));
    assert_eq!(set.to_fields_v1(), json!({"f:spec": {}}));
    assert!(FieldSet::from_fields_v1(&json!({".": null})).is_empty());
}

/// A member that is also the parent of members lost its own membership when written back.
#[test]
fn a_member_with_members_below_it_round_trips() {
    let fields = json!({"f:spec": {".": {}, "f:predictor": {}}});
    let set = FieldSet::from_fields_v1(&fields);
    assert_eq!(set.iter().count(), 2);
    assert_eq!(set.to_fields_v1(), fields);
    assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()), set);
}
