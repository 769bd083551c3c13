//! Fair admission of deploys across tenants.
//!
//! One shared worker serves every tenant, so no tenant may starve the others. Before a pass
//! starts real work on an endpoint it takes a [`Permit`] from [`Admission`]:
//!
//! - at most `global` permits are out at once (bounds the work in flight on the cluster and the
//!   database), and at most `per_tenant` per tenant (one tenant's burst cannot fill the worker);
//! - when permits run short, waiting tenants are served **round-robin**: each freed permit goes
//!   to the next tenant in the ring that has a waiter and is under its own cap, so a tenant with
//!   10,000 queued deploys and a tenant with one take turns.
//!
//! A permit is released when dropped, and a waiter that gives up (its future dropped) is
//! skipped. State is one small mutex-guarded structure; the fast path (capacity available and no
//! one waiting) takes the lock once and never allocates a waiter.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use uuid::Uuid;

/// Caps for [`Admission`].
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Permits out at once, all tenants together.
    pub global: usize,
    /// Permits out at once for one tenant.
    pub per_tenant: usize,
}

#[derive(Default)]
struct Tenant {
    in_flight: usize,
    waiters: VecDeque<oneshot::Sender<Permit>>,
}

struct State {
    caps: Caps,
    in_flight: usize,
    tenants: HashMap<Uuid, Tenant>,
    /// Tenants with waiters, in the order they are served.
    ring: VecDeque<Uuid>,
}

/// Hands out deploy permits fairly; cheap to clone.
#[derive(Clone)]
pub struct Admission {
    state: Arc<Mutex<State>>,
}

/// Permission to run one deploy; released on drop.
pub struct Permit {
    admission: Admission,
    tenant: Uuid,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// How many permits are out, in total and per tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Permits out.
    pub in_flight: usize,
    /// Permits out per tenant (tenants with none are absent).
    pub per_tenant: HashMap<Uuid, usize>,
    /// Callers waiting for a permit.
    pub waiting: usize,
    /// Callers waiting for a permit per tenant (tenants with none are absent): the endpoints
    /// queued in the worker itself, which JetStream's consumer lag does not show.
    pub waiting_per_tenant: HashMap<Uuid, usize>,
}

