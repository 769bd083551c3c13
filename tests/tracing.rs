//! Traces through the SDK's in-memory exporter: the span tree of a deploy, its attributes, the
//! publisher's `traceparent` as parent, errors on spans, coalesced passes with links, and the
//! trace id in `deployment_history`. Real Postgres and NATS; the worker runs in-process.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Env, publisher_context};
use deploy_worker::kserve;
use deploy_worker::telemetry::{self, LogFormat};
use deploy_worker::worker::Worker;
use devkit::platform::{self, NewModelVersion, ServingPatch};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

/// One exporter for the whole test binary: the subscriber is process-global, so every test
/// filters the spans of its own traces.
fn exporter() -> InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let subscriber = telemetry::subscriber(
                LogFormat::Compact,
                &provider,
                tracing_subscriber::fmt::TestWriter::new(),
            );
            tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
            exporter
        })
        .clone()
}

fn spans_of(exporter: &InMemorySpanExporter, trace_id: TraceId) -> Vec<SpanData> {
    exporter
        .get_finished_spans()
        .expect("finished spans")
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .collect()
}

/// Waits until the trace has every span in `names` (spans export when they close).
async fn wait_spans(
    exporter: &InMemorySpanExporter,
    trace_id: TraceId,
    names: &[&str],
) -> Vec<SpanData> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = spans_of(exporter, trace_id);
        if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} lacks some of {names:?}; has {:?}",
            spans.iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "expected one {name} span, got {found:#?}");
    found[0]
}

fn children(spans: &[SpanData], parent: SpanId) -> Vec<&str> {
    let mut names: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent)
        .map(|s| s.name.as_ref())
        .collect();
    names.sort_unstable();
    names
}

async fn start(delay_ms: u64) -> (Env, Worker) {
    exporter();
    let env = Env::start().await;
    let mut settings = common::settings_for(&env.pg, &env.nats);
    settings.simulate_delay_ms = delay_ms;
    let worker = Worker::start(&settings).await.expect("worker starts");
    (env, worker)
}

#[actix_rt::test]
async fn a_deploy_is_one_trace_from_the_publisher_to_persist() {
    let exporter = exporter();
    let (env, worker) = start(20).await;
    let endpoint = env.create_endpoint(Some("gs://models/fraud/1")).await;
    let (cx, trace_id, publisher_span) = publisher_context();
    env.publish_traced(&endpoint, &cx).await;
    env.wait_status(endpoint.id, "READY").await;

    let spans = wait_spans(&exporter, trace_id, &common::DEPLOY_SPANS).await;
    // The publisher's span is the parent of the worker's first span.
    let receive = one(&spans, "receive");
    assert_eq!(receive.parent_span_id, publisher_span);
    assert!(receive.parent_span_is_remote);
    assert_eq!(receive.span_kind, SpanKind::Consumer);
    // accept fast: the message is acked once its request is recorded; the pass continues the
    // trace as the receive span's child
    assert_eq!(attr(receive, "outcome").as_deref(), Some("accepted"));
    assert_eq!(attr(receive, "answer").as_deref(), Some("ack"));
    assert_eq!(
        attr(receive, "messaging.destination.name").as_deref(),
        Some("mlops.serving.deploy_requested")
    );

    // The tree: receive → pass → steps; deploy → apply, wait_ready.
    let pass = one(&spans, "pass");
    assert_eq!(pass.parent_span_id, receive.span_context.span_id());
    assert_eq!(
        children(&spans, pass.span_context.span_id()),
        vec!["deploy", "load_intent", "persist", "persist", "render"]
    );
    let deploy = one(&spans, "deploy");
    assert_eq!(
        children(&spans, deploy.span_context.span_id()),
        vec!["apply", "wait_ready"]
    );
    // The simulated readiness delay is inside wait_ready.
    let wait = one(&spans, "wait_ready");
    let waited = wait
        .end_time
        .duration_since(wait.start_time)
        .unwrap_or_default();
    assert!(
        waited >= Duration::from_millis(20),
        "wait_ready lasted {waited:?}"
    );

    // Every span of the pass carries the same labels.
    let isvc = kserve::isvc_name("isvc", endpoint.id);
    for span in spans.iter().filter(|s| s.name != "receive") {
        let what = &span.name;
        assert_eq!(
            attr(span, "tenant_id"),
            Some(endpoint.tenant_id.to_string()),
            "{what}"
        );
        assert_eq!(
            attr(span, "project_id"),
            Some(endpoint.project_id.to_string()),
            "{what}"
        );
        assert_eq!(
            attr(span, "endpoint_id"),
            Some(endpoint.id.to_string()),
            "{what}"
        );
        assert_eq!(attr(span, "isvc_name"), Some(isvc.clone()), "{what}");
        assert_eq!(attr(span, "generation").as_deref(), Some("1"), "{what}");
        assert!(attr(span, "outcome").is_some(), "{what} has no outcome");
        assert_eq!(span.status, Status::Unset, "{what}");
    }
    for (name, outcome) in [
        ("pass", "ready"),
        ("load_intent", "found"),
        ("render", "rendered"),
        ("deploy", "ready"),
        ("apply", "applied"),
        ("wait_ready", "ready"),
    ] {
        assert_eq!(
            attr(one(&spans, name), "outcome").as_deref(),
            Some(outcome),
            "{name}"
        );
    }
    let mut persisted: Vec<String> = named(&spans, "persist")
        .iter()
        .filter_map(|s| attr(s, "outcome"))
        .collect();
    persisted.sort();
    assert_eq!(persisted, vec!["deploying", "ready"]);
    assert_eq!(attr(receive, "endpoint_id"), Some(endpoint.id.to_string()));
    assert_eq!(
        attr(receive, "tenant_id"),
        Some(endpoint.tenant_id.to_string())
    );
    assert_eq!(attr(receive, "isvc_name"), Some(isvc));

    // The trace id is stored with the outcome.
    let rows = env.history_outcomes(endpoint.id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, "ready");
    assert_eq!(rows[0].2, Some(trace_id.to_string()));

    worker.shutdown().await.expect("shutdown");
}

