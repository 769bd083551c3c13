//! Schema migrations for deploy-worker.
//!
//! Four migrations, all safe on a database the platform already created:
//!
//! 1. [`m20260101_000001_platform_tables`] creates the platform tables the worker reads
//!    (`models`, `model_versions`, `endpoints`), the `citext` extension and an `updated_at`
//!    trigger — each only when it is missing. A platform database keeps its tables, rows and
//!    triggers untouched; a fresh database (the demo, the tests) gets the same shape.
//! 2. [`m20260101_000002_worker_columns`] adds what belongs to the worker: `status_reason`,
//!    `spec_generation` (bumped by a trigger only when a serving field changes),
//!    `ready_generation`, and the `deployment_history` and `rejected_events` tables.
//! 3. [`m20261201_000003_rejected_payload_bytes`] keeps a refused payload as bytes with its
//!    size and SHA-256, so no payload (NUL bytes, invalid UTF-8) can fail the record.
//! 4. [`m20261201_000101_operator_tables`] adds what the operator commands need:
//!    `rejected_events.replayed_at` and the `tenant_pauses` table.
//!
//! Every statement is idempotent (`IF NOT EXISTS`, `CREATE OR REPLACE`), so running the
//! migrations twice, or against a half-migrated database, changes nothing that is there.

pub use sea_orm_migration::prelude::*;

pub mod m20260101_000001_platform_tables;
pub mod m20260101_000002_worker_columns;
pub mod m20261201_000003_rejected_payload_bytes;
pub mod m20261201_000101_operator_tables;

/// Runs idempotent `statements` in order: the body of a migration that is only DDL.
async fn execute_all(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for sql in statements {
        db.execute_unprepared(sql).await?;
    }
    Ok(())
}

/// The ordered list of migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20260101_000001_platform_tables::Migration),
            Box::new(m20260101_000002_worker_columns::Migration),
            Box::new(m20261201_000003_rejected_payload_bytes::Migration),
            Box::new(m20261201_000101_operator_tables::Migration),
        ]
    }
}
