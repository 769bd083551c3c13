//! One shared InferenceService watch per worker: an informer.
//!
//! Every deploy used to open its own list and watch, so a thousand deploys in flight held a
//! thousand watch connections and cost a list each. The informer instead keeps **one**
//! label-selected watch (`app.kubernetes.io/managed-by=deploy-worker` in `KSERVE_NAMESPACE`)
//! through kube-runtime's watcher — relists after `410 Gone`, reconnects and bookmarks are
//! its — and a cache of every object of ours. Objects are parsed without their managed fields
//! ([`LeanInferenceService`]) and each is held once, in an `Arc` the cache and the
//! subscribers share.
//!
//! Each deploy or delete *subscribes* to its own object by name: a [`Subscription`] is a
//! `watch` channel holding the latest [`Sighting`] of that object, so it always sees the newest
//! state and never a backlog; readiness is judged from what it delivers. A subscription lives as
//! long as the pass that waits on it; the informer routes nothing to names nobody waits for.
//!
//! The cache also lets an apply skip the read before the write: the cached object's
//! `resourceVersion` is the precondition, and a stale cache shows up as a `409` that makes the
//! next attempt read the object fresh.
//!
//! **Following after Ready.** A change to an object no pass is waiting on is routed through
//! the [`Router`] to the supervisor, which records it as a [`Follow::Check`] request and
//! schedules a pass like any other (so a `READY` endpoint costs an entry in the cache, not a
//! live actor): the
//! object stopped being Ready (routed again once the debounce has passed, so a blip that
//! recovers in time changes nothing), became Ready again, was deleted, or no longer matches
//! the spec the worker applied ([`InferenceService::has_drifted`]). The pass compares the
//! object with the endpoint's row and decides; the informer only notices.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use uuid::Uuid;

use super::lean::LeanInferenceService;
use crate::backoff::Backoff;
use crate::delivery::Follow;
use crate::kserve::{InferenceService, LABEL_MANAGED_BY, MANAGED_BY};
use crate::metrics::Metrics;

/// What the informer last saw of one object.
#[derive(Debug, Clone)]
pub enum Sighting {
    /// Nothing seen since the subscription started (the cache had no such object).
    Unknown,
    /// The object as of its latest event.
    Seen(Arc<InferenceService>),
    /// The object was deleted; `uid` names the incarnation that went (`None`: it was missing
    /// from a relist, so which incarnation is not known).
    Gone {
        /// The deleted object's uid, when the deletion was watched.
        uid: Option<String>,
    },
}

/// Where the informer sends the endpoints it wants a pass over (the supervisor, once it runs);
/// cheap to clone. Until it is connected nothing is routed: the start-up reconcile, which runs
/// after it is, covers what happened before.
#[derive(Clone, Default)]
pub struct Router(Arc<OnceLock<RouteFn>>);

type RouteFn = Box<dyn Fn(Vec<Uuid>, Follow) + Send + Sync>;

impl Router {
    /// Connects the router to `send`; only the first connection counts.
    pub fn connect(&self, send: impl Fn(Vec<Uuid>, Follow) + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(send));
    }

    /// Asks for a pass of kind `follow` over each of `ids`.
    pub fn route(&self, ids: Vec<Uuid>, follow: Follow) {
        if let Some(send) = self.0.get()
            && !ids.is_empty()
        {
            send(ids, follow);
        }
    }

    /// Asks for a pass over `id` after `delay` (on the current tokio runtime).
    pub fn route_after(&self, id: Uuid, follow: Follow, delay: Duration) {
        let router = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            router.route(vec![id], follow);
        });
    }
}

/// An object's readiness as following it cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Ready at its current generation.
    Ready,
    /// The controller has observed the current generation and it is not Ready.
    NotReady,
    /// A rollout is under way (the current generation is not observed yet).
    Progressing,
}

fn health(object: &InferenceService) -> Health {
    if object.is_ready() {
        return Health::Ready;
    }
    let Some(status) = &object.status else {
        return Health::Progressing;
    };
    let observed =
        status.observed_generation.unwrap_or(0) >= object.metadata.generation.unwrap_or(1);
    if observed && status.condition("Ready").is_some() {
        Health::NotReady
    } else {
        Health::Progressing
    }
}

/// The endpoint an object of ours belongs to, from its label.
fn endpoint_of(object: &InferenceService) -> Option<Uuid> {
    object.endpoint_id()?.parse().ok()
}

/// A deploy's or delete's view of its own object.
pub struct Subscription {
    name: String,
    sightings: watch::Receiver<Sighting>,
    subscribers: Arc<DashMap<String, watch::Sender<Sighting>>>,
}

impl Subscription {
    /// The latest sighting.
    pub fn latest(&mut self) -> Sighting {
        self.sightings.borrow_and_update().clone()
    }

