//! Convergence requests: the durable "endpoint X wants converging" record, and claims on it.
//!
//! An event only says "look at endpoint X" (ARCHITECTURE.md, "The event path"), so the worker
//! does not hold the message while it works: it records what the event asked for as a row of
//! `convergence_requests` (one per endpoint, however many events name it) in the group commit,
//! then acks. From there the [scheduler](crate::scheduler) takes over, and nothing is lost if
//! the worker dies right after the ack: the row is still there for the next start, or another
//! replica, to find.
//!
//! - [`Request`]: what one event (or the informer, or a start-up resume) asks of one endpoint.
//!   The tenant check happens here, in the same statement that records the request: a delete
//!   must name the endpoint's tenant and project, a deploy may leave them out but must not name
//!   others, and an event for an endpoint that does not exist is refused.
//! - [`Claims`]: a replica claims a row before it runs a pass over the endpoint
//!   (`FOR UPDATE SKIP LOCKED`, with an expiry it renews while the pass runs), so two replicas
//!   never run passes over one endpoint at once; a dead replica's claims expire and are taken
//!   over. Each row carries a `version`, bumped by every request: a pass that finishes deletes
//!   the row only if the version is the one it claimed, otherwise the endpoint is still wanted
//!   and runs again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sqlx::postgres::{PgPool, PgRow};
use sea_orm::sqlx::{self, Row as _};
use uuid::Uuid;

use crate::delivery::Follow;
use crate::events::EventKind;
use crate::parameters::{Column, Parameters};
use crate::store::{EndpointRecord, StoreError};

/// Who asks for a pass over an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A serving event, with the owner it names (checked against the endpoint's row).
    Event {
        /// Deploy or delete.
        kind: EventKind,
        /// The tenant the event names.
        tenant_id: Option<Uuid>,
        /// The project the event names.
        project_id: Option<Uuid>,
    },
    /// The informer: the endpoint's object changed or outlived it.
    Follow(Follow),
    /// The worker itself: an endpoint left `DEPLOYING`, or released from a tenant pause.
    Resume,
}

/// What one event, or the worker itself, asks of one endpoint.
#[derive(Debug, Clone)]
pub struct Request {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Who asks.
    pub source: Source,
    /// When the event reached the stream.
    pub published_at: Option<DateTime<Utc>>,
    /// W3C `traceparent` of the event's `receive` span, so the pass continues its trace.
    pub traceparent: Option<String>,
}

/// What became of a recorded [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded: the endpoint wants converging.
    Wanted {
        /// The endpoint's tenant (`None` for an endpoint without a row, followed for garbage
        /// collection).
        tenant_id: Option<Uuid>,
        /// Whether a replica holds a live claim on it (a pass runs; it will see the request).
        claimed: bool,
    },
    /// Not recorded: the endpoint does not exist, or the event names another owner.
    Refused,
}

/// Requests as the record statement reads them, column by column (typed arrays: `unnest`
/// reads them in binary).
#[derive(Default)]
struct RequestColumns<'a> {
    n: Vec<i32>,
    endpoint_id: Vec<Uuid>,
    event: Vec<bool>,
    is_delete: Vec<bool>,
    tenant_id: Vec<Option<Uuid>>,
    project_id: Vec<Option<Uuid>>,
    follow: Vec<Option<&'static str>>,
    published_at: Vec<Option<DateTime<Utc>>>,
    traceparent: Vec<Option<&'a str>>,
}

