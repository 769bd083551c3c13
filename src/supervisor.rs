//! The supervisor: owns the JetStream consumers and the registry of endpoint actors.
//!
//! Two fetch tasks (one per durable consumer) pull messages and hand them to the supervisor,
//! which decodes each payload ([`ServingEvent::decode`]) and routes it to the actor of its
//! endpoint, starting one if needed. Payloads that cannot be decoded are refused right here:
//! recorded in `rejected_events`, then terminated.
//!
//! The registry is a [`DashMap`] from endpoint id to the actor's address and the number of
//! deliveries routed to it; the count lets the supervisor stop idle actors without racing a
//! delivery (see [`crate::endpoint_actor`]), so memory follows the endpoints with work, not
//! every endpoint ever seen. Metrics and the HTTP probes read the registry from other threads.
//!
//! Shutdown ([`Shutdown`]): stop fetching, hand back anything still arriving, drain every
//! actor, and answer when the last one has stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use dashmap::DashMap;
use futures::StreamExt;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::delivery::{Delivery, Follow};
use crate::endpoint_actor::{Deliver, Drain, EndpointActor, Idle, Reports, Stop, Stopped};
use crate::events::{Consumers, EventKind, ServingEvent};
use crate::metrics::retry;
use crate::outcome::Outcome;
use crate::pass::PassContext;
use crate::store::RejectedEvent;
use crate::telemetry;

/// An endpoint actor as the supervisor knows it.
pub struct ActorEntry {
    addr: Addr<EndpointActor>,
    routed: u64,
}

/// Endpoint id → its live actor.
pub type ActorRegistry = DashMap<Uuid, ActorEntry>;

/// A message pulled from a consumer.
#[derive(Message)]
#[rtype(result = "()")]
struct Incoming(jetstream::Message);

/// Resume endpoints left `DEPLOYING` by an earlier run.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resume(pub Vec<Uuid>);

/// Passes the informer asks for: endpoints whose object changed, or outlived them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FollowUp(pub Vec<Uuid>, pub Follow);

/// Stop pulling messages; answers with the fetch tasks, which end once their last pull request
/// has run out (within a second).
#[derive(Message)]
#[rtype(result = "Vec<tokio::task::JoinHandle<()>>")]
pub struct StopFetching;

/// Drain every actor; the reply comes when the last actor has stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown(pub oneshot::Sender<()>);

/// Stops the supervisor itself, once [`Shutdown`] has drained it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Terminate;

/// The supervisor actor.
pub struct Supervisor {
    ctx: Arc<PassContext>,
    registry: Arc<ActorRegistry>,
    consumers: Option<Consumers>,
    idle_after: Duration,
    fetchers: Vec<tokio::task::JoinHandle<()>>,
    stop_fetching: watch::Sender<bool>,
    draining: Option<oneshot::Sender<()>>,
}

impl Supervisor {
    /// A supervisor that will consume from `consumers` once started.
    pub fn new(
        ctx: Arc<PassContext>,
        consumers: Consumers,
        registry: Arc<ActorRegistry>,
        idle_after: Duration,
    ) -> Self {
        Self {
            ctx,
            registry,
            consumers: Some(consumers),
            idle_after,
            fetchers: Vec::new(),
            stop_fetching: watch::channel(false).0,
            draining: None,
        }
    }

