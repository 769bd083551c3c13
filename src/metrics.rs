//! Prometheus metrics (OpenMetrics text, served at `/metrics` by [`crate::http`]).
//!
//! One [`Metrics`] per worker, shared in an `Arc` through the
//! [`PassContext`](crate::pass::PassContext), the [`Store`](crate::store::Store) and the
//! deployers; no global registry, so tests can run several workers in one process and read
//! each one's numbers.
//!
//! Counters and histograms are updated where things happen (a pass answering its messages, the
//! committer finishing a transaction, a deployer getting an error from the Kubernetes API).
//! Gauges that describe current state — deploys in flight and endpoints waiting per tenant,
//! endpoint actors alive — are sampled at scrape time from the [`Admission`] and the
//! supervisor's registry by a [`Collector`], so they cannot drift from the truth, and a tenant
//! with nothing in flight is simply absent: label sets do not grow with every tenant ever seen.
//!
//! State that lives outside the worker — the lag of the durable consumers in JetStream, the
//! oldest endpoint in `DEPLOYING` in Postgres — costs a request to read, so it is not read per
//! scrape: [`crate::poller`] reads it periodically and hands it over with
//! [`Metrics::consumers_polled`] and [`Metrics::deploying_polled`]; a failed read makes those
//! gauges absent (unknown) rather than stale. The age of the oldest `DEPLOYING` endpoint keeps
//! growing between polls (it is computed at scrape time from the polled value).
//!
//! Every label has a bounded set of values: subjects the worker consumes, outcomes, reasons,
//! HTTP status codes, and tenant ids only while they have deploys in flight.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::events::{DELETE_SUBJECT, DEPLOY_SUBJECT};
use crate::outcome::Outcome;
use crate::scheduler::Scheduler;

/// Prefix of every metric name.
pub const PREFIX: &str = "deploy_worker";

/// Content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why messages were handed back to JetStream for a retry (label `reason` of
/// `deploy_worker_retries_total`).
pub mod retry {
    /// Postgres failed (load, status write or commit).
    pub const DATABASE: &str = "database";
    /// The deployer failed transiently (API 5xx/429, conflicts, timeouts talking to it).
    pub const DEPLOYER: &str = "deployer";
    /// The worker is shutting down.
    pub const SHUTDOWN: &str = "shutdown";
    /// A pass panicked (a worker bug); its messages were handed back.
    pub const PANIC: &str = "panic";
    /// The cluster refuses the worker (RBAC, credentials, a missing namespace).
    pub const MISCONFIGURED: &str = "misconfigured";
}

/// Label `operation` of `deploy_worker_database_errors_total`: a batched intent load.
pub const DB_LOAD: &str = "load";
/// Label `operation` of `deploy_worker_database_errors_total`: a group commit.
pub const DB_COMMIT: &str = "commit";
/// Label `operation` of `deploy_worker_database_errors_total`: the periodic state read of
/// [`crate::poller`].
pub const DB_POLL: &str = "poll";

/// HTTP status of an authorization failure from the Kubernetes API, counted apart in
/// `deploy_worker_kube_api_forbidden_total`.
pub const FORBIDDEN: u16 = 403;

/// One durable consumer as JetStream last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerState {
    /// Durable name.
    pub name: String,
    /// Messages matching its filter not yet delivered (`num_pending`).
    pub pending: u64,
    /// Messages delivered and not yet acknowledged (`num_ack_pending`).
    pub ack_pending: u64,
    /// Stream sequence of the last message delivered (moves while it consumes).
    pub delivered_sequence: u64,
}

/// Endpoints in `DEPLOYING` as Postgres last described them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeployingState {
    /// Seconds since the oldest `DEPLOYING` endpoint of a tenant that is not paused was last
    /// updated (0 when there is none).
    pub oldest_age_seconds: f64,
    /// `DEPLOYING` endpoints held by a tenant pause.
    pub paused: u64,
}

