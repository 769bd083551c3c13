//! The KServe stand-in's request parsing: label and field selectors, body decoding (JSON, and
//! YAML for apply patches), JSON merge patch and JSON patch application, and `managedFields`
//! (`fieldsV1`) parsing. Any input is either refused with an API error or handled; never a
//! panic.
//!
//! Input layout: `label selector \0 field selector \0 body`.
#![no_main]

use kserve_sim::api::decode;
use kserve_sim::fieldset::FieldSet;
use kserve_sim::patch::{json_patch, merge_patch};
use kserve_sim::selector::Selectors;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let label = parts.next().map(String::from_utf8_lossy);
    let field = parts.next().map(String::from_utf8_lossy);
    let body = parts.next().unwrap_or_default();
    let object = json!({
        "metadata": {
            "name": "isvc-1",
            "namespace": "mlops-serving",
            "labels": {"app": "x", "tier": "7", "mlops.platform/endpoint-id": "e"},
        },
        "spec": {"predictor": {"minReplicas": 1, "model": {"storageUri": "s3://b/m"}}},
    });
    if let Ok(selectors) = Selectors::parse(label.as_deref(), field.as_deref()) {
        let _ = selectors.matches(&object);
    }
    for content_type in ["application/json", "application/apply-patch+yaml"] {
        let Ok(patch) = decode(body, content_type) else {
            continue;
        };
        let mut merged = object.clone();
        merge_patch(&mut merged, &patch);
        let mut patched = object.clone();
        if json_patch(&mut patched, &patch).is_err() {
            // all or nothing: a failed patch leaves the document as it was
            assert_eq!(patched, object);
        }
        let set = FieldSet::from_fields_v1(&patch);
        // what is rendered parses back to the same set
        assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()), set);
    }
});
