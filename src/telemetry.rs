//! Telemetry: structured logs, OpenTelemetry traces and W3C trace-context propagation.
//!
//! **One trace per event** (ARCHITECTURE.md, "The event path"). The platform's API publishes each
//! serving event with W3C `traceparent`/`tracestate` NATS headers; the supervisor extracts them
//! ([`extract_context`]) and opens a `receive` span whose parent is the publisher's span
//! ([`receive_span`]). A pass over an endpoint is a child of the receive span of the newest
//! delivery it covers, with span links to the other deliveries it coalesced, and has one child per
//! step ([`Step`]): `load_intent`, `render`, `deploy` (with `apply` and `wait_ready`, made by the
//! deployers through `deployer::deploy_step_span`) and `persist` (the group-commit wait). Every step
//! carries the same attributes, recorded as they become known ([`SpanLabels`]): `tenant_id`,
//! `project_id`, `endpoint_id`, `isvc_name`, `generation` and `outcome`; failures set the span's
//! status to error and its `error` attribute ([`record_error`]).
//!
//! **Export** is configured only by the standard `OTEL_*` variables ([`ExportConfig`]) and is
//! off unless an OTLP endpoint is set. Spans are still created when export is off: trace ids
//! keep flowing from the publisher into the logs and into `deployment_history.trace_id`, so a
//! rollout can be correlated with the platform's own trace even without a collector. The OTLP
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

use std::borrow::Cow;
use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Level, Metadata, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry};
use uuid::Uuid;

/// Service name reported to the collector unless `OTEL_SERVICE_NAME` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "deploy-worker";

/// Name of the tracer (the instrumentation scope of every span).
const TRACER_NAME: &str = "deploy-worker";

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

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf` (the default; port 4318 on most collectors).
    HttpProtobuf,
    /// `grpc` (port 4317).
    Grpc,
}

/// Where spans go, as read from the standard `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// `None` when export is off (no endpoint, `OTEL_TRACES_EXPORTER=none` or
    /// `OTEL_SDK_DISABLED=true`).
    pub protocol: Option<OtlpProtocol>,
    /// `service.name` of the resource.
    pub service_name: String,
    /// The OTLP/HTTP client: CA file for an `https://` collector, timeout.
    pub http: crate::tls::OtlpHttp,
}

impl ExportConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, TelemetryError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `get` (a variable's value, if set).
    ///
    /// Export is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is set to something non-empty, unless `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`. The protocol comes from `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`
    /// or `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` by default, or `grpc`). The endpoint,
    /// headers, timeout and batch settings (`OTEL_BSP_*`) are read by the exporter and the SDK
    /// themselves, and the sampler by the SDK (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryError> {
        let set = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let service_name =
            set("OTEL_SERVICE_NAME").unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
        let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        match set("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => {
                return Ok(Self {
                    protocol: None,
                    service_name,
                    http: crate::tls::OtlpHttp::default(),
                });
            }
            Some(other) => {
                return Err(TelemetryError::Unsupported {
                    variable: "OTEL_TRACES_EXPORTER",
                    value: other.to_owned(),
                    hint: "use `otlp` (or `none` to switch export off)",
                });
            }
        }
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if disabled || endpoint.is_none() {
            return Ok(Self {
                protocol: None,
                service_name,
                http: crate::tls::OtlpHttp::default(),
            });
        }
        let (variable, value) = match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(v)),
            None => (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                set("OTEL_EXPORTER_OTLP_PROTOCOL"),
            ),
        };
        let protocol = match value.as_deref() {
            None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            Some(other) => {
                return Err(TelemetryError::Unsupported {
                    variable,
                    value: other.to_owned(),
                    hint: "use `http/protobuf` or `grpc`",
                });
            }
        };
        let http = crate::tls::OtlpHttp::from_lookup(&get);
        if http.certificate.is_some() && protocol == OtlpProtocol::Grpc {
            return Err(TelemetryError::Unsupported {
                variable: "OTEL_EXPORTER_OTLP_CERTIFICATE",
                value: "(set, with grpc)".to_owned(),
                hint: "TLS to the collector is supported over `http/protobuf`; use that protocol",
            });
        }
        Ok(Self {
            protocol: Some(protocol),
            service_name,
            http,
        })
    }

    /// A tracer provider for this configuration. With export on, the batch processor's task
    /// is spawned on the current tokio runtime (which must exist).
    pub fn provider(&self) -> Result<SdkTracerProvider, TelemetryError> {
        let resource = Resource::builder()
            .with_service_name(self.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let builder = SdkTracerProvider::builder().with_resource(resource);
        let Some(protocol) = self.protocol else {
            return Ok(builder.build());
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TelemetryError::NoRuntime);
        }
        let exporter = match protocol {
            OtlpProtocol::HttpProtobuf => {
                use opentelemetry_otlp::WithExportConfig;
                use opentelemetry_otlp::WithHttpConfig;
                let client = self.http.client().map_err(TelemetryError::ExporterClient)?;
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(client)
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .build()
            }
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build(),
        }
        .map_err(TelemetryError::Exporter)?;
        // The exporter is async: its batch task runs on the worker's tokio runtime rather than
        // on the SDK's own thread, which has no reactor for reqwest or tonic.
        let processor =
            opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                RedactingExporter::new(exporter),
                opentelemetry_sdk::runtime::Tokio,
            )
            .with_batch_config(BatchConfigBuilder::default().build())
            .build();
        Ok(builder.with_span_processor(processor).build())
    }
}

