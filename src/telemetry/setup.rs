//! Installing telemetry: the global subscriber with its log and trace layers, and flushing
//! buffered spans at exit.

use std::io::{self, IsTerminal};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use super::*;

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

pub(super) fn install_with_filter(
    format: LogFormat,
    default_filter: &str,
    provider: SdkTracerProvider,
    exporting: bool,
    secrets: Secrets,
) -> Result<Telemetry, TelemetryError> {
    use tracing_subscriber::util::SubscriberInitExt;
    register_secrets(secrets);
    if exporting {
        super::spans::export_spans();
    }
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
    subscriber_with_logs(provider, vec![(format, writer)], DEFAULT_LOG_FILTER)
}

/// [`subscriber`] with several log outputs, each in its own format (e.g. compact lines to one
/// writer and JSON to another), logging at `default_filter` (`RUST_LOG` syntax) unless
/// `RUST_LOG` says otherwise.
pub fn subscriber_with_logs<W>(
    provider: &SdkTracerProvider,
    outputs: Vec<(LogFormat, W)>,
    default_filter: &str,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // whoever brings their own provider wants to see the whole tree
    super::spans::export_spans();
    logs_and_traces(provider, outputs, default_filter)
}

pub(super) fn logs_and_traces<W>(
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
        // the worker's own spans and events at info and above, whatever `RUST_LOG` says, and
        // only when spans are exported: otherwise nobody reads what this layer builds, and the
        // spans carry their trace ids as fields (see `spans::spans_exported`)
        .with_filter(tracing_subscriber::filter::FilterExt::and(
            Targets::new().with_target("deploy_worker", Level::INFO),
            tracing_subscriber::filter::dynamic_filter_fn(|_, _| super::spans::spans_exported()),
        ));
    Registry::default().with(logs).with(traces)
}

/// One log output: its lines filtered by `RUST_LOG` (`default_filter` when unset or blank).
/// The worker's own spans at info and above are always seen, whatever the filter says, so a
/// warning inside a pass still names its endpoint and trace when only warnings are logged.
pub(super) fn log_layer<W>(
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
pub(super) fn with_context_spans(
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