/// What [`crate::poller`] read last, and when.
#[derive(Debug, Default)]
struct Polled {
    consumers: Option<Vec<ConsumerState>>,
    deploying: Option<(DeployingState, Instant)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    subject: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowLabels {
    action: &'static str,
    result: &'static str,
}

/// Labels of `deploy_worker_follow_total`: what following the cluster did, as
/// `(action, result)` pairs.
pub mod follow {
    /// A `READY` endpoint's object stopped being Ready past the debounce: `ERROR`.
    pub const NOT_READY: (&str, &str) = ("follow", "error");
    /// An endpoint's object became Ready again: `READY`.
    pub const RECOVERED: (&str, &str) = ("follow", "ready");
    /// An object deleted out of band was re-applied.
    pub const REPAIR_MISSING: (&str, &str) = ("repair", "missing");
    /// An object whose spec someone else changed was re-applied.
    pub const REPAIR_DRIFT: (&str, &str) = ("repair", "drift");
    /// A repair waits: the endpoint was repaired too recently (a fight with another writer).
    pub const REPAIR_THROTTLED: (&str, &str) = ("repair", "throttled");
    /// An object that outlived its endpoint was deleted.
    pub const COLLECTED: (&str, &str) = ("collect", "deleted");
    /// Such an object was only reported (`GC_REPORT_ONLY`).
    pub const REPORTED: (&str, &str) = ("collect", "reported");
    /// Collection refused: it would have deleted more than `GC_MAX_SHARE` of the objects.
    pub const REFUSED: (&str, &str) = ("collect", "refused");
    /// Every pair, registered at zero.
    pub const ALL: [(&str, &str); 8] = [
        NOT_READY,
        RECOVERED,
        REPAIR_MISSING,
        REPAIR_DRIFT,
        REPAIR_THROTTLED,
        COLLECTED,
        REPORTED,
        REFUSED,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds from 5 ms to about 11 minutes (beyond the default 600 s deploy timeout).
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

/// The worker's metrics.
pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    /// The counters of `events` for the deploy and delete subjects, by [`Outcome`] (in the
    /// order of [`Outcome::ALL`]).
    event_counters: [[Counter; Outcome::ALL.len()]; 2],
    event_to_ready: Histogram,
    deploy_duration: HistogramFamily<OutcomeLabels>,
    /// The histograms of `deploy_duration` by [`Outcome`], once they exist.
    deploy_durations: [OnceLock<Histogram>; Outcome::ALL.len()],
    retries: Family<ReasonLabels, Counter>,
    kube_errors: Family<CodeLabels, Counter>,
    kube_forbidden: Counter,
    database_errors: Family<OperationLabels, Counter>,
    commit_batch: Histogram,
    follow: Family<FollowLabels, Counter>,
    polled: Arc<Mutex<Polled>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics with every counter and histogram registered (and no scrape-time gauges; see
    /// [`register_live_state`](Self::register_live_state)).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "JetStream messages answered, by subject and outcome (ready, error, deleted, \
             unchanged, superseded, skipped, paused, refused, handed_back)",
            events.clone(),
        );
        let event_to_ready = seconds_histogram();
        registry.register_with_unit(
            "event_to_ready",
            "Time from an event's publication to its endpoint's READY status being committed",
            Unit::Seconds,
            event_to_ready.clone(),
        );
        let deploy_duration: HistogramFamily<OutcomeLabels> =
            Family::new_with_constructor(seconds_histogram);
        registry.register_with_unit(
            "deploy_duration",
            "Time from the start of a deploy pass to its outcome, by outcome",
            Unit::Seconds,
            deploy_duration.clone(),
        );
        let retries = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "retries",
            "Messages handed back to JetStream for a later retry, by reason",
            retries.clone(),
        );
        let kube_errors = Family::<CodeLabels, Counter>::default();
        registry.register(
            "kube_api_errors",
            "Error responses from the Kubernetes API, by HTTP status code",
            kube_errors.clone(),
        );
        let kube_forbidden = Counter::default();
        registry.register(
            "kube_api_forbidden",
            "Authorization failures (403 Forbidden) from the Kubernetes API: RBAC does not \
             allow what the worker needs",
            kube_forbidden.clone(),
        );
        let database_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "database_errors",
            "Failed Postgres operations, by operation (load, commit, poll)",
            database_errors.clone(),
        );
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "group_commit_batch_size",
            "Writes (status changes, history rows, refused events) per group-commit transaction",
            commit_batch.clone(),
        );
        let follow = Family::<FollowLabels, Counter>::default();
        registry.register(
            "follow",
            "What following the cluster after Ready did, by action (follow, repair, collect) \
             and result: objects that stopped or resumed being Ready, objects re-applied after \
             an out-of-band delete or edit (or throttled), objects of deleted endpoints \
             collected, reported or refused",
            follow.clone(),
        );
        for (action, result) in follow::ALL {
            let _ = follow.get_or_create(&FollowLabels { action, result });
        }
        // Known label values start at zero, so `rate()` and alerts work before the first
        // occurrence.
        // The counters of the two event subjects are kept at hand: every event counts into
        // one, and a labelled lookup (hash, lock) each time cost more than the count.
        let event_counters = [DEPLOY_SUBJECT, DELETE_SUBJECT].map(|subject| {
            Outcome::ALL.map(|outcome| {
                events
                    .get_or_create(&EventLabels {
                        subject,
                        outcome: outcome.as_str(),
                    })
                    .clone()
            })
        });
        for reason in [
            retry::DATABASE,
            retry::DEPLOYER,
            retry::SHUTDOWN,
            retry::PANIC,
            retry::MISCONFIGURED,
        ] {
            let _ = retries.get_or_create(&ReasonLabels { reason });
        }
        // The codes the worker handles apart: authorization, conflicts, throttling, server
        // trouble (others appear when they first happen).
        for code in [FORBIDDEN, 409, 429, 500] {
            let _ = kube_errors.get_or_create(&CodeLabels {
                code: code.to_string(),
            });
        }
        for operation in [DB_LOAD, DB_COMMIT, DB_POLL] {
            let _ = database_errors.get_or_create(&OperationLabels { operation });
        }
        let polled = Arc::new(Mutex::new(Polled::default()));
        registry.register_collector(Box::new(PolledState {
            polled: polled.clone(),
        }));
        Self {
            registry,
            events,
            event_counters,
            event_to_ready,
            deploy_duration,
            deploy_durations: Default::default(),
            retries,
            kube_errors,
            kube_forbidden,
            database_errors,
            commit_batch,
            follow,
            polled,
        }
    }

    /// Adds the gauges sampled at scrape time: passes running per tenant and endpoints waiting,
    /// in total and per tenant (from the `scheduler`), and endpoint actors alive (what
    /// `actors` counts at scrape time). A count, not the supervisor's registry, so metrics
    /// depend on nothing that counts into them.
    pub fn register_live_state(
        &mut self,
        scheduler: Scheduler,
        actors: impl Fn() -> usize + Send + Sync + 'static,
    ) {
        self.registry.register_collector(Box::new(LiveState {
            scheduler,
            actors: Box::new(actors),
        }));
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// A message on `subject` was answered with `outcome`.
    pub fn event(&self, subject: &str, outcome: Outcome) {
        self.events(subject, outcome, 1);
    }

    /// `n` events on `subject` ended with `outcome` (a pass covers every event coalesced into
    /// its request).
    pub fn events(&self, subject: &str, outcome: Outcome, n: u32) {
        let at_hand = match subject {
            DEPLOY_SUBJECT => Some(&self.event_counters[0]),
            DELETE_SUBJECT => Some(&self.event_counters[1]),
            _ => None,
        };
        match at_hand {
            Some(counters) => {
                counters[outcome.index()].inc_by(u64::from(n));
            }
            None => {
                self.events
                    .get_or_create(&EventLabels {
                        subject: subject_label(subject),
                        outcome: outcome.as_str(),
                    })
                    .inc_by(u64::from(n));
            }
        }
    }

    /// An endpoint's READY status committed `seconds` after its event was published.
    pub fn event_to_ready(&self, seconds: f64) {
        self.event_to_ready.observe(seconds.max(0.0));
    }

    /// A deploy pass ended with `outcome` after `seconds`.
    pub fn deploy_finished(&self, outcome: Outcome, seconds: f64) {
        // kept at hand once it exists (it appears with the first pass to end so): a labelled
        // lookup for every pass cost more than the observation
        self.deploy_durations[outcome.index()]
            .get_or_init(|| {
                self.deploy_duration
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.as_str(),
                    })
                    .clone()
            })
            .observe(seconds.max(0.0));
    }

    /// Following the cluster did `what` (see [`follow`]) to `count` objects.
    pub fn followed(&self, (action, result): (&'static str, &'static str), count: usize) {
        self.follow
            .get_or_create(&FollowLabels { action, result })
            .inc_by(count as u64);
    }

    /// `messages` messages were handed back for `reason` (see [`retry`]).
    pub fn retries(&self, reason: &'static str, messages: usize) {
        self.retries
            .get_or_create(&ReasonLabels { reason })
            .inc_by(messages as u64);
    }

    /// The Kubernetes API answered with HTTP status `code` (for the k8s deployer to call on
    /// every error response, retried or not). A 403 also counts as an authorization failure.
    pub fn kube_error(&self, code: u16) {
        self.kube_errors
            .get_or_create(&CodeLabels {
                code: code.to_string(),
            })
            .inc();
        if code == FORBIDDEN {
            self.kube_forbidden.inc();
        }
    }

    /// An admission webhook denied a write (KServe's validator answers 403 too): counted by
    /// its code, but not as an authorization failure — RBAC is fine, the manifest is not.
    pub fn kube_webhook_denied(&self) {
        self.kube_errors
            .get_or_create(&CodeLabels {
                code: FORBIDDEN.to_string(),
            })
            .inc();
    }

    fn polled(&self) -> MutexGuard<'_, Polled> {
        lock(&self.polled)
    }

    /// The durable consumers as JetStream just described them; `None` when they could not be
    /// read (the consumer gauges are then absent until the next successful read).
    pub fn consumers_polled(&self, consumers: Option<Vec<ConsumerState>>) {
        self.polled().consumers = consumers;
    }

    /// The `DEPLOYING` endpoints as Postgres just described them; `None` when they could not
    /// be read.
    pub fn deploying_polled(&self, deploying: Option<DeployingState>) {
        self.polled().deploying = deploying.map(|state| (state, Instant::now()));
    }

    /// A Postgres `operation` failed.
    pub fn database_error(&self, operation: &'static str) {
        self.database_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// A group commit carried `writes` writes.
    pub fn commit_batch(&self, writes: usize) {
        self.commit_batch.observe(writes as f64);
    }
}

