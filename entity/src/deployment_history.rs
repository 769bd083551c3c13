//! `deployment_history`: one row per pass the worker made over an endpoint (worker table).

use sea_orm::entity::prelude::*;

/// What one pass did and how it ended.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "deployment_history")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub endpoint_id: Uuid,
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    /// The spec generation the pass worked on.
    pub generation: i64,
    /// `deploy` or `delete`.
    pub action: String,
    /// `ready`, `error`, `deleted`, `unchanged`, `superseded` or `skipped`.
    pub outcome: String,
    pub reason: Option<String>,
    /// The InferenceService name.
    pub isvc_name: String,
    pub url: Option<String>,
    /// How many events the pass covered (coalesced events count once each).
    pub events: i32,
    /// OpenTelemetry trace id of the pass, when traced.
    pub trace_id: Option<String>,
    /// When the oldest covered event was published to JetStream.
    pub event_published_at: Option<DateTimeWithTimeZone>,
    pub started_at: DateTimeWithTimeZone,
    pub finished_at: DateTimeWithTimeZone,
}

impl ActiveModelBehavior for ActiveModel {}
