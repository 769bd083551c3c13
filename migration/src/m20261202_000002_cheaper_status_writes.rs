//! Cheaper status writes: every pass writes `endpoints.status` once or twice, so what fires on
//! that write is paid per event.
//!
//! - The spec-generation trigger fires only for updates that name a serving column (or
//!   `spec_generation` itself, which it keeps writers from moving by hand): a status write names
//!   none, so it no longer runs a PL/pgSQL function per row. What the trigger does is unchanged.
//! - The partial index on `status = 'DEPLOYING'` goes: `status` in its predicate made every
//!   status write a non-HOT update (a new entry in every index of `endpoints`), to speed up a
//!   scan that now runs once at start-up and in the periodic metrics read.

use sea_orm_migration::prelude::*;

/// Narrows the trigger and drops the index.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000002_cheaper_status_writes"
    }
}

const STATEMENTS: &[&str] = &[
    "DROP TRIGGER IF EXISTS endpoints_bump_spec_generation ON endpoints",
    "CREATE TRIGGER endpoints_bump_spec_generation
        BEFORE UPDATE OF model_version_id, traffic, autoscaling, runtime, runtime_config,
            spec_generation
        ON endpoints
        FOR EACH ROW EXECUTE FUNCTION deploy_worker_bump_spec_generation()",
    "DROP INDEX IF EXISTS endpoints_deploying_idx",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, STATEMENTS).await
    }
}
