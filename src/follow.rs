//! Following endpoints after `READY`: the settings, the repair rate limit and the start-up
//! reconcile of cluster and database (k8s mode).
//!
//! The informer ([`crate::deployer::informer`]) notices changes to objects no pass waits on
//! and routes them to the endpoint's actor; the pass ([`crate::pass`]) compares the object with
//! the row and follows (`READY` ⇄ `ERROR`), repairs (re-applies an object deleted or edited
//! out of band) or leaves it. This module holds what those passes share:
//!
//! - [`FollowArgs`]: the debounce before a not-Ready object turns its endpoint `ERROR`, and
//!   the garbage-collection guards;
//! - [`RepairLimiter`]: each endpoint's repairs are spaced out (doubling from
//!   [`REPAIR_SPACING`]), so a fight with another writer shows in
//!   `deploy_worker_follow_total{action="repair",result="throttled"}`, not as a hot loop;
//! - [`reconcile_at_start`]: once the informer's first list is in, one read of the endpoint
//!   statuses decides what to repair (`READY` rows whose object is missing) and what to
//!   collect (objects whose endpoint is `DELETED` or unknown). Collection is guarded: it is
//!   rate-capped, can be report-only, and refuses outright when it would delete more than
//!   `GC_MAX_SHARE` of the worker's objects — a wrong `DATABASE_URL` must never empty a cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use entity::status;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::delivery::Follow;
use crate::deployer::informer::Informer;
use crate::metrics::{Metrics, follow};
use crate::store::Store;

/// Settings of following and garbage collection.
#[derive(Debug, Clone, clap::Args)]
pub struct FollowArgs {
    /// k8s mode: how long a `READY` endpoint's InferenceService may stay not Ready before the
    /// endpoint goes `ERROR` (it returns to `READY` when the object recovers).
    #[arg(long, env = "FOLLOW_DEBOUNCE_SECONDS", default_value_t = 30)]
    pub follow_debounce_seconds: u64,

    /// k8s mode: at start-up, only report (log and count) InferenceServices whose endpoint is
    /// deleted or unknown instead of deleting them.
    #[arg(long, env = "GC_REPORT_ONLY", default_value_t = false, action = clap::ArgAction::Set)]
    pub gc_report_only: bool,

    /// k8s mode: start-up garbage collection refuses to run when it would delete more than
    /// this share of the worker's InferenceServices (0 to 1).
    #[arg(long, env = "GC_MAX_SHARE", default_value_t = 0.25)]
    pub gc_max_share: f64,

    /// k8s mode: most InferenceServices garbage collection deletes per minute.
    #[arg(long, env = "GC_PER_MINUTE", default_value_t = 60)]
    pub gc_per_minute: u32,
}

impl FollowArgs {
    /// The debounce.
    pub fn debounce(&self) -> Duration {
        Duration::from_secs(self.follow_debounce_seconds)
    }
}

/// The shortest time between two repairs of one endpoint; it doubles with each repair that
/// follows within [`REPAIR_MEMORY`] of the previous one, up to ten minutes.
pub const REPAIR_SPACING: Duration = Duration::from_secs(5);
/// After this long without a repair, an endpoint's spacing starts over.
pub const REPAIR_MEMORY: Duration = Duration::from_secs(30 * 60);
const REPAIR_BACKOFF: Backoff = Backoff {
    base: REPAIR_SPACING,
    max: Duration::from_secs(600),
};

/// Spaces out the repairs of each endpoint.
#[derive(Debug, Default)]
pub struct RepairLimiter {
    /// Endpoint → (repairs in a row, when the last one started).
    recent: DashMap<Uuid, (i64, Instant)>,
}

impl RepairLimiter {
    /// Takes a repair of `endpoint_id` if one is due: `Ok(())`, or `Err(wait)` until it is.
    pub fn take(&self, endpoint_id: Uuid) -> Result<(), Duration> {
        let now = Instant::now();
        // forget endpoints nobody repaired for a long time, so the map stays small
        if self.recent.len() > 1024 {
            self.recent
                .retain(|_, (_, last)| now.duration_since(*last) < REPAIR_MEMORY);
        }
        let mut entry = self.recent.entry(endpoint_id).or_insert((0, now));
        let (in_a_row, last) = *entry;
        if in_a_row > 0 && now.duration_since(last) < REPAIR_MEMORY {
            let due = last + REPAIR_BACKOFF.delay(in_a_row);
            if now < due {
                return Err(due - now);
            }
            *entry = (in_a_row + 1, now);
        } else {
            *entry = (1, now);
        }
        Ok(())
    }
}

/// What the start-up reconcile found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// `READY` endpoints whose object is missing: routed for a repair.
    pub repair: Vec<Uuid>,
    /// Objects whose endpoint is `DELETED` or unknown.
    pub orphans: Vec<Uuid>,
    /// Whether the orphans were routed for collection (not report-only, not refused).
    pub collecting: bool,
}

