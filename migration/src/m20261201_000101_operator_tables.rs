//! What the operator commands need.
//!
//! - `rejected_events.replayed_at`: when `deploy-worker rejected replay` last re-published the
//!   recorded event to its subject (`NULL`: never), so a replay is not repeated by accident.
//! - `tenant_pauses`: tenants whose deploys are paused (`deploy-worker tenant pause`). Every
//!   replica reads it with each endpoint it loads, so a pause holds across the whole worker
//!   fleet; a row is removed by `deploy-worker tenant resume`.

use sea_orm_migration::prelude::*;

/// Adds the replay column and the tenant pause table.
#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    "ALTER TABLE rejected_events ADD COLUMN IF NOT EXISTS replayed_at timestamptz",
    r#"
CREATE TABLE IF NOT EXISTS tenant_pauses (
    tenant_id uuid PRIMARY KEY,
    reason    text NOT NULL,
    paused_at timestamptz NOT NULL DEFAULT now()
)"#,
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, STATEMENTS).await
    }
}
