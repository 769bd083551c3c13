//! Server-side apply and `metadata.managedFields` bookkeeping.
//!
//! Every write records who changed what. An *update* (create, PUT, merge/JSON patch, a status
//! write) gives its manager (`fieldManager`, else derived from the User-Agent) ownership of the
//! fields whose value it changed, and takes them from everybody else, without conflicts. An
//! *apply* declares the complete set of fields its manager wants to own:
//! - a field in the applied configuration that another manager owns **and** whose value would
//!   change is a conflict → 409 with one `FieldManagerConflict` cause per field, unless
//!   `force=true`, which transfers ownership;
//! - equal values are shared (both managers own them);
//! - fields the manager applied before but omits now are removed, unless somebody else owns
//!   them too (this is how dropping `canaryTrafficPercent` from an applied manifest removes it);
//! - the applied configuration is merged into the live object following the schema's list
//!   semantics (list maps by key, sets by value, atomic lists and maps replaced).
//!
//! The granularity is that of [`crate::fieldset`]; see its module doc.

use crate::error::{ApiError, Cause};
use crate::fieldset::{FieldPath, FieldSet, Scope, display_path, remove_at, value_at};
use crate::schema::{ListType, Node};
use serde_json::{Map, Value, json};

/// apiVersion recorded in managedFields entries.
pub const API_VERSION: &str = "serving.kserve.io/v1beta1";

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedEntry {
    /// Field manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `status` for status-subresource writes.
    pub subresource: Option<String>,
    /// When this entry last changed.
    pub time: String,
    /// Owned fields.
    pub set: FieldSet,
}

impl ManagedEntry {
    fn same_identity(&self, manager: &str, operation: &str, scope: Scope) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == scope.subresource()
    }
}

/// Reads `metadata.managedFields`.
pub fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .map(|e| ManagedEntry {
                    manager: e["manager"].as_str().unwrap_or_default().to_string(),
                    operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                    subresource: e
                        .get("subresource")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                    time: e["time"].as_str().unwrap_or_default().to_string(),
                    set: FieldSet::from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `metadata.managedFields`, dropping entries that own nothing.
pub fn write_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    let rendered: Vec<Value> = entries
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut m = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": API_VERSION,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": e.set.to_fields_v1(),
            });
            if let Some(s) = &e.subresource {
                m["subresource"] = json!(s);
            }
            m
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if rendered.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(rendered));
        }
    }
}

/// Records an update by `manager` that turned `old` (None: created) into `new`.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    scope: Scope,
    root: Node<'_>,
    now: &str,
) {
    let mut entries = old.map(read_managed).unwrap_or_default();
    let new_set = FieldSet::from_object(new, root, scope);
    let old_set = old
        .map(|o| FieldSet::from_object(o, root, scope))
        .unwrap_or_default();
    let changed: Vec<FieldPath> = new_set
        .iter()
        .filter(|p| old.is_none_or(|o| value_at(o, p) != value_at(new, p)) || !old_set.contains(p))
        .cloned()
        .collect();
    let removed = old_set.difference(&new_set);
    if changed.is_empty() && removed.is_empty() {
        write_managed(new, &entries);
        return;
    }
    // Changed and removed fields leave every other owner (losing fields does not change an
    // entry's timestamp, as in Kubernetes).
    for e in &mut entries {
        for p in changed.iter().chain(removed.iter()) {
            e.set.remove(p);
        }
    }
    if !changed.is_empty() {
        let idx = match entries
            .iter()
            .position(|e| e.same_identity(manager, "Update", scope))
        {
            Some(i) => i,
            None => {
                entries.push(ManagedEntry {
                    manager: manager.to_string(),
                    operation: "Update".into(),
                    subresource: scope.subresource().map(str::to_string),
                    time: now.to_string(),
                    set: FieldSet::default(),
                });
                entries.len() - 1
            }
        };
        for p in changed {
            entries[idx].set.insert(p);
        }
        entries[idx].time = now.to_string();
    }
    write_managed(new, &entries);
}

