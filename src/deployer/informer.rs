//! One shared InferenceService watch per worker: an informer.
//!
//! Every deploy used to open its own list and watch, so a thousand deploys in flight held a
//! thousand watch connections and cost a list each. The informer instead keeps **one**
//! label-selected watch (`app.kubernetes.io/managed-by=deploy-worker` in `KSERVE_NAMESPACE`)
//! through kube-runtime's watcher and reflector — relists after `410 Gone`, reconnects and
//! bookmarks are theirs — and a cache of every object of ours.
//!
//! Each deploy or delete *subscribes* to its own object by name: a [`Subscription`] is a
//! `watch` channel holding the latest [`Sighting`] of that object, so it always sees the newest
//! state and never a backlog; readiness is judged from what it delivers. A subscription lives as
//! long as the pass that waits on it; the informer routes nothing to names nobody waits for.
//!
//! The cache also lets an apply skip the read before the write: the cached object's
//! `resourceVersion` is the precondition, and a stale cache shows up as a `409` that makes the
//! next attempt read the object fresh.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::watch;

use crate::delivery::Backoff;
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

/// The shared watch and its cache; cheap to share in an `Arc`. Dropping the last handle stops
/// the watch.
pub struct Informer {
    cache: reflector::Store<InferenceService>,
    subscribers: Arc<DashMap<String, watch::Sender<Sighting>>>,
    /// The last watch error, while the API server cannot be watched.
    trouble: Arc<Mutex<Option<String>>>,
    /// Whether the first full list has arrived (before it, "not cached" means "not known").
    synced: Arc<AtomicBool>,
    namespace: String,
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
    /// Starts the shared watch over `api` (one namespace) on the current tokio runtime.
    pub fn start(api: Api<InferenceService>, namespace: &str, metrics: Arc<Metrics>) -> Self {
        let (cache, mut writer) = reflector::store();
        let subscribers: Arc<DashMap<String, watch::Sender<Sighting>>> = Arc::default();
        let trouble: Arc<Mutex<Option<String>>> = Arc::default();
        let synced = Arc::new(AtomicBool::new(false));
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
                    writer.apply_watcher_event(&event);
                    match event {
                        Event::Init => relisted.clear(),
                        Event::InitApply(object) => {
                            let name = object.metadata.name.clone().unwrap_or_default();
                            relisted.insert(name.clone());
                            notify(&subscribers, &name, Sighting::Seen(Arc::new(object)));
                        }
                        Event::InitDone => {
                            synced.store(true, Ordering::Release);
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
                            notify(&subscribers, &name, Sighting::Seen(Arc::new(object)));
                        }
                        Event::Delete(object) => {
                            let name = object.metadata.name.clone().unwrap_or_default();
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
            namespace: namespace.to_owned(),
            task,
        }
    }

    /// Subscribes to the object called `name`; the first sighting is what the cache holds.
    pub fn subscribe(&self, name: &str) -> Subscription {
        let sender = self
            .subscribers
            .entry(name.to_owned())
            .or_insert_with(|| {
                let first = self
                    .cached(name)
                    .map_or(Sighting::Unknown, Sighting::Seen);
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
        self.cache
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Whether the first full list has arrived: only then does "not cached" mean "absent".
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The last watch error while the API server cannot be watched, if it cannot.
    pub fn trouble(&self) -> Option<String> {
        lock(&self.trouble).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn notify(
    subscribers: &DashMap<String, watch::Sender<Sighting>>,
    name: &str,
    sighting: Sighting,
) {
    if let Some(sender) = subscribers.get(name) {
        sender.send_replace(sighting);
    }
}
