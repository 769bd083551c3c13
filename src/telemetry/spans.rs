//! The spans of the event path (`receive`, `pass`, its steps) and what they record. They know
//! ids and names, never the worker's domain types: the code that holds those (the supervisor,
//! the deployers) records them.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_nats::jetstream;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{Status, TraceContextExt};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::pass_log::{self, PassLog};
use super::propagation::HeaderExtractor;
use super::*;

/// The hex trace id of `span`, when it is traced by the OpenTelemetry layer (spans are
/// exported; see [`spans_exported`]).
pub fn trace_id(span: &Span) -> Option<String> {
    let cx = span.context();
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The `receive` span of one JetStream message when spans are exported (see [`EXPORTED`]),
/// otherwise a disabled span: [`receive_traceparent`] then makes up the trace context the span
/// would have had, so the pass continues the publisher's trace all the same. Code that logs
/// about one message (a refusal) takes [`traced_receive_span`] instead, so the line carries the
/// message's trace id either way.
pub fn receive_span(message: &jetstream::Message) -> Span {
    if !spans_exported() {
        return Span::none();
    }
    traced_receive_span(message)
}

/// The `receive` span of one JetStream message: its parent is the publisher's span from the
/// message headers (a new trace when there is none), and it lives until the message is
/// answered. Records `trace_id` so compact log lines carry it.
pub fn traced_receive_span(message: &jetstream::Message) -> Span {
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
    if spans_exported() {
        let parent = extract_context(message.headers.as_ref());
        if parent.span().span_context().is_valid() {
            // Only fails when the span is not traced at all; there is nothing to attach then.
            let _ = span.set_parent(parent);
        }
    }
    let id = trace_id(&span).or_else(|| {
        receive_traceparent(&Span::none(), message.headers.as_ref())
            .and_then(|t| plain_traceparent(&t).map(|(id, _)| id.to_owned()))
    });
    if let Some(id) = id {
        span.record("trace_id", id.as_str());
    }
    span
}

/// The W3C `traceparent` of the `receive` span of a message with `headers`: the span's own when
/// it exists, else a new span id in the publisher's trace (a new trace when the headers carry
/// none), as the span would have had. Stored with the message's request, it makes the pass a
/// child of the publisher's trace.
pub fn receive_traceparent(span: &Span, headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    use opentelemetry::trace::{TraceFlags, TraceId};
    use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
    if !span.is_none() {
        return traceparent(span);
    }
    let ids = RandomIdGenerator::default();
    // Written by hand: formatting ids through `Display` cost more than the rest of accepting a
    // message.
    let mut made = String::with_capacity(55);
    made.push_str("00-");
    // The common case — a well-formed version-00 header — read as is; anything else goes
    // through the propagator, which knows every rule of the format. Building its context
    // for every message was a few per cent of the worker's CPU.
    let extractor = headers.map(HeaderExtractor);
    let header = extractor.as_ref().and_then(|e| e.get("traceparent"));
    let plain = header.map(plain_traceparent);
    let flags = if let Some(Some((trace_id, sampled))) = plain {
        made.push_str(trace_id);
        u8::from(sampled)
    } else {
        // Another form: the propagator judges it. No header at all: a new trace, as the
        // propagator would start, without asking it.
        let parent = plain
            .is_some()
            .then(|| extract_context(headers).span().span_context().clone())
            .filter(|parent| parent.is_valid());
        let (trace_id, flags): (TraceId, TraceFlags) = match parent {
            Some(parent) => (parent.trace_id(), parent.trace_flags()),
            None => (ids.new_trace_id(), TraceFlags::SAMPLED),
        };
        push_hex(&mut made, &trace_id.to_bytes());
        flags.to_u8()
    };
    made.push('-');
    push_hex(&mut made, &ids.new_span_id().to_bytes());
    made.push('-');
    push_hex(&mut made, &[flags]);
    Some(made)
}

/// Appends `bytes` to `out` in lower-case hex, as W3C trace context writes ids and flags.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // at most a trace id's 16 bytes, written into a buffer and appended at once
    let mut digits = [0u8; 32];
    for (pair, byte) in digits.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    let digits = &digits[..2 * bytes.len().min(16)];
    // hex digits are ASCII: the check cannot fail
    out.push_str(std::str::from_utf8(digits).unwrap_or_default());
}

