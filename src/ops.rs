//! Operator commands: converge one endpoint now, inspect and replay rejected events, pause and
//! resume a tenant's deploys.
//!
//! Every command talks to the same Postgres and JetStream as the workers and changes nothing
//! behind their back: it either publishes the events the platform would publish (the workers do
//! the rest, on whichever replica takes them) or writes the worker's own tables.
//!
//! - [`reconcile`]: publishes a deploy event for an endpoint, with the row's tenant, project and
//!   model fields, a fresh `Nats-Msg-Id` and a new W3C trace (so the pass can be found in
//!   Jaeger); [`wait_outcome`] then waits for the pass's history row.
//! - [`list_rejected`] and [`replay_rejected`]: `rejected_events` as a table, and re-publishing
//!   recorded payloads to their subject after the cause was fixed, marking them `replayed_at`.
//! - [`pause_tenant`], [`resume_tenant`], [`list_pauses`]: a row in `tenant_pauses` makes every
//!   replica hold that tenant's deploys (see [`crate::pass`]); resuming deletes the row and
//!   publishes a deploy event for every endpoint held meanwhile ([`crate::poller`] resumes any
//!   the command could not reach).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use entity::rejected_events::{Column, Entity as Rejected};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    FromQueryResult, QueryFilter, QueryOrder, Statement, Value,
};
use uuid::Uuid;

use crate::events::EventKind;
use crate::outcome::Outcome;
use crate::publish::{self, EventFields, ModelVersionRef};
use crate::store::PAUSED_REASON;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Postgres refused or failed a query.
    #[error(
        "database error: {0}; check DATABASE_URL and that `deploy-worker migrate` has been run"
    )]
    Database(#[from] DbErr),
    /// An event could not be published.
    #[error(
        "cannot publish to JetStream: {0}; check NATS_URL and that the stream MLOPS_SERVING exists"
    )]
    Publish(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No endpoint has this id.
    #[error("endpoint {0} does not exist")]
    UnknownEndpoint(Uuid),
    /// The endpoint is deleted: there is nothing to converge.
    #[error("endpoint {0} is DELETED; there is nothing to converge")]
    DeletedEndpoint(Uuid),
    /// No rejected event has this id.
    #[error("rejected event {0} does not exist; `deploy-worker rejected list` shows the ids")]
    UnknownRejected(i64),
    /// No pass recorded an outcome in time.
    #[error(
        "no outcome recorded for endpoint {endpoint_id} within {waited:?}; the event stays in \
         JetStream and a worker will still act on it (is one running?)"
    )]
    Timeout {
        /// The endpoint waited for.
        endpoint_id: Uuid,
        /// How long.
        waited: Duration,
    },
}

fn statement(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Publishes one event of `kind` for `fields` with a fresh `Nats-Msg-Id` inside a new trace;
/// returns the message id and the `traceparent` sent.
async fn publish_traced(
    js: &jetstream::Context,
    kind: EventKind,
    fields: &EventFields<'_>,
) -> Result<(String, Option<String>), OpsError> {
    let cx = publish::publisher_context();
    let message_id = Uuid::new_v4().to_string();
    publish::publish_traced(js, kind, fields, &message_id, &cx)
        .await
        .map_err(OpsError::Publish)?;
    Ok((message_id, publish::traceparent(&cx)))
}

/// The fields of an endpoint row that go into its events.
#[derive(Debug, Clone, FromQueryResult)]
struct EventRow {
    id: Uuid,
    tenant_id: Uuid,
    project_id: Uuid,
    name: String,
    model_id: Option<Uuid>,
    model_version_id: Option<Uuid>,
    status: String,
}

impl EventRow {
    const COLUMNS: &'static str =
        "id, tenant_id, project_id, name::text AS name, model_id, model_version_id, status";

    fn fields(&self) -> EventFields<'_> {
        EventFields {
            tenant_id: self.tenant_id,
            project_id: self.project_id,
            endpoint_id: self.id,
            name: &self.name,
            model: self
                .model_id
                .zip(self.model_version_id)
                .map(|(model_id, model_version_id)| ModelVersionRef {
                    model_id,
                    model_version_id,
                }),
        }
    }
}

