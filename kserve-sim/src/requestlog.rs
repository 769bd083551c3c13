//! A bounded log of the HTTP requests the stand-in answered, so tests can assert how a
//! client behaved (how many writes, which content types, whether it retried after a 429)
//! without instrumenting the client, and unbounded per-verb counts of the same requests, so a
//! load run of any size can report its API cost.

use std::collections::VecDeque;
use std::sync::Mutex;

/// What kind of API call a request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH with a merge or JSON patch.
    Patch,
    /// PATCH with `application/apply-patch+yaml`.
    Apply,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
    /// Discovery, version, OpenAPI, health.
    Discovery,
    /// Anything else (unknown paths).
    Other,
}

impl Verb {
    /// Every verb, in the order [`VerbCounts`] reports them.
    pub const ALL: [Verb; 11] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Apply,
        Verb::Delete,
        Verb::DeleteCollection,
        Verb::Discovery,
        Verb::Other,
    ];

    /// A lowercase name for reports (`apply` is a patch with the apply content type).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Apply => "apply",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Discovery => "discovery",
            Verb::Other => "other",
        }
    }

    /// Position in [`Verb::ALL`].
    fn index(self) -> usize {
        match self {
            Verb::Get => 0,
            Verb::List => 1,
            Verb::Watch => 2,
            Verb::Create => 3,
            Verb::Update => 4,
            Verb::Patch => 5,
            Verb::Apply => 6,
            Verb::Delete => 7,
            Verb::DeleteCollection => 8,
            Verb::Discovery => 9,
            Verb::Other => 10,
        }
    }

    /// Whether the request is an API call on InferenceServices (not discovery, health or an
    /// unknown path).
    pub fn is_resource(self) -> bool {
        !matches!(self, Verb::Discovery | Verb::Other)
    }

    /// The RBAC verb a request of this kind needs (`None` for discovery and other paths).
    pub fn rbac(self) -> Option<&'static str> {
        Some(match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch | Verb::Apply => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Discovery | Verb::Other => return None,
        })
    }

    /// Whether the verb writes.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create
                | Verb::Update
                | Verb::Patch
                | Verb::Apply
                | Verb::Delete
                | Verb::DeleteCollection
        )
    }
}

/// One answered request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// What kind of call.
    pub verb: Verb,
    /// HTTP method.
    pub method: String,
    /// Path (without query).
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Request `Content-Type`, if any.
    pub content_type: Option<String>,
    /// Response status code.
    pub status: u16,
    /// Namespace in the path, if any.
    pub namespace: Option<String>,
    /// Object name in the path, if any.
    pub name: Option<String>,
    /// Subresource (`status`), if any.
    pub subresource: Option<String>,
    /// Whether the answer was an injected fault.
    pub injected: bool,
}

/// How many requests of each verb were answered (injected faults included). Unlike the log,
/// the counts are not bounded by its capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerbCounts {
    counts: [u64; Verb::ALL.len()],
}

impl VerbCounts {
    /// Requests of `verb`.
    pub fn get(&self, verb: Verb) -> u64 {
        self.counts[verb.index()]
    }

    /// API calls on InferenceServices, all verbs (discovery and unknown paths excluded).
    pub fn api_total(&self) -> u64 {
        Verb::ALL
            .iter()
            .filter(|v| v.is_resource())
            .map(|v| self.get(*v))
            .sum()
    }

    /// Every verb with its count, in [`Verb::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Verb, u64)> + '_ {
        Verb::ALL.iter().map(|v| (*v, self.get(*v)))
    }

    /// The requests counted here but not in `earlier` (an earlier reading of the same log),
    /// so a caller can measure one phase without clearing the log.
    pub fn since(&self, earlier: &VerbCounts) -> VerbCounts {
        let mut out = *self;
        for (c, e) in out.counts.iter_mut().zip(earlier.counts) {
            *c = c.saturating_sub(e);
        }
        out
    }

    fn add(&mut self, verb: Verb) {
        self.counts[verb.index()] += 1;
    }
}

impl std::fmt::Display for VerbCounts {
    /// `get=1 create=2 ...`, verbs with a zero count left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (verb, n) in self.iter().filter(|(_, n)| *n > 0) {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{}={n}", verb.as_str())?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Entries {
    records: VecDeque<RequestRecord>,
    counts: VerbCounts,
}

/// The bounded log.
#[derive(Debug)]
pub struct RequestLog {
    entries: Mutex<Entries>,
    capacity: usize,
}

impl RequestLog {
    /// A log keeping the last `capacity` requests.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a record, dropping the oldest beyond capacity, and counts it.
    pub fn push(&self, r: RequestRecord) {
        let mut e = self.lock();
        e.counts.add(r.verb);
        e.records.push_back(r);
        while e.records.len() > self.capacity {
            e.records.pop_front();
        }
    }

    /// Requests answered per verb since the start or the last [`RequestLog::clear`].
    pub fn counts(&self) -> VerbCounts {
        self.lock().counts
    }

    /// A copy of the retained records, oldest first.
    pub fn snapshot(&self) -> Vec<RequestRecord> {
        self.lock().records.iter().cloned().collect()
    }

    /// Forgets all records and resets the counts.
    pub fn clear(&self) {
        let mut e = self.lock();
        e.records.clear();
        e.counts = VerbCounts::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(verb: Verb) -> RequestRecord {
        RequestRecord {
            verb,
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            content_type: None,
            status: 200,
            namespace: None,
            name: None,
            subresource: None,
            injected: false,
        }
    }

    #[test]
    fn counts_outlive_the_log_capacity_and_reset_with_clear() {
        let log = RequestLog::new(2);
        for v in [
            Verb::Get,
            Verb::Create,
            Verb::Create,
            Verb::Watch,
            Verb::Discovery,
        ] {
            log.push(record(v));
        }
        let c = log.counts();
        assert_eq!(log.snapshot().len(), 2);
        assert_eq!(
            (c.get(Verb::Get), c.get(Verb::Create), c.get(Verb::Watch)),
            (1, 2, 1)
        );
        assert_eq!(c.api_total(), 4);
        assert_eq!(c.to_string(), "get=1 watch=1 create=2 discovery=1");
        log.push(record(Verb::Create));
        assert_eq!(log.counts().since(&c).to_string(), "create=1");
        log.clear();
        assert_eq!(log.counts(), VerbCounts::default());
    }
}
