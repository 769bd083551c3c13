//! The object store: current objects, the global resourceVersion counter and the bounded
//! event history that watches replay from.
//!
//! Design: one `Mutex` guards everything (objects, counter, history) so that a write, the
//! resourceVersion it gets and the event it appends are one atomic step, exactly as etcd's
//! revision makes them in a real cluster. Every committed change is also sent on a
//! `tokio::sync::broadcast` channel; a watch subscribes *while holding the lock* and reads the
//! history in the same critical section, so there is neither a gap nor a duplicate between the
//! replayed events and the live ones. The history keeps the last `history_size` events; a watch
//! from a resourceVersion older than the oldest retained event gets `410 Gone`, which is what
//! forces clients to relist, as with a compacted etcd.

use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

/// `(namespace, name)`; ordered as the API server lists (namespace, then name).
pub type Key = (String, String);

/// Kind of change recorded in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object changed.
    Modified,
    /// The object was removed.
    Deleted,
}

impl EventType {
    /// The watch event `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct StoredEvent {
    /// The resourceVersion this change produced.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for `Deleted`: the last state, with the deletion's rv).
    pub object: Arc<Value>,
    /// The object before the change (used to turn selector transitions into ADDED/DELETED).
    pub previous: Option<Arc<Value>>,
}

/// Everything behind the store's lock.
pub struct StoreState {
    objects: BTreeMap<Key, Arc<Value>>,
    rv: u64,
    history: VecDeque<Arc<StoredEvent>>,
    history_size: usize,
    /// Highest resourceVersion whose event is no longer retained (0: nothing dropped yet).
    compacted: u64,
    events: broadcast::Sender<Arc<StoredEvent>>,
}

/// The store shared by the HTTP handlers, the watches and the controller.
pub struct Store {
    state: Mutex<StoreState>,
}

/// Where a watch starts: the events to replay and the receiver for what follows.
pub struct WatchStart {
    /// Events after the requested resourceVersion, oldest first.
    pub replay: Vec<Arc<StoredEvent>>,
    /// Current objects, for watches that start with the current state (rv absent or "0").
    pub snapshot: Vec<Arc<Value>>,
    /// resourceVersion of the state the replay/snapshot ends at.
    pub rv: u64,
    /// Live events committed after `rv`.
    pub receiver: broadcast::Receiver<Arc<StoredEvent>>,
}

/// A watch or list asked for a resourceVersion the history no longer covers.
#[derive(Debug, Clone, Copy)]
pub struct TooOld {
    /// The requested version.
    pub requested: u64,
    /// The oldest version still answerable.
    pub oldest: u64,
}

impl Store {
    /// An empty store keeping the last `history_size` events.
    pub fn new(history_size: usize) -> Self {
        // Capacity bounds how far a slow watch may fall behind before it is ended (it then
        // resumes from its last resourceVersion, like after any dropped watch).
        let (events, _) = broadcast::channel(history_size.clamp(64, 1 << 16));
        Self {
            state: Mutex::new(StoreState {
                objects: BTreeMap::new(),
                rv: 1,
                history: VecDeque::new(),
                history_size: history_size.max(1),
                compacted: 0,
                events,
            }),
        }
    }

    /// Locks the store. A poisoned lock is recovered: every mutation below leaves the state
    /// consistent before anything that could panic.
    pub fn lock(&self) -> MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of every committed event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.lock().events.subscribe()
    }
}

impl StoreState {
    /// The object at `key`.
    pub fn get(&self, key: &Key) -> Option<&Arc<Value>> {
        self.objects.get(key)
    }

