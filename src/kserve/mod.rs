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
//!
//! One concern per file: `naming` (names, labels, annotations), `options` (the render
//! settings), `crd` (the typed InferenceService and its status), `render` (intent to
//! manifest) and `json` (the byte-path writer). Everything public is re-exported here.

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

mod crd;
mod json;
mod naming;
mod options;
mod render;

pub use crd::*;
use json::*;
pub use naming::*;
pub use options::*;
pub use render::*;

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::intent::DeploymentMode;

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
