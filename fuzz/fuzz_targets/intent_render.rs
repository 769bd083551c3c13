//! Intent validation and both renderers: any intent is either refused with a reason or
//! rendered, `render_json`'s bytes are exactly `serde_json::to_vec` of the typed `render`, both
//! refuse with the same error, and nothing panics.
//!
//! The first byte picks the input: raw bytes parsed as an intent file, or an intent built from
//! the bytes with the keys and values the mapping reads (so the fuzzer reaches deep rules
//! quickly). The second picks the render settings (defaults, no default resources, an open
//! tenant policy, legacy mode names).
#![no_main]

use deploy_worker::intent::{DefaultResources, Intent};
use deploy_worker::kserve::{ModeNames, RenderOptions, render, render_json};
use deploy_worker::policy::TenantPolicy;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use uuid::Uuid;

const KEYS: &[&str] = &[
    "canaryTrafficPercent",
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "keda",
    "modelFormat",
    "protocolVersion",
    "runtimeVersion",
    "resources",
    "requests",
    "limits",
    "gpu",
    "batcher",
    "maxBatchSize",
    "maxLatency",
    "timeout",
    "serviceAccountName",
    "deploymentMode",
    "autoscalerClass",
    "enablePrometheusScraping",
    "cpu",
    "memory",
    "nvidia.com/gpu",
    "ephemeral-storage",
];

const STRINGS: &[&str] = &[
    "",
    "500m",
    "2",
    "4Gi",
    "1e3",
    "-1",
    "0.5",
    "1Ki",
    "Knative",
    "Standard",
    "Serverless",
    "RawDeployment",
    "keda",
    "hpa",
    "cpu",
    "memory",
    "concurrency",
    "rps",
    "v1",
    "v2",
    "grpc-v2",
    "triton",
    "sklearn",
    "onnx",
    "pytorch",
    "24.08-py3",
    "default",
    "model-reader",
    "Ü",
    "\"\\",
];

fn string(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(3, 4)? {
        Ok((*u.choose(STRINGS)?).to_owned())
    } else {
        u.arbitrary()
    }
}

fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    Ok(match u.int_in_range(0..=9)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(u.int_in_range(-3i64..=200)?),
        3 => Value::from(u.arbitrary::<i64>()?),
        4 => serde_json::Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        5 => Value::from(u.arbitrary::<u64>()?),
        6 | 7 => Value::String(string(u)?),
        8 if depth > 0 => Value::Array(
            (0..u.int_in_range(0..=3)?)
                .map(|_| value(u, depth - 1))
                .collect::<Result<_>>()?,
        ),
        _ if depth > 0 => Value::Object(object(u, depth - 1)?),
        _ => Value::Null,
    })
}

fn object(u: &mut Unstructured<'_>, depth: u32) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let key = if u.ratio(7, 8)? {
            (*u.choose(KEYS)?).to_owned()
        } else {
            u.arbitrary()?
        };
        map.insert(key, value(u, depth)?);
    }
    Ok(map)
}

fn optional(u: &mut Unstructured<'_>) -> Result<Option<Value>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => None,
        1 => Some(Value::Null),
        2 => Some(value(u, 2)?),
        _ => Some(Value::Object(object(u, 3)?)),
    })
}

fn structured(u: &mut Unstructured<'_>) -> Result<Intent> {
    let id = |u: &mut Unstructured<'_>| -> Result<Uuid> { Ok(Uuid::from_u128(u.arbitrary()?)) };
    let runtimes = ["kserve", "kserve-triton", "triton", "KServe", "seldon", ""];
    let schemes = [
        "s3://b/",
        "gs://b/",
        "hf://",
        "pvc://",
        "file://",
        "https://h/",
        "",
    ];
    Ok(Intent {
        endpoint_id: id(u)?,
        tenant_id: id(u)?,
        project_id: id(u)?,
        name: u.arbitrary()?,
        runtime: if u.arbitrary()? {
            Some((*u.choose(&runtimes)?).to_owned())
        } else {
            u.arbitrary()?
        },
        model_id: None,
        model_version_id: if u.ratio(7, 8)? { Some(id(u)?) } else { None },
        artifact_uri: if u.ratio(7, 8)? {
            Some(format!("{}{}", u.choose(&schemes)?, u.arbitrary::<&str>()?))
        } else {
            None
        },
        traffic: optional(u)?,
        autoscaling: optional(u)?,
        runtime_config: optional(u)?,
        generation: u.int_in_range(-1..=i64::MAX)?,
    })
}

fn options(choice: u8) -> RenderOptions {
    let mut opts = RenderOptions::default();
    if choice & 1 != 0 {
        opts.default_resources = DefaultResources::NONE;
    }
    if choice & 2 != 0 {
        opts.policy = TenantPolicy {
            storage_schemes: "s3,gs,https,hf,pvc,file".parse().expect("schemes"),
            service_accounts: "*".parse().expect("rule"),
        };
    }
    if choice & 4 != 0 {
        opts.mode_names = ModeNames::Legacy;
    }
    opts
}

fuzz_target!(|data: &[u8]| {
    let [mode, settings, rest @ ..] = data else {
        return;
    };
    let intent = if mode & 1 == 0 {
        match Intent::from_json(rest) {
            Ok(intent) => intent,
            Err(_) => return,
        }
    } else {
        match structured(&mut Unstructured::new(rest)) {
            Ok(intent) => intent,
            Err(_) => return,
        }
    };
    let opts = options(*settings);
    match (render(&intent, &opts), render_json(&intent, &opts)) {
        (Ok(typed), Ok(bytes)) => {
            assert_eq!(bytes, serde_json::to_vec(&typed).expect("serializes"));
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            assert!(a.to_string().contains(':'), "a reason names its field: {a}");
        }
        (typed, bytes) => panic!("the renderers disagree: {typed:?} / {bytes:?}"),
    }
});
