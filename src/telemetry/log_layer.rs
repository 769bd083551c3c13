//! The log layer: one line per event, compact or JSON, each field once.

use std::borrow::Cow;
use std::io::Write;
use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::pass_log::{self, PassLog};
use super::*;

// One layer writes both formats. A line inside a pass sits in up to four spans (receive, pass,
// a step, a deployer's step) that all declare `endpoint_id`, `tenant_id`, … so printing every
// span's fields, as the stock formatters do, repeats each of them several times. Here a line
// carries each field once: the event's own fields, then for every other name the value of the
// innermost span that has it (the most specific, e.g. the step's `outcome` rather than the
// pass's).

/// One recorded field value, kept typed so each format renders it its own way.
#[derive(Debug, Clone)]
pub(super) enum FieldValue {
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
pub(super) struct Fields(Vec<(&'static str, FieldValue)>);

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
pub(super) struct SpanFields(Fields);

/// Writes one line per event in `format` (see [`LogFormat`]), each field once.
pub(super) struct LogLayer<W> {
    format: LogFormat,
    ansi: bool,
    writer: W,
    dispatch: OnceLock<tracing::dispatcher::WeakDispatch>,
}

impl<W> LogLayer<W> {
    pub(super) fn new(format: LogFormat, ansi: bool, writer: W) -> Self {
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
pub(super) struct LogLine<'a> {
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

/// Adds the fields a `pass` span would give a line (see [`pass_log`]) that `fields` lacks.
fn pass_fields(pass: &PassLog, fields: &mut Fields) {
    if !fields.has("endpoint_id") {
        fields.0.push((
            "endpoint_id",
            FieldValue::Shown(pass.endpoint_id.to_string()),
        ));
    }
    if let Some(generation) = pass.generation
        && !fields.has("generation")
    {
        fields.0.push(("generation", FieldValue::I64(generation)));
    }
    if !fields.has("events") {
        fields
            .0
            .push(("events", FieldValue::U64(pass.events as u64)));
    }
    if let Some(trace_id) = pass.trace_id()
        && !fields.has("trace_id")
    {
        fields
            .0
            .push(("trace_id", FieldValue::Str(trace_id.to_owned())));
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
        if !spans.contains(&"pass")
            && let Some(pass) = pass_log::current()
        {
            // a pass without a span of its own (spans are not exported): its context reads as
            // the span would, the outermost of the line
            spans.push("pass");
            pass_fields(&pass, &mut fields);
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
