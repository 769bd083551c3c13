//! What the platform's API does, for the demo, the load harness and the tests: create model
//! versions and endpoint rows, change serving fields, and publish serving events exactly as
//! the platform publishes them (payload fields, `Nats-Msg-Id`, W3C trace-context headers).

use async_nats::jetstream;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::events::{DELETE_SUBJECT, DEPLOY_SUBJECT, EventKind};

/// A model version to create.
#[derive(Debug, Clone)]
pub struct NewModelVersion {
    /// Tenant.
    pub tenant_id: Uuid,
    /// Project.
    pub project_id: Uuid,
    /// Model name (created if missing in that project).
    pub model_name: String,
    /// Version number.
    pub version: i32,
    /// `storageUri` of the served model; `None` models a version whose upload never finished.
    pub artifact_uri: Option<String>,
}

/// Ids of a created model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelVersionRef {
    /// The model.
    pub model_id: Uuid,
    /// The version.
    pub model_version_id: Uuid,
}

/// An endpoint row to create.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    /// Tenant.
    pub tenant_id: Uuid,
    /// Project.
    pub project_id: Uuid,
    /// Name (unique per tenant and project).
    pub name: String,
    /// `runtime` column.
    pub runtime: String,
    /// Model version served, if any.
    pub model: Option<ModelVersionRef>,
    /// `traffic` column.
    pub traffic: Option<Value>,
    /// `autoscaling` column.
    pub autoscaling: Option<Value>,
    /// `runtime_config` column.
    pub runtime_config: Option<Value>,
}

/// Creates a model (if needed) and a version of it.
pub async fn create_model_version(
    db: &DatabaseConnection,
    new: &NewModelVersion,
) -> Result<ModelVersionRef, DbErr> {
    // Upsert so several versions of one model share its row; RETURNING gives the id either way.
    let row = db
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO models (id, tenant_id, project_id, name) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, project_id, name) DO UPDATE SET name = EXCLUDED.name \
             RETURNING id",
            [
                Uuid::new_v4().into(),
                new.tenant_id.into(),
                new.project_id.into(),
                new.model_name.clone().into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotInserted)?;
    let model_id: Uuid = row.try_get("", "id")?;
    let version = entity::model_versions::ActiveModel {
        id: Set(Uuid::new_v4()),
        tenant_id: Set(new.tenant_id),
        project_id: Set(new.project_id),
        model_id: Set(model_id),
        version: Set(new.version),
        artifact_uri: Set(new.artifact_uri.clone()),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(ModelVersionRef {
        model_id,
        model_version_id: version.id,
    })
}

/// Creates endpoint rows (status `CREATING`) in one statement; returns their ids in order.
pub async fn create_endpoints(
    db: &DatabaseConnection,
    endpoints: &[NewEndpoint],
) -> Result<Vec<Uuid>, DbErr> {
    let ids: Vec<Uuid> = endpoints.iter().map(|_| Uuid::new_v4()).collect();
    for (chunk_ids, chunk) in ids.chunks(500).zip(endpoints.chunks(500)) {
        let rows = chunk_ids
            .iter()
            .zip(chunk)
            .map(|(id, e)| entity::endpoints::ActiveModel {
                id: Set(*id),
                tenant_id: Set(e.tenant_id),
                project_id: Set(e.project_id),
                name: Set(e.name.clone()),
                runtime: Set(Some(e.runtime.clone())),
                model_id: Set(e.model.map(|m| m.model_id)),
                model_version_id: Set(e.model.map(|m| m.model_version_id)),
                traffic: Set(e.traffic.clone()),
                autoscaling: Set(e.autoscaling.clone()),
                runtime_config: Set(e.runtime_config.clone()),
                ..Default::default()
            });
        entity::endpoints::Entity::insert_many(rows)
            .exec_without_returning(db)
            .await?;
    }
    Ok(ids)
}

/// The serving fields a PATCH can change.
#[derive(Debug, Clone, Default)]
pub struct ServingPatch {
    /// New model version.
    pub model: Option<ModelVersionRef>,
    /// New `traffic` (`Some(None)` clears it).
    pub traffic: Option<Option<Value>>,
    /// New `autoscaling`.
    pub autoscaling: Option<Option<Value>>,
    /// New `runtime_config`.
    pub runtime_config: Option<Option<Value>>,
}

/// Applies a PATCH to an endpoint's serving fields (the trigger bumps its spec generation).
pub async fn patch_endpoint(
    db: &DatabaseConnection,
    endpoint_id: Uuid,
    patch: ServingPatch,
) -> Result<(), DbErr> {
    let mut row = entity::endpoints::ActiveModel {
        id: sea_orm::ActiveValue::Unchanged(endpoint_id),
        ..Default::default()
    };
    if let Some(model) = patch.model {
        row.model_id = Set(Some(model.model_id));
        row.model_version_id = Set(Some(model.model_version_id));
    }
    if let Some(traffic) = patch.traffic {
        row.traffic = Set(traffic);
    }
    if let Some(autoscaling) = patch.autoscaling {
        row.autoscaling = Set(autoscaling);
    }
    if let Some(runtime_config) = patch.runtime_config {
        row.runtime_config = Set(runtime_config);
    }
    entity::endpoints::Entity::update_many()
        .set(row)
        .filter(sea_orm::ColumnTrait::eq(
            &entity::endpoints::Column::Id,
            endpoint_id,
        ))
        .exec(db)
        .await?;
    Ok(())
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
