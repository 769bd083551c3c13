//! Telemetry: structured logs, OpenTelemetry traces and W3C trace-context propagation.
//!
//! **One trace per event** (ARCHITECTURE.md, "The event path"). The platform's API publishes each
//! serving event with W3C `traceparent`/`tracestate` NATS headers; the supervisor extracts them
//! ([`extract_context`]) and opens a `receive` span whose parent is the publisher's span
//! ([`receive_span`]). A pass over an endpoint is a child of the receive span of the newest
//! delivery it covers, with span links to the other deliveries it coalesced, and has one child per
//! step ([`Step`]): `load_intent`, `render`, `deploy` (with `apply` and `wait_ready`, made by
//! the deployers through `deployer::deploy_step_span`) and `persist` (the group-commit wait).
//! Every step carries the same attributes, recorded as they become known ([`SpanLabels`]): `tenant_id`,
//! `project_id`, `endpoint_id`, `isvc_name`, `generation` and `outcome`; failures set the span's
//! status to error and its `error` attribute ([`record_error`]).
//!
//! **Export** is configured only by the standard `OTEL_*` variables ([`ExportConfig`]) and is
//! off unless an OTLP endpoint is set. Without it the event path makes no spans (see
//! [`spans_exported`]), yet trace ids keep flowing from the publisher into the logs (a pass's
//! log context, `pass_log`) and into `deployment_history.trace_id`, so a rollout can be
//! correlated with the platform's own trace even without a collector. The OTLP
//! exporter is async (reqwest for `http/protobuf`, tonic for `grpc`), so the batch processor
//! runs as a task on the worker's tokio runtime: [`init`] must be called inside it, and
//! [`Telemetry::shutdown`] flushes what is buffered before the process exits.
//!
//! **Logs** go to stderr, `compact` (one line per event) or `json` (one object per line, with
//! `trace_id` and `span_id`), filtered by `RUST_LOG` (default `info`; the demo's is `warn`).
//! A line carries each field once: the event's own fields, then for each other name the value
//! of the innermost enclosing span that has it — the spans of a pass all declare `endpoint_id`,
//! `trace_id`, … and a line that printed every span's fields would repeat them. The `RUST_LOG`
//! filter applies to logs only; the trace layer always sees the worker's own spans, so
//! quieting the logs never breaks traces.
//!
//! **Redaction.** Known secrets — passwords and tokens in `DATABASE_URL`/`NATS_URL` (in the
//! userinfo or as `password`/`sslpassword`/`…token…` query parameters), OTLP header values, the
//! credentials of the kubeconfig the k8s deployer loads — are registered process-wide
//! ([`register_secrets`]) and replaced by `[redacted]` wherever output leaves the process: every
//! log line (both formats, library lines included), every exported span (attributes, events,
//! status; [`RedactingExporter`], and [`record_error`] before recording), `/readyz` bodies, and
//! the reasons and payloads written to Postgres ([`redact`]). A last line of defence: nothing in
//! the worker outputs them on purpose.
//!
//! One concern per file: `export` (the `OTEL_*` settings and the tracer provider),
//! `redaction`, `setup` (installing the subscriber, flushing at exit), `propagation` (W3C
//! headers on NATS messages), `spans` (the event path's spans), `pass_log` (a pass's log
//! context when it has no span) and `log_layer` (the line format). Everything public is
//! re-exported here, so callers say `telemetry::…`.

mod export;
mod log_layer;
mod pass_log;
mod propagation;
mod redaction;
mod setup;
mod spans;

pub use export::*;
use log_layer::*;
pub use propagation::*;
pub use redaction::*;
pub use setup::*;
pub use spans::*;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event: time, level, the spans in scope, target, message,
    /// then `name=value` for each field once (the enclosing spans' fields, `trace_id` among
    /// them, after the event's own).
    #[default]
    Compact,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, `spans`,
    /// `span_id`, `trace_id` and each field once, all at the top level.
    Json,
}

/// Telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable has a value the worker does not support.
    #[error("{variable}={value:?} is not supported: {hint}")]
    Unsupported {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What to set instead.
        hint: &'static str,
    },
    /// The OTLP exporter could not be built.
    #[error(
        "cannot build the OTLP trace exporter: {0}; check OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_PROTOCOL"
    )]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// The HTTP client of the OTLP exporter could not be built.
    #[error(
        "cannot build the OTLP trace exporter: {0}; check OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_PROTOCOL"
    )]
    ExporterClient(#[source] crate::tls::TlsError),
    /// Export needs a tokio runtime for its batch task.
    #[error("trace export needs a tokio runtime; call telemetry::init inside one")]
    NoRuntime,
    /// A global subscriber was installed already.
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
    /// Flushing or shutting the exporter down failed.
    #[error("flushing traces failed: {0}; spans still buffered were lost")]
    Shutdown(String),
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};
    use std::time::Duration;

    use async_nats::HeaderMap;
    use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{EnvFilter, Layer, Registry};

    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    /// The export configuration for exactly these variables.
    fn export_config(pairs: &[(&str, &str)]) -> Result<ExportConfig, TelemetryError> {
        ExportConfig::from_lookup(env(pairs))
    }

    #[test]
    fn export_is_off_without_an_endpoint() {
        let config = export_config(&[("OTEL_SERVICE_NAME", "x")]).unwrap();
        assert_eq!(config.protocol, None);
        assert_eq!(config.service_name, "x");
        let config = export_config(&[]).unwrap();
        assert_eq!(config.service_name, DEFAULT_SERVICE_NAME);
        let config = export_config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])
        .unwrap();
        assert_eq!(config.protocol, None);
        let config = export_config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap();
        assert_eq!(config.protocol, None);
    }

    #[test]
    fn protocol_follows_the_standard_variables() {
        let http = export_config(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        )])
        .unwrap();
        assert_eq!(http.protocol, Some(OtlpProtocol::HttpProtobuf));
        let grpc = export_config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(grpc.protocol, Some(OtlpProtocol::Grpc));
        // The per-signal variable wins.
        let traces = export_config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(traces.protocol, Some(OtlpProtocol::HttpProtobuf));
        let err = export_config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("http/protobuf"), "{err}");
    }

    // Multi-threaded: the SDK's shutdown blocks its thread until the batch task, which runs
    // on this runtime, has finished.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_protocols_build_an_exporting_provider() {
        for protocol in [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc] {
            let config = ExportConfig {
                protocol: Some(protocol),
                service_name: "t".into(),
                http: crate::tls::OtlpHttp::default(),
            };
            let provider = config.provider().unwrap();
            tokio::task::spawn_blocking(move || {
                provider.shutdown_with_timeout(Duration::from_secs(5))
            })
            .await
            .unwrap()
            .unwrap();
        }
    }

    #[test]
    fn finds_and_redacts_url_secrets() {
        assert_eq!(
            url_secrets("postgres://worker:p%40ss-word@db:5432/mlops"),
            vec!["p%40ss-word".to_owned(), "p@ss-word".to_owned()]
        );
        assert_eq!(
            url_secrets("nats://s3cr3t-token@nats:4222"),
            vec!["s3cr3t-token"]
        );
        assert!(url_secrets("nats://nats:4222").is_empty());
        assert!(url_secrets("not a url").is_empty());
        let secrets = Secrets::new(url_secrets("postgres://u:hunter22@h/db"));
        assert_eq!(
            secrets.redact("connect to postgres://u:hunter22@h/db failed"),
            "connect to postgres://u:[redacted]@h/db failed"
        );
    }

    #[test]
    fn escaped_forms_of_a_secret_are_redacted_too() {
        let secrets = Secrets::new([r#"pa"ss\word"#.to_owned()]);
        let json = serde_json::json!({ "url": r#"postgres://u:pa"ss\word@h/db"# }).to_string();
        assert_eq!(
            secrets.redact(&json),
            r#"{"url":"postgres://u:[redacted]@h/db"}"#
        );
        assert_eq!(secrets.redact(r#"pa"ss\word"#), "[redacted]");
    }

    #[test]
    fn the_redacting_writer_scrubs_each_line() {
        register_secrets(Secrets::new(["tok-12345".to_owned()]));
        let mut out = Vec::new();
        {
            let mut writer = RedactingWriter { inner: &mut out };
            writer.write_all(b"header tok-12345 sent\n").unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "header [redacted] sent\n");
        assert_eq!(redacted("x tok-12345".into()), "x [redacted]");
    }

    /// A log output kept in memory.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    #[test]
    fn a_line_names_each_field_once_with_the_innermost_value_and_is_redacted() {
        register_secrets(Secrets::new(["log-secret-42".to_owned()]));
        let (compact, json) = (Lines::default(), Lines::default());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = subscriber_with_logs(
            &provider,
            vec![
                (LogFormat::Compact, compact.clone()),
                (LogFormat::Json, json.clone()),
            ],
            DEFAULT_LOG_FILTER,
        );
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(
                "outer",
                otel.kind = "consumer",
                endpoint_id = 1,
                outcome = "outer",
                tenant = "t"
            );
            let _outer = outer.enter();
            let inner =
                tracing::info_span!("inner", endpoint_id = 1, outcome = tracing::field::Empty);
            let _inner = inner.enter();
            inner.record("outcome", "inner");
            tracing::info!(endpoint_id = 1, error = "failed: log-secret-42", "done");
        });
        let compact = String::from_utf8(compact.0.lock().unwrap().clone()).unwrap();
        let line = compact.lines().next().unwrap();
        assert!(line.ends_with(
            " INFO outer:inner: deploy_worker::telemetry::tests: done endpoint_id=1 error=\"failed: [redacted]\" outcome=\"inner\" tenant=\"t\""
        ), "{line}");
        let json = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
        let value: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "endpoint_id",
                "error",
                "level",
                "message",
                "outcome",
                "span_id",
                "spans",
                "target",
                "tenant",
                "timestamp",
                "trace_id"
            ],
            "{json}"
        );
        assert_eq!(value["outcome"], "inner");
        assert_eq!(value["error"], "failed: [redacted]");
        assert_eq!(value["spans"], serde_json::json!(["outer", "inner"]));
    }

    #[test]
    fn a_warning_inside_a_span_below_the_filter_still_carries_its_fields() {
        let lines = Lines::default();
        let layer = LogLayer::new(LogFormat::Compact, false, lines.clone())
            .with_filter(with_context_spans(EnvFilter::new("warn")));
        tracing::subscriber::with_default(Registry::default().with(layer), || {
            let pass = tracing::info_span!("pass", endpoint_id = 7);
            let _pass = pass.enter();
            tracing::info!("not logged at warn");
            tracing::warn!("logged");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.ends_with(" WARN pass: deploy_worker::telemetry::tests: logged endpoint_id=7\n"),
            "{text}"
        );
    }

    #[test]
    fn query_parameter_passwords_and_tokens_are_secrets() {
        let found =
            url_secrets("postgres://h/db?sslmode=require&password=p%2Bw+d&sslpassword=kp-1234");
        assert_eq!(found, ["p%2Bw+d", "p+w+d", "p w d", "kp-1234"]);
        assert_eq!(
            url_secrets("nats://h:4222?auth_token=t0k3n&user=u"),
            ["t0k3n"]
        );
        let both = url_secrets("postgres://u:inline-pw@h/db?Password=query-pw#frag");
        assert_eq!(both, ["inline-pw", "query-pw"]);
    }

    #[test]
    fn exported_spans_are_redacted_everywhere() {
        use opentelemetry::KeyValue;
        register_secrets(Secrets::new(["span-secret-77".to_owned()]));
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(RedactingExporter::new(exporter.clone()))
            .build();
        {
            use opentelemetry::trace::{Span as _, Tracer as _};
            let tracer = provider.tracer("t");
            let mut span = tracer.start("op span-secret-77");
            span.set_attribute(KeyValue::new("error", "failed: span-secret-77"));
            span.set_attribute(KeyValue::new(
                "list",
                opentelemetry::Value::Array(opentelemetry::Array::String(vec![
                    "a span-secret-77".into(),
                ])),
            ));
            span.add_event(
                "event span-secret-77",
                vec![KeyValue::new("message", "span-secret-77")],
            );
            span.set_status(Status::error("status span-secret-77"));
            span.end();
        }
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        let text = format!("{:?}", spans[0]);
        assert!(!text.contains("span-secret-77"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }

    #[test]
    fn trace_context_round_trips_through_nats_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let cx = extract_context(Some(&headers));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = HeaderMap::new();
        inject_context(&cx, &mut out);
        assert_eq!(
            out.get("traceparent").map(|v| v.as_str()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert!(!extract_context(None).span().span_context().is_valid());
    }

    proptest::proptest! {
        /// The plain-form reading of a `traceparent` agrees with the W3C propagator: whatever
        /// it accepts, the propagator reads as the same trace and sampling decision, and the
        /// `traceparent` made for the `receive` span continues exactly that.
        #[test]
        fn the_plain_traceparent_reading_agrees_with_the_propagator(
            version in proptest::sample::select(vec!["00", "01", "ff", "0", "000"]),
            trace_id in "[0-9a-fA-F]{31,33}|0{32}",
            span_id in "[0-9a-f]{15,17}|0{16}",
            flags in "[0-9a-fA-F]{1,3}",
            tail in proptest::sample::select(vec!["", "-extra"]),
        ) {
            let value = format!("{version}-{trace_id}-{span_id}-{flags}{tail}");
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", value.as_str());
            let propagated = extract_context(Some(&headers)).span().span_context().clone();
            if let Some((trace, sampled)) = spans::plain_traceparent(&value) {
                proptest::prop_assert!(propagated.is_valid(), "{}", value);
                proptest::prop_assert_eq!(trace, propagated.trace_id().to_string());
                proptest::prop_assert_eq!(sampled, propagated.is_sampled());
            }
            let made = receive_traceparent(&tracing::Span::none(), Some(&headers))
                .expect("a traceparent");
            let continued = context_from_traceparent(&made).span().span_context().clone();
            proptest::prop_assert!(continued.is_valid(), "{}", made);
            proptest::prop_assert!(spans::plain_traceparent(&made).is_some(), "{}", made);
            if propagated.is_valid() {
                proptest::prop_assert_eq!(continued.trace_id(), propagated.trace_id());
                proptest::prop_assert_eq!(continued.is_sampled(), propagated.is_sampled());
            }
        }
    }

    #[test]
    fn the_plain_traceparent_reading_takes_the_usual_header() {
        assert_eq!(
            spans::plain_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", true))
        );
        assert_eq!(
            spans::plain_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02"),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", false))
        );
        assert_eq!(
            spans::plain_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
    }

    #[test]
    fn without_a_span_the_receive_traceparent_continues_the_publishers_trace() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        );
        let made =
            receive_traceparent(&tracing::Span::none(), Some(&headers)).expect("a traceparent");
        let sc = context_from_traceparent(&made)
            .span()
            .span_context()
            .clone();
        assert!(sc.is_valid(), "{made}");
        // the publisher's trace and sampling decision, a span of its own
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(!sc.is_sampled());
        assert_ne!(sc.span_id().to_string(), "00f067aa0ba902b7");

        // no (or a malformed) traceparent: a new, valid, sampled trace each time
        let mut garbage = HeaderMap::new();
        garbage.insert("traceparent", "00-not-a-trace-01");
        let first = receive_traceparent(&tracing::Span::none(), Some(&garbage)).expect("one");
        let second = receive_traceparent(&tracing::Span::none(), None).expect("another");
        let mut other_headers = HeaderMap::new();
        other_headers.insert("Nats-Msg-Id", "7");
        let third =
            receive_traceparent(&tracing::Span::none(), Some(&other_headers)).expect("a third");
        for made in [&first, &second, &third] {
            let sc = context_from_traceparent(made).span().span_context().clone();
            assert!(sc.is_valid() && sc.is_sampled(), "{made}");
        }
        assert_ne!(first[3..35], second[3..35], "two new traces");
        assert_ne!(second[3..35], third[3..35], "two new traces");
    }
}
