//! Room on `convergence_requests`' pages for the updates every request goes through.
//!
//! A request row is inserted, claimed (`claimed_by`, `claim_expires_at`), sometimes re-requested
//! while claimed, and deleted, all within seconds. With pages filled to the brim by the inserts
//! of a burst, the claim found no room beside the row and wrote the new version on another
//! page, with a new entry in the primary key's index: a heap-only (HOT) update needs free space
//! on the row's own page. Half of each page is kept free for them, which costs nothing on a
//! table whose rows live for seconds.

use sea_orm_migration::prelude::*;

/// Sets the table's fill factor.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000001_request_page_room"
    }
}

const STATEMENTS: &[&str] = &["ALTER TABLE convergence_requests SET (fillfactor = 50)"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, STATEMENTS).await
    }
}
