//! Watch streams: `?watch=true` answered with chunked JSON lines
//! `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{...}}`.
//!
//! Start: resourceVersion absent or `"0"` → synthetic ADDED events for the current state, then
//! live events; a numeric resourceVersion → the retained history after it is replayed, then
//! live events; one older than the history → a single ERROR event carrying a 410 `Expired`
//! Status (HTTP 200, as the real server answers watches) and the end of the stream.
//! `sendInitialEvents=true` (streaming lists) sends the current state followed by a BOOKMARK
//! annotated `k8s.io/initial-events-end`.
//!
//! While open: events pass the namespace and label/field selectors, and an object that stops
//! (starts) matching a selector is sent as DELETED (ADDED), as the watch cache does. With
//! `allowWatchBookmarks=true`, a BOOKMARK with the latest resourceVersion this watch has seen
//! is sent every bookmark interval. The stream ends cleanly (terminating chunk) at
//! `min(timeoutSeconds, server watch timeout)` or when it fell too far behind the broadcast
//! (the client resumes from its last resourceVersion); injected cuts end it with an I/O error
//! instead, which closes the connection without the terminating chunk.

use crate::error::ApiError;
use crate::render::{self, Render};
use crate::selector::Selectors;
use crate::store::{EventType, Store, StoredEvent};
use bytes::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Parameters of one watch request.
#[derive(Clone, Debug)]
pub struct WatchRequest {
    /// Namespace filter (None: all namespaces).
    pub namespace: Option<String>,
    /// Label and field selectors.
    pub selectors: Selectors,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `sendInitialEvents=true`.
    pub send_initial_events: bool,
    /// `allowWatchBookmarks=true`.
    pub allow_bookmarks: bool,
    /// Effective timeout.
    pub timeout: Duration,
    /// Bookmark period.
    pub bookmark_interval: Duration,
    /// Injected cut after this many events.
    pub cut_after_events: Option<u32>,
    /// Injected cut after this long.
    pub cut_after: Option<Duration>,
    /// Representation of objects.
    pub render: Render,
}

/// What a queued line carries. Object events are serialized only when they are sent, so
/// opening a watch over many objects costs reference counts under the store lock, not
/// serialization.
enum Payload {
    /// A line ready to send (bookmarks, errors).
    Ready(Bytes),
    /// An event of this type about this object state.
    Object(&'static str, Arc<Value>),
}

struct Line {
    payload: Payload,
    is_event: bool,
}

impl Line {
    fn event(kind: &'static str, object: Arc<Value>) -> Self {
        Line {
            payload: Payload::Object(kind, object),
            is_event: true,
        }
    }

    fn ready(bytes: Bytes) -> Self {
        Line {
            payload: Payload::Ready(bytes),
            is_event: false,
        }
    }
}

struct WatchState {
    req: WatchRequest,
    queue: VecDeque<Line>,
    receiver: Option<broadcast::Receiver<Arc<StoredEvent>>>,
    /// Events at or below this were delivered through the snapshot/replay.
    start_rv: u64,
    /// Latest resourceVersion this watch has seen (bookmarks carry it).
    last_rv: u64,
    deadline: Instant,
    cut_at: Option<Instant>,
    next_bookmark: Option<Instant>,
    events_sent: u32,
    done: bool,
}

fn line(kind: &str, object: Value) -> Bytes {
    event_line(kind, &object, Render::Full)
}

/// A watch event borrowing its object, so the full representation is written straight from
/// the stored object instead of from a copy.
#[derive(serde::Serialize)]
struct EventRef<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    object: &'a Value,
}

/// One JSON line `{"type": kind, "object": ...}` with `object` in the requested representation.
fn event_line(kind: &str, object: &Value, how: Render) -> Bytes {
    let rendered;
    let object = match how {
        Render::Full => object,
        other => {
            rendered = render::object(object, other);
            &rendered
        }
    };
    // Serializing a `Value` cannot fail: its map keys are strings.
    let mut out = serde_json::to_vec(&EventRef { kind, object }).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

fn bookmark(rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        json!({"kind": crate::resource::KIND, "apiVersion": crate::apply::API_VERSION, "metadata": meta}),
    )
}

/// The ERROR line for a resourceVersion older than the history.
fn expired(requested: u64, oldest: u64) -> Bytes {
    let status =
        ApiError::expired(format!("too old resource version: {requested} ({oldest})")).to_status();
    line("ERROR", status)
}

impl WatchState {
    fn in_scope(&self, obj: &Value) -> bool {
        let ns_ok = self.req.namespace.as_deref().is_none_or(|ns| {
            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
        });
        ns_ok && self.req.selectors.matches(obj)
    }

