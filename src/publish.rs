//! Publishing serving events exactly as the platform publishes them: the JSON payload of
//! [`crate::events::ServingEvent`] on the subject of its kind, a `Nats-Msg-Id` header (JetStream
//! drops a second publish with the same id) and, when the publisher has a trace, W3C
//! `traceparent`/`tracestate` headers.
//!
//! The worker's operator commands ([`crate::ops`]: `reconcile`, `rejected replay`, `tenant
//! resume`) publish through it, so they say nothing the platform would not say; the
//! repository's tooling (the demo, the tests, the load harness) publishes through it as well.

use async_nats::jetstream;
use serde_json::json;
use uuid::Uuid;

use crate::events::{DELETE_SUBJECT, DEPLOY_SUBJECT, EventKind};

/// The model version an event names (ids of a model and of one of its versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelVersionRef {
    /// The model.
    pub model_id: Uuid,
    /// The version.
    pub model_version_id: Uuid,
}

/// The identifying fields of an event.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    /// Tenant.
    pub tenant_id: Uuid,
    /// Project.
    pub project_id: Uuid,
    /// Endpoint.
    pub endpoint_id: Uuid,
    /// Endpoint name.
    pub name: &'a str,
    /// Model version served.
    pub model: Option<ModelVersionRef>,
}

/// The payload the platform publishes.
pub fn payload(fields: &EventFields<'_>) -> Vec<u8> {
    json!({
        "tenant_id": fields.tenant_id,
        "project_id": fields.project_id,
        "endpoint_id": fields.endpoint_id,
        "name": fields.name,
        "model_id": fields.model.map(|m| m.model_id),
        "model_version_id": fields.model.map(|m| m.model_version_id),
    })
    .to_string()
    .into_bytes()
}

/// Publishes an event and waits for the stream's acknowledgement. `message_id` becomes the
/// `Nats-Msg-Id` header (publisher-side dedupe).
pub async fn publish(
    js: &jetstream::Context,
    kind: EventKind,
    fields: &EventFields<'_>,
    message_id: &str,
) -> Result<(), async_nats::Error> {
    publish_raw(js, kind, payload(fields), Some(message_id)).await
}

/// Publishes many events, pipelined: up to 1,024 wait for their stream acknowledgement at a
/// time instead of one round trip each. Each gets a fresh `Nats-Msg-Id`.
pub async fn publish_all<'a>(
    js: &jetstream::Context,
    events: impl IntoIterator<Item = (EventKind, EventFields<'a>)>,
) -> Result<usize, async_nats::Error> {
    const IN_FLIGHT: usize = 1024;
    let mut acks = Vec::with_capacity(IN_FLIGHT);
    let mut published = 0;
    for (kind, fields) in events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", Uuid::new_v4().to_string().as_str());
        acks.push(
            js.publish_with_headers(subject(kind), headers, payload(&fields).into())
                .await?,
        );
        if acks.len() == IN_FLIGHT {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
        published += 1;
    }
    for ack in acks {
        ack.await?;
    }
    Ok(published)
}

/// Publishes an event inside the caller's trace: `cx` becomes the W3C `traceparent` and
/// `tracestate` headers, as the platform's API does from its request span.
pub async fn publish_traced(
    js: &jetstream::Context,
    kind: EventKind,
    fields: &EventFields<'_>,
    message_id: &str,
    cx: &opentelemetry::Context,
) -> Result<(), async_nats::Error> {
    let mut headers = async_nats::HeaderMap::new();
    crate::telemetry::inject_context(cx, &mut headers);
    publish_with_headers(js, kind, payload(fields), Some(message_id), headers).await
}

/// A fresh, sampled trace context with random ids, as the platform's API has for the request
/// that publishes an event: publish with [`publish_traced`] and look the trace up by
/// [`traceparent`]'s trace id.
pub fn publisher_context() -> opentelemetry::Context {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    // rand never yields the all-zero ids W3C calls invalid after `max(1)`
    let context = SpanContext::new(
        TraceId::from(rand::random::<u128>().max(1)),
        SpanId::from(rand::random::<u64>().max(1)),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(context)
}

/// The W3C `traceparent` header value [`publish_traced`] sends for `cx`
/// (`00-<trace id>-<span id>-<flags>`); `None` when `cx` carries no valid span.
pub fn traceparent(cx: &opentelemetry::Context) -> Option<String> {
    let mut headers = async_nats::HeaderMap::new();
    crate::telemetry::inject_context(cx, &mut headers);
    headers
        .get("traceparent")
        .map(|value| value.as_str().to_owned())
}

/// The subject events of `kind` are published on.
pub fn subject(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Deploy => DEPLOY_SUBJECT,
        EventKind::Delete => DELETE_SUBJECT,
    }
}

/// Publishes raw bytes on the subject for `kind` (for malformed-payload tests).
pub async fn publish_raw(
    js: &jetstream::Context,
    kind: EventKind,
    payload: Vec<u8>,
    message_id: Option<&str>,
) -> Result<(), async_nats::Error> {
    publish_with_headers(js, kind, payload, message_id, async_nats::HeaderMap::new()).await
}

/// Publishes raw bytes with `headers` (plus `Nats-Msg-Id` when `message_id` is given).
async fn publish_with_headers(
    js: &jetstream::Context,
    kind: EventKind,
    payload: Vec<u8>,
    message_id: Option<&str>,
    mut headers: async_nats::HeaderMap,
) -> Result<(), async_nats::Error> {
    if let Some(id) = message_id {
        headers.insert("Nats-Msg-Id", id);
    }
    js.publish_with_headers(subject(kind), headers, payload.into())
        .await?
        .await?;
    Ok(())
}