/// A bounded label for a subject: the two the worker consumes, `resume` for start-up resumes,
/// `other` for anything else.
fn subject_label(subject: &str) -> &'static str {
    match subject {
        DEPLOY_SUBJECT => DEPLOY_SUBJECT,
        DELETE_SUBJECT => DELETE_SUBJECT,
        "resume" => "resume",
        "follow" => "follow",
        "collect" => "collect",
        _ => "other",
    }
}

/// The polled state stays usable even if a writer panicked: every update replaces a value.
fn lock(polled: &Mutex<Polled>) -> MutexGuard<'_, Polled> {
    polled
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A per-consumer gauge: name, help and how to read its value.
type ConsumerGauge = (&'static str, &'static str, fn(&ConsumerState) -> u64);

/// Gauges of the state [`crate::poller`] read last.
struct PolledState {
    polled: Arc<Mutex<Polled>>,
}

impl std::fmt::Debug for PolledState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolledState").finish_non_exhaustive()
    }
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for PolledState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (consumers, deploying) = {
            let polled = lock(&self.polled);
            (
                polled.consumers.clone().unwrap_or_default(),
                polled.deploying,
            )
        };
        let gauge_type = ConstGauge::new(0i64).metric_type();
        let per_consumer: [ConsumerGauge; 3] = [
            (
                "consumer_pending_messages",
                "Messages on a durable consumer not yet delivered to any worker (JetStream \
                 num_pending, read periodically)",
                |c| c.pending,
            ),
            (
                "consumer_ack_pending_messages",
                "Messages delivered on a durable consumer and not yet acknowledged (JetStream \
                 num_ack_pending, read periodically)",
                |c| c.ack_pending,
            ),
            (
                "consumer_delivered_sequence",
                "Stream sequence of the last message a durable consumer delivered (moves while \
                 it consumes; read periodically)",
                |c| c.delivered_sequence,
            ),
        ];
        for (name, help, value) in per_consumer {
            let mut family = encoder.encode_descriptor(name, help, None, gauge_type)?;
            for consumer in &consumers {
                let labels = [("consumer", consumer.name.as_str())];
                ConstGauge::new(clamp(value(consumer))).encode(family.encode_family(&labels)?)?;
            }
        }
        let age = encoder.encode_descriptor(
            "oldest_deploying_age",
            "Age of the oldest endpoint in DEPLOYING whose tenant is not paused (0 when none; \
             read periodically, growing between reads)",
            Some(&Unit::Seconds),
            gauge_type,
        )?;
        if let Some((state, at)) = deploying {
            let age_seconds = if state.oldest_age_seconds > 0.0 {
                state.oldest_age_seconds + at.elapsed().as_secs_f64()
            } else {
                0.0
            };
            ConstGauge::new(age_seconds).encode(age)?;
        }
        let paused = encoder.encode_descriptor(
            "paused_deploying_endpoints",
            "Endpoints in DEPLOYING held by a tenant pause (read periodically)",
            None,
            gauge_type,
        )?;
        if let Some((state, _)) = deploying {
            ConstGauge::new(clamp(state.paused)).encode(paused)?;
        }
        Ok(())
    }
}

