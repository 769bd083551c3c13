//! The supervisor: owns the JetStream consumers, the scheduler and the endpoint actors.
//!
//! **Accept.** Two fetch tasks (one per durable consumer) pull messages and hand them to the
//! supervisor, which decodes each payload ([`ServingEvent::decode`]) and records what it asks
//! for as a convergence request ([`crate::requests`]) in the group commit; the message is acked
//! once that is durable. A payload that cannot be decoded, or an event the tenant check refuses,
//! is recorded in `rejected_events` and terminated. Nothing waits in JetStream's ack-pending
//! window, so the stream drains at the speed of the group commit whatever the deploys cost.
//!
//! **Converge.** The [`Scheduler`] holds the endpoints that want converging in per-tenant
//! queues and admits them round-robin under the caps. An admitted endpoint's request is claimed
//! in Postgres (so no other replica runs a pass over it meanwhile) and handed to the endpoint's
//! actor, started on demand; when the pass ends the claim is released — the request deleted if
//! nothing newer came, otherwise queued again. Claims are renewed while passes run, and a
//! periodic rescan picks up requests nobody holds: those of a replica that died, of a previous
//! run, or handed back for a retry.
//!
//! The actor registry is a [`DashMap`] from endpoint id to the actor's address and the number
//! of deliveries routed to it; the count lets the supervisor stop idle actors without racing a
//! delivery (see [`crate::endpoint_actor`]), so memory follows the endpoints with work, not
//! every endpoint ever seen. Metrics and the HTTP probes read the registry from other threads.
//!
//! Shutdown ([`Shutdown`]): stop fetching, forget what is queued (the requests stay in
//! Postgres), let running passes end, release every claim, and answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use dashmap::DashMap;
use futures::{FutureExt, StreamExt};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::delivery::{Delivery, Follow};
use crate::endpoint_actor::{
    Deliver, Drain, EndpointActor, Idle, Nudge, PassFinished, Reports, Stop, Stopped,
};
use crate::events::{EventKind, ServingEvent, published_at};
use crate::metrics::retry;
use crate::outcome::Outcome;
use crate::pass::{PassContext, PassResult, Row};
use crate::requests::{
    ClaimedRequest, Claims, Recorded, Release, Renewed, Request, Source, StillWanted,
};
use crate::scheduler::{Scheduler, Wanted};
use crate::store::{RejectedEvent, Store};
use crate::telemetry;
use crate::{IdMap, IdSet};

/// An endpoint actor as the supervisor knows it.
pub struct ActorEntry {
    addr: Addr<EndpointActor>,
    routed: u64,
}

/// Endpoint id → its live actor.
pub type ActorRegistry = DashMap<Uuid, ActorEntry, crate::IdHasher>;

/// Messages pulled from a consumer, in stream order; `recorded` is dropped once their requests
/// are committed (or refused), which bounds what the accept path holds in memory.
#[derive(Message)]
#[rtype(result = "()")]
struct Incoming {
    messages: Vec<jetstream::Message>,
    recorded: tokio::sync::OwnedSemaphorePermit,
}

/// Resume endpoints (released from a tenant pause): record a request for each.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resume(pub Vec<Uuid>);

/// Passes the informer asks for: endpoints whose object changed, or outlived them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FollowUp(pub Vec<Uuid>, pub Follow);

/// Endpoints whose requests are recorded and want a pass.
#[derive(Message)]
#[rtype(result = "()")]
struct Want(Vec<WantedEndpoint>);

/// One endpoint of [`Want`].
#[derive(Debug, Clone, Copy)]
struct WantedEndpoint {
    endpoint_id: Uuid,
    tenant_id: Option<Uuid>,
    /// A replica holds a live claim on it (when it is not this one, that replica sees the new
    /// request when its pass ends).
    claimed: bool,
    /// The request asks for a delete (tells a running pass to stop waiting).
    delete: bool,
}

/// The answer to a claim query.
#[derive(Message)]
#[rtype(result = "()")]
struct Claimed {
    asked: Vec<Uuid>,
    got: Result<Vec<ClaimedRequest>, crate::store::StoreError>,
}

/// The answer to a release query.
#[derive(Message)]
#[rtype(result = "()")]
struct Released {
    batch: Vec<Release>,
    still_wanted: Result<Vec<StillWanted>, crate::store::StoreError>,
}

/// The answer to a claim renewal.
#[derive(Message)]
#[rtype(result = "()")]
struct RenewedClaims(Vec<Renewed>);

/// Stop pulling messages; answers with the fetch tasks, which end once their last pull request
/// has run out (within a second).
#[derive(Message)]
#[rtype(result = "Vec<tokio::task::JoinHandle<()>>")]
pub struct StopFetching;

