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
    /// The payload as text for people: cut to a bounded length, control characters and
    /// invalid UTF-8 escaped.
    pub payload: String,
    /// The payload's first bytes exactly as received (64 KiB at most).
    pub payload_bytes: Option<Vec<u8>>,
    /// The payload's full length in bytes.
    pub payload_size: Option<i32>,
    /// SHA-256 of the whole payload, lowercase hex.
    pub payload_sha256: Option<String>,
    pub received_at: DateTimeWithTimeZone,
    /// When `deploy-worker rejected replay` last re-published it (`None`: never).
    pub replayed_at: Option<DateTimeWithTimeZone>,
}

impl ActiveModelBehavior for ActiveModel {}