const RECORD_SQL: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::integer[], $2::uuid[], $3::boolean[], $4::boolean[], $5::uuid[],
        $6::uuid[], $7::text[], $8::timestamptz[], $9::text[])
        AS i(n, endpoint_id, event, is_delete, tenant_id, project_id, follow, published_at,
             traceparent)
), checked AS (
    SELECT i.*, e.tenant_id AS owner
    FROM input i LEFT JOIN endpoints e ON e.id = i.endpoint_id
    WHERE NOT i.event OR (e.id IS NOT NULL AND CASE
        WHEN i.is_delete THEN i.tenant_id = e.tenant_id AND i.project_id = e.project_id
        ELSE (i.tenant_id IS NULL OR i.tenant_id = e.tenant_id)
         AND (i.project_id IS NULL OR i.project_id = e.project_id) END)
), merged AS (
    SELECT endpoint_id, (array_agg(owner))[1] AS tenant_id,
           (count(*) FILTER (WHERE event))::integer AS events,
           bool_or(is_delete) AS wants_delete, max(follow) AS follow,
           min(published_at) AS first_published_at, max(published_at) AS last_published_at,
           string_agg(traceparent, ' ' ORDER BY n) AS traceparents
    FROM checked GROUP BY endpoint_id
), recorded AS (
    INSERT INTO convergence_requests AS r
        (endpoint_id, tenant_id, events, wants_delete, follow, first_published_at,
         last_published_at, traceparents)
    SELECT endpoint_id, tenant_id, events, wants_delete, follow, first_published_at,
        last_published_at, traceparents
    FROM merged
    ON CONFLICT (endpoint_id) DO UPDATE SET
        version = r.version + 1,
        tenant_id = COALESCE(r.tenant_id, excluded.tenant_id),
        events = r.events + excluded.events,
        wants_delete = r.wants_delete OR excluded.wants_delete,
        follow = GREATEST(r.follow, excluded.follow),
        first_published_at = LEAST(r.first_published_at, excluded.first_published_at),
        last_published_at = GREATEST(r.last_published_at, excluded.last_published_at),
        traceparents = array_to_string((string_to_array(
            concat_ws(' ', r.traceparents, excluded.traceparents), ' '))[greatest(
            cardinality(string_to_array(concat_ws(' ', r.traceparents, excluded.traceparents), ' '))
            - 15, 1):], ' '),
        not_before = LEAST(r.not_before, now())
    RETURNING r.endpoint_id, r.tenant_id,
        (r.claimed_by IS NOT NULL AND r.claim_expires_at > now()) AS claimed
)
SELECT c.n, r.tenant_id, r.claimed FROM checked c JOIN recorded r USING (endpoint_id)"#;

/// Records `requests` inside `txn` (the group commit's transaction); returns, per request,
/// what became of it.
pub(crate) async fn record(
    txn: &mut sqlx::PgConnection,
    requests: &[&Request],
) -> Result<Vec<Recorded>, StoreError> {
    let mut columns = RequestColumns::default();
    for (n, r) in requests.iter().enumerate() {
        let (event, is_delete, tenant_id, project_id, follow) = match r.source {
            Source::Event {
                kind,
                tenant_id,
                project_id,
            } => (true, kind == EventKind::Delete, tenant_id, project_id, None),
            Source::Follow(Follow::Check) => (false, false, None, None, Some("check")),
            Source::Follow(Follow::Collect) => (false, false, None, None, Some("collect")),
            Source::Resume => (false, false, None, None, None),
        };
        // `n` numbers the requests of one batch (at most a few thousand).
        columns.n.push(i32::try_from(n).unwrap_or(i32::MAX));
        columns.endpoint_id.push(r.endpoint_id);
        columns.event.push(event);
        columns.is_delete.push(is_delete);
        columns.tenant_id.push(tenant_id);
        columns.project_id.push(project_id);
        columns.follow.push(follow);
        columns.published_at.push(r.published_at);
        columns.traceparent.push(r.traceparent.as_deref());
    }
    // per row: three ids, a traceparent, a time and the small rest
    let parameters = Parameters::new(9, requests.len(), 192)
        .column(&columns.n)?
        .column(&columns.endpoint_id)?
        .column(&columns.event)?
        .column(&columns.is_delete)?
        .column(&columns.tenant_id)?
        .column(&columns.project_id)?
        .column(&columns.follow)?
        .column(&columns.published_at)?
        .column(&columns.traceparent)?;
    let found: Vec<(i32, Option<Uuid>, bool)> =
        sqlx::query_as_with(RECORD_SQL, parameters.into_arguments())
            .fetch_all(txn)
            .await?;
    let mut recorded = vec![Recorded::Refused; requests.len()];
    for (n, tenant_id, claimed) in found {
        if let Some(slot) = usize::try_from(n).ok().and_then(|n| recorded.get_mut(n)) {
            *slot = Recorded::Wanted { tenant_id, claimed };
        }
    }
    Ok(recorded)
}