/// Values that must never appear in logs.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Vec<String>);

/// The process-wide secrets every output is redacted with.
static KNOWN: RwLock<Secrets> = RwLock::new(Secrets(Vec::new()));

/// Adds `secrets` to the process-wide set that logs, exported spans, HTTP bodies and database
/// writes are redacted with. Secrets are only ever added: several workers in one process
/// (tests, embedders) each add theirs.
pub fn register_secrets(secrets: Secrets) {
    if secrets.is_empty() {
        return;
    }
    // A poisoned lock only means a panic elsewhere mid-update; the list is still usable.
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    known.merge(secrets);
}

/// `text` with every process-wide secret ([`register_secrets`]) replaced by `[redacted]`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    if known.is_empty() {
        return Cow::Borrowed(text);
    }
    match known.redact(text) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(owned) => Cow::Owned(owned),
    }
}

/// [`redact`] into an owned string, for values that are stored or sent on.
pub fn redacted(text: String) -> String {
    match redact(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(owned) => owned,
    }
}

impl Secrets {
    /// Secrets found in connection URLs (their passwords, or a lone user part used as a token)
    /// and in the OTLP header variables (their values, e.g. `authorization=Bearer …`).
    pub fn collect<'a>(urls: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let mut found: Vec<String> = urls.into_iter().flatten().flat_map(url_secrets).collect();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Ok(headers) = std::env::var(name) {
                found.extend(
                    headers
                        .split(',')
                        .filter_map(|pair| pair.split_once('=').map(|(_, v)| v.trim().to_owned())),
                );
            }
        }
        Self::new(found)
    }

    /// These values, also as JSON and `{:?}` escape them (a password with a `"` or `\\` in it
    /// appears escaped in JSON logs and debug output). Very short ones are ignored: redacting
    /// them would mangle logs.
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        // inside the quotes of a JSON string and of `{:?}` output
        let escaped = |v: &str| {
            let quoted = [serde_json::Value::from(v).to_string(), format!("{v:?}")];
            quoted.map(|q| {
                q.strip_prefix('"')
                    .and_then(|q| q.strip_suffix('"'))
                    .unwrap_or(v)
                    .to_owned()
            })
        };
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| v.len() >= 4)
            .flat_map(|v| {
                let [json, debug] = escaped(&v);
                [v, json, debug]
            })
            .collect();
        // Longest first, so a secret containing another is redacted whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self(values)
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `other`'s values (already expanded by [`Secrets::new`]).
    fn merge(&mut self, other: Secrets) {
        self.0.extend(other.0);
        self.0
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.0.dedup();
    }

    /// `text` with every secret replaced by `[redacted]`.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.0 {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), "[redacted]"));
            }
        }
        out
    }
}

