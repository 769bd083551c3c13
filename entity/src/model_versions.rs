//! `model_versions`: immutable versions of a registered model (platform table, read only).

use sea_orm::entity::prelude::*;

/// A model version; the worker reads `artifact_uri` as the InferenceService `storageUri`.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "model_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub model_id: Uuid,
    pub version: i32,
    pub artifact_uri: Option<String>,
    pub source_run_id: Option<String>,
    pub metrics: Option<Json>,
    pub stage: Option<String>,
    pub created_by: Option<String>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
}

impl ActiveModelBehavior for ActiveModel {}