/// Drain every actor; the reply comes when the last pass has ended and every claim is
/// released.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown(pub oneshot::Sender<()>);

/// Stops the supervisor itself, once [`Shutdown`] has drained it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Terminate;

/// How the supervisor schedules.
#[derive(Debug, Clone, Copy)]
pub struct Scheduling {
    /// How often requests nobody holds are looked for.
    pub rescan_every: Duration,
    /// How long an actor without work lives.
    pub idle_after: Duration,
}

/// Requests one rescan takes, at most, of each tenant and in all: enough to keep every slot
/// busy until the next rescan, small enough to read in milliseconds.
const RESCAN_PER_TENANT: usize = 2_000;
const RESCAN_LIMIT: usize = 20_000;

/// Claim queries, and release queries, running at once: two, so that while one waits for its
/// commit to reach the disk the next batch is already on its way (they cover disjoint
/// endpoints: an endpoint is admitted, and its pass ends, once at a time).
const QUERIES_IN_FLIGHT: usize = 2;

/// How long a failed release waits before it is tried again.
const RELEASE_RETRY: Duration = Duration::from_secs(1);

/// A claim this replica holds.
#[derive(Debug, Clone)]
struct Held {
    version: i64,
    /// The `traceparent`s it covers (a request still wanted after the pass keeps the others).
    covered: Option<String>,
    /// Highest version seen by a renewal, so a running pass is told once per newer request.
    seen: i64,
    events: i32,
    attempts: i32,
}

/// The supervisor actor.
pub struct Supervisor {
    ctx: Arc<PassContext>,
    registry: Arc<ActorRegistry>,
    consumers: Option<crate::events::Consumers>,
    claims: Claims,
    scheduling: Scheduling,
    scheduler: Scheduler,
    held: IdMap<Uuid, Held>,
    /// Ends of passes not yet released in Postgres, and how many release queries run.
    releases: Vec<Release>,
    releasing: usize,
    /// How many claim queries run (at most [`QUERIES_IN_FLIGHT`]): everything admitted
    /// meanwhile is claimed by the next one, so under load a claim covers hundreds of
    /// endpoints.
    claiming: usize,
    rescanning: bool,
    fetchers: Vec<tokio::task::JoinHandle<()>>,
    stop_fetching: watch::Sender<bool>,
    draining: Option<oneshot::Sender<()>>,
    /// Where the endpoint actors report, shared by all of them (made at the first route).
    reports: Option<Arc<Reports>>,
    /// When freed memory was last handed back, and whether that is due again (see
    /// [`Supervisor::collect_when_idle`]).
    last_collect: Option<Instant>,
    collect_armed: bool,
}

/// How often at most the worker hands freed memory back.
const COLLECT_AT_MOST_EVERY: Duration = Duration::from_secs(1);

impl Supervisor {
    /// A supervisor that will consume from `consumers` once started.
    pub fn new(
        ctx: Arc<PassContext>,
        consumers: crate::events::Consumers,
        registry: Arc<ActorRegistry>,
        claims: Claims,
        scheduler: Scheduler,
        scheduling: Scheduling,
    ) -> Self {
        Self {
            ctx,
            registry,
            consumers: Some(consumers),
            claims,
            scheduler,
            scheduling,
            held: IdMap::default(),
            releases: Vec::new(),
            releasing: 0,
            claiming: 0,
            rescanning: false,
            fetchers: Vec::new(),
            stop_fetching: watch::channel(false).0,
            draining: None,
            reports: None,
            last_collect: None,
            collect_armed: false,
        }
    }

    fn route(
        &mut self,
        endpoint_id: Uuid,
        batch: Vec<Delivery>,
        row: Row,
        ctx: &mut Context<Self>,
    ) {
        let reports = self
            .reports
            .get_or_insert_with(|| {
                Arc::new(Reports {
                    idle: ctx.address().recipient(),
                    stopped: ctx.address().recipient(),
                    finished: ctx.address().recipient(),
                })
            })
            .clone();
        let spawn = || {
            let actor = EndpointActor::new(
                endpoint_id,
                self.ctx.clone(),
                reports.clone(),
                self.scheduling.idle_after,
            );
            ActorEntry {
                addr: actor.start(),
                routed: 0,
            }
        };
        let mut entry = self.registry.entry(endpoint_id).or_insert_with(spawn);
        if !entry.addr.connected() {
            // The actor died without the idle handshake (passes catch their own panics, so
            // this is a last line of defence): never route into a dead mailbox.
            *entry = spawn();
        }
        entry.routed += 1;
        entry.addr.do_send(Deliver { batch, row });
    }

    fn nudge(&self, endpoint_id: Uuid, delete: bool) {
        if let Some(entry) = self.registry.get(&endpoint_id) {
            entry.addr.do_send(Nudge { delete });
        }
    }