/// The secrets of a connection URL, raw and percent-decoded: the password of
/// `scheme://user:password@host/…`, or the user part when there is no password (NATS token URLs:
/// `nats://token@host`), and the values of query parameters whose name contains `password`
/// (`password`, `sslpassword`), `token` or `secret` (`postgres://u@h/db?password=…`).
pub fn url_secrets(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |raw: &str| {
        let decoded = percent_decode(raw);
        let plus = decoded.replace('+', " ");
        for value in [raw.to_owned(), decoded, plus] {
            if !value.is_empty() && !out.contains(&value) {
                out.push(value);
            }
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some((userinfo, _host)) = authority.rsplit_once('@') {
        push(match userinfo.split_once(':') {
            Some((_, password)) => password,
            None => userinfo,
        });
    }
    let query = rest
        .split_once('?')
        .map_or("", |(_, q)| q.split('#').next().unwrap_or_default());
    for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        let key = percent_decode(key).to_ascii_lowercase();
        if ["password", "token", "secret"]
            .iter()
            .any(|word| key.contains(word))
        {
            push(value);
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A [`MakeWriter`] that redacts the process-wide secrets ([`register_secrets`]) from what
/// passes through it; [`subscriber`] wraps every log writer in one.
#[derive(Debug, Clone)]
pub struct Redacting<M> {
    inner: M,
}

impl<M> Redacting<M> {
    /// Wraps `inner`.
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

/// The writer made by [`Redacting`].
pub struct RedactingWriter<W> {
    inner: W,
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Both formatters hand over one whole line per call, so a secret is never split.
        let text = String::from_utf8_lossy(buf);
        match redact(&text) {
            Cow::Borrowed(_) => self.inner.write_all(buf)?,
            Cow::Owned(clean) => self.inner.write_all(clean.as_bytes())?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer_for(meta),
        }
    }
}

/// A span exporter that redacts the process-wide secrets ([`register_secrets`]) from every
/// span it passes on: name, string attributes, events (name and attributes: log lines inside
/// a span become its events), links and the error status. The OTLP exporter is wrapped in one.
#[derive(Debug)]
pub struct RedactingExporter<E> {
    inner: E,
}

impl<E> RedactingExporter<E> {
    /// Wraps `inner`.
    pub fn new(inner: E) -> Self {
        Self { inner }
    }
}

fn redact_cow(text: &mut Cow<'static, str>) {
    if let Cow::Owned(clean) = redact(text) {
        *text = Cow::Owned(clean);
    }
}

fn redact_attributes(attributes: &mut [opentelemetry::KeyValue]) {
    use opentelemetry::{Array, StringValue, Value as Attr};
    let clean = |s: &StringValue| match redact(s.as_str()) {
        Cow::Borrowed(_) => None,
        Cow::Owned(owned) => Some(StringValue::from(owned)),
    };
    for kv in attributes {
        match &mut kv.value {
            Attr::String(s) => {
                if let Some(c) = clean(s) {
                    *s = c;
                }
            }
            Attr::Array(Array::String(list)) => {
                for s in list {
                    if let Some(c) = clean(s) {
                        *s = c;
                    }
                }
            }
            _ => {}
        }
    }
}

fn redact_span(span: &mut opentelemetry_sdk::trace::SpanData) {
    redact_cow(&mut span.name);
    redact_attributes(&mut span.attributes);
    for event in &mut span.events.events {
        redact_cow(&mut event.name);
        redact_attributes(&mut event.attributes);
    }
    for link in &mut span.links.links {
        redact_attributes(&mut link.attributes);
    }
    if let Status::Error { description } = &mut span.status {
        redact_cow(description);
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for RedactingExporter<E>
{
    fn export(
        &self,
        mut batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        batch.iter_mut().for_each(redact_span);
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Installed telemetry; call [`shutdown`](Self::shutdown) before exiting to flush traces.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Flushes buffered spans and stops the exporter (bounded: a collector that does not
    /// answer cannot hold the exit up for long).
    pub async fn shutdown(self) -> Result<(), TelemetryError> {
        if !self.exporting {
            return Ok(());
        }
        let provider = self.provider;
        // The SDK blocks the calling thread until its batch task has exported; that task runs
        // on this runtime, so block a thread of the blocking pool, not a runtime thread.
        let flushed = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(10))
        });
        match tokio::time::timeout(Duration::from_secs(15), flushed).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => Err(TelemetryError::Shutdown(err.to_string())),
            Ok(Err(err)) => Err(TelemetryError::Shutdown(err.to_string())),
            Err(_) => Err(TelemetryError::Shutdown("timed out".into())),
        }
    }
}

/// The log filter when `RUST_LOG` is unset: what the worker and its commands log.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Sets up logs and traces from the environment (`RUST_LOG`, `OTEL_*`) and installs them as
/// the global subscriber. Call inside the tokio runtime that will run the worker.
pub fn init(format: LogFormat, secrets: Secrets) -> Result<Telemetry, TelemetryError> {
    init_with_filter(format, DEFAULT_LOG_FILTER, secrets)
}

/// [`init`] with `default_filter` (`RUST_LOG` syntax) instead of [`DEFAULT_LOG_FILTER`] when
/// `RUST_LOG` is unset: a command whose own output is the point (the demo) logs less.
pub fn init_with_filter(
    format: LogFormat,
    default_filter: &str,
    secrets: Secrets,
) -> Result<Telemetry, TelemetryError> {
    let config = ExportConfig::from_env()?;
    let provider = config.provider()?;
    let exporting = config.protocol.is_some();
    install_with_filter(format, default_filter, provider, exporting, secrets)
}

/// Logs only, no trace export: for short commands such as `migrate` and `render`.
pub fn init_logs(format: LogFormat, secrets: Secrets) -> Result<Telemetry, TelemetryError> {
    install(format, SdkTracerProvider::builder().build(), false, secrets)
}

/// Installs logs (to stderr) and the trace layer over `provider` as the global subscriber.
/// `exporting` tells [`Telemetry::shutdown`] whether there is anything to flush.
pub fn install(
    format: LogFormat,
    provider: SdkTracerProvider,
    exporting: bool,
    secrets: Secrets,
) -> Result<Telemetry, TelemetryError> {
    install_with_filter(format, DEFAULT_LOG_FILTER, provider, exporting, secrets)
}

fn install_with_filter(
    format: LogFormat,
    default_filter: &str,
    provider: SdkTracerProvider,
    exporting: bool,
    secrets: Secrets,
) -> Result<Telemetry, TelemetryError> {
    use tracing_subscriber::util::SubscriberInitExt;
    register_secrets(secrets);
    logs_and_traces(&provider, vec![(format, io::stderr)], default_filter)
        .try_init()
        .map_err(TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry {
        provider,
        exporting,
    })
}

/// The subscriber [`install`] installs, for tests and embedders that install it themselves
/// (globally or with `tracing::subscriber::set_default`) with their own provider and writer.
/// Compact lines are coloured only when stderr is a terminal; every line is redacted.
pub fn subscriber<W>(
    format: LogFormat,
    provider: &SdkTracerProvider,
    writer: W,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    subscriber_with_logs(provider, vec![(format, writer)])
}

/// [`subscriber`] with several log outputs, each in its own format (e.g. compact lines to one
/// writer and JSON to another).
pub fn subscriber_with_logs<W>(
    provider: &SdkTracerProvider,
    outputs: Vec<(LogFormat, W)>,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    logs_and_traces(provider, outputs, DEFAULT_LOG_FILTER)
}

fn logs_and_traces<W>(
    provider: &SdkTracerProvider,
    outputs: Vec<(LogFormat, W)>,
    default_filter: &str,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // stacked rather than collected in a Vec: a Vec of layers does not pass the dispatch on,
    // which the log layer needs for the trace ids
    let logs = outputs
        .into_iter()
        .map(|(format, writer)| log_layer(format, Redacting::new(writer), default_filter))
        .reduce(|stack, next| Box::new(stack.and_then(next)))
        .unwrap_or_else(|| Box::new(tracing_subscriber::layer::Identity::new()));
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(TRACER_NAME))
        // the worker's own spans and events at info and above, whatever `RUST_LOG` says
        .with_filter(Targets::new().with_target("deploy_worker", Level::INFO));
    Registry::default().with(logs).with(traces)
}

/// One log output: its lines filtered by `RUST_LOG` (`default_filter` when unset or blank).
/// The worker's own spans at info and above are always seen, whatever the filter says, so a
/// warning inside a pass still names its endpoint and trace when only warnings are logged.
fn log_layer<W>(
    format: LogFormat,
    writer: W,
    default_filter: &str,
) -> Box<dyn Layer<Registry> + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let requested = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty());
    let filter = match requested.map(|value| EnvFilter::try_new(&value)) {
        Some(Ok(filter)) => filter,
        Some(Err(err)) => {
            eprintln!("RUST_LOG is invalid ({err}); logging at {default_filter}");
            EnvFilter::new(default_filter)
        }
        None => EnvFilter::new(default_filter),
    };
    let ansi = format == LogFormat::Compact && io::stderr().is_terminal();
    LogLayer::new(format, ansi, writer)
        .with_filter(with_context_spans(filter))
        .boxed()
}

/// `lines` (what to log), also letting the worker's own spans at info and above through, so
/// the lines it lets through carry their fields.
fn with_context_spans(
    lines: EnvFilter,
) -> impl tracing_subscriber::layer::Filter<Registry> + Send + Sync + 'static {
    use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
    // decided once per callsite (the function reads metadata only), and capped at info so the
    // global level hint stays what `lines` alone would make it at info or above
    let context = filter_fn(|meta| {
        meta.is_span() && meta.target().starts_with("deploy_worker") && *meta.level() <= Level::INFO
    })
    .with_max_level_hint(LevelFilter::INFO);
    lines.or(context)
}