/// A claimed request: what the pass over its endpoint is to cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The request's version when claimed; the row is deleted at the end of the pass only if
    /// it is still this.
    pub version: i64,
    /// Events recorded since the last pass finished.
    pub events: i32,
    /// Whether one of them asked for a delete.
    pub wants_delete: bool,
    /// What the informer asked for (`check` or `collect`), if anything.
    pub follow: Option<String>,
    /// Publish time of the oldest event covered.
    pub first_published_at: Option<DateTime<Utc>>,
    /// `traceparent`s of the events' `receive` spans, oldest first, space-separated (the
    /// last 16).
    pub traceparents: Option<String>,
    /// Passes over this request that were handed back so far (for the retry delay).
    pub attempts: i32,
}

impl Claim {
    /// What the informer asked for, if anything.
    pub fn follow(&self) -> Option<Follow> {
        match self.follow.as_deref() {
            Some("collect") => Some(Follow::Collect),
            Some("check") => Some(Follow::Check),
            _ => None,
        }
    }
}

/// A claim, with the endpoint's row as the claiming statement read it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRequest {
    /// The claim.
    pub claim: Claim,
    /// The endpoint's row at the claim; `None` when the endpoint does not exist.
    pub row: Option<EndpointRecord>,
}

impl ClaimedRequest {
    /// Decodes a row of the claim statement by position (see `CLAIM_SQL`): the claim's
    /// columns, then the endpoint's from position 8 (`EndpointRecord::decode_at`). The
    /// driver's per-value type check is skipped, as there.
    fn decode(row: &PgRow) -> Result<Self, sqlx::Error> {
        let claim = Claim {
            endpoint_id: row.try_get_unchecked(0)?,
            version: row.try_get_unchecked(1)?,
            events: row.try_get_unchecked(2)?,
            wants_delete: row.try_get_unchecked(3)?,
            follow: row.try_get_unchecked(4)?,
            first_published_at: row.try_get_unchecked(5)?,
            traceparents: row.try_get_unchecked(6)?,
            attempts: row.try_get_unchecked(7)?,
        };
        let found: Option<Uuid> = row.try_get_unchecked(8)?;
        let row = match found {
            Some(_) => Some(EndpointRecord::decode_at(row, 8)?),
            None => None,
        };
        Ok(Self { claim, row })
    }
}

/// How a pass over a claimed request ended, for [`Claims::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The version claimed.
    pub version: i64,
    /// Events the claim covered (a request that stays wanted keeps only the newer ones).
    pub events: i32,
    /// The `traceparent`s the claim covered, space-separated.
    pub covered: Option<String>,
    /// `None` when the pass converged (the request is done unless a newer one came);
    /// otherwise the pass handed back, and the request is retried after this delay.
    pub retry_after: Option<Duration>,
}

/// A request still wanted after its pass (a newer request came, or the pass handed back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillWanted {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Its tenant.
    pub tenant_id: Option<Uuid>,
    /// When to retry (now when a newer request came).
    pub retry_after: Duration,
}

/// A claim renewed by [`Claims::renew`], with what its request looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The request's version now (newer than the claimed one when a request came meanwhile).
    pub version: i64,
    /// Whether a delete was asked for.
    pub wants_delete: bool,
}

/// An unclaimed request found by [`Claims::rescan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unclaimed {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Its tenant.
    pub tenant_id: Option<Uuid>,
}

/// This replica's claims on convergence requests; cheap to clone.
#[derive(Clone)]
pub struct Claims {
    pool: PgPool,
    holder: String,
    ttl: Duration,
}