    fn route(&mut self, delivery: Delivery, ctx: &mut Context<Self>) {
        let endpoint_id = delivery.endpoint_id;
        let spawn = || {
            let reports = Reports {
                idle: ctx.address().recipient(),
                stopped: ctx.address().recipient(),
            };
            let actor = EndpointActor::new(endpoint_id, self.ctx.clone(), reports, self.idle_after);
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
        entry.addr.do_send(Deliver(delivery));
    }

    fn finish_drain_if_done(&mut self) {
        if self.registry.is_empty()
            && let Some(done) = self.draining.take()
        {
            let _ = done.send(());
        }
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
        while let Some(next) = batch.next().await {
            match next {
                Ok(message) if *stop.borrow() => {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
                Ok(message) => {
                    failures = 0;
                    // Awaiting the supervisor gives back-pressure to the pull.
                    if supervisor.send(Incoming(message)).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    // For example 409 "exceeded MaxAckPending": wait a little, pull again.
                    tracing::debug!(consumer = %name, error = %err, "pull ended");
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(failures.min(50))))
                        .await;
                }
            }
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(Consumers { deploy, delete, .. }) = self.consumers.take() {
            for consumer in [deploy, delete] {
                let stop = self.stop_fetching.subscribe();
                self.fetchers
                    .push(tokio::spawn(fetch(consumer, ctx.address(), stop)));
            }
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for fetcher in &self.fetchers {
            fetcher.abort();
        }
    }
}

impl Handler<Incoming> for Supervisor {
    type Result = ();

    fn handle(&mut self, Incoming(message): Incoming, ctx: &mut Self::Context) {
        if self.draining.is_some() {
            // Fetching has stopped; give what was already in flight back untouched.
            let metrics = &self.ctx.metrics;
            metrics.event(message.subject.as_str(), Outcome::HandedBack);
            metrics.retries(retry::SHUTDOWN, 1);
            tokio::spawn(async move {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            });
            return;
        }
        let published_at = message.info().ok().map(|info| info.published);
        let span = telemetry::receive_span(&message);
        let decoded = EventKind::from_subject(message.subject.as_str())
            .ok_or_else(|| format!("subject {} is not one the worker consumes", message.subject))
            .and_then(|kind| {
                ServingEvent::decode(&message.payload)
                    .map(|event| (kind, event))
                    .map_err(|err| err.to_string())
            });
        match decoded {
            Ok((kind, event)) => {
                let name = self
                    .ctx
                    .deployer
                    .name_for(&self.ctx.render.name_prefix, event.endpoint_id);
                record_event(&span, &event, &name);
                let delivery = Delivery {
                    kind,
                    endpoint_id: event.endpoint_id,
                    event: Some(event),
                    message: Some(message),
                    published_at,
                    received_at: Instant::now(),
                    span,
                    answered: Default::default(),
                    follow: None,
                };
                self.route(delivery, ctx);
            }
            Err(reason) => {
                span.in_scope(
                    || tracing::warn!(subject = %message.subject, %reason, "refusing event"),
                );
                telemetry::record_error(&span, &reason);
                let store = self.ctx.store.clone();
                let backoff = self.ctx.backoff;
                let metrics = self.ctx.metrics.clone();
                tokio::spawn(async move {
                    let sequence = message.info().ok().map(|info| info.stream_sequence);
                    let record = RejectedEvent::new(
                        message.subject.as_str(),
                        sequence,
                        None,
                        reason,
                        &message.payload,
                    );
                    let subject = message.subject.as_str();
                    let answer = match store.record_rejected(record).await {
                        Ok(()) => {
                            metrics.event(subject, Outcome::Refused);
                            telemetry::record_outcome(&span, Outcome::Refused.as_str());
                            AckKind::Term
                        }
                        Err(_) => {
                            metrics.event(subject, Outcome::HandedBack);
                            metrics.retries(retry::DATABASE, 1);
                            telemetry::record_outcome(&span, Outcome::HandedBack.as_str());
                            let delivered = message.info().map_or(1, |info| info.delivered);
                            AckKind::Nak(Some(backoff.delay(delivered)))
                        }
                    };
                    if let Err(err) = message.ack_with(answer).await {
                        tracing::warn!(error = %err, "could not answer a refused event");
                    }
                });
            }
        }
    }
}

impl Handler<Resume> for Supervisor {
    type Result = ();

    fn handle(&mut self, Resume(ids): Resume, ctx: &mut Self::Context) {
        if !ids.is_empty() {
            tracing::info!(endpoints = ids.len(), "resuming endpoints left DEPLOYING");
        }
        for id in ids {
            self.route(Delivery::resume(id), ctx);
        }
    }
}

impl Handler<FollowUp> for Supervisor {
    type Result = ();

    fn handle(&mut self, FollowUp(ids, follow): FollowUp, ctx: &mut Self::Context) {
        // during a drain, nothing new starts: the next worker's start-up reconcile follows up
        if self.draining.is_some() {
            return;
        }
        for id in ids {
            self.route(Delivery::follow(id, follow), ctx);
        }
    }
}

impl Handler<Idle> for Supervisor {
    type Result = ();

    fn handle(&mut self, idle: Idle, _ctx: &mut Self::Context) {
        // Only when every routed delivery has reached the actor is it safe to forget it.
        let removed = self
            .registry
            .remove_if(&idle.endpoint_id, |_, entry| entry.routed == idle.handled);
        if let Some((_, entry)) = removed {
            entry.addr.do_send(Stop);
        }
    }
}

impl Handler<Stopped> for Supervisor {
    type Result = ();

    fn handle(&mut self, stopped: Stopped, _ctx: &mut Self::Context) {
        if self.draining.is_some() {
            // Nothing is routed while draining, so the entry is this actor's.
            self.registry.remove(&stopped.endpoint_id);
            self.finish_drain_if_done();
        } else {
            // An actor stopped after `Idle` was removed already, and its endpoint may have a
            // new actor by now: only forget an entry whose actor is really gone.
            self.registry
                .remove_if(&stopped.endpoint_id, |_, entry| !entry.addr.connected());
        }
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

    fn handle(&mut self, Shutdown(done): Shutdown, _ctx: &mut Self::Context) {
        self.draining = Some(done);
        for entry in self.registry.iter() {
            entry.addr.do_send(Drain);
        }
        self.finish_drain_if_done();
    }
}

impl Handler<Terminate> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Terminate, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Records what a decoded event says on its `receive` span.
fn record_event(span: &tracing::Span, event: &ServingEvent, isvc_name: &str) {
    span.record("endpoint_id", tracing::field::display(event.endpoint_id));
    if let Some(tenant) = event.tenant_id {
        span.record("tenant_id", tracing::field::display(tenant));
    }
    if let Some(project) = event.project_id {
        span.record("project_id", tracing::field::display(project));
    }
    span.record("isvc_name", isvc_name);
}