// ---------------------------------------------------------------------------------------------
// Trace-context propagation over NATS headers.

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // NATS header names keep their case; W3C names are lower-case but publishers vary.
        self.0
            .iter()
            .find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(key))
            .and_then(|(_, values)| values.first())
            .map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// The W3C trace context (`traceparent`/`tracestate`) carried by NATS headers; the empty
/// context when there are none or they are malformed.
pub fn extract_context(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
        None => opentelemetry::Context::new(),
    }
}

/// Writes `cx` as W3C `traceparent`/`tracestate` headers (what a publisher does).
pub fn inject_context(cx: &opentelemetry::Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

// ---------------------------------------------------------------------------------------------
// Spans.

/// The hex trace id of `span`, when it is traced.
pub fn trace_id(span: &Span) -> Option<String> {
    let cx = span.context();
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The span context of `span` (invalid when it is not traced), e.g. to link to it.
pub fn span_context(span: &Span) -> opentelemetry::trace::SpanContext {
    span.context().span().span_context().clone()
}

/// The `receive` span of one JetStream message: its parent is the publisher's span from the
/// message headers (a new trace when there is none), and it lives until the message is
/// answered. Records `trace_id` so compact log lines carry it.
pub fn receive_span(message: &jetstream::Message) -> Span {
    let info = message.info().ok();
    let span = tracing::info_span!(
        "receive",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = %message.subject,
        stream_sequence = info.as_ref().map(|i| i.stream_sequence),
        delivered = info.as_ref().map(|i| i.delivered),
        tenant_id = tracing::field::Empty,
        project_id = tracing::field::Empty,
        endpoint_id = tracing::field::Empty,
        isvc_name = tracing::field::Empty,
        generation = tracing::field::Empty,
        outcome = tracing::field::Empty,
        answer = tracing::field::Empty,
        error = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent = extract_context(message.headers.as_ref());
    if parent.span().span_context().is_valid() {
        // Only fails when the span is not traced at all; there is nothing to attach then.
        let _ = span.set_parent(parent);
    }
    if let Some(id) = trace_id(&span) {
        span.record("trace_id", id.as_str());
    }
    span
}

/// The `receive` span of a synthetic delivery (an endpoint resumed at start-up, or followed
/// after its object changed; `source` says which): a new trace.
pub fn synthetic_span(endpoint_id: Uuid, source: &'static str) -> Span {
    let span = tracing::info_span!(
        "receive",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = source,
        tenant_id = tracing::field::Empty,
        project_id = tracing::field::Empty,
        endpoint_id = %endpoint_id,
        isvc_name = tracing::field::Empty,
        generation = tracing::field::Empty,
        outcome = tracing::field::Empty,
        answer = tracing::field::Empty,
        error = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(id) = trace_id(&span) {
        span.record("trace_id", id.as_str());
    }
    span
}

/// The span of one pass, a child of `parent` (the receive span of the newest delivery it
/// covers), linked to `others` (the other deliveries' receive spans).
pub fn pass_span<'a>(
    parent: &Span,
    others: impl IntoIterator<Item = &'a Span>,
    endpoint_id: Uuid,
    events: usize,
) -> Span {
    let span = tracing::info_span!(
        parent: parent,
        "pass",
        tenant_id = tracing::field::Empty,
        project_id = tracing::field::Empty,
        endpoint_id = %endpoint_id,
        isvc_name = tracing::field::Empty,
        generation = tracing::field::Empty,
        outcome = tracing::field::Empty,
        error = tracing::field::Empty,
        events = events,
        trace_id = tracing::field::Empty,
    );
    for other in others {
        span.add_link(span_context(other));
    }
    if let Some(id) = trace_id(&span) {
        span.record("trace_id", id.as_str());
    }
    span
}

/// The steps of a pass, each a child span of the pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading the endpoint row (a batched load).
    LoadIntent,
    /// Validating the intent and rendering the manifest.
    Render,
    /// Making the InferenceService real (parent of `apply` and `wait_ready`).
    Deploy,
    /// Removing the InferenceService.
    Delete,
    /// Sending the manifest to the cluster (server-side apply).
    Apply,
    /// Waiting until the cluster reports this generation Ready.
    WaitReady,
    /// Waiting for the group commit that makes a status durable.
    Persist,
}

macro_rules! step_span {
    ($name:literal) => {
        tracing::info_span!(
            $name,
            tenant_id = tracing::field::Empty,
            project_id = tracing::field::Empty,
            endpoint_id = tracing::field::Empty,
            isvc_name = tracing::field::Empty,
            generation = tracing::field::Empty,
            outcome = tracing::field::Empty,
            error = tracing::field::Empty,
        )
    };
}

/// A span for `step`, a child of the current span, with the attribute set every step carries
/// (empty until recorded, e.g. with [`SpanLabels::record`]).
pub fn step_span(step: Step) -> Span {
    // Span names must be literals for `tracing`, hence one arm per step.
    match step {
        Step::LoadIntent => step_span!("load_intent"),
        Step::Render => step_span!("render"),
        Step::Deploy => step_span!("deploy"),
        Step::Delete => step_span!("delete"),
        Step::Apply => step_span!("apply"),
        Step::WaitReady => step_span!("wait_ready"),
        Step::Persist => step_span!("persist"),
    }
}

/// The attributes every span of a pass carries.
#[derive(Debug, Clone, Copy)]
pub struct SpanLabels<'a> {
    /// Owning tenant.
    pub tenant_id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// InferenceService name.
    pub isvc_name: &'a str,
    /// Spec generation.
    pub generation: i64,
}

impl SpanLabels<'_> {
    /// Records the labels on `span` (which must have declared the fields, as every span made
    /// here does).
    pub fn record(&self, span: &Span) {
        span.record("tenant_id", tracing::field::display(self.tenant_id));
        span.record("project_id", tracing::field::display(self.project_id));
        span.record("endpoint_id", tracing::field::display(self.endpoint_id));
        span.record("isvc_name", self.isvc_name);
        span.record("generation", self.generation);
    }
}