// The claim reads the endpoint's row in the same statement (what `Store::load` reads), so a
// pass starts without a query of its own. The columns are decoded by position, in the order
// `ClaimedRequest::decode` reads them; the endpoint's in `LOAD_SQL`'s order.
const CLAIM_SQL: &str = r#"
WITH claimed AS (
    UPDATE convergence_requests r SET claimed_by = $2,
        claim_expires_at = now() + $3 * interval '1 millisecond'
    FROM (SELECT endpoint_id FROM convergence_requests
          WHERE endpoint_id = ANY($1::uuid[])
            AND (claimed_by IS NULL OR claim_expires_at < now())
          FOR UPDATE SKIP LOCKED) c
    WHERE r.endpoint_id = c.endpoint_id
    RETURNING r.endpoint_id, r.version, r.events, r.wants_delete, r.follow,
        r.first_published_at, r.traceparents, r.attempts
)
SELECT c.endpoint_id, c.version, c.events, c.wants_delete, c.follow, c.first_published_at,
    c.traceparents, c.attempts,
    e.id, e.tenant_id, e.project_id, e.name::text, e.status, e.url, e.runtime, e.model_id,
    e.model_version_id, e.traffic, e.autoscaling, e.runtime_config, e.spec_generation,
    e.ready_generation, (mv.id IS NOT NULL), mv.artifact_uri,
    e.tenant_id IN (SELECT tenant_id FROM tenant_pauses)
FROM claimed c
LEFT JOIN endpoints e ON e.id = c.endpoint_id
LEFT JOIN model_versions mv ON mv.id = e.model_version_id AND mv.tenant_id = e.tenant_id"#;

const RELEASE_SQL: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::integer[], $4::text[], $5::boolean[],
        $6::bigint[]) AS i(endpoint_id, version, events, covered, failed, retry_ms)
), done AS (
    DELETE FROM convergence_requests r USING input i
    WHERE r.endpoint_id = i.endpoint_id AND r.version = i.version AND NOT i.failed
      AND r.claimed_by = $7
    RETURNING r.endpoint_id
), kept AS (
    UPDATE convergence_requests r SET claimed_by = NULL, claim_expires_at = NULL,
        attempts = CASE WHEN i.failed THEN r.attempts + 1 ELSE 0 END,
        events = CASE WHEN i.failed THEN r.events ELSE greatest(r.events - i.events, 0) END,
        traceparents = CASE WHEN i.failed THEN r.traceparents ELSE NULLIF(array_to_string(ARRAY(
            SELECT t FROM unnest(string_to_array(r.traceparents, ' ')) AS t
            WHERE t <> ALL (string_to_array(coalesce(i.covered, ''), ' '))), ' '), '') END,
        first_published_at = CASE WHEN i.failed THEN r.first_published_at
            ELSE r.last_published_at END,
        not_before = now() + i.retry_ms * interval '1 millisecond'
    FROM input i
    WHERE r.endpoint_id = i.endpoint_id AND r.claimed_by = $7
      AND r.endpoint_id NOT IN (SELECT endpoint_id FROM done)
    RETURNING r.endpoint_id, r.tenant_id, i.retry_ms
)
SELECT endpoint_id, tenant_id, retry_ms FROM kept"#;

const RENEW_SQL: &str = r#"
UPDATE convergence_requests SET claim_expires_at = now() + $2 * interval '1 millisecond'
WHERE claimed_by = $1
  AND endpoint_id = ANY($3::uuid[])
RETURNING endpoint_id, version, wants_delete"#;

const RESCAN_SQL: &str = r#"
SELECT endpoint_id, tenant_id FROM (
    SELECT endpoint_id, tenant_id,
           row_number() OVER (PARTITION BY tenant_id ORDER BY requested_at) AS rank
    FROM convergence_requests
    WHERE (claimed_by IS NULL OR claim_expires_at < now()) AND not_before <= now()) s
WHERE rank <= $1
LIMIT $2"#;