    /// Admits what the caps allow and claims it (once the claim query running has answered).
    fn admit(&mut self, ctx: &mut Context<Self>) {
        if self.draining.is_some() || self.claiming >= QUERIES_IN_FLIGHT {
            return;
        }
        let admitted = self.scheduler.admit();
        if admitted.is_empty() {
            return;
        }
        self.claiming += 1;
        let claims = self.claims.clone();
        let me = ctx.address();
        tokio::spawn(async move {
            let got = claims.claim(&admitted).await;
            me.do_send(Claimed {
                asked: admitted,
                got,
            });
        });
    }

    /// Records `requests` and schedules what they ask for.
    fn record(&self, requests: Vec<Request>, ctx: &mut Context<Self>) {
        if requests.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = requests.iter().map(|r| r.endpoint_id).collect();
        let recorded = self.ctx.store.record_requests(requests);
        let me = ctx.address();
        tokio::spawn(async move {
            match recorded.await {
                Ok(recorded) => {
                    let wanted = ids
                        .into_iter()
                        .zip(recorded)
                        .filter_map(|(endpoint_id, recorded)| match recorded {
                            Recorded::Wanted { tenant_id, claimed } => Some(WantedEndpoint {
                                endpoint_id,
                                tenant_id,
                                claimed,
                                delete: false,
                            }),
                            Recorded::Refused => None,
                        })
                        .collect();
                    me.do_send(Want(wanted));
                }
                Err(err) => {
                    tracing::warn!(endpoints = ids.len(), error = %err,
                        "cannot record requests; the next start-up reconcile or rescan picks \
                         the endpoints up");
                }
            }
        });
    }

    fn flush_releases(&mut self, ctx: &mut Context<Self>) {
        if self.releasing >= QUERIES_IN_FLIGHT || self.releases.is_empty() {
            return;
        }
        self.releasing += 1;
        let batch = std::mem::take(&mut self.releases);
        let claims = self.claims.clone();
        let me = ctx.address();
        tokio::spawn(async move {
            let still_wanted = claims.release(&batch).await;
            me.do_send(Released {
                batch,
                still_wanted,
            });
        });
    }

    fn finish_drain_if_done(&mut self, ctx: &mut Context<Self>) {
        if self.draining.is_none()
            || !self.registry.is_empty()
            || self.claiming > 0
            || self.releasing > 0
            || !self.releases.is_empty()
        {
            return;
        }
        if let Some(done) = self.draining.take() {
            let claims = self.claims.clone();
            ctx.spawn(
                async move {
                    if let Err(err) = claims.release_all().await {
                        tracing::warn!(error = %err, "cannot release claims; they expire");
                    }
                    let _ = done.send(());
                }
                .into_actor(self),
            );
        }
    }

    fn rescan(&mut self, ctx: &mut Context<Self>) {
        if self.draining.is_some() || self.rescanning || self.scheduler.queued() >= RESCAN_LIMIT {
            return;
        }
        self.rescanning = true;
        let claims = self.claims.clone();
        ctx.spawn(
            async move { claims.rescan(RESCAN_PER_TENANT, RESCAN_LIMIT).await }
                .into_actor(self)
                .map(|found, act, ctx| {
                    act.rescanning = false;
                    match found {
                        Ok(found) => {
                            let wanted = found
                                .into_iter()
                                .map(|u| WantedEndpoint {
                                    endpoint_id: u.endpoint_id,
                                    tenant_id: u.tenant_id,
                                    claimed: false,
                                    delete: false,
                                })
                                .collect();
                            act.want(wanted, ctx);
                        }
                        Err(err) => tracing::warn!(error = %err, "cannot rescan requests"),
                    }
                }),
        );
    }

    fn want(&mut self, wanted: Vec<WantedEndpoint>, ctx: &mut Context<Self>) {
        if self.draining.is_some() {
            return;
        }
        for w in wanted {
            if w.claimed && !self.scheduler.knows(w.endpoint_id) {
                // another replica runs a pass over it and will see this request
                continue;
            }
            if self.scheduler.want(w.endpoint_id, w.tenant_id) == Wanted::Running {
                self.nudge(w.endpoint_id, w.delete);
            }
        }
        self.admit(ctx);
    }
}