/// Records how the work of `span` ended.
pub fn record_outcome(span: &Span, outcome: &str) {
    span.record("outcome", outcome);
}

/// Marks `span` as failed: status error with `error` as its description, and the `error`
/// attribute.
pub fn record_error(span: &Span, error: &dyn Display) {
    let text = redacted(error.to_string());
    span.record("error", text.as_str());
    span.set_status(Status::error(text));
}

// ---------------------------------------------------------------------------------------------
// Log lines.
//
// One layer writes both formats. A line inside a pass sits in up to four spans (receive, pass,
// a step, a deployer's step) that all declare `endpoint_id`, `tenant_id`, … so printing every
// span's fields, as the stock formatters do, repeats each of them several times. Here a line
// carries each field once: the event's own fields, then for every other name the value of the
// innermost span that has it (the most specific, e.g. the step's `outcome` rather than the
// pass's).

/// One recorded field value, kept typed so each format renders it its own way.
#[derive(Debug, Clone)]
enum FieldValue {
    /// A string recorded as such (`name = "x"`): quoted in text lines.
    Str(String),
    /// A value recorded through `Debug` or `Display` (`?x`, `%x`, errors): shown as is.
    Shown(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl FieldValue {
    fn to_json(&self) -> Value {
        match self {
            Self::Str(s) | Self::Shown(s) => Value::from(s.as_str()),
            Self::I64(v) => Value::from(*v),
            Self::U64(v) => Value::from(*v),
            Self::F64(v) => Value::from(*v),
            Self::Bool(v) => Value::from(*v),
        }
    }
}

impl std::fmt::Display for FieldValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Shown(s) => f.write_str(s),
            Self::I64(v) => write!(f, "{v}"),
            Self::U64(v) => write!(f, "{v}"),
            Self::F64(v) => write!(f, "{v}"),
            Self::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// Fields in the order they were declared or first recorded; a name appears once (recording
/// it again replaces its value).
#[derive(Debug, Default)]
struct Fields(Vec<(&'static str, FieldValue)>);

impl Fields {
    fn set(&mut self, name: &'static str, value: FieldValue) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| *n == name)
    }

    fn take(&mut self, name: &str) -> Option<FieldValue> {
        let at = self.0.iter().position(|(n, _)| *n == name)?;
        Some(self.0.remove(at).1)
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), FieldValue::F64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), FieldValue::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), FieldValue::U64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), FieldValue::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), FieldValue::Str(value.to_owned()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field.name(), FieldValue::Shown(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), FieldValue::Shown(format!("{value:?}")));
    }
}