    /// All objects in list order, optionally within one namespace.
    pub fn iter_ns<'a>(
        &'a self,
        namespace: Option<&'a str>,
    ) -> Box<dyn Iterator<Item = (&'a Key, &'a Arc<Value>)> + 'a> {
        self.candidates(namespace, None, None)
    }

    /// The objects a request can select, in list order: those in `namespace` (None: all),
    /// named `name` when the request pins one (`fieldSelector=metadata.name=...`), and after
    /// `after` (a continue token's last key). The map is ordered by (namespace, name), so a
    /// namespace or a page is a range and a single object a lookup: a request costs the
    /// objects it can return, not every object stored.
    pub fn candidates<'a>(
        &'a self,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
        after: Option<&'a Key>,
    ) -> Box<dyn Iterator<Item = (&'a Key, &'a Arc<Value>)> + 'a> {
        use std::ops::Bound;
        if let (Some(ns), Some(name)) = (namespace, name) {
            let found = self
                .objects
                .get_key_value(&(ns.to_owned(), name.to_owned()))
                .filter(move |(k, _)| after.is_none_or(|a| *k > a));
            return Box::new(found.into_iter());
        }
        let lower = match (after, namespace) {
            (Some(a), _) => Bound::Excluded(a.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_owned(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let range = self.objects.range((lower, Bound::Unbounded));
        match (namespace, name) {
            (Some(ns), _) => Box::new(
                range
                    .skip_while(move |(k, _)| k.0.as_str() < ns)
                    .take_while(move |(k, _)| k.0 == ns),
            ),
            (None, Some(name)) => Box::new(range.filter(move |(k, _)| k.1 == name)),
            (None, None) => Box::new(range),
        }
    }

    /// The namespaces holding at least one object, in order: one lookup per namespace (the
    /// next one starts right after every key of the previous), not a scan of every object.
    pub fn namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut from = (String::new(), String::new());
        while let Some(((ns, _), _)) = self.objects.range(from..).next() {
            out.push(ns.clone());
            // No namespace name contains NUL, so this sorts after every key of `ns`.
            from = (format!("{ns}\0"), String::new());
        }
        out
    }

    /// The latest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// Oldest resourceVersion a watch can still start from.
    pub fn oldest_watchable(&self) -> u64 {
        self.compacted
    }

    /// Writes `object` at `key` (or removes it when `kind` is `Deleted`), stamping the next
    /// resourceVersion into `metadata.resourceVersion`, and records and broadcasts the event.
    pub fn commit(&mut self, key: Key, mut object: Value, kind: EventType) -> Arc<Value> {
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let object = Arc::new(object);
        let previous = match kind {
            EventType::Deleted => self.objects.remove(&key),
            EventType::Added | EventType::Modified => self.objects.insert(key, object.clone()),
        };
        let event = Arc::new(StoredEvent {
            rv,
            kind,
            object: object.clone(),
            previous,
        });
        self.history.push_back(event.clone());
        while self.history.len() > self.history_size {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        // No receiver is fine (nobody watching).
        let _ = self.events.send(event);
        object
    }

    /// Prepares a watch from resourceVersion `from`; `None` starts with the current state,
    /// `snapshot` (the objects in the watch's scope, read under this same lock: consumed only
    /// in that case).
    pub fn watch_from(
        &self,
        from: Option<u64>,
        snapshot: impl Iterator<Item = Arc<Value>>,
    ) -> Result<WatchStart, TooOld> {
        let receiver = self.events.subscribe();
        match from {
            None => Ok(WatchStart {
                replay: Vec::new(),
                snapshot: snapshot.collect(),
                rv: self.rv,
                receiver,
            }),
            Some(from) => {
                if from < self.compacted {
                    return Err(TooOld {
                        requested: from,
                        oldest: self.compacted,
                    });
                }
                // The history is in resourceVersion order: find the first event after `from`
                // by bisection rather than scanning everything retained.
                let first = self.history.partition_point(|e| e.rv <= from);
                let replay = self.history.range(first..).cloned().collect();
                Ok(WatchStart {
                    replay,
                    snapshot: Vec::new(),
                    rv: self.rv.max(from),
                    receiver,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}})
    }

    #[test]
    fn resource_versions_increase_and_history_is_bounded() {
        let store = Store::new(3);
        let mut st = store.lock();
        let start = st.current_rv();
        for i in 0..5 {
            let o = st.commit(
                ("ns".into(), format!("o{i}")),
                obj(&format!("o{i}")),
                EventType::Added,
            );
            assert_eq!(
                o["metadata"]["resourceVersion"],
                json!((start + 1 + i).to_string())
            );
        }
        // 5 events, 3 kept: the two oldest are gone.
        assert_eq!(st.oldest_watchable(), start + 2);
        assert!(st.watch_from(Some(start), std::iter::empty()).is_err());
        let w = st
            .watch_from(Some(start + 2), std::iter::empty())
            .map_err(|_| "too old")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.replay.len(), 3);
        assert_eq!(w.replay[0].rv, start + 3);
    }

    #[test]
    fn namespaces_and_scoped_candidates() {
        let store = Store::new(10);
        let mut st = store.lock();
        for (ns, name) in [("b", "x"), ("a", "y"), ("b", "a"), ("c", "x"), ("a", "z")] {
            let o = json!({"metadata": {"name": name, "namespace": ns}});
            st.commit((ns.into(), name.into()), o, EventType::Added);
        }
        assert_eq!(st.namespaces(), vec!["a", "b", "c"]);
        let keys = |it: Box<dyn Iterator<Item = (&Key, &Arc<Value>)> + '_>| {
            it.map(|(k, _)| format!("{}/{}", k.0, k.1))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(st.candidates(Some("b"), None, None)), ["b/a", "b/x"]);
        assert_eq!(keys(st.candidates(None, Some("x"), None)), ["b/x", "c/x"]);
        assert_eq!(keys(st.candidates(Some("a"), Some("z"), None)), ["a/z"]);
        let after: Key = ("a".into(), "y".into());
        assert_eq!(keys(st.candidates(Some("a"), None, Some(&after))), ["a/z"]);
        assert_eq!(
            keys(st.candidates(None, None, Some(&after))),
            ["a/z", "b/a", "b/x", "c/x"]
        );
        assert!(keys(st.candidates(Some("a"), Some("y"), Some(&after))).is_empty());
    }

    #[test]
    fn delete_removes_and_records_previous() {
        let store = Store::new(10);
        let mut st = store.lock();
        let key: Key = ("ns".into(), "a".into());
        st.commit(key.clone(), obj("a"), EventType::Added);
        st.commit(key.clone(), obj("a"), EventType::Deleted);
        assert!(st.get(&key).is_none());
        let w = st
            .watch_from(Some(0), std::iter::empty())
            .map_err(|_| "too old")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.replay[1].kind, EventType::Deleted);
        assert!(w.replay[1].previous.is_some());
    }
}
