//! `rejected_events`: messages the worker terminated instead of acting on (worker table).

use sea_orm::entity::prelude::*;

/// A terminated message and why, so nothing refused is lost without trace.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "rejected_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub subject: String,
    pub stream_sequence: Option<i64>,
    /// The endpoint named by the event, when it could be read.
    pub endpoint_id: Option<Uuid>,
    pub reason: String,
    /// The payload as received, cut to a bounded length.
    pub payload: String,
    pub received_at: DateTimeWithTimeZone,
}

impl ActiveModelBehavior for ActiveModel {}
