//! What the platform's API does, for the demo, the load harness and the tests: create model
//! versions and endpoint rows, change serving fields, and publish serving events exactly as
//! the platform publishes them (payload fields, `Nats-Msg-Id`, W3C trace-context headers).
//!
//! The rows are the platform's business, so their writing lives here, in tooling. Publishing
//! is the worker's own business as well (its operator commands publish), so the publishing
//! functions are the worker's [`deploy_worker::publish`], re-exported here so that one module
//! acts as the platform.

pub use deploy_worker::publish::{
    EventFields, ModelVersionRef, payload, publish, publish_all, publish_raw, publish_traced,
    publisher_context, subject, traceparent,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter,
};
use serde_json::Value;
use uuid::Uuid;

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