/// Most messages one pull request asks for.
const PULL_BATCH: usize = 512;
/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Pulls from one consumer until `stop` is set.
///
/// Each pull request is finite (at most [`PULL_BATCH`] messages or [`PULL_EXPIRES`]), so on
/// shutdown the loop simply lets the request in flight run out: every message the server
/// delivered to it is read and handed back, none is left in a client buffer to sit
/// unacknowledged until the ack wait expires.
async fn fetch(consumer: PullConsumer, supervisor: Addr<Supervisor>, stop: watch::Receiver<bool>) {
    let name = consumer.cached_info().name.clone();
    let mut failures: u32 = 0;
    // Chunks of this consumer whose requests are not committed yet: enough to keep the group
    // commit busy, few enough that a backlog never sits in memory as messages.
    let window = Arc::new(tokio::sync::Semaphore::new(ACCEPT_WINDOW));
    // A chunk's vector is sized for the last chunk's length: messages are a few hundred bytes
    // each, and a vector that grows by doubling copies each of them about once more.
    let mut expected = 1;
    while !*stop.borrow() {
        let pulled = consumer
            .batch()
            .max_messages(PULL_BATCH)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match pulled {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(consumer = %name, error = %err, "cannot pull");
                failures = failures.saturating_add(1);
                tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(failures.min(6)))).await;
                continue;
            }
        };
        let mut ended = false;
        while !ended {
            // wait for one message, then take what has already arrived behind it: the
            // supervisor records a chunk of requests in one write and answers them together
            let mut next = batch.next().await;
            let mut chunk = Vec::with_capacity(expected);
            let mut failed = false;
            loop {
                match next {
                    None => ended = true,
                    Some(Ok(message)) if *stop.borrow() => {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                    }
                    Some(Ok(message)) => {
                        failures = 0;
                        chunk.push(message);
                    }
                    Some(Err(err)) => {
                        // For example 409 "exceeded MaxAckPending": wait a little, pull again.
                        tracing::debug!(consumer = %name, error = %err, "pull ended");
                        failures = failures.saturating_add(1);
                        failed = true;
                    }
                }
                if ended || failed || chunk.len() >= CHUNK {
                    break;
                }
                match batch.next().now_or_never() {
                    Some(item) => next = item,
                    None => break,
                }
            }
            // Awaiting the supervisor gives back-pressure to the pull.
            expected = chunk.len().clamp(1, CHUNK);
            if !chunk.is_empty() {
                let Ok(recorded) = window.clone().acquire_owned().await else {
                    return;
                };
                let incoming = Incoming {
                    messages: chunk,
                    recorded,
                };
                if supervisor.send(incoming).await.is_err() {
                    return;
                }
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(20 * u64::from(failures.min(50)))).await;
            }
        }
    }
}

/// Most messages handed to the supervisor at once.
const CHUNK: usize = 256;
/// Chunks per consumer being recorded at once.
const ACCEPT_WINDOW: usize = 16;

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(crate::events::Consumers { deploy, delete, .. }) = self.consumers.take() {
            for consumer in [deploy, delete] {
                let stop = self.stop_fetching.subscribe();
                self.fetchers
                    .push(tokio::spawn(fetch(consumer, ctx.address(), stop)));
            }
        }
        // Renew well inside the claims' lifetime; the answer also tells running passes about
        // requests other replicas recorded meanwhile.
        let renew_every = (self.claims.ttl() / 3).max(Duration::from_millis(100));
        ctx.run_interval(renew_every, |act, ctx| {
            if act.held.is_empty() {
                return;
            }
            let held: Vec<Uuid> = act.held.keys().copied().collect();
            let claims = act.claims.clone();
            let me = ctx.address();
            tokio::spawn(async move {
                match claims.renew(&held).await {
                    Ok(renewed) => me.do_send(RenewedClaims(renewed)),
                    Err(err) => tracing::warn!(error = %err, "cannot renew claims"),
                }
            });
        });
        ctx.run_interval(self.scheduling.rescan_every, |act, ctx| act.rescan(ctx));
        // Endpoints left `DEPLOYING` without a request (by a release of the worker that kept
        // none) get one; then everything nobody holds is scheduled.
        let claims = self.claims.clone();
        ctx.spawn(
            async move { claims.resume_deploying().await }
                .into_actor(self)
                .map(|resumed, act, ctx| {
                    match resumed {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(endpoints = n, "resuming endpoints left DEPLOYING"),
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot look for endpoints left DEPLOYING");
                        }
                    }
                    act.rescan(ctx);
                }),
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for fetcher in &self.fetchers {
            fetcher.abort();
        }
    }
}

impl Handler<Incoming> for Supervisor {
    type Result = ();

