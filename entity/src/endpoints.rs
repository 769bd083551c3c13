//! `endpoints`: one row per serving endpoint (platform table, plus the worker's columns).

use sea_orm::entity::prelude::*;

/// An endpoint row. `status`/`url` and the three worker columns are written by the worker.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "endpoints")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub status: String,
    pub url: Option<String>,
    pub runtime: Option<String>,
    pub model_id: Option<Uuid>,
    pub model_version_id: Option<Uuid>,
    pub traffic: Option<Json>,
    pub autoscaling: Option<Json>,
    pub runtime_config: Option<Json>,
    pub created_by: Option<String>,
    pub created_at: DateTimeWithTimeZone,
    pub updated_at: DateTimeWithTimeZone,
    /// Why the endpoint is in `ERROR` (worker column).
    pub status_reason: Option<String>,
    /// Bumped by a trigger whenever a serving field changes (worker column).
    pub spec_generation: i64,
    /// The spec generation last observed Ready (worker column).
    pub ready_generation: Option<i64>,
}

impl ActiveModelBehavior for ActiveModel {}
