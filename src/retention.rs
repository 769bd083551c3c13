//! Retention: `deployment_history` and `rejected_events` rows older than a configurable age are
//! pruned periodically, oldest first, in small batches.
//!
//! Each batch is one short `DELETE … WHERE id IN (SELECT id … ORDER BY <time> LIMIT n)` in its
//! own transaction. It locks only the old rows it deletes — rows nothing else writes: the
//! committer only *inserts* history and rejected rows and updates `endpoints`, so a prune
//! batch never holds a lock an outcome commit waits on (the tests hold a batch's transaction
//! open and show a group commit still goes through). Replicas pruning at once wait at most for
//! one another's batch. (`FOR UPDATE SKIP LOCKED` would avoid even that, but needs UPDATE
//! rights on the tables, which the worker's role does not have.) The time columns are indexed
//! (migration `m20261201_000201_retention_indexes`), so a batch reads only what it deletes.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use tokio::task::JoinHandle;

/// How old rows are pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Rows older than this are pruned; `None` keeps them forever.
    pub max_age: Option<Duration>,
    /// Most rows one batch (one transaction) deletes.
    pub batch: u32,
    /// Time between two pruning rounds.
    pub interval: Duration,
}

/// A table retention prunes, with the column that dates its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pruned {
    /// `deployment_history`, by `finished_at`.
    History,
    /// `rejected_events`, by `received_at`.
    Rejected,
}

impl Pruned {
    /// Both tables.
    pub const ALL: [Pruned; 2] = [Pruned::History, Pruned::Rejected];

    /// The batch statement: `$1` the age in seconds, `$2` the batch size.
    fn sql(self) -> &'static str {
        match self {
            Pruned::History => {
                "DELETE FROM deployment_history WHERE id IN (SELECT id FROM deployment_history \
                 WHERE finished_at < now() - make_interval(secs => $1) \
                 ORDER BY finished_at LIMIT $2)"
            }
            Pruned::Rejected => {
                "DELETE FROM rejected_events WHERE id IN (SELECT id FROM rejected_events \
                 WHERE received_at < now() - make_interval(secs => $1) \
                 ORDER BY received_at LIMIT $2)"
            }
        }
    }

    /// Table name, for logs.
    pub fn table(self) -> &'static str {
        match self {
            Pruned::History => "deployment_history",
            Pruned::Rejected => "rejected_events",
        }
    }
}

/// Deletes one batch of `table`'s rows older than `max_age` on `db` (a connection, or a
/// transaction the caller controls); returns how many rows it deleted.
pub async fn prune_batch(
    db: &impl ConnectionTrait,
    table: Pruned,
    max_age: Duration,
    batch: u32,
) -> Result<u64, DbErr> {
    let result = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            table.sql(),
            [max_age.as_secs_f64().into(), i64::from(batch.max(1)).into()],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// Prunes both tables in batches until no old row is left; returns the rows deleted per
/// table (history, rejected). A no-op when `settings.max_age` is `None`.
pub async fn prune(
    db: &DatabaseConnection,
    settings: &RetentionSettings,
) -> Result<(u64, u64), DbErr> {
    let Some(max_age) = settings.max_age else {
        return Ok((0, 0));
    };
    let mut deleted = [0u64; 2];
    for (slot, table) in deleted.iter_mut().zip(Pruned::ALL) {
        loop {
            let n = prune_batch(db, table, max_age, settings.batch).await?;
            *slot += n;
            if n < u64::from(settings.batch.max(1)) {
                break;
            }
            // Give the commits of live work room between two batches.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok((deleted[0], deleted[1]))
}

/// Starts the periodic pruning task on the current tokio runtime (`None` when retention is
/// off). A failed round is logged and retried at the next interval; abort the handle to stop
/// (a batch is one statement, so stopping mid-round leaves nothing half done).
pub fn spawn(db: DatabaseConnection, settings: RetentionSettings) -> Option<JoinHandle<()>> {
    settings.max_age?;
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(settings.interval.max(Duration::from_secs(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match prune(&db, &settings).await {
                Ok((0, 0)) => {}
                Ok((history, rejected)) => {
                    tracing::info!(history, rejected, "pruned rows past the retention age");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "pruning old history failed; retrying at the next interval");
                }
            }
        }
    }))
}

/// Retention settings (flags and environment variables).
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Prune `deployment_history` and `rejected_events` rows older than this many days
    /// (0: keep them forever).
    #[arg(long, env = "HISTORY_RETENTION_DAYS", default_value_t = 30)]
    pub history_retention_days: u32,

    /// Most rows one pruning transaction deletes.
    #[arg(long, env = "HISTORY_PRUNE_BATCH", default_value_t = 500)]
    pub history_prune_batch: u32,

    /// Seconds between two pruning rounds.
    #[arg(long, env = "HISTORY_PRUNE_INTERVAL_SECONDS", default_value_t = 3600)]
    pub history_prune_interval_seconds: u64,
}

impl RetentionArgs {
    /// The settings these arguments describe.
    pub fn settings(&self) -> RetentionSettings {
        RetentionSettings {
            max_age: (self.history_retention_days > 0)
                .then(|| Duration::from_secs(u64::from(self.history_retention_days) * 86_400)),
            batch: self.history_prune_batch.max(1),
            interval: Duration::from_secs(self.history_prune_interval_seconds.max(1)),
        }
    }
}
