//! Logs a person can read. A line logged inside a pass sits in several spans that all declare
//! the endpoint's fields; it must still carry each field once, in both formats, through the
//! production subscriber (redacting writer included). Real Postgres and NATS; the worker
//! in-process. (That the demo's own output is its progress and summary is proven beside the
//! demo, in the devkit crate's `tests/demo.rs`.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Capture, Env, publisher_context, wait_for};
use deploy_worker::telemetry::{self, LogFormat};
use deploy_worker::worker::Worker;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The `name=value` field names of a compact line, in order (values of this line have no
/// spaces: ids, numbers, short quoted words).
fn compact_field_names(line: &str) -> Vec<String> {
    line.split_whitespace()
        .filter_map(|token| token.split_once('='))
        .map(|(name, _)| name.to_owned())
        .collect()
}

fn repeated(names: &[String]) -> Vec<&String> {
    let mut seen = BTreeSet::new();
    names.iter().filter(|name| !seen.insert(*name)).collect()
}

#[actix_rt::test]
async fn a_line_logged_inside_a_pass_names_each_field_once() {
    let (compact, json) = (Capture::default(), Capture::default());
    let provider = SdkTracerProvider::builder().build();
    tracing::subscriber::set_global_default(telemetry::subscriber_with_logs(
        &provider,
        vec![
            (LogFormat::Compact, compact.clone()),
            (LogFormat::Json, json.clone()),
        ],
        // the line per committed outcome is a DEBUG line
        "info,deploy_worker::pass=debug",
    ))
    .expect("the only subscriber of this test binary");

    let env = Env::start().await;
    let worker = Worker::start(&env.settings()).await.expect("worker");
    let endpoint = env.create_endpoint(Some("gs://models/fraud/1")).await;
    let (cx, trace_id, _) = publisher_context();
    env.publish_traced(&endpoint, &cx).await;
    let id = endpoint.id.to_string();
    let committed = |text: String| {
        text.lines()
            .find(|line| line.contains("outcome committed") && line.contains(&id))
            .map(str::to_owned)
    };
    wait_for(
        "the committed outcome in both logs",
        Duration::from_secs(30),
        || {
            let found = committed(compact.text()).is_some() && committed(json.text()).is_some();
            async move { found }
        },
    )
    .await;
    worker.shutdown().await.expect("shutdown");

    // compact: logged inside the pass's spans, yet every name once
    let line = committed(compact.text()).expect("compact line");
    assert!(line.contains(" pass: "), "not inside a pass: {line}");
    let names = compact_field_names(&line);
    assert!(repeated(&names).is_empty(), "repeated fields: {line}");
    for (name, value) in [
        ("endpoint_id", id.clone()),
        ("trace_id", format!("\"{trace_id}\"")),
        ("tenant_id", endpoint.tenant_id.to_string()),
        ("generation", "1".to_owned()),
        ("outcome", "\"ready\"".to_owned()),
    ] {
        assert!(
            line.contains(&format!(" {name}={value}")),
            "{name} missing: {line}"
        );
    }

    // JSON: one flat object; its text names every key once too (a JSON object can hold a
    // key twice in text, so the raw line is checked, not the parsed map)
    let line = committed(json.text()).expect("JSON line");
    let value: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    let object = value.as_object().expect("an object");
    let spans = object["spans"].as_array().expect("spans");
    assert!(
        spans.iter().any(|s| s == "pass"),
        "not inside a pass: {line}"
    );
    let mut keys = Vec::new();
    for (key, nested) in object {
        keys.push(key.clone());
        assert!(!nested.is_object(), "{key} nests fields: {line}");
    }
    let in_text = keys
        .iter()
        .map(|key| line.matches(&format!("\"{key}\":")).count())
        .collect::<Vec<_>>();
    assert!(in_text.iter().all(|n| *n == 1), "repeated keys: {line}");
    assert_eq!(object["endpoint_id"], id.as_str(), "{line}");
    assert_eq!(object["trace_id"], trace_id.to_string(), "{line}");
    assert_eq!(
        object["tenant_id"],
        endpoint.tenant_id.to_string(),
        "{line}"
    );
    assert_eq!(object["outcome"], "ready", "{line}");
    assert_eq!(object["span_id"].as_str().map(str::len), Some(16), "{line}");
}