/// A span's fields, kept in its extensions by [`LogLayer`].
struct SpanFields(Fields);

/// Writes one line per event in `format` (see [`LogFormat`]), each field once.
struct LogLayer<W> {
    format: LogFormat,
    ansi: bool,
    writer: W,
    dispatch: OnceLock<tracing::dispatcher::WeakDispatch>,
}

impl<W> LogLayer<W> {
    fn new(format: LogFormat, ansi: bool, writer: W) -> Self {
        Self {
            format,
            ansi,
            writer,
            dispatch: OnceLock::new(),
        }
    }

    /// The OpenTelemetry trace and span ids of span `id`, when it is traced.
    fn otel_ids(&self, id: &Id) -> Option<(String, String)> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span_ref = cx.span();
        let sc = span_ref.span_context();
        sc.is_valid()
            .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    }
}

/// What one log line says, before it is written in either format.
struct LogLine<'a> {
    level: Level,
    target: Cow<'a, str>,
    /// Names of the spans in scope, root first.
    spans: Vec<&'static str>,
    message: Option<FieldValue>,
    /// The event's fields, then the innermost value of every span field not among them.
    fields: Fields,
}

impl LogLine<'_> {
    fn text(&self, ansi: bool) -> String {
        use std::fmt::Write as _;
        let mut out = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let level = self.level.as_str();
        if ansi {
            let colour = match self.level {
                Level::ERROR => "31",
                Level::WARN => "33",
                Level::INFO => "32",
                Level::DEBUG => "34",
                Level::TRACE => "35",
            };
            let _ = write!(out, " \x1b[{colour}m{level:>5}\x1b[0m");
        } else {
            let _ = write!(out, " {level:>5}");
        }
        if !self.spans.is_empty() {
            let _ = write!(out, " {}:", self.spans.join(":"));
        }
        let _ = write!(out, " {}:", self.target);
        if let Some(message) = &self.message {
            let _ = write!(out, " {message}");
        }
        for (name, value) in &self.fields.0 {
            let _ = write!(out, " {name}={value}");
        }
        out.push('\n');
        out
    }

    /// One JSON object, keys in this order: `timestamp`, `level`, `target`, `message`,
    /// `spans`, `span_id`, `trace_id` (the innermost span's, when no field has one), then the
    /// fields, all at the top level.
    fn json(self, otel: Option<(String, String)>) -> Option<Vec<u8>> {
        let mut line: Vec<(Cow<'_, str>, Value)> = vec![
            (
                "timestamp".into(),
                Value::from(
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                ),
            ),
            ("level".into(), Value::from(self.level.as_str())),
            ("target".into(), Value::from(self.target.as_ref())),
        ];
        if let Some(message) = &self.message {
            line.push(("message".into(), Value::from(message.to_string())));
        }
        if !self.spans.is_empty() {
            let names = self.spans.iter().map(|s| Value::from(*s)).collect();
            line.push(("spans".into(), Value::Array(names)));
        }
        if let Some((trace_id, span_id)) = otel {
            line.push(("span_id".into(), Value::from(span_id)));
            if !self.fields.has("trace_id") {
                line.push(("trace_id".into(), Value::from(trace_id)));
            }
        }
        for (name, value) in &self.fields.0 {
            // The line's own keys come first; a field by one of those names is kept under
            // `field.<name>` rather than repeating the key.
            let key = if line.iter().any(|(key, _)| key == name) {
                Cow::Owned(format!("field.{name}"))
            } else {
                Cow::Borrowed(*name)
            };
            line.push((key, value.to_json()));
        }
        // Written by hand rather than through a map: a map would sort the keys, and a person
        // reads `timestamp`, `level` and `message` first.
        let mut bytes = vec![b'{'];
        for (i, (key, value)) in line.iter().enumerate() {
            if i > 0 {
                bytes.push(b',');
            }
            serde_json::to_writer(&mut bytes, key.as_ref()).ok()?;
            bytes.push(b':');
            serde_json::to_writer(&mut bytes, value).ok()?;
        }
        bytes.extend_from_slice(b"}\n");
        Some(bytes)
    }
}