/// Encodes gauge `name` with one sample per tenant in `counts`, in tenant order.
fn encode_per_tenant(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counts: std::collections::HashMap<uuid::Uuid, usize>,
) -> Result<(), std::fmt::Error> {
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort();
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (tenant, count) in counts {
        let labels = [("tenant_id", tenant.to_string())];
        let value = i64::try_from(count).unwrap_or(i64::MAX);
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Scrape-time gauges.
struct LiveState {
    scheduler: Scheduler,
    /// Endpoint actors alive, counted at scrape time.
    actors: Box<dyn Fn() -> usize + Send + Sync>,
}

impl std::fmt::Debug for LiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveState").finish_non_exhaustive()
    }
}

impl Collector for LiveState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.scheduler.snapshot();
        encode_per_tenant(
            &mut encoder,
            "deploys_in_flight",
            "Passes running (endpoints claimed by this worker), by tenant (tenants with none are \
             absent)",
            snapshot.per_tenant,
        )?;
        let gauge = ConstGauge::new(0i64);
        let waiting = i64::try_from(snapshot.waiting).unwrap_or(i64::MAX);
        ConstGauge::new(waiting).encode(encoder.encode_descriptor(
            "deploys_waiting",
            "Endpoints waiting in this worker's scheduler for a pass",
            None,
            gauge.metric_type(),
        )?)?;
        encode_per_tenant(
            &mut encoder,
            "endpoints_waiting",
            "Endpoints waiting in this worker's scheduler for a pass, by tenant (tenants with \
             none are absent); their events are acked, so JetStream's consumer lag does not \
             include them",
            snapshot.waiting_per_tenant,
        )?;
        let actors = i64::try_from((self.actors)()).unwrap_or(i64::MAX);
        ConstGauge::new(actors).encode(encoder.encode_descriptor(
            "endpoint_actors",
            "Endpoint actors alive (endpoints with work or recently active)",
            None,
            gauge.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Caps;

    #[test]
    fn events_count_under_their_subject_and_outcome() {
        let metrics = Metrics::new();
        metrics.events(DEPLOY_SUBJECT, Outcome::Ready, 3);
        metrics.event(DEPLOY_SUBJECT, Outcome::Ready);
        metrics.event(DELETE_SUBJECT, Outcome::HandedBack);
        metrics.events("follow", Outcome::Error, 2);
        metrics.event("mlops.serving.unknown", Outcome::Refused);
        let text = metrics.encode().unwrap();
        for line in [
            r#"deploy_worker_events_total{subject="mlops.serving.deploy_requested",outcome="ready"} 4"#,
            r#"deploy_worker_events_total{subject="mlops.serving.deploy_requested",outcome="error"} 0"#,
            r#"deploy_worker_events_total{subject="mlops.serving.delete_requested",outcome="handed_back"} 1"#,
            r#"deploy_worker_events_total{subject="follow",outcome="error"} 2"#,
            r#"deploy_worker_events_total{subject="other",outcome="refused"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[tokio::test]
    async fn exposes_counters_histograms_and_live_gauges() {
        let scheduler = Scheduler::new(Caps {
            global: 10,
            per_tenant: 10,
        });
        let mut metrics = Metrics::new();
        metrics.register_live_state(scheduler.clone(), || 0);
        let (tenant, endpoint) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        scheduler.want(endpoint, Some(tenant));
        assert_eq!(scheduler.admit(), vec![endpoint]);
        metrics.event(DEPLOY_SUBJECT, Outcome::Ready);
        metrics.event("mlops.serving.surprise", Outcome::Refused);
        metrics.kube_error(429);
        metrics.retries(retry::DATABASE, 3);
        metrics.commit_batch(7);
        metrics.deploy_finished(Outcome::Ready, 0.25);
        let text = metrics.encode().unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for needle in [
            "deploy_worker_events_total{subject=\"mlops.serving.deploy_requested\",outcome=\"ready\"} 1",
            "deploy_worker_events_total{subject=\"other\",outcome=\"refused\"} 1",
            "deploy_worker_kube_api_errors_total{code=\"429\"} 1",
            "deploy_worker_retries_total{reason=\"database\"} 3",
            "deploy_worker_group_commit_batch_size_count 1",
            "deploy_worker_deploy_duration_seconds_count{outcome=\"ready\"} 1",
            "deploy_worker_endpoint_actors 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        let in_flight = format!("deploy_worker_deploys_in_flight{{tenant_id=\"{tenant}\"}} 1");
        assert!(text.contains(&in_flight), "{text}");
        scheduler.finish(endpoint);
        let text = metrics.encode().unwrap();
        assert!(
            !text.contains(&tenant.to_string()),
            "a tenant with nothing in flight must disappear:\n{text}"
        );
    }

    #[tokio::test]
    async fn counts_403s_apart_and_exposes_polled_state_and_waiting_tenants() {
        let scheduler = Scheduler::new(Caps {
            global: 1,
            per_tenant: 1,
        });
        let mut metrics = Metrics::new();
        metrics.register_live_state(scheduler.clone(), || 0);
        let text = metrics.encode().unwrap();
        for needle in [
            "deploy_worker_kube_api_forbidden_total 0",
            "# TYPE deploy_worker_consumer_pending_messages gauge",
            "# TYPE deploy_worker_oldest_deploying_age_seconds gauge",
            "# UNIT deploy_worker_oldest_deploying_age_seconds seconds",
            "# TYPE deploy_worker_endpoints_waiting gauge",
            "deploy_worker_database_errors_total{operation=\"poll\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("deploy_worker_oldest_deploying_age_seconds ")),
            "no value before the first poll:\n{text}"
        );

        metrics.kube_error(403);
        metrics.kube_error(500);
        metrics.consumers_polled(Some(vec![ConsumerState {
            name: "deploy-worker".into(),
            pending: 12,
            ack_pending: 3,
            delivered_sequence: 40,
        }]));
        metrics.deploying_polled(Some(DeployingState {
            oldest_age_seconds: 90.0,
            paused: 2,
        }));
        let (busy, queued) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        scheduler.want(uuid::Uuid::new_v4(), Some(busy));
        assert_eq!(scheduler.admit().len(), 1);
        scheduler.want(uuid::Uuid::new_v4(), Some(queued));
        assert!(scheduler.admit().is_empty(), "the global cap holds");
        let text = metrics.encode().unwrap();
        for needle in [
            "deploy_worker_kube_api_forbidden_total 1".to_owned(),
            "deploy_worker_kube_api_errors_total{code=\"403\"} 1".to_owned(),
            "deploy_worker_kube_api_errors_total{code=\"500\"} 1".to_owned(),
            "deploy_worker_consumer_pending_messages{consumer=\"deploy-worker\"} 12".to_owned(),
            "deploy_worker_consumer_ack_pending_messages{consumer=\"deploy-worker\"} 3".to_owned(),
            "deploy_worker_consumer_delivered_sequence{consumer=\"deploy-worker\"} 40".to_owned(),
            "deploy_worker_paused_deploying_endpoints 2".to_owned(),
            format!("deploy_worker_endpoints_waiting{{tenant_id=\"{queued}\"}} 1"),
        ] {
            assert!(text.contains(&needle), "missing {needle} in\n{text}");
        }
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("deploy_worker_oldest_deploying_age_seconds "))
            .expect("age sample")
            .parse()
            .unwrap();
        assert!((90.0..100.0).contains(&age), "{age}");

        // A failed read makes the state unknown, not stale.
        metrics.consumers_polled(None);
        metrics.deploying_polled(None);
        let text = metrics.encode().unwrap();
        assert!(!text.contains("consumer=\"deploy-worker\""), "{text}");
        assert!(
            !text.contains("deploy_worker_paused_deploying_endpoints 2"),
            "{text}"
        );
    }
}