    /// Waits for the next sighting; never resolves once the informer has stopped.
    pub async fn changed(&mut self) {
        if self.sightings.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The last subscriber of a name takes its channel with it: the map holds only names
        // somebody waits for.
        self.subscribers
            .remove_if(&self.name, |_, tx| tx.receiver_count() <= 1);
    }
}

/// Reconnect delays of the shared watch: [`API_BACKOFF`](super::kubernetes) shape, reset by
/// every event, so a restored API server is followed again within seconds.
struct Reconnect {
    attempt: i64,
}

/// Delays between reconnects of the shared watch: 100 ms, doubling to 5 s.
const RECONNECT: Backoff = Backoff {
    base: Duration::from_millis(100),
    max: Duration::from_secs(5),
};

impl Iterator for Reconnect {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.attempt += 1;
        Some(RECONNECT.delay(self.attempt))
    }
}

impl kube::runtime::utils::Backoff for Reconnect {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Consecutive watch failures after which the watch starts over with a fresh list.
const RELIST_AFTER_FAILURES: u32 = 5;

/// Every object of ours by name, each held once.
type Cache = DashMap<String, Arc<InferenceService>>;

/// The shared watch and its cache; cheap to share in an `Arc`. Dropping the last handle stops
/// the watch.
pub struct Informer {
    cache: Arc<Cache>,
    subscribers: Arc<DashMap<String, watch::Sender<Sighting>>>,
    /// The last watch error, while the API server cannot be watched.
    trouble: Arc<Mutex<Option<String>>>,
    /// Whether the first full list has arrived (before it, "not cached" means "not known").
    synced: watch::Sender<bool>,
    router: Router,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Informer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The label selector of the shared watch: objects the worker manages.
pub fn selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY}")
}

impl Informer {
    /// Starts the shared watch over `api` (one namespace) on the current tokio runtime. Changes
    /// to objects nobody waits on go to `router`; an object that stops being Ready is routed
    /// again after `debounce`.
    pub fn start(
        api: Api<LeanInferenceService>,
        metrics: Arc<Metrics>,
        router: Router,
        debounce: Duration,
    ) -> Self {
        let cache: Arc<Cache> = Arc::default();
        let subscribers: Arc<DashMap<String, watch::Sender<Sighting>>> = Arc::default();
        let trouble: Arc<Mutex<Option<String>>> = Arc::default();
        let synced = watch::Sender::new(false);
        let config = watcher::Config::default().labels(&selector());
        let watch = move || {
            watcher::watcher(api.clone(), config.clone())
                .backoff(Reconnect { attempt: 0 })
                .boxed()
        };
        let mut events = watch();
        let task = {
            let subscribers = subscribers.clone();
            let trouble = trouble.clone();
            let synced = synced.clone();
            let cache = cache.clone();
            let router = router.clone();
            tokio::spawn(async move {
                // names the relist under way has shown
                let mut relisted: HashSet<String> = HashSet::new();
                let mut failures = 0;
                while let Some(event) = events.next().await {
                    let event = match event {
                        Ok(event) => event,
                        Err(err) => {
                            failures += 1;
                            if failures >= RELIST_AFTER_FAILURES {
                                // kube-runtime relists only after 410; an API server that
                                // came back with older storage answers "too large resource
                                // version" instead, forever. Start over with a fresh list.
                                failures = 0;
                                events = watch();
                            }
                            if let watcher::Error::WatchFailed(kube::Error::Api(status))
                            | watcher::Error::InitialListFailed(kube::Error::Api(status))
                            | watcher::Error::WatchStartFailed(kube::Error::Api(status)) = &err
                            {
                                metrics.kube_error(status.code);
                            }
                            tracing::debug!(error = %err, "shared watch error; the watcher retries");
                            *lock(&trouble) = Some(err.to_string());
                            continue;
                        }
                    };
                    failures = 0;
                    lock(&trouble).take();
                    let event = match event {
                        Event::Init => Event::Init,
                        Event::InitApply(object) => Event::InitApply(Arc::new(object.into())),
                        Event::InitDone => Event::InitDone,
                        Event::Apply(object) => Event::Apply(Arc::new(object.into())),
                        Event::Delete(object) => Event::Delete(Arc::new(object.into())),
                    };
                    // decided against the cache as it was before this event
                    let follow = Noticed {
                        cache: &cache,
                        subscribers: &subscribers,
                    };
                    follow.route(&event, &relisted, &router, debounce);
                    match event {
                        Event::Init => relisted.clear(),
                        Event::InitApply(object) => {
                            let name = object.metadata.name.clone().unwrap_or_default();
                            relisted.insert(name.clone());
                            cache.insert(name.clone(), object.clone());
                            notify(&subscribers, &name, Sighting::Seen(object));
                        }
                        Event::InitDone => {
                            // what the relist no longer shows is gone
                            cache.retain(|name, _| relisted.contains(name));
                            synced.send_replace(true);
                            let missing: Vec<String> = subscribers
                                .iter()
                                .map(|entry| entry.key().clone())
                                .filter(|name| !relisted.contains(name))
                                .collect();
                            for name in missing {
                                notify(&subscribers, &name, Sighting::Gone { uid: None });
                            }
                            relisted.clear();
                        }
                        Event::Apply(object) => {
                            let name = object.metadata.name.clone().unwrap_or_default();
                            cache.insert(name.clone(), object.clone());
                            notify(&subscribers, &name, Sighting::Seen(object));
                        }
                        Event::Delete(object) => {
                            let name = object.metadata.name.clone().unwrap_or_default();
                            cache.remove(&name);
                            let uid = object.metadata.uid.clone();
                            notify(&subscribers, &name, Sighting::Gone { uid });
                        }
                    }
                }
            })
        };
        Self {
            cache,
            subscribers,
            trouble,
            synced,
            router,
            task,
        }
    }