/// The trace id and sampled flag of a `traceparent` in its plain form — version `00`, lower-case
/// hex, ids not all zero — as the W3C propagator reads it (which keeps only the sampled flag);
/// `None` for anything else, which the propagator then judges.
pub(super) fn plain_traceparent(value: &str) -> Option<(&str, bool)> {
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let not_zero = |s: &str| s.bytes().any(|b| b != b'0');
    let rest = value.strip_prefix("00-")?;
    let (trace_id, rest) = rest.split_at_checked(32)?;
    let rest = rest.strip_prefix('-')?;
    let (span_id, rest) = rest.split_at_checked(16)?;
    let flags = rest.strip_prefix('-')?;
    let valid = flags.len() == 2
        && lower_hex(trace_id)
        && lower_hex(span_id)
        && lower_hex(flags)
        && not_zero(trace_id)
        && not_zero(span_id);
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    valid.then_some((trace_id, sampled))
}

/// The span of one pass and its trace id (see [`pass_span`]).
#[derive(Debug)]
pub struct PassSpan {
    span: Span,
    trace_id: Option<String>,
    /// The log context standing in for the span when spans are not exported.
    log: Option<PassLog>,
}

impl PassSpan {
    /// The pass's span: disabled when spans are not exported (its log context then lives in
    /// [`PassLog`], see [`instrument`](Self::instrument)).
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The pass's trace id, for its history row.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    /// `work` inside the pass: polled in its span, or with its log context when spans are
    /// not exported, so every line it logs names the endpoint and the trace. `work` comes
    /// boxed: the returned future is moved around whole, and a pass is kilobytes.
    pub fn run_inside<F: Future>(self, work: Pin<Box<F>>) -> InPass<F> {
        InPass {
            span: self.span,
            log: self.log,
            work,
        }
    }
}

/// A pass's future inside its span or log context (see [`PassSpan::run_inside`]).
#[derive(Debug)]
pub struct InPass<F> {
    span: Span,
    log: Option<PassLog>,
    work: Pin<Box<F>>,
}

impl<F: Future> Future for InPass<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // every field is Unpin (the pass itself is boxed)
        let this = self.get_mut();
        match &mut this.log {
            Some(log) => {
                let _entered = pass_log::Entered::enter(log);
                this.work.as_mut().poll(cx)
            }
            None => {
                let _entered = this.span.enter();
                this.work.as_mut().poll(cx)
            }
        }
    }
}