#[actix_rt::test]
async fn an_invalid_intent_marks_its_spans_as_errors() {
    let exporter = exporter();
    let (env, worker) = start(0).await;
    // A model version whose upload never finished: no artifact to serve.
    let endpoint = env.create_endpoint(None).await;
    let (cx, trace_id, _) = publisher_context();
    env.publish_traced(&endpoint, &cx).await;
    env.wait_status(endpoint.id, "ERROR").await;

    let spans = wait_spans(
        &exporter,
        trace_id,
        &["receive", "pass", "render", "persist"],
    )
    .await;
    let render = one(&spans, "render");
    assert_eq!(attr(render, "outcome").as_deref(), Some("invalid"));
    let error = attr(render, "error").expect("render has an error attribute");
    assert!(error.contains("artifact"), "{error}");
    assert!(
        matches!(&render.status, Status::Error { description } if description.contains("artifact")),
        "{:?}",
        render.status
    );
    let pass = one(&spans, "pass");
    assert!(
        matches!(pass.status, Status::Error { .. }),
        "{:?}",
        pass.status
    );
    assert_eq!(attr(pass, "outcome").as_deref(), Some("error"));
    assert!(
        named(&spans, "deploy").is_empty(),
        "an invalid intent is never deployed"
    );
    // the event itself was fine: it was accepted and acked; the intent it named ends ERROR
    let receive = one(&spans, "receive");
    assert_eq!(attr(receive, "answer").as_deref(), Some("ack"));
    assert_eq!(
        env.history_outcomes(endpoint.id).await,
        vec![(1, "error".to_owned(), Some(trace_id.to_string()))]
    );
    worker.shutdown().await.expect("shutdown");
}

#[actix_rt::test]
async fn a_coalesced_pass_joins_the_newest_trace_and_links_the_others() {
    let exporter = exporter();
    let (env, worker) = start(3000).await;
    let endpoint = env.create_endpoint(Some("gs://models/fraud/1")).await;
    let (first, first_trace, _) = publisher_context();
    env.publish_traced(&endpoint, &first).await;
    // While the first deploy waits for Ready, the intent changes twice over two events.
    env.wait_status(endpoint.id, "DEPLOYING").await;
    let v2 = platform::create_model_version(
        &env.db,
        &NewModelVersion {
            tenant_id: endpoint.tenant_id,
            project_id: endpoint.project_id,
            model_name: "fraud".into(),
            version: 2,
            artifact_uri: Some("gs://models/fraud/2".into()),
        },
    )
    .await
    .expect("v2");
    platform::patch_endpoint(
        &env.db,
        endpoint.id,
        ServingPatch {
            model: Some(v2),
            ..Default::default()
        },
    )
    .await
    .expect("patch");
    // Both events must be recorded before the first pass ends, or the second pass could
    // start between them and cover one each (correct, but not the coalescing this test is
    // about): the first pass's ending is held back until its request counts all three.
    let hold = env.hold_outcomes().await;
    let (second, second_trace, _) = publisher_context();
    let (third, third_trace, _) = publisher_context();
    env.publish_traced(&endpoint, &second).await;
    env.publish_traced(&endpoint, &third).await;
    common::wait_for(
        "the request to record both events",
        Duration::from_secs(10),
        || async { env.request_events(endpoint.id).await == Some(3) },
    )
    .await;
    hold.commit().await.expect("let the first pass end");

    let deadline = Instant::now() + Duration::from_secs(30);
    while !env
        .history_outcomes(endpoint.id)
        .await
        .iter()
        .any(|(generation, outcome, _)| *generation == 2 && outcome == "ready")
    {
        assert!(Instant::now() < deadline, "generation 2 never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = env.history_outcomes(endpoint.id).await;
    assert_eq!(
        rows,
        vec![
            (1, "superseded".to_owned(), Some(first_trace.to_string())),
            (2, "ready".to_owned(), Some(third_trace.to_string())),
        ],
        "the second pass covers both events and belongs to the newest one's trace"
    );

    let third_spans = wait_spans(&exporter, third_trace, &["receive", "pass", "persist"]).await;
    let pass = one(&third_spans, "pass");
    assert_eq!(attr(pass, "events").as_deref(), Some("2"));
    let second_spans = wait_spans(&exporter, second_trace, &["receive"]).await;
    let second_receive = one(&second_spans, "receive");
    assert!(
        named(&second_spans, "pass").is_empty(),
        "no pass of its own"
    );
    assert_eq!(attr(second_receive, "outcome").as_deref(), Some("accepted"));
    let linked: Vec<_> = pass.links.iter().map(|l| l.span_context.clone()).collect();
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(linked[0].trace_id(), second_trace);
    assert_eq!(linked[0].span_id(), second_receive.span_context.span_id());
    worker.shutdown().await.expect("shutdown");
}