impl Admission {
    /// An admission controller with the given caps (a cap of 0 is taken as 1).
    pub fn new(caps: Caps) -> Self {
        let caps = Caps {
            global: caps.global.max(1),
            per_tenant: caps.per_tenant.max(1),
        };
        Self {
            state: Arc::new(Mutex::new(State {
                caps,
                in_flight: 0,
                tenants: HashMap::new(),
                ring: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a few integer
        // and queue operations that cannot be left half-done.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a permit for `tenant`.
    pub async fn acquire(&self, tenant: Uuid) -> Permit {
        let rx = {
            let mut state = self.lock();
            let caps = state.caps;
            let global_free = state.in_flight < caps.global;
            let entry = state.tenants.entry(tenant).or_default();
            if global_free && entry.in_flight < caps.per_tenant && entry.waiters.is_empty() {
                entry.in_flight += 1;
                state.in_flight += 1;
                return Permit {
                    admission: self.clone(),
                    tenant,
                };
            }
            let (tx, rx) = oneshot::channel();
            let first_waiter = entry.waiters.is_empty();
            entry.waiters.push_back(tx);
            if first_waiter {
                state.ring.push_back(tenant);
            }
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The sender lives in our own state and is only dropped after sending; this arm
            // exists for completeness and waits again rather than running unadmitted.
            Err(_) => Box::pin(self.acquire(tenant)).await,
        }
    }

    /// Current counts, for metrics and tests.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        Snapshot {
            in_flight: state.in_flight,
            per_tenant: state
                .tenants
                .iter()
                .filter(|(_, t)| t.in_flight > 0)
                .map(|(id, t)| (*id, t.in_flight))
                .collect(),
            waiting: state.tenants.values().map(|t| t.waiters.len()).sum(),
            waiting_per_tenant: state
                .tenants
                .iter()
                .filter(|(_, t)| !t.waiters.is_empty())
                .map(|(id, t)| (*id, t.waiters.len()))
                .collect(),
        }
    }

    fn release(&self, tenant: Uuid) {
        let mut granted = Vec::new();
        {
            let mut state = self.lock();
            state.in_flight -= 1;
            if let Some(entry) = state.tenants.get_mut(&tenant) {
                entry.in_flight -= 1;
            }
            dispatch(&mut state, self, &mut granted);
        }
        // Hand permits over outside the lock: a dropped waiter returns its permit, which
        // re-enters `release`.
        for (tx, permit) in granted {
            if let Err(permit) = tx.send(permit) {
                drop(permit);
            }
        }
    }
}

/// Grants freed capacity round-robin over tenants that wait and are under their own cap.
fn dispatch(
    state: &mut State,
    admission: &Admission,
    granted: &mut Vec<(oneshot::Sender<Permit>, Permit)>,
) {
    let mut skipped = 0;
    while state.in_flight < state.caps.global && skipped < state.ring.len() {
        let Some(tenant) = state.ring.pop_front() else {
            break;
        };
        let per_tenant = state.caps.per_tenant;
        let Some(entry) = state.tenants.get_mut(&tenant) else {
            continue;
        };
        // Waiters that gave up are dropped without using capacity.
        while entry.waiters.front().is_some_and(|tx| tx.is_closed()) {
            entry.waiters.pop_front();
        }
        if entry.waiters.is_empty() {
            skipped = 0;
            continue;
        }
        if entry.in_flight >= per_tenant {
            // At its own cap: keep its place in the ring for a later release.
            state.ring.push_back(tenant);
            skipped += 1;
            continue;
        }
        if let Some(tx) = entry.waiters.pop_front() {
            entry.in_flight += 1;
            state.in_flight += 1;
            granted.push((
                tx,
                Permit {
                    admission: admission.clone(),
                    tenant,
                },
            ));
        }
        if !entry.waiters.is_empty() {
            state.ring.push_back(tenant);
        }
        skipped = 0;
    }
    // Forget idle tenants so memory does not grow with the number of tenants ever seen.
    state
        .tenants
        .retain(|_, t| t.in_flight > 0 || !t.waiters.is_empty());
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release(self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn caps(global: usize, per_tenant: usize) -> Caps {
        Caps { global, per_tenant }
    }

    #[tokio::test]
    async fn grants_immediately_under_the_caps() {
        let admission = Admission::new(caps(2, 2));
        let t = Uuid::new_v4();
        let a = admission.acquire(t).await;
        let b = admission.acquire(t).await;
        assert_eq!(admission.snapshot().in_flight, 2);
        drop((a, b));
        assert_eq!(admission.snapshot(), Snapshot::default());
    }

    #[tokio::test]
    async fn a_tenant_at_its_cap_does_not_block_another() {
        let admission = Admission::new(caps(10, 1));
        let (busy, other) = (Uuid::new_v4(), Uuid::new_v4());
        let _held = admission.acquire(busy).await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), admission.acquire(busy));
        assert!(blocked.await.is_err(), "second permit for a capped tenant");
        let granted = tokio::time::timeout(Duration::from_millis(50), admission.acquire(other));
        assert!(granted.await.is_ok(), "another tenant must not wait");
    }

    #[tokio::test]
    async fn freed_permits_go_round_robin_between_waiting_tenants() {
        let admission = Admission::new(caps(1, 1));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = admission.acquire(a).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Tenant a queues three, then tenant b queues one: b must not wait behind all of a's.
        for tenant in [a, a, a, b] {
            let admission = admission.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let permit = admission.acquire(tenant).await;
                order.lock().unwrap().push(tenant);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(permit);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let snapshot = admission.snapshot();
        assert_eq!(snapshot.waiting, 4);
        assert_eq!(snapshot.waiting_per_tenant, HashMap::from([(a, 3), (b, 1)]));
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![a, b, a, a]);
        assert_eq!(admission.snapshot(), Snapshot::default());
    }

    #[tokio::test]
    async fn an_abandoned_waiter_gives_its_turn_away() {
        let admission = Admission::new(caps(1, 1));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let held = admission.acquire(a).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), admission.acquire(b)).await;
        assert!(gave_up.is_err());
        let waiter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.acquire(a).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        let permit = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the live waiter is served")
            .unwrap();
        assert_eq!(admission.snapshot().in_flight, 1);
        drop(permit);
        assert_eq!(admission.snapshot(), Snapshot::default());
    }
}