/// Keeps only what an applied configuration may set in `scope`.
pub fn restrict_to_scope(applied: &mut Value, scope: Scope) {
    let Some(map) = applied.as_object_mut() else {
        return;
    };
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        let keep: &[&str] = match scope {
            Scope::Main => &[
                "name",
                "namespace",
                "labels",
                "annotations",
                "finalizers",
                "ownerReferences",
            ],
            Scope::Status => &["name", "namespace"],
        };
        meta.retain(|k, _| keep.contains(&k.as_str()));
    }
    match scope {
        Scope::Main => {
            map.remove("status");
        }
        Scope::Status => {
            map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"))
        }
    }
}

/// Merges an applied configuration into the live object following list semantics.
pub fn merge_applied(live: &mut Value, applied: &Value, node: Node<'_>) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !node.is_atomic_map() => {
            for (k, av) in a {
                match l.get_mut(k) {
                    Some(lv) => merge_applied(lv, av, node.property(k)),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(a)) if node.is_known() => match node.list_type() {
            ListType::Map(keys) => {
                for ai in a {
                    let found = l
                        .iter_mut()
                        .find(|li| keys.iter().all(|k| li.get(k) == ai.get(k)));
                    match found {
                        Some(li) => merge_applied(li, ai, node.items()),
                        None => l.push(ai.clone()),
                    }
                }
            }
            ListType::Set => {
                for ai in a {
                    if !l.contains(ai) {
                        l.push(ai.clone());
                    }
                }
            }
            ListType::Atomic => *l = a.clone(),
        },
        (live, applied) => *live = applied.clone(),
    }
}

/// Result of a server-side apply.
pub struct Applied {
    /// The merged object, with managedFields updated.
    pub object: Value,
}