/// A deploy event published by [`reconcile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Its `Nats-Msg-Id`.
    pub message_id: String,
    /// The W3C `traceparent` it carried (its trace id finds the pass in Jaeger).
    pub traceparent: Option<String>,
    /// The endpoint's last `deployment_history` id before the event (0 when none), for
    /// [`wait_outcome`].
    pub history_before: i64,
}

/// Publishes a deploy event for `endpoint_id` exactly as the platform does when a serving
/// field changes, from the endpoint row; a worker then converges the endpoint to its current
/// intent (an endpoint already Ready at its spec generation is recorded `unchanged`).
pub async fn reconcile(
    db: &DatabaseConnection,
    js: &jetstream::Context,
    endpoint_id: Uuid,
) -> Result<Reconciled, OpsError> {
    #[derive(FromQueryResult)]
    struct Last {
        last: i64,
    }
    let row = EventRow::find_by_statement(statement(
        &format!("SELECT {} FROM endpoints WHERE id = $1", EventRow::COLUMNS),
        [endpoint_id.into()],
    ))
    .one(db)
    .await?
    .ok_or(OpsError::UnknownEndpoint(endpoint_id))?;
    if row.status == entity::status::DELETED {
        return Err(OpsError::DeletedEndpoint(endpoint_id));
    }
    let history_before = Last::find_by_statement(statement(
        "SELECT COALESCE(max(id), 0) AS last FROM deployment_history WHERE endpoint_id = $1",
        [endpoint_id.into()],
    ))
    .one(db)
    .await?
    .map_or(0, |l| l.last);
    let (message_id, traceparent) = publish_traced(js, EventKind::Deploy, &row.fields()).await?;
    Ok(Reconciled {
        endpoint_id,
        message_id,
        traceparent,
        history_before,
    })
}

/// The outcome of the pass that handled an event, from its history row and the endpoint row.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct PassOutcome {
    /// `deployment_history.outcome` (`ready`, `error`, `unchanged`, `paused`, …).
    pub outcome: String,
    /// Why, for an error, a skip or a hold.
    pub reason: Option<String>,
    /// The pass's trace id.
    pub trace_id: Option<String>,
    /// The endpoint's status now.
    pub status: String,
    /// Its URL now.
    pub url: Option<String>,
}