    /// What this watch sends for a committed change, if anything.
    fn event_for(&self, ev: &StoredEvent) -> Option<Line> {
        let now = self.in_scope(&ev.object);
        let before = ev.previous.as_deref().is_some_and(|p| self.in_scope(p));
        let (kind, obj) = match ev.kind {
            EventType::Added if now => ("ADDED", ev.object.clone()),
            EventType::Deleted if now => ("DELETED", ev.object.clone()),
            EventType::Modified if now && before => ("MODIFIED", ev.object.clone()),
            EventType::Modified if now => ("ADDED", ev.object.clone()),
            EventType::Modified if before => {
                // The object left the selection: DELETED with its previous state at this rv.
                let mut prev = ev.previous.as_deref().cloned().unwrap_or(Value::Null);
                if let Some(m) = prev.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("resourceVersion".into(), json!(ev.rv.to_string()));
                }
                ("DELETED", Arc::new(prev))
            }
            _ => return None,
        };
        Some(Line::event(kind, obj))
    }

    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(limit) = self.req.cut_after_events
                && self.events_sent >= limit
                && self.queue.front().is_some_and(|l| l.is_event)
            {
                self.done = true;
                // Let the events already written leave the server first: the HTTP layer drops
                // its unsent buffer when a body stream fails, and "cut after N events" means the
                // client did receive N.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Some(Err(std::io::Error::other("watch cut by fault injection")));
            }
            if let Some(l) = self.queue.pop_front() {
                if l.is_event {
                    self.events_sent += 1;
                }
                let bytes = match l.payload {
                    Payload::Ready(bytes) => bytes,
                    Payload::Object(kind, object) => event_line(kind, &object, self.req.render),
                };
                return Some(Ok(bytes));
            }
            let Some(receiver) = self.receiver.as_mut() else {
                self.done = true;
                return None;
            };
            let far = self.deadline + Duration::from_secs(3600);
            let cut_at = self.cut_at.unwrap_or(far);
            let bookmark_at = self.next_bookmark.unwrap_or(far);
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => {
                    self.done = true;
                    return None;
                }
                _ = tokio::time::sleep_until(cut_at), if self.cut_at.is_some() => {
                    self.done = true;
                    return Some(Err(std::io::Error::other("watch cut by fault injection")));
                }
                _ = tokio::time::sleep_until(bookmark_at), if self.next_bookmark.is_some() => {
                    self.next_bookmark = Some(Instant::now() + self.req.bookmark_interval);
                    self.queue.push_back(Line::ready(bookmark(self.last_rv, false)));
                }
                ev = receiver.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv <= self.start_rv {
                            continue;
                        }
                        self.last_rv = ev.rv;
                        if let Some(l) = self.event_for(&ev) {
                            self.queue.push_back(l);
                        }
                    }
                    // Fell behind the broadcast, or the server is going away: end cleanly so the
                    // client resumes from its last resourceVersion.
                    Err(_) => {
                        self.done = true;
                        return None;
                    }
                }
            }
        }
    }
}

/// Opens a watch. Errors are request errors (bad resourceVersion); an expired resourceVersion
/// is reported inside the stream.
pub fn open(
    store: &Store,
    req: WatchRequest,
) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + 'static, ApiError> {
    let from = match req.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))?,
        ),
    };
    if let Some(from) = from {
        let current = store.lock().current_rv();
        if from > current {
            return Err(ApiError::resource_version_too_large(from, current));
        }
    }
    let initial = req.send_initial_events;
    let now = Instant::now();
    let mut state = WatchState {
        queue: VecDeque::new(),
        receiver: None,
        start_rv: 0,
        last_rv: 0,
        deadline: now + req.timeout,
        cut_at: req.cut_after.map(|d| now + d),
        next_bookmark: req.allow_bookmarks.then(|| now + req.bookmark_interval),
        events_sent: 0,
        done: false,
        req,
    };
    // Under the store lock only what must be consistent with the resourceVersion is taken: the
    // selected objects (reference counts) or the retained events after `from`. Deciding what
    // the replayed events mean for this watch, and serializing anything, happens after.
    let start = {
        let st = store.lock();
        let snapshot = st
            .candidates(
                state.req.namespace.as_deref(),
                state.req.selectors.exact_name(),
                None,
            )
            .map(|(_, o)| o)
            .filter(|o| state.in_scope(o))
            .cloned();
        st.watch_from(if initial { None } else { from }, snapshot)
    };
    match start {
        Err(too_old) => {
            state
                .queue
                .push_back(Line::ready(expired(too_old.requested, too_old.oldest)));
        }
        Ok(start) => {
            state.start_rv = start.rv;
            state.last_rv = start.rv;
            state.queue.extend(
                start
                    .snapshot
                    .into_iter()
                    .map(|obj| Line::event("ADDED", obj)),
            );
            for ev in &start.replay {
                if let Some(l) = state.event_for(ev) {
                    state.queue.push_back(l);
                }
            }
            if initial && state.req.allow_bookmarks {
                state.queue.push_back(Line::ready(bookmark(start.rv, true)));
            }
            state.receiver = Some(start.receiver);
        }
    }
    Ok(futures::stream::unfold(state, |mut s| async move {
        s.next().await.map(|item| (item, s))
    }))
}
