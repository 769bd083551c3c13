//! The endpoint actor: one per endpoint with work, serializing everything that happens to it.
//!
//! The supervisor routes every delivery for endpoint X to X's actor. The actor runs at most one
//! [pass](crate::pass) at a time, so a canary rollout and a rollback of the same endpoint can
//! never interleave, while actors of different endpoints run concurrently (a 10-minute deploy
//! of one endpoint delays no other). Deliveries arriving during a pass wait in `pending` and are
//! all covered by the next pass: they coalesce into one deploy of the latest intent.
//!
//! Lifecycle, kept leak-free without locks:
//! - after `idle_after` with nothing to do the actor tells the supervisor how many deliveries it
//!   has handled ([`Idle`]); the supervisor, the only one routing to it, stops it only if that
//!   equals what it routed — so a delivery can never be sent to a stopping actor;
//! - on [`Drain`] (shutdown) it hands queued deliveries back to JetStream, lets the running pass
//!   finish (or be aborted at the end of the grace period) and stops.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use uuid::Uuid;

use async_nats::jetstream::AckKind;

use crate::delivery::{Delivery, answer_all};
use crate::events::EventKind;
use crate::pass::{self, Newer, PassContext};
use tokio::sync::watch;

/// A delivery for this actor's endpoint.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Delivery);

/// Shutdown: hand queued deliveries back, finish the running pass, stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Sent by the supervisor once it has forgotten this actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Told to the supervisor when the actor has been idle for a while.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Idle {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Deliveries the actor has received so far.
    pub handled: u64,
}

/// Told to the supervisor when the actor has stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stopped {
    /// The endpoint.
    pub endpoint_id: Uuid,
}

/// Where the actor reports [`Idle`] and [`Stopped`].
#[derive(Clone)]
pub struct Reports {
    /// Idle reports.
    pub idle: Recipient<Idle>,
    /// Stop reports.
    pub stopped: Recipient<Stopped>,
}

/// The actor of one endpoint.
pub struct EndpointActor {
    endpoint_id: Uuid,
    ctx: Arc<PassContext>,
    reports: Reports,
    idle_after: Duration,
    pending: Vec<Delivery>,
    busy: bool,
    draining: bool,
    /// Hand-backs still being sent; the actor must not stop before they are (a stopping
    /// actix context drops its futures).
    answering: usize,
    handled: u64,
    idle_timer: Option<SpawnHandle>,
    /// Sends progress acks for `pending` while it waits behind a running pass.
    progress_timer: Option<SpawnHandle>,
    /// Tells the running pass what arrived since it started (see [`pass::Newer`]).
    newer: Option<watch::Sender<Newer>>,
}

impl EndpointActor {
    /// An actor for `endpoint_id`.
    pub fn new(
        endpoint_id: Uuid,
        ctx: Arc<PassContext>,
        reports: Reports,
        idle_after: Duration,
    ) -> Self {
        Self {
            endpoint_id,
            ctx,
            reports,
            idle_after,
            pending: Vec::new(),
            busy: false,
            draining: false,
            answering: 0,
            handled: 0,
            idle_timer: None,
            progress_timer: None,
            newer: None,
        }
    }

    /// Keeps queued deliveries alive while they wait for the running pass: without progress
    /// acks JetStream would redeliver them after its ack wait, again and again, during a long
    /// deploy.
    fn arm_progress_timer(&mut self, ctx: &mut Context<Self>) {
        if self.progress_timer.is_some() {
            return;
        }
        let every = self.ctx.progress_every;
        let handle = ctx.run_interval(every, |act, _ctx| {
            let waiting: Vec<_> = act
                .pending
                .iter()
                .filter_map(|d| d.message.clone())
                .collect();
            if !waiting.is_empty() {
                tokio::spawn(async move {
                    for message in waiting {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                });
            }
        });
        self.progress_timer = Some(handle);
    }

    fn start_pass(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.progress_timer.take() {
            ctx.cancel_future(timer);
        }
        self.busy = true;
        let batch = std::mem::take(&mut self.pending);
        let (newer, newer_rx) = watch::channel(Newer::default());
        self.newer = Some(newer);
        let work = pass::run(self.ctx.clone(), self.endpoint_id, batch, newer_rx);
        ctx.spawn(work.into_actor(self).map(|_result, act, ctx| {
            act.busy = false;
            act.newer = None;
            if act.draining {
                act.stop_when_settled(ctx);
            } else if !act.pending.is_empty() {
                act.start_pass(ctx);
            } else {
                act.arm_idle_timer(ctx);
            }
        }));
    }

    /// Hands `deliveries` back to JetStream for immediate redelivery (to another replica or
    /// this worker's successor), then stops if draining and nothing else runs.
    fn hand_back(&mut self, deliveries: Vec<Delivery>, ctx: &mut Context<Self>) {
        if deliveries.is_empty() {
            return;
        }
        self.answering += 1;
        let metrics = &self.ctx.metrics;
        metrics.retries(crate::metrics::retry::SHUTDOWN, deliveries.len());
        for delivery in &deliveries {
            metrics.event(delivery.subject(), crate::outcome::Outcome::HandedBack);
        }
        let work = async move { answer_all(&deliveries, AckKind::Nak(None)).await };
        ctx.spawn(work.into_actor(self).map(|(), act, ctx| {
            act.answering -= 1;
            if act.draining {
                act.stop_when_settled(ctx);
            }
        }));
    }

    fn stop_when_settled(&mut self, ctx: &mut Context<Self>) {
        if !self.busy && self.answering == 0 {
            ctx.stop();
        }
    }

    fn arm_idle_timer(&mut self, ctx: &mut Context<Self>) {
        let handle = ctx.run_later(self.idle_after, |act, _ctx| {
            act.idle_timer = None;
            if !act.busy && act.pending.is_empty() {
                act.reports.idle.do_send(Idle {
                    endpoint_id: act.endpoint_id,
                    handled: act.handled,
                });
            }
        });
        self.idle_timer = Some(handle);
    }
}

impl Actor for EndpointActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.reports.stopped.do_send(Stopped {
            endpoint_id: self.endpoint_id,
        });
    }
}

impl Handler<Deliver> for EndpointActor {
    type Result = ();

    fn handle(&mut self, Deliver(delivery): Deliver, ctx: &mut Self::Context) {
        self.handled += 1;
        let kind = delivery.kind;
        if self.draining {
            self.hand_back(vec![delivery], ctx);
            return;
        }
        // room for exactly one at first: events rarely pile up, and a `Delivery` is ~600
        // bytes, so the default first growth (four) would hold ~2 KiB per in-flight deploy for
        // nothing; a pile-up grows as usual from there
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(1);
        }
        self.pending.push(delivery);
        if let Some(timer) = self.idle_timer.take() {
            ctx.cancel_future(timer);
        }
        if self.busy {
            if let Some(newer) = &self.newer {
                let delete = kind == EventKind::Delete;
                newer.send_modify(|newer| {
                    newer.events += 1;
                    newer.delete |= delete;
                });
            }
            self.arm_progress_timer(ctx);
        } else {
            self.start_pass(ctx);
        }
    }
}

impl Handler<Drain> for EndpointActor {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) {
        self.draining = true;
        let queued = std::mem::take(&mut self.pending);
        self.hand_back(queued, ctx);
        self.stop_when_settled(ctx);
    }
}

impl Handler<Stop> for EndpointActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
