//! A bounded log of the HTTP requests the stand-in answered, so tests can assert how a
//! client behaved (how many writes, which content types, whether it retried after a 429)
//! without instrumenting the client.

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

/// The bounded log.
#[derive(Debug)]
pub struct RequestLog {
    entries: Mutex<VecDeque<RequestRecord>>,
    capacity: usize,
}

impl RequestLog {
    /// A log keeping the last `capacity` requests.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
        }
    }

    /// Appends a record, dropping the oldest beyond capacity.
    pub fn push(&self, r: RequestRecord) {
        let mut e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        e.push_back(r);
        while e.len() > self.capacity {
            e.pop_front();
        }
    }

    /// A copy of the retained records, oldest first.
    pub fn snapshot(&self) -> Vec<RequestRecord> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Forgets all records.
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