/// Decides, from the worker's objects (endpoint ids) and the endpoints' statuses, what to
/// repair and what to collect; `collecting` is false when the guard refuses.
pub fn plan(
    objects: &[Uuid],
    statuses: &HashMap<Uuid, String>,
    args: &FollowArgs,
    metrics: &Metrics,
) -> Reconciled {
    let present: std::collections::HashSet<Uuid> = objects.iter().copied().collect();
    let mut repair: Vec<Uuid> = statuses
        .iter()
        .filter(|(id, status)| *status == status::READY && !present.contains(id))
        .map(|(id, _)| *id)
        .collect();
    repair.sort();
    let mut orphans: Vec<Uuid> = present
        .iter()
        .filter(|id| statuses.get(id).is_none_or(|s| s == status::DELETED))
        .copied()
        .collect();
    orphans.sort();
    let allowed = ((objects.len() as f64) * args.gc_max_share.clamp(0.0, 1.0)).floor() as usize;
    let collecting = if orphans.is_empty() {
        false
    } else if orphans.len() > allowed.max(1) {
        tracing::error!(
            orphans = orphans.len(),
            objects = objects.len(),
            max_share = args.gc_max_share,
            "garbage collection refused: it would delete more than GC_MAX_SHARE of the \
             worker's InferenceServices. Check DATABASE_URL and KSERVE_NAMESPACE; if the \
             endpoints really are gone, raise GC_MAX_SHARE for one start"
        );
        metrics.followed(follow::REFUSED, orphans.len());
        false
    } else if args.gc_report_only {
        for id in &orphans {
            tracing::warn!(endpoint_id = %id,
                "InferenceService of a deleted or unknown endpoint (GC_REPORT_ONLY: left in place)");
        }
        metrics.followed(follow::REPORTED, orphans.len());
        false
    } else {
        true
    };
    Reconciled {
        repair,
        orphans,
        collecting,
    }
}

/// Once the informer's first list is in: repairs `READY` endpoints whose object is missing and
/// collects objects that outlived their endpoints (guarded, see [`plan`]), through the
/// informer's router. `legacy` are the endpoints whose objects the earlier worker made: they
/// count as present (adopted on their next deploy, not re-applied all at once at a switch-over)
/// and are collected like the worker's own. Runs once, in the background; a database error is
/// logged and the reconcile skipped (followed changes still work; the next start tries again).
pub fn reconcile_at_start(
    informer: Arc<Informer>,
    legacy: Vec<Uuid>,
    store: Store,
    args: FollowArgs,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        informer.wait_synced().await;
        let mut objects: Vec<Uuid> = informer
            .objects()
            .iter()
            .filter_map(|object| object.endpoint_id()?.parse().ok())
            .chain(legacy)
            .collect();
        objects.sort();
        objects.dedup();
        let statuses: HashMap<Uuid, String> = match store.endpoint_statuses().await {
            Ok(rows) => rows.into_iter().collect(),
            Err(err) => {
                tracing::warn!(error = %err, "start-up reconcile skipped: cannot read endpoints");
                return;
            }
        };
        let planned = plan(&objects, &statuses, &args, &metrics);
        tracing::info!(
            objects = objects.len(),
            repair = planned.repair.len(),
            orphans = planned.orphans.len(),
            collecting = planned.collecting,
            "start-up reconcile of cluster and database"
        );
        let router = informer.router();
        router.route(planned.repair, Follow::Check);
        if planned.collecting {
            let spacing = Duration::from_secs(60) / args.gc_per_minute.max(1);
            for (i, id) in planned.orphans.into_iter().enumerate() {
                router.route_after(
                    id,
                    Follow::Collect,
                    spacing * u32::try_from(i).unwrap_or(u32::MAX),
                );
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(share: f64, report_only: bool) -> FollowArgs {
        FollowArgs {
            follow_debounce_seconds: 30,
            gc_report_only: report_only,
            gc_max_share: share,
            gc_per_minute: 60,
        }
    }

    #[test]
    fn repairs_missing_ready_objects_and_collects_orphans_within_the_share() {
        let ids: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
        let mut statuses: HashMap<Uuid, String> = ids[..6]
            .iter()
            .map(|id| (*id, status::READY.to_owned()))
            .collect();
        statuses.insert(ids[6], status::DELETED.to_owned());
        // ids[7] has no row; ids[5] is READY without an object
        let objects: Vec<Uuid> = ids.iter().copied().filter(|id| *id != ids[5]).collect();
        let planned = plan(&objects, &statuses, &args(0.5, false), &Metrics::new());
        assert_eq!(planned.repair, vec![ids[5]]);
        let mut orphans = vec![ids[6], ids[7]];
        orphans.sort();
        assert_eq!(planned.orphans, orphans);
        assert!(planned.collecting);
    }

    #[test]
    fn an_empty_database_never_empties_the_cluster() {
        let objects: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
        let metrics = Metrics::new();
        let planned = plan(&objects, &HashMap::new(), &args(0.25, false), &metrics);
        assert_eq!(planned.orphans.len(), 10);
        assert!(!planned.collecting, "refused: all 10 would go");
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains(r#"deploy_worker_follow_total{action="collect",result="refused"} 10"#)
        );
    }

    #[test]
    fn report_only_collects_nothing() {
        let objects = vec![Uuid::new_v4(), Uuid::new_v4()];
        let statuses = HashMap::from([(objects[0], status::READY.to_owned())]);
        let planned = plan(&objects, &statuses, &args(0.5, true), &Metrics::new());
        assert_eq!(planned.orphans, vec![objects[1]]);
        assert!(!planned.collecting);
    }

    #[test]
    fn repairs_of_one_endpoint_are_spaced_out_and_doubling() {
        let limiter = RepairLimiter::default();
        let id = Uuid::new_v4();
        assert_eq!(limiter.take(id), Ok(()));
        let wait = limiter.take(id).unwrap_err();
        assert!(
            wait <= REPAIR_SPACING && wait > REPAIR_SPACING / 2,
            "{wait:?}"
        );
        assert_eq!(
            limiter.take(Uuid::new_v4()),
            Ok(()),
            "other endpoints are not held"
        );
    }
}