impl<S, W> Layer<S> for LogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        // Several log outputs share the span: the first one keeps its fields for all.
        if extensions.get_mut::<SpanFields>().is_none() {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            extensions.insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut fields.0);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        // Lines bridged from the `log` crate carry their real target (and source position,
        // which the worker's own lines do not show either) as fields.
        let target = match fields.take("log.target") {
            Some(FieldValue::Str(t) | FieldValue::Shown(t)) => Cow::Owned(t),
            _ => Cow::Borrowed(meta.target()),
        };
        for name in ["log.module_path", "log.file", "log.line"] {
            fields.take(name);
        }
        let message = fields.take("message");
        let mut spans = Vec::new();
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                spans.push(span.name());
                innermost.get_or_insert_with(|| span.id());
                if let Some(SpanFields(span_fields)) = span.extensions().get::<SpanFields>() {
                    for (name, value) in &span_fields.0 {
                        // `otel.*` fields instruct the trace layer; they say nothing to a reader
                        if !fields.has(name) && *name != "message" && !name.starts_with("otel.") {
                            fields.0.push((name, value.clone()));
                        }
                    }
                }
            }
        }
        spans.reverse();
        let line = LogLine {
            level: *meta.level(),
            target,
            spans,
            message,
            fields,
        };
        let bytes = match self.format {
            LogFormat::Compact => line.text(self.ansi).into_bytes(),
            LogFormat::Json => {
                // No extension lock is held here: the OpenTelemetry layer takes its own.
                let otel = innermost.and_then(|id| self.otel_ids(&id));
                match line.json(otel) {
                    Some(bytes) => bytes,
                    None => return,
                }
            }
        };
        // One write per line, so the redacting writer sees whole lines; a line that cannot
        // be written has nowhere else to go.
        let _ = self.writer.make_writer_for(meta).write_all(&bytes);
    }
}

#[cfg(test)]
mod tests {
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
}
