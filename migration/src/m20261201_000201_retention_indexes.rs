//! Indexes for retention: the worker prunes `deployment_history` by `finished_at` and
//! `rejected_events` by `received_at`, oldest first in small batches; without these each
//! batch would scan the whole table.

use sea_orm_migration::prelude::*;

/// Adds the retention indexes.
#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS deployment_history_finished_at_idx ON deployment_history (finished_at)",
    "CREATE INDEX IF NOT EXISTS rejected_events_received_at_idx ON rejected_events (received_at)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, STATEMENTS).await
    }
}
