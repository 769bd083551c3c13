//! The scheduler: which endpoints that want converging get a pass next.
//!
//! Events are acked as soon as their [request](crate::requests) is durable, so the worker's
//! backlog is a set of endpoint ids, not of messages. The scheduler keeps those ids in one
//! queue per tenant and admits them **round-robin across tenants** under two caps: at most
//! `global` passes at once, at most `per_tenant` for one tenant. A tenant that asks for 50,000
//! deploys and a tenant that asks for 20 therefore take turns from the moment the second
//! tenant's events are recorded, however deep the first one's backlog is.
//!
//! An endpoint is in at most one place: queued, or running (claimed, its pass under way). A
//! request for a running endpoint is remembered (`again`) and the endpoint queued once its pass
//! ends; the pass itself learns about it through its actor (see [`crate::pass::Newer`]).
//!
//! The state is plain data behind one mutex, with no I/O: the supervisor actor changes it and
//! does the claims, releases and rescans around it; metrics and tests read [`Snapshot`]s. A
//! queued endpoint costs one id in a tenant's queue and one entry in the index, about 80 bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use crate::IdMap;

/// Caps for the [`Scheduler`].
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Passes running at once, all tenants together.
    pub global: usize,
    /// Passes running at once for one tenant.
    pub per_tenant: usize,
}

/// How many endpoints run and wait, in total and per tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Passes running.
    pub in_flight: usize,
    /// Passes running per tenant (tenants with none are absent).
    pub per_tenant: HashMap<Uuid, usize>,
    /// Endpoints queued.
    pub waiting: usize,
    /// Endpoints queued per tenant (tenants with none are absent).
    pub waiting_per_tenant: HashMap<Uuid, usize>,
}

/// The queue key of endpoints without a tenant (objects of endpoints that no longer exist,
/// followed for garbage collection).
const NO_TENANT: Uuid = Uuid::nil();

#[derive(Debug, Default)]
struct TenantQueue {
    queue: VecDeque<Uuid>,
    running: usize,
    /// Whether the tenant is in the ring (it has queued ids and may be under its cap).
    in_ring: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Queued,
    Running {
        /// Asked for again while running: queue it once the pass ends.
        again: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    tenant: Uuid,
    place: Place,
}

/// What [`Scheduler::want`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Queued.
    Queued,
    /// Already queued: nothing changes.
    AlreadyQueued,
    /// Its pass runs: tell the pass, and queue it again when the pass ends.
    Running,
}

/// Per-tenant queues of endpoint ids, admitted round-robin under caps; cheap to clone (the
/// clones share one state).
#[derive(Debug, Clone)]
pub struct Scheduler {
    state: Arc<Mutex<Queues>>,
}

#[derive(Debug)]
struct Queues {
    caps: Caps,
    tenants: IdMap<Uuid, TenantQueue>,
    /// Tenants with queued ids, in the order they are served.
    ring: VecDeque<Uuid>,
    endpoints: IdMap<Uuid, Entry>,
    running: usize,
}

