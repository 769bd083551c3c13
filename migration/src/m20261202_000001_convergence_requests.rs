//! `convergence_requests`: the durable "endpoint X wants converging" record, and its claim.
//!
//! The worker acknowledges a JetStream event once it has recorded what the event asked for
//! here (one row per endpoint, however many events name it), so the stream is drained at its
//! own speed and the backlog waits in Postgres, scheduled fairly per tenant. A replica that
//! starts a pass over an endpoint claims its row (`claimed_by`, `claim_expires_at`) and renews
//! the claim while the pass runs; a dead replica's claims expire and another replica takes the
//! rows over. The row is deleted only once a pass has converged the endpoint to the newest
//! request (`version` unchanged since the claim).
//!
//! The primary key is its only index: every claim and release changes `claimed_by`, and an
//! index on it would turn those cheap heap-only updates into index writes, for the few
//! statements (a renewal every few seconds, a rescan) that would use it.
//!
//! The table is new and nothing older reads it, so replicas of the previous release keep
//! working beside the ones that use it during a rolling upgrade.

use sea_orm_migration::prelude::*;

/// Creates the table.
pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000001_convergence_requests"
    }
}

const STATEMENTS: &[&str] = &[r#"CREATE TABLE IF NOT EXISTS convergence_requests (
        endpoint_id uuid PRIMARY KEY,
        tenant_id uuid,
        version bigint NOT NULL DEFAULT 1,
        events integer NOT NULL DEFAULT 0,
        wants_delete boolean NOT NULL DEFAULT false,
        follow text,
        first_published_at timestamptz,
        last_published_at timestamptz,
        traceparents text,
        requested_at timestamptz NOT NULL DEFAULT now(),
        not_before timestamptz NOT NULL DEFAULT now(),
        attempts integer NOT NULL DEFAULT 0,
        claimed_by text,
        claim_expires_at timestamptz
    )"#];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_all(manager, STATEMENTS).await
    }
}
