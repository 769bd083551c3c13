//! Schema migrations for deploy-worker.
//!
//! Eight migrations, all safe on a database the platform already created:
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
//! 5. [`m20261201_000201_retention_indexes`] indexes the time columns that retention prunes by.
//! 6. [`m20261202_000001_convergence_requests`] adds the durable record of endpoints that want
//!    converging, and the claims replicas take on them.
//! 7. [`m20261202_000002_cheaper_status_writes`] makes a status write fire no trigger and
//!    touch no index beyond what the platform's schema has.
//! 8. [`m20261206_000001_request_page_room`] keeps half of each `convergence_requests` page
//!    free, so a request's claim is a heap-only update.
//!
//! Every statement is idempotent (`IF NOT EXISTS`, `CREATE OR REPLACE`), so running the
//! migrations twice, or against a half-migrated database, changes nothing that is there.
//!
//! **Concurrent starts.** Whoever migrates holds the Postgres advisory lock
//! [`MIGRATION_LOCK_KEY`] while doing so: [`up_locked`] (used by `deploy-worker migrate` and by
//! the worker at start-up) takes it for its transaction, and this crate's CLI takes it for its
//! session ([`connect_locked`]). Two replicas or two `migrate` commands started at once on a
//! fresh database therefore run one after the other; the second finds nothing pending.

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait,
};

pub mod m20260101_000001_platform_tables;
pub mod m20260101_000002_worker_columns;
pub mod m20261201_000003_rejected_payload_bytes;
pub mod m20261201_000101_operator_tables;
pub mod m20261201_000201_retention_indexes;
pub mod m20261202_000001_convergence_requests;
pub mod m20261202_000002_cheaper_status_writes;
pub mod m20261206_000001_request_page_room;

/// Runs `statements` in order on the migration's connection (every migration here is a
/// list of idempotent SQL statements).
pub(crate) async fn execute_all(
    manager: &SchemaManager<'_>,
    statements: &[&str],
) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for sql in statements {
        db.execute_unprepared(sql).await?;
    }
    Ok(())
}

/// Key of the Postgres advisory lock held while migrating (the ASCII bytes of `dwmigrat`).
pub const MIGRATION_LOCK_KEY: i64 = 0x6477_6d69_6772_6174;

/// Applies every pending migration inside one transaction that first takes the advisory lock
/// [`MIGRATION_LOCK_KEY`]; a concurrent migrator waits for it, then finds nothing pending.
pub async fn up_locked(db: &DatabaseConnection) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [MIGRATION_LOCK_KEY.into()],
    ))
    .await?;
    Migrator::up(&txn, None).await?;
    txn.commit().await
}

/// Opens a single-connection pool whose session holds the advisory lock
/// [`MIGRATION_LOCK_KEY`] until the process ends (for this crate's CLI, which runs every
/// command on that one connection).
pub async fn connect_locked(mut options: ConnectOptions) -> Result<DatabaseConnection, DbErr> {
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_lock($1)",
        [MIGRATION_LOCK_KEY.into()],
    ))
    .await?;
    Ok(db)
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
            Box::new(m20261201_000201_retention_indexes::Migration),
            Box::new(m20261202_000001_convergence_requests::Migration),
            Box::new(m20261202_000002_cheaper_status_writes::Migration),
            Box::new(m20261206_000001_request_page_room::Migration),
        ]
    }
}
