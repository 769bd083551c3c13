//! The InferenceService registry: the API verbs (get, list, create, update, patch, apply,
//! delete, status writes) implemented on the [`Store`], independent of HTTP.
//!
//! Every write goes through one pipeline, under the store lock so that read-check-write is
//! atomic (this is what makes resourceVersion preconditions and SSA conflicts exact):
//! 1. build the candidate object from the request (PUT body, patched copy, applied merge);
//! 2. keep what the request may not change: the status on main-resource writes, everything
//!    but the status on `/status` writes, and the server-owned metadata (uid,
//!    creationTimestamp, generation, deletionTimestamp, ...);
//! 3. prune unknown fields (warnings, or 400 under `fieldValidation=Strict`), apply schema
//!    defaults, validate against the CRD schema and ObjectMeta rules (422 with causes);
//!    then, for a client's write of the main resource, KServe's validating webhook
//!    ([`crate::webhook`], 403 denial);
//! 4. bump `metadata.generation` only when `spec` changed; record field ownership;
//! 5. a write that changes nothing is a no-op (same resourceVersion, no event), as in
//!    Kubernetes; otherwise commit with the next resourceVersion and emit the watch event.
//!
//! Deletion follows the finalizer protocol: an object without finalizers is removed at once
//! (the response is a `Status` with `status: Success`); one with finalizers gets a
//! `deletionTimestamp` (and a generation bump) and lingers until the last finalizer is removed,
//! which the simulated controller does for its own `inferenceservice.finalizers`.

use crate::apply::{self, API_VERSION};
use crate::error::{ApiError, GROUP, PLURAL};
use crate::fieldset::Scope;
use crate::meta;
use crate::patch;
use crate::schema::{FieldValidation, Schema};
use crate::selector::Selectors;
use crate::store::{EventType, Key, Store, StoreState};
use crate::webhook;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Kind of the served resource.
pub const KIND: &str = "InferenceService";
/// Kind of its list.
pub const LIST_KIND: &str = "InferenceServiceList";

/// Options shared by write verbs.
#[derive(Clone, Debug, Default)]
pub struct WriteOpts {
    /// `dryRun=All`: run every check, store nothing.
    pub dry_run: bool,
    /// Field manager (explicit `fieldManager`, or derived from the User-Agent).
    pub manager: String,
    /// Whether `fieldManager` was given explicitly (required for apply).
    pub explicit_manager: bool,
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
    /// `force` (apply only).
    pub force: bool,
}

/// DeleteOptions the registry honours.
#[derive(Clone, Debug, Default)]
pub struct DeleteOpts {
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// The outcome of a successful write.
#[derive(Clone, Debug)]
pub struct Written {
    /// The object as stored (or as it would be stored, for a dry run).
    pub object: Arc<Value>,
    /// Whether the write created the object (HTTP 201).
    pub created: bool,
    /// Warnings for the `Warning` header (pruned unknown fields).
    pub warnings: Vec<String>,
}

/// The outcome of a delete.
#[derive(Clone, Debug)]
pub enum Deleted {
    /// The object has finalizers and lingers with a deletionTimestamp.
    Pending(Arc<Value>),
    /// The object was removed.
    Gone(Arc<Value>),
}

/// A page of a list.
#[derive(Clone, Debug)]
pub struct ListPage {
    /// Matching objects in this page.
    pub items: Vec<Arc<Value>>,
    /// resourceVersion of the list.
    pub resource_version: u64,
    /// Continue token when more items follow.
    pub continue_token: Option<String>,
    /// Items after this page (only without selectors, as the API server does).
    pub remaining: Option<usize>,
}

/// Patch body kinds.
#[derive(Clone, Debug)]
pub enum PatchBody {
    /// `application/merge-patch+json`.
    Merge(Value),
    /// `application/json-patch+json`.
    Json(Value),
    /// `application/apply-patch+yaml` (already decoded from YAML or JSON).
    Apply(Value),
}

/// How ownership is recorded for a write.
enum Ownership<'a> {
    Update(&'a str),
    AlreadyRecorded,
}

/// How the last steps of an update are carried out.
struct Commit<'a> {
    key: Key,
    scope: Scope,
    ownership: Ownership<'a>,
    dry_run: bool,
    /// Whether the validating webhook sees this write (a client's write of the main resource;
    /// the controller's own writes and `/status` are not admitted through it).
    admit: bool,
}

