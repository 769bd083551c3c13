//! The endpoint actor: one per endpoint with work, serializing everything that happens to it.
//!
//! The supervisor's [scheduler](crate::scheduler) admits an endpoint, claims its convergence
//! request, and hands the actor what the request covers ([`Deliver`]). The actor runs at most
//! one [pass](crate::pass) at a time, so a canary rollout and a rollback of the same endpoint
//! can never interleave, while actors of different endpoints run concurrently (a 10-minute
//! deploy of one endpoint delays no other). What arrives for the endpoint while its pass runs
//! is recorded in its request and tells the running pass ([`Nudge`]), which stops waiting if
//! the intent moved on; the scheduler runs the endpoint again once the pass has ended
//! ([`PassFinished`]).
//!
//! Lifecycle, kept leak-free without locks:
//! - once it has nothing to do (at the end of its pass, or `idle_after` later when that is not
//!   zero) the actor tells the supervisor how many deliveries it has handled (in
//!   [`PassFinished`], or [`Idle`]); the supervisor, the only one routing to it, stops it only
//!   if that equals what it routed — so a delivery can never be sent to a stopping actor;
//! - on [`Drain`] (shutdown) it lets the running pass finish (or be aborted at the end of the
//!   grace period) and stops.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use uuid::Uuid;

use crate::delivery::Delivery;
use crate::pass::{self, Newer, PassContext, PassResult, Row};

/// What one claimed request asks of this actor's endpoint, with the row the claim read.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    /// What the request covers.
    pub batch: Vec<Delivery>,
    /// The endpoint's row.
    pub row: Row,
}

/// Something new was asked of the endpoint while its pass runs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Nudge {
    /// Whether it asks for a delete.
    pub delete: bool,
}

/// Shutdown: finish the running pass, stop.
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

/// Told to the supervisor when a pass has ended, for every [`Deliver`] (also one the actor
/// could not run because it was draining).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PassFinished {
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// How the pass ended.
    pub result: PassResult,
    /// When the actor is idle now and stops when idle (`idle_after` zero): the deliveries it
    /// has received, as in [`Idle`].
    pub idle: Option<u64>,
}

/// Where the actors report: made once by the supervisor and shared by every actor (an
/// actor's own copies of the three recipients cost an allocation each to make and to drop).
pub struct Reports {
    /// Idle reports.
    pub idle: Recipient<Idle>,
    /// Stop reports.
    pub stopped: Recipient<Stopped>,
    /// Ends of passes.
    pub finished: Recipient<PassFinished>,
}

/// The actor of one endpoint.
pub struct EndpointActor {
    endpoint_id: Uuid,
    ctx: Arc<PassContext>,
    reports: Arc<Reports>,
    idle_after: Duration,
    pending: Vec<Vec<Delivery>>,
    busy: bool,
    draining: bool,
    handled: u64,
    idle_timer: Option<SpawnHandle>,
    /// Tells the running pass what arrived since it started (see [`pass::Newer`]).
    newer: Option<Arc<Newer>>,
}

impl EndpointActor {
    /// An actor for `endpoint_id`.
    pub fn new(
        endpoint_id: Uuid,
        ctx: Arc<PassContext>,
        reports: Arc<Reports>,
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
            handled: 0,
            idle_timer: None,
            newer: None,
        }
    }

    fn start_pass(&mut self, batch: Vec<Delivery>, row: Row, ctx: &mut Context<Self>) {
        self.busy = true;
        let newer = Arc::new(Newer::default());
        self.newer = Some(newer.clone());
        // small: the pass itself is boxed where it is made, so the wrappers below do not move
        // its kilobytes
        let work = pass::run(self.ctx.clone(), self.endpoint_id, batch, row, newer);
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            act.newer = None;
            // idle at once when nothing waits: the report of the pass's end is the idle report
            let idle_now = !act.draining && act.pending.is_empty() && act.idle_after.is_zero();
            act.finished(result, idle_now.then_some(act.handled));
            if act.draining {
                act.hand_back_pending();
                ctx.stop();
            } else if !act.pending.is_empty() {
                // the row read with its claim predates this pass's writes: read it again
                let next = act.pending.remove(0);
                act.start_pass(next, Row::Unread, ctx);
            } else if !idle_now {
                act.arm_idle_timer(ctx);
            }
        }));
    }

    fn finished(&self, result: PassResult, idle: Option<u64>) {
        self.reports.finished.do_send(PassFinished {
            endpoint_id: self.endpoint_id,
            result,
            idle,
        });
    }

    /// Reports what is queued as handed back: the requests stay, for another replica or the
    /// next start.
    fn hand_back_pending(&mut self) {
        for batch in std::mem::take(&mut self.pending) {
            self.ctx
                .metrics
                .retries(crate::metrics::retry::SHUTDOWN, batch.len());
            self.finished(PassResult::HandedBack(Some(Duration::ZERO)), None);
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

    fn handle(&mut self, Deliver { batch, row }: Deliver, ctx: &mut Self::Context) {
        self.handled += 1;
        if let Some(timer) = self.idle_timer.take() {
            ctx.cancel_future(timer);
        }
        if self.draining {
            self.pending.push(batch);
            self.hand_back_pending();
        } else if self.busy {
            // the scheduler runs one pass per endpoint at a time; should a second one arrive
            // anyway, it waits for the first rather than interleaving with it
            self.pending.push(batch);
        } else {
            self.start_pass(batch, row, ctx);
        }
    }
}

impl Handler<Nudge> for EndpointActor {
    type Result = ();

    fn handle(&mut self, nudge: Nudge, _ctx: &mut Self::Context) {
        if let Some(newer) = &self.newer {
            newer.arrived(nudge.delete);
        }
    }
}

impl Handler<Drain> for EndpointActor {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) {
        self.draining = true;
        self.hand_back_pending();
        if !self.busy {
            ctx.stop();
        }
    }
}

impl Handler<Stop> for EndpointActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