    fn handle(&mut self, Incoming { messages, recorded }: Incoming, ctx: &mut Self::Context) {
        let window = recorded;
        let metrics = self.ctx.metrics.clone();
        if self.draining.is_some() {
            // Fetching has stopped; give what was already in flight back untouched.
            for message in &messages {
                metrics.event(message.subject.as_str(), Outcome::HandedBack);
            }
            metrics.retries(retry::SHUTDOWN, messages.len());
            tokio::spawn(async move {
                for message in messages {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
            });
            return;
        }
        let store = self.ctx.store.clone();
        let backoff = self.ctx.backoff;
        let mut accepted = Vec::with_capacity(messages.len());
        let mut requests = Vec::with_capacity(messages.len());
        for message in messages {
            let published_at = published_at(&message);
            let span = telemetry::receive_span(&message);
            let decoded = EventKind::from_subject(message.subject.as_str())
                .ok_or_else(|| {
                    format!("subject {} is not one the worker consumes", message.subject)
                })
                .and_then(|kind| {
                    ServingEvent::decode(&message.payload)
                        .map(|event| (kind, event))
                        .map_err(|err| err.to_string())
                });
            match decoded {
                Ok((kind, event)) => {
                    if !span.is_none() {
                        record_event(&span, &event, &self.ctx);
                    }
                    requests.push(Request {
                        endpoint_id: event.endpoint_id,
                        source: Source::Event {
                            kind,
                            tenant_id: event.tenant_id,
                            project_id: event.project_id,
                        },
                        published_at,
                        traceparent: telemetry::receive_traceparent(
                            &span,
                            message.headers.as_ref(),
                        ),
                    });
                    accepted.push((message, span, kind, event));
                }
                Err(reason) => {
                    let span = traced(span, &message, None, &self.ctx);
                    span.in_scope(
                        || tracing::warn!(subject = %message.subject, %reason, "refusing event"),
                    );
                    let (store, metrics) = (store.clone(), metrics.clone());
                    tokio::spawn(async move {
                        let answer =
                            refuse(&store, &metrics, backoff, &message, &span, reason).await;
                        answer_message(&message, &span, answer).await;
                    });
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let me = ctx.address();
        let recorded = store.record_requests(requests);
        let pass_ctx = self.ctx.clone();
        tokio::spawn(async move {
            let recorded = recorded.await;
            // committed (or failed): the consumer may pull the next chunk
            drop(window);
            let mut wanted = Vec::with_capacity(accepted.len());
            let mut answers = Vec::with_capacity(accepted.len());
            for (i, (message, span, kind, event)) in accepted.into_iter().enumerate() {
                let verdict = match &recorded {
                    Ok(recorded) => recorded.get(i).copied(),
                    Err(_) => None,
                };
                match (verdict, &recorded) {
                    (Some(Recorded::Wanted { tenant_id, claimed }), _) => {
                        wanted.push(WantedEndpoint {
                            endpoint_id: event.endpoint_id,
                            tenant_id,
                            claimed,
                            delete: kind == EventKind::Delete,
                        });
                        telemetry::record_outcome(&span, ACCEPTED);
                        answers.push((message, span, AckKind::Ack));
                    }
                    (_, Err(err)) => {
                        telemetry::record_error(&span, err);
                        tracing::warn!(endpoint_id = %event.endpoint_id, error = %err,
                            "cannot record the event; handing it back");
                        let answer = hand_back(&metrics, backoff, &message, &span);
                        answers.push((message, span, answer));
                    }
                    _ => {
                        // the tenant check refused it: find out why, record it, terminate
                        let (store, metrics) = (store.clone(), metrics.clone());
                        let span = traced(span, &message, Some(&event), &pass_ctx);
                        tokio::spawn(async move {
                            let answer = match refusal_reason(&store, kind, &event).await {
                                Ok(reason) => {
                                    span.in_scope(|| {
                                        tracing::warn!(endpoint_id = %event.endpoint_id,
                                            %reason, "refusing event")
                                    });
                                    refuse(&store, &metrics, backoff, &message, &span, reason).await
                                }
                                Err(err) => {
                                    // never a wrong reason: ask again once Postgres answers
                                    telemetry::record_error(&span, &err);
                                    tracing::warn!(endpoint_id = %event.endpoint_id,
                                        error = %err, "cannot read the endpoint to say why \
                                        its event is refused; handing it back");
                                    hand_back(&metrics, backoff, &message, &span)
                                }
                            };
                            answer_message(&message, &span, answer).await;
                        });
                    }
                }
            }
            // the requests are durable: the passes may start while the acks go out
            if !wanted.is_empty() {
                me.do_send(Want(wanted));
            }
            for (message, span, answer) in answers {
                answer_message(&message, &span, answer).await;
            }
        });
    }
}

/// The `outcome` of a `receive` span whose event was recorded (and then acked).
const ACCEPTED: &str = "accepted";

/// Answers `message`; a failure is logged (JetStream redelivers after the ack wait, and the
/// request is recorded once more, which changes nothing).
async fn answer_message(message: &jetstream::Message, span: &tracing::Span, answer: AckKind) {
    let what = match answer {
        AckKind::Ack => "ack",
        AckKind::Term => "term",
        _ => "nak",
    };
    span.record("answer", what);
    if let Err(err) = message.ack_with(answer).await {
        tracing::warn!(error = %err, answer = what,
            "could not answer JetStream; the message will be redelivered after the ack wait");
    }
}

/// Records a refused message in `rejected_events` and says to terminate it, or to hand it
/// back when it cannot be recorded.
async fn refuse(
    store: &Store,
    metrics: &crate::metrics::Metrics,
    backoff: crate::backoff::Backoff,
    message: &jetstream::Message,
    span: &tracing::Span,
    reason: String,
) -> AckKind {
    telemetry::record_error(span, &reason);
    let sequence = message.info().ok().map(|info| info.stream_sequence);
    let endpoint_id = ServingEvent::decode(&message.payload)
        .ok()
        .map(|e| e.endpoint_id);
    let record = RejectedEvent::new(
        message.subject.as_str(),
        sequence,
        endpoint_id,
        reason,
        &message.payload,
    );
    match store.record_rejected(record).await {
        Ok(()) => {
            metrics.event(message.subject.as_str(), Outcome::Refused);
            telemetry::record_outcome(span, Outcome::Refused.as_str());
            AckKind::Term
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot record a refused event; handing it back");
            hand_back(metrics, backoff, message, span)
        }
    }
}

/// Counts a hand-back of `message` and says how long JetStream should wait to redeliver it.
fn hand_back(
    metrics: &crate::metrics::Metrics,
    backoff: crate::backoff::Backoff,
    message: &jetstream::Message,
    span: &tracing::Span,
) -> AckKind {
    metrics.event(message.subject.as_str(), Outcome::HandedBack);
    metrics.retries(retry::DATABASE, 1);
    telemetry::record_outcome(span, Outcome::HandedBack.as_str());
    let delivered = message.info().map_or(1, |info| info.delivered);
    AckKind::Nak(Some(backoff.delay(delivered)))
}

/// Why the tenant check refused an event: the endpoint does not exist, or the event names
/// another owner. An event's tenant and project must be the row's; a deploy may leave them out
/// (it only converges the row's own intent), a delete removes what is running and must name
/// both. A failed read is an error, not a reason.
async fn refusal_reason(
    store: &Store,
    kind: EventKind,
    event: &ServingEvent,
) -> Result<String, crate::store::StoreError> {
    let show = |id: Option<Uuid>| id.map_or_else(|| "-".to_owned(), |id| id.to_string());
    Ok(match store.load(event.endpoint_id).await? {
        Some(row) => {
            let rule = if kind == EventKind::Delete {
                " (a delete must name the endpoint's tenant_id and project_id)"
            } else {
                ""
            };
            format!(
                "event names tenant {} / project {} but endpoint {} belongs to tenant {} / \
                 project {}{rule}; refused without touching the endpoint",
                show(event.tenant_id),
                show(event.project_id),
                row.id,
                row.tenant_id,
                row.project_id
            )
        }
        None => format!(
            "endpoint {} does not exist; the event names an endpoint the platform never created \
             or already purged",
            event.endpoint_id
        ),
    })
}

impl Handler<Want> for Supervisor {
    type Result = ();

    fn handle(&mut self, Want(wanted): Want, ctx: &mut Self::Context) {
        self.want(wanted, ctx);
    }
}

impl Handler<Claimed> for Supervisor {
    type Result = ();

    fn handle(&mut self, Claimed { asked, got }: Claimed, ctx: &mut Self::Context) {
        self.claiming = self.claiming.saturating_sub(1);
        let got = match got {
            Ok(got) => got,
            Err(err) => {
                tracing::warn!(error = %err, endpoints = asked.len(),
                    "cannot claim requests; retrying at the next rescan");
                Vec::new()
            }
        };
        let mut unclaimed: IdSet<Uuid> = asked.into_iter().collect();
        for ClaimedRequest { claim, row } in got {
            unclaimed.remove(&claim.endpoint_id);
            let endpoint_id = claim.endpoint_id;
            self.held.insert(
                endpoint_id,
                Held {
                    version: claim.version,
                    covered: claim.traceparents.clone(),
                    seen: claim.version,
                    events: claim.events,
                    attempts: claim.attempts,
                },
            );
            if self.draining.is_some() {
                self.pass_finished(endpoint_id, PassResult::HandedBack(Some(Duration::ZERO)));
            } else {
                self.route(
                    endpoint_id,
                    Delivery::from_claim(claim),
                    Row::Read(row.map(Box::new)),
                    ctx,
                );
            }
        }
        // held by another replica, or already converged by one: its holder runs it again if
        // a newer request came meanwhile
        for endpoint_id in unclaimed {
            self.scheduler.finish(endpoint_id);
        }
        self.flush_releases(ctx);
        self.admit(ctx);
        self.finish_drain_if_done(ctx);
    }
}

impl Supervisor {
    fn pass_finished(&mut self, endpoint_id: Uuid, result: PassResult) {
        let Some(held) = self.held.remove(&endpoint_id) else {
            return;
        };
        let retry_after = match result {
            _ if self.draining.is_some() && matches!(result, PassResult::HandedBack(_)) => {
                Some(Duration::ZERO)
            }
            PassResult::HandedBack(Some(after)) => Some(after),
            PassResult::HandedBack(None) => Some(
                self.ctx
                    .backoff
                    .delay(i64::from(held.attempts).saturating_add(1)),
            ),
            PassResult::Done(_) | PassResult::Refused => None,
        };
        self.releases.push(Release {
            endpoint_id,
            version: held.version,
            events: held.events,
            covered: held.covered,
            retry_after,
        });
    }
}

impl Handler<PassFinished> for Supervisor {
    type Result = ();

    fn handle(&mut self, finished: PassFinished, ctx: &mut Self::Context) {
        self.pass_finished(finished.endpoint_id, finished.result);
        if let Some(handled) = finished.idle {
            self.forget_if_idle(finished.endpoint_id, handled);
        }
        self.flush_releases(ctx);
    }
}

impl Handler<Released> for Supervisor {
    type Result = ();

    fn handle(&mut self, released: Released, ctx: &mut Self::Context) {
        self.releasing = self.releasing.saturating_sub(1);
        if let Err(err) = &released.still_wanted
            && self.draining.is_none()
        {
            // The claims are still ours (and still renewed): try again shortly rather than
            // leave them held while the worker runs. When stopping, they expire instead.
            tracing::warn!(error = %err, endpoints = released.batch.len(),
                "cannot release claims; retrying");
            self.releases.extend(released.batch);
            ctx.run_later(RELEASE_RETRY, |act, ctx| act.flush_releases(ctx));
            return;
        }
        for release in &released.batch {
            self.scheduler.finish(release.endpoint_id);
        }
        if let Ok(still_wanted) = released.still_wanted
            && self.draining.is_none()
        {
            let mut now = Vec::new();
            for wanted in still_wanted {
                let endpoint = WantedEndpoint {
                    endpoint_id: wanted.endpoint_id,
                    tenant_id: wanted.tenant_id,
                    claimed: false,
                    delete: false,
                };
                if wanted.retry_after.is_zero() {
                    now.push(endpoint);
                } else {
                    ctx.run_later(wanted.retry_after, move |act, ctx| {
                        act.want(vec![endpoint], ctx);
                    });
                }
            }
            self.want(now, ctx);
        }
        self.flush_releases(ctx);
        self.admit(ctx);
        self.finish_drain_if_done(ctx);
    }
}

impl Handler<RenewedClaims> for Supervisor {
    type Result = ();

    fn handle(&mut self, RenewedClaims(renewed): RenewedClaims, _ctx: &mut Self::Context) {
        for r in renewed {
            let newer = match self.held.get_mut(&r.endpoint_id) {
                Some(held) if r.version > held.seen => {
                    held.seen = r.version;
                    true
                }
                _ => false,
            };
            if newer {
                self.nudge(r.endpoint_id, r.wants_delete);
            }
        }
    }
}

impl Handler<Resume> for Supervisor {
    type Result = ();

    fn handle(&mut self, Resume(ids): Resume, ctx: &mut Self::Context) {
        let requests = ids
            .into_iter()
            .map(|endpoint_id| Request {
                endpoint_id,
                source: Source::Resume,
                published_at: None,
                traceparent: None,
            })
            .collect();
        self.record(requests, ctx);
    }
}

impl Handler<FollowUp> for Supervisor {
    type Result = ();

    fn handle(&mut self, FollowUp(ids, follow): FollowUp, ctx: &mut Self::Context) {
        // during a drain, nothing new starts: the next worker's start-up reconcile follows up
        if self.draining.is_some() {
            return;
        }
        let requests = ids
            .into_iter()
            .map(|endpoint_id| Request {
                endpoint_id,
                source: Source::Follow(follow),
                published_at: None,
                traceparent: None,
            })
            .collect();
        self.record(requests, ctx);
    }
}

impl Handler<Idle> for Supervisor {
    type Result = ();

    fn handle(&mut self, idle: Idle, _ctx: &mut Self::Context) {
        self.forget_if_idle(idle.endpoint_id, idle.handled);
    }
}

impl Supervisor {
    /// The actor of `endpoint_id` has nothing to do and has received `handled` deliveries:
    /// forgets and stops it, unless a delivery routed since has not reached it yet (only when
    /// every routed delivery has is it safe to forget it).
    fn forget_if_idle(&mut self, endpoint_id: Uuid, handled: u64) {
        let removed = self
            .registry
            .remove_if(&endpoint_id, |_, entry| entry.routed == handled);
        if let Some((_, entry)) = removed {
            entry.addr.do_send(Stop);
        }
    }
}

impl Handler<Stopped> for Supervisor {
    type Result = ();

    fn handle(&mut self, stopped: Stopped, ctx: &mut Self::Context) {
        if self.registry.len() <= 1 && self.scheduler.queued() == 0 {
            self.collect_when_idle(ctx);
        }
        if self.draining.is_some() {
            // Nothing is routed while draining, so the entry is this actor's.
            self.registry.remove(&stopped.endpoint_id);
            self.finish_drain_if_done(ctx);
        } else {
            // An actor stopped after `Idle` was removed already, and its endpoint may have a
            // new actor by now: only forget an entry whose actor is really gone.
            self.registry
                .remove_if(&stopped.endpoint_id, |_, entry| !entry.addr.connected());
        }
    }
}

impl Supervisor {
    /// The worker has just turned idle: hands freed memory back ([`release_free_memory`]) now,
    /// or, when it did so less than [`COLLECT_AT_MOST_EVERY`] ago, at the end of that interval
    /// if it is still idle then. Actors stop as soon as their pass ends, so a worker that gets
    /// an event now and then turns idle after each, and collecting costs far more than a pass.
    fn collect_when_idle(&mut self, ctx: &mut Context<Self>) {
        if self.collect_armed {
            return;
        }
        let wait = self.last_collect.map_or(Duration::ZERO, |at| {
            COLLECT_AT_MOST_EVERY.saturating_sub(at.elapsed())
        });
        if wait.is_zero() {
            release_free_memory();
            self.last_collect = Some(Instant::now());
            return;
        }
        self.collect_armed = true;
        ctx.run_later(wait, |act, _ctx| {
            act.collect_armed = false;
            if act.registry.is_empty() && act.scheduler.queued() == 0 {
                release_free_memory();
                act.last_collect = Some(Instant::now());
            }
        });
    }
}

impl Handler<StopFetching> for Supervisor {
    type Result = MessageResult<StopFetching>;

    fn handle(&mut self, _: StopFetching, _ctx: &mut Self::Context) -> Self::Result {
        let _ = self.stop_fetching.send(true);
        MessageResult(std::mem::take(&mut self.fetchers))
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();

    fn handle(&mut self, Shutdown(done): Shutdown, ctx: &mut Self::Context) {
        self.draining = Some(done);
        self.scheduler.clear_queued();
        for entry in self.registry.iter() {
            entry.addr.do_send(Drain);
        }
        self.finish_drain_if_done(ctx);
    }
}

impl Handler<Terminate> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Terminate, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Hands the memory the passes freed back to the operating system once no actor is left.
///
/// The actors and their passes live on this thread, and the allocator keeps what they freed
/// for reuse; with nothing running it would keep a burst's peak resident until the next burst.
/// Collecting when it turns idle, at most once a second, costs nothing while it is busy.
fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time;
    // it only frees memory mimalloc itself holds unused (a no-op where it is not the
    // process's allocator).
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// `span`, or when it is disabled (spans are not exported) a traced `receive` span for
/// `message` with what `event` says: a line about one message carries its trace id either way.
fn traced(
    span: tracing::Span,
    message: &jetstream::Message,
    event: Option<&ServingEvent>,
    ctx: &PassContext,
) -> tracing::Span {
    if !span.is_none() {
        return span;
    }
    let span = telemetry::traced_receive_span(message);
    if let Some(event) = event {
        record_event(&span, event, ctx);
    }
    span
}

/// Records what a decoded event says on its `receive` span.
fn record_event(span: &tracing::Span, event: &ServingEvent, ctx: &PassContext) {
    let isvc_name = ctx
        .deployer
        .name_for(&ctx.render.name_prefix, event.endpoint_id);
    let isvc_name = isvc_name.as_str();
    let endpoint = tracing::field::display(event.endpoint_id);
    match (event.tenant_id, event.project_id) {
        (Some(tenant), Some(project)) => {
            let (tenant, project) = (
                tracing::field::display(tenant),
                tracing::field::display(project),
            );
            telemetry::record_all(
                span,
                [
                    ("endpoint_id", &endpoint),
                    ("tenant_id", &tenant),
                    ("project_id", &project),
                    ("isvc_name", &isvc_name),
                ],
            );
        }
        (tenant, project) => {
            telemetry::record_all(
                span,
                [("endpoint_id", &endpoint), ("isvc_name", &isvc_name)],
            );
            if let Some(tenant) = tenant {
                span.record("tenant_id", tracing::field::display(tenant));
            }
            if let Some(project) = project {
                span.record("project_id", tracing::field::display(project));
            }
        }
    }
}
