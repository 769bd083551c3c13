//! Where spans go: the standard `OTEL_*` variables read into an [`ExportConfig`], and the
//! tracer provider built from it.

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};

use super::*;

/// Service name reported to the collector unless `OTEL_SERVICE_NAME` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "deploy-worker";

/// Name of the tracer (the instrumentation scope of every span).
pub(super) const TRACER_NAME: &str = "deploy-worker";

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