impl<'a> Commit<'a> {
    /// A client's update (`PUT` or a non-apply `PATCH`): the manager records an `Update`.
    fn update(key: Key, scope: Scope, opts: &'a WriteOpts) -> Self {
        Commit {
            key,
            scope,
            ownership: Ownership::Update(&opts.manager),
            dry_run: opts.dry_run,
            admit: scope == Scope::Main,
        }
    }
}

/// The stored object an internal write is meant for: it only happens if the object still has
/// this uid (and generation, when given).
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// `metadata.uid`.
    pub uid: &'a str,
    /// `metadata.generation`, if it must match.
    pub generation: Option<i64>,
}

/// The registry.
pub struct Registry {
    /// Objects, resourceVersions and event history.
    pub store: Store,
    /// The CRD schema.
    pub schema: Arc<Schema>,
    /// The namespaces that exist, when the stand-in tracks them (`None`: every namespace
    /// exists). Creating an object in a namespace that does not exist is a 404, as on a real
    /// API server.
    pub namespaces: std::sync::Mutex<Option<std::collections::BTreeSet<String>>>,
}

const SERVER_META: [&str; 8] = [
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "resourceVersion",
    "managedFields",
    "selfLink",
];

fn key(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

/// `metadata` of `obj` as a mutable map, creating it (and making `obj` an object) if needed.
fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Map::new());
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        // Both branches above guarantee an object here.
        _ => unreachable!("metadata is an object"),
    }
}

/// The JSON type name of `v`, as Go's decoder names it, when it is not an object.
fn non_object_kind(v: &Value) -> Option<&'static str> {
    match v {
        Value::Object(_) => None,
        Value::Array(_) => Some("array"),
        Value::String(_) => Some("string"),
        Value::Number(_) => Some("number"),
        Value::Bool(_) => Some("bool"),
        // `null` would remove the whole document: no better than any other non-object.
        Value::Null => Some("null"),
    }
}

/// Checks `apiVersion`/`kind` of a body (absent is accepted and filled in, as for PUT/POST).
fn check_type(body: &mut Value, required: bool) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    }
    for (field, expected) in [("apiVersion", API_VERSION), ("kind", KIND)] {
        match body.get(field).and_then(Value::as_str) {
            Some(v) if v != expected => {
                return Err(ApiError::bad_request(format!(
                    "the {field} in the data ({v}) does not match the expected {field} ({expected})"
                )));
            }
            None if required => {
                return Err(ApiError::bad_request(format!(
                    "invalid object: {field} must be set for apply"
                )));
            }
            _ => {}
        }
        body[field] = json!(expected);
    }
    Ok(())
}

/// Checks body name/namespace against the URL.
fn check_identity(body: &mut Value, ns: &str, name: Option<&str>) -> Result<(), ApiError> {
    let meta = meta_mut(body);
    match meta.get("namespace").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != ns => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        _ => {
            meta.insert("namespace".into(), json!(ns));
        }
    }
    if let Some(url_name) = name {
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != url_name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({url_name})"
                )));
            }
            _ => {
                meta.insert("name".into(), json!(url_name));
            }
        }
    }
    Ok(())
}

impl Registry {
    /// A registry with an empty store.
    pub fn new(schema: Arc<Schema>, history_size: usize) -> Self {
        Self {
            store: Store::new(history_size),
            schema,
            namespaces: std::sync::Mutex::new(None),
        }
    }

