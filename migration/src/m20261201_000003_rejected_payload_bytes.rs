//! Poison-proof `rejected_events`: the payload is kept as bytes, with its size and digest.
//!
//! A refused message can carry anything — a NUL byte, invalid UTF-8, megabytes — and the old
//! `payload text` column could not hold all of it (Postgres text refuses NUL). The raw bytes (the
//! first 64 KiB) now go into `payload_bytes`, the full length into `payload_size` and a SHA-256
//! of the whole payload into `payload_sha256`, so an operator can match a record to what was
//! published even when it was cut. `payload` stays, holding an escaped text rendering for people.

use sea_orm_migration::prelude::*;

/// Adds the byte columns.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000003_rejected_payload_bytes"
    }
}

const STATEMENTS: &[&str] = &[
    "ALTER TABLE rejected_events ADD COLUMN IF NOT EXISTS payload_bytes bytea",
    "ALTER TABLE rejected_events ADD COLUMN IF NOT EXISTS payload_size integer",
    "ALTER TABLE rejected_events ADD COLUMN IF NOT EXISTS payload_sha256 text",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, STATEMENTS).await
    }
}