const RESUME_SQL: &str = r#"
INSERT INTO convergence_requests (endpoint_id, tenant_id)
SELECT id, tenant_id FROM endpoints WHERE status = 'DEPLOYING'
ON CONFLICT (endpoint_id) DO NOTHING"#;

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Claims {
    /// Claims held as `holder` (unique per worker process), expiring `ttl` after their last
    /// renewal, on the store's pool ([`crate::store::Store::pool`]).
    pub fn new(pool: PgPool, holder: String, ttl: Duration) -> Self {
        Self { pool, holder, ttl }
    }

    /// How long a claim lives without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Claims what it can of `ids`: rows another live replica holds, rows locked by a claim
    /// running right now, and rows already done are left out. Each claim comes with its
    /// endpoint's row, read by the same statement.
    pub async fn claim(&self, ids: &[Uuid]) -> Result<Vec<ClaimedRequest>, StoreError> {
        let rows = sqlx::query(CLAIM_SQL)
            .bind(Column(ids))
            .bind(&self.holder)
            .bind(millis(self.ttl))
            .fetch_all(&self.pool)
            .await?;
        // sized up front: collecting through `Result` cannot know the length, and a claimed
        // request with its row is a few hundred bytes, copied again at every doubling
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push(ClaimedRequest::decode(row)?);
        }
        Ok(claimed)
    }

    /// Ends the claims of finished passes: a request converged at its claimed version is
    /// deleted; the others are released and returned, to run again.
    pub async fn release(&self, done: &[Release]) -> Result<Vec<StillWanted>, StoreError> {
        let endpoint_id: Vec<Uuid> = done.iter().map(|r| r.endpoint_id).collect();
        let version: Vec<i64> = done.iter().map(|r| r.version).collect();
        let events: Vec<i32> = done.iter().map(|r| r.events).collect();
        let covered: Vec<Option<&str>> = done.iter().map(|r| r.covered.as_deref()).collect();
        let failed: Vec<bool> = done.iter().map(|r| r.retry_after.is_some()).collect();
        let retry_ms: Vec<i64> = done
            .iter()
            .map(|r| r.retry_after.map_or(0, millis))
            .collect();
        // per row: an id, a version, counts, a flag, a delay and what the pass covered
        let parameters = Parameters::new(7, done.len(), 96)
            .column(&endpoint_id)?
            .column(&version)?
            .column(&events)?
            .column(&covered)?
            .column(&failed)?
            .column(&retry_ms)?
            .add(&self.holder)?;
        let kept: Vec<(Uuid, Option<Uuid>, i64)> =
            sqlx::query_as_with(RELEASE_SQL, parameters.into_arguments())
                .fetch_all(&self.pool)
                .await?;
        Ok(kept
            .into_iter()
            .map(|(endpoint_id, tenant_id, retry_ms)| StillWanted {
                endpoint_id,
                tenant_id,
                retry_after: Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0)),
            })
            .collect())
    }

    /// Extends this replica's claims on `held` (the passes it runs), and tells what each
    /// request looks like now. A claim it holds without knowing it (the answer to a claim
    /// query was lost) is not renewed, so it expires and is taken over.
    pub async fn renew(&self, held: &[Uuid]) -> Result<Vec<Renewed>, StoreError> {
        let rows: Vec<(Uuid, i64, bool)> = sqlx::query_as(RENEW_SQL)
            .bind(&self.holder)
            .bind(millis(self.ttl))
            .bind(Column(held))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(endpoint_id, version, wants_delete)| Renewed {
                endpoint_id,
                version,
                wants_delete,
            })
            .collect())
    }

    /// Gives up every claim this replica holds (at the end of a drain), so other replicas
    /// take the requests at once instead of after the claims expire.
    pub async fn release_all(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE convergence_requests SET claimed_by = NULL, claim_expires_at = NULL \
             WHERE claimed_by = $1",
        )
        .bind(&self.holder)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Requests nobody holds a live claim on and that are due: at most `per_tenant` of each
    /// tenant (oldest first) and `limit` in all, so one tenant's backlog cannot crowd the
    /// others out of a rescan.
    pub async fn rescan(
        &self,
        per_tenant: usize,
        limit: usize,
    ) -> Result<Vec<Unclaimed>, StoreError> {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let rows: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(RESCAN_SQL)
            .bind(as_i64(per_tenant))
            .bind(as_i64(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(endpoint_id, tenant_id)| Unclaimed {
                endpoint_id,
                tenant_id,
            })
            .collect())
    }

    /// Records a request for every endpoint left `DEPLOYING` that has none (an earlier
    /// release of the worker kept no requests; a crash of this one left them claimed).
    pub async fn resume_deploying(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(RESUME_SQL).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }
}