    /// Refuses a create in a namespace that does not exist.
    fn check_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        match namespaces.as_ref() {
            Some(existing) if !existing.contains(ns) => Err(ApiError::namespace_not_found(ns)),
            _ => Ok(()),
        }
    }

    /// Prunes unknown fields according to `fieldValidation`.
    fn prune(&self, obj: &mut Value, fv: FieldValidation) -> Result<Vec<String>, ApiError> {
        let pruned = self.schema.prune(obj);
        if pruned.is_empty() || fv == FieldValidation::Ignore {
            return Ok(Vec::new());
        }
        let unknown: Vec<String> = pruned
            .iter()
            .map(|p| format!("unknown field \"{p}\""))
            .collect();
        if fv == FieldValidation::Strict {
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                unknown.join(", ")
            )));
        }
        Ok(unknown)
    }

    /// Defaults then validates; 422 on any violation.
    fn default_and_validate(&self, obj: &mut Value, is_create: bool) -> Result<(), ApiError> {
        self.schema.apply_defaults(obj);
        let mut causes = meta::validate(obj, is_create);
        causes.extend(self.schema.validate(obj));
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(meta::name(obj), causes))
        }
    }

    /// Gets one object.
    pub fn get(&self, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        self.store
            .lock()
            .get(&key(ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(name))
    }

    /// Lists objects (one namespace or all) matching `selectors`, paginated by `limit`.
    pub fn list(
        &self,
        ns: Option<&str>,
        selectors: &Selectors,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let st = self.store.lock();
        let (rv, after) = match continue_token.filter(|t| !t.is_empty()) {
            Some(token) => {
                let (rv, last) = token
                    .split_once(':')
                    .and_then(|(rv, last)| Some((rv.parse::<u64>().ok()?, last)))
                    .and_then(|(rv, last)| {
                        let (n, name) = last.split_once('/')?;
                        Some((rv, (n.to_string(), name.to_string())))
                    })
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                if rv < st.oldest_watchable() {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some(last))
            }
            None => (st.current_rv(), None),
        };
        let mut matching = st
            .candidates(ns, selectors.exact_name(), after.as_ref())
            .filter(|(_, o)| selectors.matches(o));
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last_key = None;
        for (k, o) in matching.by_ref() {
            if items.len() == limit {
                // One more exists: this page ends at the previous item.
                let remaining = 1 + matching.count();
                let (lns, lname): &Key = last_key.unwrap_or(k);
                return Ok(ListPage {
                    items,
                    resource_version: rv,
                    continue_token: Some(format!("{rv}:{lns}/{lname}")),
                    remaining: selectors.is_empty().then_some(remaining),
                });
            }
            items.push(o.clone());
            last_key = Some(k);
        }
        Ok(ListPage {
            items,
            resource_version: rv,
            continue_token: None,
            remaining: None,
        })
    }

    /// Creates an object (POST).
    pub fn create(&self, ns: &str, mut body: Value, opts: &WriteOpts) -> Result<Written, ApiError> {
        self.check_namespace(ns)?;
        check_type(&mut body, false)?;
        check_identity(&mut body, ns, None)?;
        let warnings = self.prune(&mut body, opts.field_validation)?;
        if let Some(map) = body.as_object_mut() {
            map.remove("status");
        }
        let mut st = self.store.lock();
        {
            let m = meta_mut(&mut body);
            for f in SERVER_META {
                m.remove(f);
            }
            let has_name = m
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !has_name && let Some(prefix) = m.get("generateName").and_then(Value::as_str) {
                let prefix = prefix.to_string();
                let mut candidate = format!("{prefix}{}", meta::generated_suffix());
                while st.get(&key(ns, &candidate)).is_some() {
                    candidate = format!("{prefix}{}", meta::generated_suffix());
                }
                m.insert("name".into(), json!(candidate));
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(meta::now()));
            m.insert("generation".into(), json!(1));
        }
        self.default_and_validate(&mut body, true)?;
        webhook::validate(&body)?;
        let name = meta::name(&body).to_string();
        let k = key(ns, &name);
        if st.get(&k).is_some() {
            return Err(ApiError::already_exists(&name));
        }
        apply::record_update(
            None,
            &mut body,
            &opts.manager,
            Scope::Main,
            self.schema.root(),
            &meta::now(),
        );
        let object = self.commit(&mut st, k, body, EventType::Added, opts.dry_run);
        Ok(Written {
            object,
            created: true,
            warnings,
        })
    }

    fn commit(
        &self,
        st: &mut StoreState,
        k: Key,
        mut obj: Value,
        kind: EventType,
        dry_run: bool,
    ) -> Arc<Value> {
        if dry_run {
            if kind == EventType::Added {
                meta_mut(&mut obj).remove("resourceVersion");
            }
            Arc::new(obj)
        } else {
            st.commit(k, obj, kind)
        }
    }

    /// Builds the candidate of an update from the old object and the incoming state.
    fn candidate(old: &Value, incoming: Value, scope: Scope) -> Value {
        match scope {
            Scope::Main => {
                let mut c = incoming;
                match old.get("status") {
                    Some(s) => c["status"] = s.clone(),
                    None => {
                        if let Some(m) = c.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                let old_meta = old.get("metadata").and_then(Value::as_object);
                let m = meta_mut(&mut c);
                for f in SERVER_META {
                    match old_meta.and_then(|om| om.get(f)) {
                        Some(v) => {
                            m.insert(f.to_string(), v.clone());
                        }
                        None => {
                            m.remove(f);
                        }
                    }
                }
                for f in ["name", "namespace"] {
                    if let Some(v) = old_meta.and_then(|om| om.get(f)) {
                        m.insert(f.to_string(), v.clone());
                    }
                }
                c["apiVersion"] = json!(API_VERSION);
                c["kind"] = json!(KIND);
                c
            }
            Scope::Status => {
                let mut c = old.clone();
                match incoming.get("status") {
                    Some(s) => c["status"] = s.clone(),
                    None => {
                        if let Some(m) = c.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                c
            }
        }
    }

    /// [`Self::finish_update`] for a client's write, reported as a [`Written`] update.
    fn write_update(
        &self,
        st: &mut StoreState,
        old: &Arc<Value>,
        c: Value,
        how: Commit<'_>,
        warnings: Vec<String>,
    ) -> Result<Written, ApiError> {
        let object = self.finish_update(st, old, c, how)?;
        Ok(Written {
            object,
            created: false,
            warnings,
        })
    }

    /// Steps 3–5 of the pipeline for an existing object.
    fn finish_update(
        &self,
        st: &mut StoreState,
        old: &Arc<Value>,
        mut c: Value,
        how: Commit<'_>,
    ) -> Result<Arc<Value>, ApiError> {
        let Commit {
            key: k,
            scope,
            ownership,
            dry_run,
            admit,
        } = how;
        if meta::is_deleting(old) {
            let before = meta::finalizers(old);
            if let Some(added) = meta::finalizers(&c)
                .into_iter()
                .find(|f| !before.contains(f))
            {
                return Err(ApiError::invalid(
                    meta::name(old),
                    vec![crate::error::Cause {
                        reason: "FieldValueForbidden".into(),
                        message: format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{added:?}}}"
                        ),
                        field: "metadata.finalizers".into(),
                    }],
                ));
            }
        }
        self.default_and_validate(&mut c, false)?;
        if admit {
            webhook::validate(&c)?;
        }
        if old.get("spec") != c.get("spec") {
            meta_mut(&mut c).insert("generation".into(), json!(meta::generation(old) + 1));
        }
        if let Ownership::Update(manager) = ownership {
            apply::record_update(
                Some(old),
                &mut c,
                manager,
                scope,
                self.schema.root(),
                &meta::now(),
            );
        }
        let unchanged = {
            let mut a = (**old).clone();
            meta_mut(&mut a).remove("resourceVersion");
            let mut b = c.clone();
            meta_mut(&mut b).remove("resourceVersion");
            a == b
        };
        if unchanged {
            return Ok(old.clone());
        }
        let kind = if meta::is_deleting(&c) && meta::finalizers(&c).is_empty() {
            EventType::Deleted
        } else {
            EventType::Modified
        };
        Ok(self.commit(st, k, c, kind, dry_run))
    }

    /// Replaces an object (PUT), on the main resource or `/status`.
    pub fn update(
        &self,
        ns: &str,
        name: &str,
        mut body: Value,
        scope: Scope,
        opts: &WriteOpts,
    ) -> Result<Written, ApiError> {
        check_type(&mut body, false)?;
        check_identity(&mut body, ns, Some(name))?;
        let rv = meta::meta_str(&body, "resourceVersion")
            .map(str::to_string)
            .filter(|s| !s.is_empty());
        let uid = meta::meta_str(&body, "uid").map(str::to_string);
        let warnings = self.prune(&mut body, opts.field_validation)?;
        let mut st = self.store.lock();
        let k = key(ns, name);
        let old = st
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(name))?;
        let Some(rv) = rv else {
            return Err(ApiError::invalid(
                name,
                vec![crate::error::Cause {
                    reason: "FieldValueInvalid".into(),
                    message: "Invalid value: 0x0: must be specified for an update".into(),
                    field: "metadata.resourceVersion".into(),
                }],
            ));
        };
        if Some(rv.as_str()) != meta::meta_str(&old, "resourceVersion") {
            return Err(ApiError::conflict_modified(name));
        }
        if let Some(uid) = uid.filter(|u| !u.is_empty())
            && Some(uid.as_str()) != meta::meta_str(&old, "uid")
        {
            return Err(ApiError::precondition_failed(
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::meta_str(&old, "uid").unwrap_or_default()
                ),
            ));
        }
        let c = Self::candidate(&old, body, scope);
        let how = Commit::update(k, scope, opts);
        self.write_update(&mut st, &old, c, how, warnings)
    }

    /// Patches an object (merge, JSON or server-side apply), on the main resource or `/status`.
    pub fn patch(
        &self,
        ns: &str,
        name: &str,
        patch_body: PatchBody,
        scope: Scope,
        opts: &WriteOpts,
    ) -> Result<Written, ApiError> {
        let (patched, rv_precondition) = match patch_body {
            PatchBody::Apply(applied) => return self.apply(ns, name, applied, scope, opts),
            PatchBody::Merge(p) => {
                // RFC 7386 would let a non-object replace the whole document; the API server
                // decodes a merge patch into an object and refuses anything else.
                if let Some(kind) = non_object_kind(&p) {
                    return Err(ApiError::bad_request(format!(
                        "json: cannot unmarshal {kind} into Go value of type map[string]interface {{}}"
                    )));
                }
                let rv = p
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                (Ok(p), rv)
            }
            PatchBody::Json(p) => (Err(p), None),
        };
        let mut st = self.store.lock();
        let k = key(ns, name);
        let old = st
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(name))?;
        let mut c = (*old).clone();
        match patched {
            Ok(merge) => patch::merge_patch(&mut c, &merge),
            Err(json_patch) => patch::json_patch(&mut c, &json_patch).map_err(|e| match e {
                patch::JsonPatchError::Malformed(_) => ApiError::bad_request(e.to_string()),
                _ => ApiError::invalid(
                    name,
                    vec![crate::error::Cause {
                        reason: "FieldValueInvalid".into(),
                        message: e.to_string(),
                        field: String::new(),
                    }],
                ),
            })?,
        }
        if let Some(rv) = rv_precondition
            && Some(rv.as_str()) != meta::meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict_modified(name));
        }
        let warnings = self.prune(&mut c, opts.field_validation)?;
        let c = Self::candidate(&old, c, scope);
        let how = Commit::update(k, scope, opts);
        self.write_update(&mut st, &old, c, how, warnings)
    }

    fn apply(
        &self,
        ns: &str,
        name: &str,
        mut applied: Value,
        scope: Scope,
        opts: &WriteOpts,
    ) -> Result<Written, ApiError> {
        if !opts.explicit_manager || opts.manager.is_empty() {
            return Err(ApiError::invalid_options(
                "PatchOptions",
                "fieldManager",
                "Required value: is required for apply patch",
            ));
        }
        check_type(&mut applied, true)?;
        check_identity(&mut applied, ns, Some(name))?;
        let rv = meta::meta_str(&applied, "resourceVersion")
            .map(str::to_string)
            .filter(|s| !s.is_empty());
        let warnings = self.prune(&mut applied, opts.field_validation)?;
        apply::restrict_to_scope(&mut applied, scope);
        let now = meta::now();
        let mut st = self.store.lock();
        let k = key(ns, name);
        let Some(old) = st.get(&k).cloned() else {
            if scope == Scope::Status {
                return Err(ApiError::not_found(name));
            }
            if rv.is_some() {
                return Err(ApiError::not_found(name));
            }
            self.check_namespace(ns)?;
            let mut obj = apply::apply(
                None,
                &applied,
                &opts.manager,
                opts.force,
                scope,
                self.schema.root(),
                &now,
            )?
            .object;
            obj["apiVersion"] = json!(API_VERSION);
            obj["kind"] = json!(KIND);
            let m = meta_mut(&mut obj);
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now));
            m.insert("generation".into(), json!(1));
            self.default_and_validate(&mut obj, true)?;
            webhook::validate(&obj)?;
            let object = self.commit(&mut st, k, obj, EventType::Added, opts.dry_run);
            return Ok(Written {
                object,
                created: true,
                warnings,
            });
        };
        if let Some(rv) = rv
            && Some(rv.as_str()) != meta::meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict_modified(name));
        }
        let merged = apply::apply(
            Some(&old),
            &applied,
            &opts.manager,
            opts.force,
            scope,
            self.schema.root(),
            &now,
        )?
        .object;
        let managed = merged.pointer("/metadata/managedFields").cloned();
        let mut c = Self::candidate(&old, merged, scope);
        match managed {
            Some(m) => {
                meta_mut(&mut c).insert("managedFields".into(), m);
            }
            None => {
                meta_mut(&mut c).remove("managedFields");
            }
        }
        let how = Commit {
            key: k,
            scope,
            ownership: Ownership::AlreadyRecorded,
            dry_run: opts.dry_run,
            admit: scope == Scope::Main,
        };
        self.write_update(&mut st, &old, c, how, warnings)
    }

    /// Deletes an object (see the module doc for the finalizer protocol).
    pub fn delete(&self, ns: &str, name: &str, opts: &DeleteOpts) -> Result<Deleted, ApiError> {
        let mut st = self.store.lock();
        let k = key(ns, name);
        let old = st
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(name))?;
        if let Some(uid) = &opts.uid
            && Some(uid.as_str()) != meta::meta_str(&old, "uid")
        {
            return Err(ApiError::precondition_failed(
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::meta_str(&old, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && Some(rv.as_str()) != meta::meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::precondition_failed(
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta::meta_str(&old, "resourceVersion").unwrap_or_default()
                ),
            ));
        }
        if meta::is_deleting(&old) {
            return Ok(Deleted::Pending(old));
        }
        if meta::finalizers(&old).is_empty() {
            let gone = self.commit(&mut st, k, (*old).clone(), EventType::Deleted, opts.dry_run);
            return Ok(Deleted::Gone(gone));
        }
        let mut c = (*old).clone();
        let m = meta_mut(&mut c);
        m.insert("deletionTimestamp".into(), json!(meta::now()));
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
        m.insert("generation".into(), json!(meta::generation(&old) + 1));
        let object = self.commit(&mut st, k, c, EventType::Modified, opts.dry_run);
        Ok(Deleted::Pending(object))
    }

    /// An internal write (the simulated controller): runs `f` on a copy of the object and
    /// stores the result through the normal pipeline, as `manager`. Does nothing (returns
    /// `Ok(None)`) when the object is gone, has another uid, or (if given) another generation —
    /// the write was meant for a state that no longer exists.
    pub fn modify(
        &self,
        target: &Expect<'_>,
        manager: &str,
        scope: Scope,
        f: impl FnOnce(&mut Value),
    ) -> Result<Option<Arc<Value>>, ApiError> {
        let mut st = self.store.lock();
        let k = key(target.namespace, target.name);
        let Some(old) = st.get(&k).cloned() else {
            return Ok(None);
        };
        if meta::meta_str(&old, "uid") != Some(target.uid)
            || target
                .generation
                .is_some_and(|g| g != meta::generation(&old))
        {
            return Ok(None);
        }
        let mut c = (*old).clone();
        f(&mut c);
        let c = Self::candidate(&old, c, scope);
        self.finish_update(
            &mut st,
            &old,
            c,
            Commit {
                key: k,
                scope,
                ownership: Ownership::Update(manager),
                dry_run: false,
                admit: false,
            },
        )
        .map(Some)
    }

    /// A `Status` body for a completed deletion.
    pub fn deleted_status(object: &Value) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": meta::name(object),
                "group": GROUP,
                "kind": PLURAL,
                "uid": meta::meta_str(object, "uid").unwrap_or_default(),
            }
        })
    }
}