    /// Where changes are routed.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Every cached object, once synced (see [`Informer::wait_synced`]).
    pub fn objects(&self) -> Vec<Arc<InferenceService>> {
        self.cache
            .iter()
            .map(|entry| entry.value().clone())
            .collect()
    }

    /// Waits until the first full list has arrived.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        // an error means the sender is gone, which `self` holds: it cannot happen
        let _ = synced.wait_for(|synced| *synced).await;
    }

    /// Subscribes to the object called `name`; the first sighting is what the cache holds.
    pub fn subscribe(&self, name: &str) -> Subscription {
        let sender = self
            .subscribers
            .entry(name.to_owned())
            .or_insert_with(|| {
                let first = self.cached(name).map_or(Sighting::Unknown, Sighting::Seen);
                watch::channel(first).0
            })
            .clone();
        let mut sightings = sender.subscribe();
        sightings.mark_changed();
        Subscription {
            name: name.to_owned(),
            sightings,
            subscribers: self.subscribers.clone(),
        }
    }

    /// The cached object called `name`, if the cache holds one.
    pub fn cached(&self, name: &str) -> Option<Arc<InferenceService>> {
        self.cache.get(name).map(|entry| entry.value().clone())
    }

    /// Whether the first full list has arrived: only then does "not cached" mean "absent".
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// The last watch error while the API server cannot be watched, if it cannot.
    pub fn trouble(&self) -> Option<String> {
        lock(&self.trouble).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the informer decides about an event before applying it to the cache.
struct Noticed<'a> {
    cache: &'a Cache,
    subscribers: &'a DashMap<String, watch::Sender<Sighting>>,
}

impl Noticed<'_> {
    /// Routes the endpoints `event` concerns that need a follow-up pass.
    fn route(
        &self,
        event: &Event<Arc<InferenceService>>,
        relisted: &HashSet<String>,
        router: &Router,
        debounce: Duration,
    ) {
        match event {
            Event::Apply(object) | Event::InitApply(object) => {
                let Some((id, name)) = self.unwatched(object) else {
                    return;
                };
                let before = self.cache.get(&name).map(|entry| entry.value().clone());
                let now = health(object);
                let then = before.as_deref().map(health);
                if object.has_drifted() {
                    router.route(vec![id], Follow::Check);
                } else if now == Health::NotReady && then != Some(Health::NotReady) {
                    router.route(vec![id], Follow::Check);
                    // and once more when the debounce has passed, to judge it then
                    router.route_after(id, Follow::Check, debounce + Duration::from_millis(500));
                } else if now == Health::Ready && then == Some(Health::NotReady) {
                    router.route(vec![id], Follow::Check);
                }
            }
            Event::Delete(object) => {
                if let Some((id, _)) = self.unwatched(object) {
                    router.route(vec![id], Follow::Check);
                }
            }
            Event::InitDone => {
                // objects a relist no longer shows were deleted while the watch was away
                let gone: Vec<Uuid> = self
                    .cache
                    .iter()
                    .filter(|entry| !relisted.contains(entry.key()))
                    .filter_map(|entry| self.unwatched(entry.value()).map(|(id, _)| id))
                    .collect();
                router.route(gone, Follow::Check);
            }
            Event::Init => {}
        }
    }

    /// The endpoint and name of `object`, unless a pass is waiting on it (that pass follows it).
    fn unwatched(&self, object: &InferenceService) -> Option<(Uuid, String)> {
        let name = object.metadata.name.clone()?;
        if self.subscribers.contains_key(&name) {
            return None;
        }
        Some((endpoint_of(object)?, name))
    }
}

fn notify(subscribers: &DashMap<String, watch::Sender<Sighting>>, name: &str, sighting: Sighting) {
    if let Some(sender) = subscribers.get(name) {
        sender.send_replace(sighting);
    }
}
