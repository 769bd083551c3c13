//! Periodic reads, for the metrics, of state that lives outside the worker.
//!
//! - **Consumer lag**: each durable consumer's `num_pending` (not yet delivered),
//!   `num_ack_pending` (delivered, not yet acknowledged) and the stream sequence it delivered
//!   last, from JetStream's consumer info.
//! - **Stuck deploys**: the age of the oldest endpoint in `DEPLOYING` whose tenant is not paused
//!   (from `endpoints.updated_at`, which the platform's trigger sets on every write), and how
//!   many `DEPLOYING` endpoints a tenant pause holds.
//!
//! - **Released holds**: endpoints still held `DEPLOYING` by a pause of a tenant that has since
//!   been resumed, for longer than [`RELEASE_AFTER_POLLS`] poll intervals. `deploy-worker tenant resume` publishes a
//!   deploy event for each held endpoint; this is the safety net when that could not happen
//!   (the command was interrupted, or a pass recorded a hold just as the pause was lifted): they
//!   are handed to the supervisor like endpoints resumed at start-up, so a resume converges
//!   without any new event.
//!
//! Each read is a request to NATS or Postgres, so it runs every `METRICS_POLL_SECONDS`, never per
//! scrape; every replica reads the same values (alert on `max`, not `sum`). Every read is bounded
//! by a timeout; a failed read makes its gauges absent until the next success and is logged, and
//! a failed database read is counted as `deploy_worker_database_errors_total{operation="poll"}`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use sea_orm::{DatabaseConnection, DbBackend, FromQueryResult, Statement};

use uuid::Uuid;

use crate::metrics::{self, ConsumerState, DeployingState, Metrics};
use crate::store::{PAUSED_REASON, Store, StoreError};

/// How many poll intervals an endpoint stays held after its tenant's pause was lifted before
/// the poller resumes it itself (the resume command's events normally get there first).
pub const RELEASE_AFTER_POLLS: u32 = 3;

/// Most released endpoints resumed per poll.
const RELEASE_BATCH: u64 = 1000;

/// Longest one read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

const DEPLOYING_SQL: &str = r#"
SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(e.updated_at) FILTER (WHERE p.tenant_id IS NULL)), 0)::float8
           AS oldest_age_seconds,
       count(*) FILTER (WHERE p.tenant_id IS NOT NULL) AS paused
FROM endpoints e
LEFT JOIN tenant_pauses p ON p.tenant_id = e.tenant_id
WHERE e.status = 'DEPLOYING'"#;

/// Reads the `DEPLOYING` endpoints' summary.
pub async fn read_deploying(db: &DatabaseConnection) -> Result<DeployingState, StoreError> {
    #[derive(FromQueryResult)]
    struct Row {
        oldest_age_seconds: f64,
        paused: i64,
    }
    let row = Row::find_by_statement(Statement::from_string(DbBackend::Postgres, DEPLOYING_SQL))
        .one(db)
        .await?;
    Ok(row.map_or(
        DeployingState {
            oldest_age_seconds: 0.0,
            paused: 0,
        },
        |row| DeployingState {
            oldest_age_seconds: row.oldest_age_seconds.max(0.0),
            paused: u64::try_from(row.paused).unwrap_or(0),
        },
    ))
}

/// Endpoints held by a pause that no longer exists, held for longer than `held_for`.
pub async fn read_released(
    db: &DatabaseConnection,
    held_for: Duration,
) -> Result<Vec<Uuid>, StoreError> {
    #[derive(FromQueryResult)]
    struct Row {
        id: Uuid,
    }
    let rows = Row::find_by_statement(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT e.id FROM endpoints e \
         WHERE e.status = 'DEPLOYING' AND e.status_reason = $1 \
           AND NOT EXISTS (SELECT 1 FROM tenant_pauses p WHERE p.tenant_id = e.tenant_id) \
           AND e.updated_at < now() - make_interval(secs => $2) \
         ORDER BY e.updated_at LIMIT $3",
        [
            PAUSED_REASON.into(),
            held_for.as_secs_f64().into(),
            i64::try_from(RELEASE_BATCH).unwrap_or(i64::MAX).into(),
        ],
    ))
    .all(db)
    .await?;
    Ok(rows.into_iter().map(|row| row.id).collect())
}

/// Reads every consumer's state from JetStream.
pub async fn read_consumers(
    consumers: &[PullConsumer],
) -> Result<Vec<ConsumerState>, async_nats::Error> {
    let mut states = Vec::with_capacity(consumers.len());
    for consumer in consumers {
        let info = consumer.get_info().await?;
        states.push(ConsumerState {
            name: info.name.clone(),
            pending: info.num_pending,
            ack_pending: u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX),
            delivered_sequence: info.delivered.stream_sequence,
        });
    }
    Ok(states)
}

/// Reads everything once, hands the metrics' part to `metrics` and endpoints held for longer
/// than `release_after` by a lifted pause to `resume`.
pub async fn poll_once(
    store: &Store,
    consumers: &[PullConsumer],
    metrics: &Metrics,
    release_after: Duration,
    resume: &(dyn Fn(Vec<Uuid>) + Send + Sync),
) {
    let read = tokio::time::timeout(READ_TIMEOUT, read_consumers(consumers)).await;
    metrics.consumers_polled(match read {
        Ok(Ok(states)) => Some(states),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "cannot read the consumers' lag for the metrics");
            None
        }
        Err(_) => {
            tracing::debug!("the consumers' lag did not arrive within {READ_TIMEOUT:?}");
            None
        }
    });
    let read = tokio::time::timeout(READ_TIMEOUT, read_deploying(store.db())).await;
    metrics.deploying_polled(match read {
        Ok(Ok(state)) => Some(state),
        Ok(Err(err)) => {
            metrics.database_error(metrics::DB_POLL);
            tracing::debug!(error = %err, "cannot read the DEPLOYING endpoints for the metrics");
            None
        }
        Err(_) => {
            metrics.database_error(metrics::DB_POLL);
            tracing::debug!("the DEPLOYING endpoints did not arrive within {READ_TIMEOUT:?}");
            None
        }
    });
    match tokio::time::timeout(READ_TIMEOUT, read_released(store.db(), release_after)).await {
        Ok(Ok(ids)) if !ids.is_empty() => {
            tracing::info!(
                endpoints = ids.len(),
                "resuming endpoints held by a tenant pause that was lifted"
            );
            resume(ids);
        }
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            metrics.database_error(metrics::DB_POLL);
            tracing::debug!(error = %err, "cannot read endpoints held by a lifted pause");
        }
        Err(_) => metrics.database_error(metrics::DB_POLL),
    }
}

/// Polls at once and then every `every` until the returned task is aborted; released holds
/// go to `resume`.
pub fn spawn(
    store: Store,
    consumers: Vec<PullConsumer>,
    metrics: Arc<Metrics>,
    every: Duration,
    resume: Box<dyn Fn(Vec<Uuid>) + Send + Sync>,
) -> tokio::task::JoinHandle<()> {
    let every = every.max(Duration::from_millis(100));
    let release_after = every * RELEASE_AFTER_POLLS;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            poll_once(&store, &consumers, &metrics, release_after, resume.as_ref()).await;
        }
    })
}