/// The span of one pass and its trace id: a child of the last of `traceparents` (the `receive`
/// span of the newest event it covers, recorded with its request), linked to the others; a new
/// trace when there are none (the worker's own requests). When spans are not exported there is
/// no span: the trace id is worked out from `traceparents` and the log lines inside the pass
/// get the fields the span would have given them from a [`PassLog`] (see
/// [`PassSpan::run_inside`]).
pub fn pass_span(traceparents: &[&str], endpoint_id: Uuid, events: usize) -> PassSpan {
    if !spans_exported() {
        use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
        let id = traceparents
            .last()
            // stored by the worker itself, always in the plain form
            .and_then(|t| plain_traceparent(t).map(|(id, _)| id))
            .map_or_else(
                || RandomIdGenerator::default().new_trace_id().to_string(),
                str::to_owned,
            );
        return PassSpan {
            span: Span::none(),
            log: Some(PassLog::new(endpoint_id, Some(&id), events)),
            trace_id: Some(id),
        };
    }
    let span = tracing::info_span!(
        parent: None,
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
    if let Some((newest, others)) = traceparents.split_last() {
        let parent = context_from_traceparent(newest);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        for other in others {
            let linked = context_from_traceparent(other);
            let linked = linked.span().span_context().clone();
            if linked.is_valid() {
                span.add_link(linked);
            }
        }
    }
    let id = trace_id(&span);
    if let Some(id) = &id {
        span.record("trace_id", id.as_str());
    }
    PassSpan {
        span,
        trace_id: id,
        log: None,
    }
}

/// Records the spec generation of the pass running on this thread: on its span (the current
/// one) when spans are exported, in its log context otherwise.
pub fn record_pass_generation(generation: i64) {
    if !pass_log::record_generation(generation) {
        Span::current().record("generation", generation);
    }
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
    ($name:literal, $labels:expr) => {
        tracing::info_span!(
            $name,
            tenant_id = %$labels.tenant_id,
            project_id = %$labels.project_id,
            endpoint_id = %$labels.endpoint_id,
            isvc_name = $labels.isvc_name,
            generation = $labels.generation,
            outcome = tracing::field::Empty,
            error = tracing::field::Empty,
        )
    };
}

/// Whether spans are exported (or a test or embedder installed its own trace provider). Only
/// then do the steps of a pass and each message's `receive` span get spans of their own, and
/// does the OpenTelemetry layer see any span. Without an exporter nobody sees them, and at
/// thousands of events a second they are a large share of the worker's CPU and memory: the
/// trace context is then carried as text (the `traceparent` stored with a request, the
/// `trace_id` field of a `pass` span), so history rows and log lines still name the
/// publisher's trace.
static EXPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns exported spans on (see [`EXPORTED`]).
pub(super) fn export_spans() {
    EXPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether spans are exported (see [`EXPORTED`]).
pub fn spans_exported() -> bool {
    EXPORTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A span for `step`, a child of the current span, carrying `labels` from the start (cheaper
/// than recording them one by one afterwards: every layer sees the span's fields once); a
/// disabled span when step spans are off.
pub fn labelled_step_span(step: Step, labels: &SpanLabels<'_>) -> Span {
    if !spans_exported() {
        return Span::none();
    }
    match step {
        Step::LoadIntent => step_span!("load_intent", labels),
        Step::Render => step_span!("render", labels),
        Step::Deploy => step_span!("deploy", labels),
        Step::Delete => step_span!("delete", labels),
        Step::Apply => step_span!("apply", labels),
        Step::WaitReady => step_span!("wait_ready", labels),
        Step::Persist => step_span!("persist", labels),
    }
}

/// A span for `step`, a child of the current span, with the attribute set every step carries
/// (empty until recorded, e.g. with [`SpanLabels::record`]); a disabled span when step spans
/// are off.
pub fn step_span(step: Step) -> Span {
    if !spans_exported() {
        return Span::none();
    }
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
    /// here does), all in one record: every layer visits them once, not once per field.
    pub fn record(&self, span: &Span) {
        let (tenant, project, endpoint) = (
            tracing::field::display(self.tenant_id),
            tracing::field::display(self.project_id),
            tracing::field::display(self.endpoint_id),
        );
        record_all(
            span,
            [
                ("tenant_id", &tenant),
                ("project_id", &project),
                ("endpoint_id", &endpoint),
                ("isvc_name", &self.isvc_name),
                ("generation", &self.generation),
            ],
        );
    }
}

/// Records several fields of `span` at once (fields it did not declare are left out).
pub fn record_all<const N: usize>(span: &Span, fields: [(&str, &dyn tracing::Value); N]) {
    let Some(metadata) = span.metadata() else {
        return;
    };
    let set = metadata.fields();
    let found = fields.map(|(name, value)| (set.field(name), value));
    if found.iter().any(|(field, _)| field.is_none()) {
        // not every field is declared: record those that are, one by one
        for (field, value) in &found {
            if let Some(field) = field {
                span.record(field.name(), *value);
            }
        }
        return;
    }
    // every field was found just above
    let owned = found.map(|(field, value)| (field.unwrap_or_else(|| unreachable!()), value));
    let values = owned.each_ref().map(|(field, value)| (field, Some(*value)));
    span.record_all(&set.value_set(&values));
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