/// Waits until a pass over `endpoint_id` records an outcome after history row `history_before`
/// (a pass superseded by a newer intent is not an outcome: the newer one's is awaited).
pub async fn wait_outcome(
    db: &DatabaseConnection,
    endpoint_id: Uuid,
    history_before: i64,
    timeout: Duration,
) -> Result<PassOutcome, OpsError> {
    let started = Instant::now();
    loop {
        let found = PassOutcome::find_by_statement(statement(
            "SELECT h.outcome, h.reason, h.trace_id, e.status, e.url \
             FROM deployment_history h JOIN endpoints e ON e.id = h.endpoint_id \
             WHERE h.endpoint_id = $1 AND h.id > $2 AND h.outcome <> $3 \
             ORDER BY h.id DESC LIMIT 1",
            [
                endpoint_id.into(),
                history_before.into(),
                Outcome::Superseded.as_str().into(),
            ],
        ))
        .one(db)
        .await?;
        if let Some(found) = found {
            return Ok(found);
        }
        if started.elapsed() >= timeout {
            return Err(OpsError::Timeout {
                endpoint_id,
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One row of `rejected_events`.
pub type RejectedRecord = entity::rejected_events::Model;

/// Rejected events received at or after `since` (all when `None`), oldest first.
pub async fn list_rejected(
    db: &DatabaseConnection,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<RejectedRecord>, OpsError> {
    let mut query = Rejected::find().order_by_asc(Column::Id);
    if let Some(since) = since {
        query = query.filter(Column::ReceivedAt.gte(since.fixed_offset()));
    }
    Ok(query.all(db).await?)
}

/// Which rejected events to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaySelection {
    /// This one, even if it was replayed before.
    Id(i64),
    /// Every one received at or after this time and not replayed yet.
    Since(DateTime<Utc>),
}

/// What [`replay_rejected`] did with one rejected event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayResult {
    /// Published again to its subject and marked `replayed_at`.
    Published {
        /// Row id.
        id: i64,
        /// Subject it went to.
        subject: String,
    },
    /// Not replayable; left as it was.
    Skipped {
        /// Row id.
        id: i64,
        /// Why.
        why: String,
    },
}

/// The payload exactly as it was published, or why it cannot be re-published: from
/// `payload_bytes` when the whole payload was kept there, else (rows recorded before the worker
/// kept bytes) from the `payload` text when that is not cut or lossy.
fn replayable_payload(record: &RejectedRecord) -> Result<(EventKind, Vec<u8>), String> {
    let kind = EventKind::from_subject(&record.subject)
        .ok_or_else(|| format!("subject {} is not one the worker consumes", record.subject))?;
    match (&record.payload_bytes, record.payload_size) {
        (Some(bytes), Some(size))
            if usize::try_from(size).is_ok_and(|size| size == bytes.len()) =>
        {
            Ok((kind, bytes.clone()))
        }
        (Some(bytes), size) => Err(format!(
            "only {} of the payload's {} bytes were recorded; the original cannot be re-published",
            bytes.len(),
            size.map_or_else(|| "unknown".to_owned(), |s| s.to_string())
        )),
        (None, _) if record.payload.len() >= LEGACY_TEXT_MAX => Err(format!(
            "the payload was recorded as text cut to {LEGACY_TEXT_MAX} bytes; the original \
             cannot be re-published"
        )),
        (None, _) if record.payload.contains(char::REPLACEMENT_CHARACTER) => Err(
            "the payload was not valid UTF-8 and was recorded lossily as text; the original \
             cannot be re-published"
                .to_owned(),
        ),
        (None, _) => Ok((kind, record.payload.clone().into_bytes())),
    }
}

/// How much of a payload rows recorded before `payload_bytes` existed kept as text.
const LEGACY_TEXT_MAX: usize = 4096;

/// Re-publishes the selected rejected events to their subjects (the payload's bytes as
/// published, a fresh `Nats-Msg-Id`) and marks each `replayed_at`. Events whose payload was not
/// recorded whole are skipped. A replayed event that is still wrong is refused and recorded again, as a new row.
pub async fn replay_rejected(
    db: &DatabaseConnection,
    js: &jetstream::Context,
    selection: ReplaySelection,
) -> Result<Vec<ReplayResult>, OpsError> {
    let records = match selection {
        ReplaySelection::Id(id) => vec![
            Rejected::find_by_id(id)
                .one(db)
                .await?
                .ok_or(OpsError::UnknownRejected(id))?,
        ],
        ReplaySelection::Since(since) => {
            Rejected::find()
                .filter(Column::ReceivedAt.gte(since.fixed_offset()))
                .filter(Column::ReplayedAt.is_null())
                .order_by_asc(Column::Id)
                .all(db)
                .await?
        }
    };
    let mut results = Vec::with_capacity(records.len());
    for record in records {
        let (kind, payload) = match replayable_payload(&record) {
            Ok(replayable) => replayable,
            Err(why) => {
                results.push(ReplayResult::Skipped { id: record.id, why });
                continue;
            }
        };
        let message_id = Uuid::new_v4().to_string();
        publish::publish_raw(js, kind, payload, Some(&message_id))
            .await
            .map_err(OpsError::Publish)?;
        // Published first: should marking fail, a second replay publishes a duplicate, which
        // the worker treats like any repeated event (level-triggered), never a lost one.
        db.execute_raw(statement(
            "UPDATE rejected_events SET replayed_at = now() WHERE id = $1",
            [record.id.into()],
        ))
        .await?;
        results.push(ReplayResult::Published {
            id: record.id,
            subject: record.subject,
        });
    }
    Ok(results)
}

/// A paused tenant.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct TenantPause {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Why it was paused.
    pub reason: String,
    /// Since when.
    pub paused_at: DateTime<Utc>,
    /// Its endpoints held `DEPLOYING` by the pause so far.
    pub held: i64,
}

/// What [`pause_tenant`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paused {
    /// False when the tenant was already paused (its reason is updated).
    pub newly: bool,
    /// Endpoints of the tenant (0 hints at a mistyped id).
    pub endpoints: i64,
}

/// Pauses `tenant_id`'s deploys on every replica: from the next pass on, its endpoints are
/// recorded `DEPLOYING` with the reason [`PAUSED_REASON`] instead of being deployed. Deletes
/// still run; a deploy already past the check finishes.
pub async fn pause_tenant(
    db: &DatabaseConnection,
    tenant_id: Uuid,
    reason: &str,
) -> Result<Paused, OpsError> {
    #[derive(FromQueryResult)]
    struct Row {
        newly: bool,
        endpoints: i64,
    }
    let row = Row::find_by_statement(statement(
        "WITH upsert AS ( \
             INSERT INTO tenant_pauses (tenant_id, reason) VALUES ($1, $2) \
             ON CONFLICT (tenant_id) DO UPDATE SET reason = EXCLUDED.reason \
             RETURNING (xmax = 0) AS newly) \
         SELECT upsert.newly, (SELECT count(*) FROM endpoints WHERE tenant_id = $1) AS endpoints \
         FROM upsert",
        [tenant_id.into(), reason.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| DbErr::Custom("the pause was not recorded".into()))?;
    Ok(Paused {
        newly: row.newly,
        endpoints: row.endpoints,
    })
}

/// What [`resume_tenant`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// False when the tenant was not paused.
    pub was_paused: bool,
    /// Deploy events published for endpoints the pause held.
    pub republished: usize,
}

/// Lifts `tenant_id`'s pause and publishes a deploy event (as the platform would) for every
/// endpoint the pause held, so they converge without any new event from the platform. Safe to
/// run again: it re-publishes for whatever is still held.
pub async fn resume_tenant(
    db: &DatabaseConnection,
    js: &jetstream::Context,
    tenant_id: Uuid,
) -> Result<Resumed, OpsError> {
    let deleted = db
        .execute_raw(statement(
            "DELETE FROM tenant_pauses WHERE tenant_id = $1",
            [tenant_id.into()],
        ))
        .await?;
    let held = EventRow::find_by_statement(statement(
        &format!(
            "SELECT {} FROM endpoints WHERE tenant_id = $1 AND status = 'DEPLOYING' \
             AND status_reason = $2 ORDER BY id",
            EventRow::COLUMNS
        ),
        [tenant_id.into(), PAUSED_REASON.into()],
    ))
    .all(db)
    .await?;
    let republished =
        publish::publish_all(js, held.iter().map(|row| (EventKind::Deploy, row.fields())))
            .await
            .map_err(OpsError::Publish)?;
    Ok(Resumed {
        was_paused: deleted.rows_affected() > 0,
        republished,
    })
}

/// Paused tenants with how many endpoints each holds, oldest pause first.
pub async fn list_pauses(db: &DatabaseConnection) -> Result<Vec<TenantPause>, OpsError> {
    Ok(TenantPause::find_by_statement(statement(
        "SELECT p.tenant_id, p.reason, p.paused_at, \
             (SELECT count(*) FROM endpoints e WHERE e.tenant_id = p.tenant_id \
              AND e.status = 'DEPLOYING' AND e.status_reason = $1) AS held \
         FROM tenant_pauses p ORDER BY p.paused_at, p.tenant_id",
        [PAUSED_REASON.into()],
    ))
    .all(db)
    .await?)
}

/// Parses `--since`: an RFC 3339 time (`2026-12-01T08:00:00Z`) or an age such as `90s`,
/// `30m`, `12h` or `7d` (that long before `now`).
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let invalid = || {
        format!(
            "{text:?} is neither an RFC 3339 time (2026-12-01T08:00:00Z) nor an age like 90s, 30m, \
             12h or 7d"
        )
    };
    let split = text.len().checked_sub(1).ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| invalid())?;
    let age = match unit {
        "s" => chrono::TimeDelta::try_seconds(number),
        "m" => chrono::TimeDelta::try_minutes(number),
        "h" => chrono::TimeDelta::try_hours(number),
        "d" => chrono::TimeDelta::try_days(number),
        _ => None,
    }
    .filter(|age| *age >= chrono::TimeDelta::zero())
    .ok_or_else(invalid)?;
    now.checked_sub_signed(age).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            parse_since("2026-11-30T08:00:00+01:00", now),
            Ok(at("2026-11-30T07:00:00Z"))
        );
        assert_eq!(parse_since("90s", now), Ok(at("2026-12-01T11:58:30Z")));
        assert_eq!(parse_since("30m", now), Ok(at("2026-12-01T11:30:00Z")));
        assert_eq!(parse_since("12h", now), Ok(at("2026-12-01T00:00:00Z")));
        assert_eq!(parse_since("7d", now), Ok(at("2026-11-24T12:00:00Z")));
        for bad in ["", "h", "yesterday", "-5m", "5w", "12", "2026-12-01"] {
            let err = parse_since(bad, now).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }

    fn record(
        subject: &str,
        text: &str,
        bytes: Option<&[u8]>,
        size: Option<i32>,
    ) -> RejectedRecord {
        RejectedRecord {
            id: 1,
            subject: subject.into(),
            stream_sequence: Some(1),
            endpoint_id: None,
            reason: "r".into(),
            payload: text.into(),
            payload_bytes: bytes.map(<[u8]>::to_vec),
            payload_size: size,
            payload_sha256: None,
            received_at: Utc::now().fixed_offset(),
            replayed_at: None,
        }
    }

    #[test]
    fn only_whole_payloads_on_consumed_subjects_are_replayable() {
        use crate::events::{DELETE_SUBJECT, DEPLOY_SUBJECT};
        // The bytes as published, even when they are not text.
        let raw: &[u8] = b"{\"endpoint_id\":\0\xff}";
        assert_eq!(
            replayable_payload(&record(DEPLOY_SUBJECT, "escaped", Some(raw), Some(18))),
            Ok((EventKind::Deploy, raw.to_vec()))
        );
        let cut = replayable_payload(&record(DEPLOY_SUBJECT, "x", Some(raw), Some(70_000)));
        assert!(
            cut.unwrap_err()
                .contains("only 18 of the payload's 70000 bytes")
        );
        let bare = replayable_payload(&record(DEPLOY_SUBJECT, "", Some(b""), Some(12)));
        assert!(bare.unwrap_err().contains("only 0 of"));
        // Older rows: the text, when whole.
        assert_eq!(
            replayable_payload(&record(DELETE_SUBJECT, "{}", None, None)),
            Ok((EventKind::Delete, b"{}".to_vec()))
        );
        let long = "x".repeat(LEGACY_TEXT_MAX);
        let long = replayable_payload(&record(DEPLOY_SUBJECT, &long, None, None)).unwrap_err();
        assert!(long.contains("cut"), "{long}");
        let lossy =
            replayable_payload(&record(DEPLOY_SUBJECT, "{\u{FFFD}}", None, None)).unwrap_err();
        assert!(lossy.contains("UTF-8"), "{lossy}");
        let other =
            replayable_payload(&record("mlops.serving.other", "{}", None, None)).unwrap_err();
        assert!(other.contains("not one the worker consumes"), "{other}");
    }
}