impl Scheduler {
    /// An empty scheduler with `caps` (a cap of 0 is taken as 1).
    pub fn new(caps: Caps) -> Self {
        Self {
            state: Arc::new(Mutex::new(Queues::new(caps))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        // Every change is a few map and queue operations that cannot be left half-done.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks for a pass over `endpoint_id` of `tenant`.
    pub fn want(&self, endpoint_id: Uuid, tenant: Option<Uuid>) -> Wanted {
        self.lock().want(endpoint_id, tenant)
    }

    /// Admits what the caps allow, round-robin over tenants; the endpoints returned are
    /// running from now on, until [`finish`](Self::finish).
    pub fn admit(&self) -> Vec<Uuid> {
        self.lock().admit()
    }

    /// The pass over a running endpoint has ended (or its claim was not granted): frees its
    /// slot. Returns whether it was asked for again meanwhile.
    pub fn finish(&self, endpoint_id: Uuid) -> bool {
        self.lock().finish(endpoint_id)
    }

    /// Forgets every queued endpoint (a draining worker starts nothing new; the requests stay
    /// in Postgres for the next worker). Running ones stay until they finish.
    pub fn clear_queued(&self) {
        self.lock().clear_queued();
    }

    /// Whether `endpoint_id` is queued or running here.
    pub fn knows(&self, endpoint_id: Uuid) -> bool {
        self.lock().endpoints.contains_key(&endpoint_id)
    }

    /// Endpoints queued.
    pub fn queued(&self) -> usize {
        let queues = self.lock();
        queues.endpoints.len() - queues.running
    }

    /// Current counts, for metrics and tests.
    pub fn snapshot(&self) -> Snapshot {
        let queues = self.lock();
        Snapshot {
            in_flight: queues.running,
            per_tenant: queues
                .tenants
                .iter()
                .filter(|(_, q)| q.running > 0)
                .map(|(t, q)| (*t, q.running))
                .collect(),
            waiting: queues.endpoints.len() - queues.running,
            waiting_per_tenant: queues
                .tenants
                .iter()
                .filter(|(_, q)| !q.queue.is_empty())
                .map(|(t, q)| (*t, q.queue.len()))
                .collect(),
        }
    }
}

impl Queues {
    fn new(caps: Caps) -> Self {
        Self {
            caps: Caps {
                global: caps.global.max(1),
                per_tenant: caps.per_tenant.max(1),
            },
            tenants: IdMap::default(),
            ring: VecDeque::new(),
            endpoints: IdMap::default(),
            running: 0,
        }
    }

    fn want(&mut self, endpoint_id: Uuid, tenant: Option<Uuid>) -> Wanted {
        let tenant = tenant.unwrap_or(NO_TENANT);
        match self.endpoints.get_mut(&endpoint_id) {
            Some(Entry {
                place: Place::Queued,
                ..
            }) => Wanted::AlreadyQueued,
            Some(Entry {
                place: Place::Running { again },
                ..
            }) => {
                *again = true;
                Wanted::Running
            }
            None => {
                self.endpoints.insert(
                    endpoint_id,
                    Entry {
                        tenant,
                        place: Place::Queued,
                    },
                );
                self.push(tenant, endpoint_id);
                Wanted::Queued
            }
        }
    }

    fn push(&mut self, tenant: Uuid, endpoint_id: Uuid) {
        let queue = self.tenants.entry(tenant).or_default();
        queue.queue.push_back(endpoint_id);
        if !queue.in_ring {
            queue.in_ring = true;
            self.ring.push_back(tenant);
        }
    }

    fn admit(&mut self) -> Vec<Uuid> {
        let mut admitted = Vec::new();
        while self.running < self.caps.global {
            let Some(tenant) = self.ring.pop_front() else {
                break;
            };
            let Some(queue) = self.tenants.get_mut(&tenant) else {
                continue;
            };
            queue.in_ring = false;
            if queue.running >= self.caps.per_tenant {
                // back in the ring when one of its passes ends
                continue;
            }
            let Some(endpoint_id) = queue.queue.pop_front() else {
                continue;
            };
            queue.running += 1;
            self.running += 1;
            if !queue.queue.is_empty() {
                queue.in_ring = true;
                self.ring.push_back(tenant);
            }
            if let Some(entry) = self.endpoints.get_mut(&endpoint_id) {
                entry.place = Place::Running { again: false };
            }
            admitted.push(endpoint_id);
        }
        admitted
    }

    fn finish(&mut self, endpoint_id: Uuid) -> bool {
        let Some(entry) = self.endpoints.get(&endpoint_id).copied() else {
            return false;
        };
        let Place::Running { again } = entry.place else {
            return false;
        };
        self.endpoints.remove(&endpoint_id);
        self.running = self.running.saturating_sub(1);
        if let Some(queue) = self.tenants.get_mut(&entry.tenant) {
            queue.running = queue.running.saturating_sub(1);
            if !queue.queue.is_empty() && !queue.in_ring {
                queue.in_ring = true;
                self.ring.push_back(entry.tenant);
            }
            if queue.queue.is_empty() && queue.running == 0 {
                self.tenants.remove(&entry.tenant);
            }
        }
        again
    }

    fn clear_queued(&mut self) {
        self.endpoints.retain(|_, e| e.place != Place::Queued);
        self.ring.clear();
        self.tenants.retain(|_, q| {
            q.queue.clear();
            q.in_ring = false;
            q.running > 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::new_v4()).collect()
    }

    #[test]
    fn tenants_take_turns_whatever_their_backlog() {
        let mut s = Queues::new(Caps {
            global: 4,
            per_tenant: 4,
        });
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let flood = ids(1000);
        for id in &flood {
            s.want(*id, Some(a));
        }
        let few = ids(3);
        for id in &few {
            s.want(*id, Some(b));
        }
        let first = s.admit();
        assert_eq!(first.len(), 4);
        // a, b, a, b: two of b's three are in the first four, though a queued 1,000 first
        assert_eq!(first.iter().filter(|id| few.contains(id)).count(), 2);
        assert_eq!((s.endpoints.len() - s.running), 1000 + 3 - 4);
    }

    #[test]
    fn the_per_tenant_cap_leaves_room_for_others() {
        let mut s = Queues::new(Caps {
            global: 10,
            per_tenant: 3,
        });
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for id in ids(100) {
            s.want(id, Some(a));
        }
        assert_eq!(s.admit().len(), 3, "a alone stops at its own cap");
        let late = ids(2);
        for id in &late {
            s.want(*id, Some(b));
        }
        let next = s.admit();
        assert_eq!(next, late, "b's are admitted at once: a is at its cap");
    }

    #[test]
    fn a_finished_pass_frees_its_slot_and_requeues_when_asked_again() {
        let mut s = Queues::new(Caps {
            global: 1,
            per_tenant: 1,
        });
        let t = Some(Uuid::new_v4());
        let [x, y] = [Uuid::new_v4(), Uuid::new_v4()];
        assert_eq!(s.want(x, t), Wanted::Queued);
        assert_eq!(s.want(y, t), Wanted::Queued);
        assert_eq!(s.want(x, t), Wanted::AlreadyQueued);
        assert_eq!(s.admit(), vec![x]);
        assert!(s.admit().is_empty(), "the global cap holds");
        assert_eq!(s.want(x, t), Wanted::Running);
        assert!(s.finish(x), "x was asked for again while running");
        assert!(!s.endpoints.contains_key(&x));
        assert_eq!(s.admit(), vec![y]);
        assert!(!s.finish(y));
        assert_eq!(s.running, 0);
        assert!(s.tenants.is_empty(), "no state left for an idle tenant");
    }

    #[test]
    fn clearing_keeps_running_passes_only() {
        let mut s = Queues::new(Caps {
            global: 2,
            per_tenant: 2,
        });
        for id in ids(5) {
            s.want(id, None);
        }
        let running = s.admit();
        s.clear_queued();
        assert_eq!((s.endpoints.len() - s.running), 0);
        assert_eq!(s.running, 2);
        for id in running {
            s.finish(id);
        }
        assert!(s.endpoints.is_empty() && s.tenants.is_empty() && s.ring.is_empty());
    }

    #[test]
    fn unknown_or_queued_endpoints_do_not_finish() {
        let mut s = Queues::new(Caps {
            global: 1,
            per_tenant: 1,
        });
        let x = Uuid::new_v4();
        assert!(!s.finish(x));
        s.want(x, None);
        assert!(!s.finish(x), "a queued endpoint holds no slot");
        assert_eq!((s.endpoints.len() - s.running), 1);
    }
}