/// Server-side apply of `applied` (already restricted to `scope`) by `manager` onto `live`
/// (`None` when the object does not exist yet and the apply creates it).
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
    root: Node<'_>,
    now: &str,
) -> Result<Applied, ApiError> {
    let applied_set = FieldSet::from_object(applied, root, scope);
    let mut entries = live.map(read_managed).unwrap_or_default();
    let mine = entries
        .iter()
        .position(|e| e.same_identity(manager, "Apply", scope));
    let old_mine = mine.map(|i| entries[i].set.clone()).unwrap_or_default();

    // Conflicts: a field somebody else owns that this apply would change.
    let mut conflicts: Vec<(usize, FieldPath)> = Vec::new();
    if let Some(live) = live {
        for p in applied_set.iter() {
            if value_at(applied, p) == value_at(live, p) {
                continue;
            }
            for (i, e) in entries.iter().enumerate() {
                if Some(i) != mine && e.set.contains(p) {
                    conflicts.push((i, p.clone()));
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let name = applied["metadata"]["name"].as_str().unwrap_or_default();
        let causes: Vec<Cause> = conflicts
            .iter()
            .map(|(i, p)| Cause {
                reason: "FieldManagerConflict".into(),
                message: format!(
                    "conflict with \"{}\" using {API_VERSION}",
                    entries[*i].manager
                ),
                field: display_path(p),
            })
            .collect();
        let message = match causes.as_slice() {
            [one] => format!(
                "Apply failed with 1 conflict: {}: {}",
                one.message, one.field
            ),
            many => {
                let mut by_manager: Vec<(String, Vec<String>)> = Vec::new();
                for c in many {
                    match by_manager.iter_mut().find(|(m, _)| *m == c.message) {
                        Some((_, fields)) => fields.push(c.field.clone()),
                        None => by_manager.push((c.message.clone(), vec![c.field.clone()])),
                    }
                }
                let parts: Vec<String> = by_manager
                    .iter()
                    .map(|(m, fields)| {
                        format!(
                            "{}:\n- {}",
                            m.replacen("conflict with", "conflicts with", 1),
                            fields.join("\n- ")
                        )
                    })
                    .collect();
                format!(
                    "Apply failed with {} conflicts: {}",
                    many.len(),
                    parts.join("\n")
                )
            }
        };
        return Err(ApiError::apply_conflict(name, message, causes));
    }
    for (i, p) in &conflicts {
        entries[*i].set.remove(p);
    }

    let mut object = match live {
        Some(l) => l.clone(),
        None => Value::Object(Map::new()),
    };
    // Fields this manager applied before and no longer applies, owned by nobody else, go.
    let mut dropped: Vec<FieldPath> = old_mine.difference(&applied_set).iter().cloned().collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        let shared = entries
            .iter()
            .enumerate()
            .any(|(i, e)| Some(i) != mine && e.set.contains_prefix(&p));
        if !shared {
            remove_at(&mut object, &p);
        }
    }
    merge_applied(&mut object, applied, root);

    let changed_set = old_mine != applied_set;
    match mine {
        Some(i) => {
            if changed_set || !conflicts.is_empty() {
                entries[i].time = now.to_string();
            }
            entries[i].set = applied_set;
        }
        None => entries.insert(
            0,
            ManagedEntry {
                manager: manager.to_string(),
                operation: "Apply".into(),
                subresource: scope.subresource().map(str::to_string),
                time: now.to_string(),
                set: applied_set,
            },
        ),
    }
    write_managed(&mut object, &entries);
    Ok(Applied { object })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;

    fn schema() -> std::sync::Arc<Schema> {
        Schema::embedded().unwrap_or_else(|e| panic!("{e}"))
    }

    fn cfg(min: i64, canary: Option<i64>) -> Value {
        let mut p = json!({"minReplicas": min, "model": {"modelFormat": {"name": "sklearn"}}});
        if let Some(c) = canary {
            p["canaryTrafficPercent"] = json!(c);
        }
        json!({"apiVersion": API_VERSION, "kind": "InferenceService",
               "metadata": {"name": "a", "namespace": "ns"}, "spec": {"predictor": p}})
    }

    /// Applies `config` over `live` as `manager` at time "t" on the main resource.
    fn apply_as(
        live: Option<&Value>,
        config: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        let s = schema();
        apply(live, config, manager, force, Scope::Main, s.root(), "t").map(|a| a.object)
    }

    fn ok(result: Result<Value, ApiError>) -> Value {
        result.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn apply_conflicts_share_and_force() {
        let a = ok(apply_as(None, &cfg(1, Some(10)), "one", false));
        // Same values: shared, no conflict.
        let b = ok(apply_as(Some(&a), &cfg(1, None), "two", false));
        assert_eq!(read_managed(&b).len(), 2);
        // A different value for a field "one" owns: conflict naming the field and manager.
        let err = apply_as(Some(&b), &cfg(3, None), "two", false)
            .err()
            .unwrap_or_else(|| panic!("expected a conflict"));
        assert_eq!(err.code, 409);
        assert_eq!(err.causes.len(), 1);
        assert_eq!(err.causes[0].field, ".spec.predictor.minReplicas");
        assert!(
            err.message.contains("conflict with \"one\""),
            "{}",
            err.message
        );
        // Forced: "two" takes the field, "one" loses it.
        let c = ok(apply_as(Some(&b), &cfg(3, None), "two", true));
        assert_eq!(c["spec"]["predictor"]["minReplicas"], 3);
        let one = read_managed(&c)
            .into_iter()
            .find(|e| e.manager == "one")
            .unwrap_or_else(|| panic!("one lost all fields"));
        assert!(!one.set.contains(&vec![
            "f:spec".into(),
            "f:predictor".into(),
            "f:minReplicas".into()
        ]));
    }

    #[test]
    fn omitted_fields_are_removed_unless_shared() {
        let a = ok(apply_as(None, &cfg(1, Some(10)), "one", false));
        let b = ok(apply_as(Some(&a), &cfg(1, None), "one", false));
        assert!(b["spec"]["predictor"].get("canaryTrafficPercent").is_none());
        assert_eq!(b["spec"]["predictor"]["minReplicas"], 1);
    }

    #[test]
    fn updates_take_ownership_without_conflict() {
        let s = schema();
        let a = ok(apply_as(None, &cfg(1, None), "one", false));
        let mut b = a.clone();
        b["spec"]["predictor"]["minReplicas"] = json!(2);
        record_update(Some(&a), &mut b, "editor", Scope::Main, s.root(), "t2");
        let entries = read_managed(&b);
        let editor = entries.iter().find(|e| e.manager == "editor");
        assert!(editor.is_some_and(|e| e.operation == "Update" && e.time == "t2"));
        // Now "one" re-applying its old value conflicts with "editor".
        let err = apply_as(Some(&b), &cfg(1, None), "one", false)
            .err()
            .map(|e| e.causes[0].message.clone());
        assert_eq!(
            err.as_deref(),
            Some("conflict with \"editor\" using serving.kserve.io/v1beta1")
        );
    }
}
