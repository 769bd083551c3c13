//! Field sets: which fields of an object a field manager owns, in the `FieldsV1` format that
//! `metadata.managedFields` carries (`f:spec`, `k:{"name":"c"}`, `v:"x"`, `"."`).
//!
//! A set is stored flat, as the paths of the *owned members*: leaves (scalars, atomic lists and
//! atomic maps, set elements `v:`) and list-map items (`k:`, rendered with a `"."` member).
//! Intermediate structs are implied by their children, which is also how Kubernetes renders
//! them. Paths are built with the CRD schema's list semantics, so a `containers` list (a list
//! map keyed by `name`) is owned item by item while an atomic `args` list is one leaf. Only the
//! fields users manage are tracked: `spec`, `metadata.{labels, annotations, finalizers,
//! ownerReferences}`, and for the status subresource `status`.

use crate::schema::{ListType, Node};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::ops::Bound;

/// One path token (`f:name`, `k:{...}`, `v:...`).
pub type Token = String;
/// A path of tokens from the object root.
pub type FieldPath = Vec<Token>;

/// Which part of the object a write may touch, and so which fields are tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The main resource: spec and user metadata.
    Main,
    /// The `status` subresource.
    Status,
}

impl Scope {
    /// `subresource` value in a managedFields entry.
    pub fn subresource(self) -> Option<&'static str> {
        match self {
            Scope::Main => None,
            Scope::Status => Some("status"),
        }
    }
}

/// Metadata fields that take part in field management.
const MANAGED_META: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

/// A set of owned field paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<FieldPath>);

/// Renders `{"k":"v",...}` with keys sorted, as the `k:` token needs.
fn key_token(item: &Value, keys: &[String]) -> Option<Token> {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k)?.clone());
    }
    let sorted: std::collections::BTreeMap<_, _> = m.into_iter().collect();
    Some(format!("k:{}", serde_json::to_string(&sorted).ok()?))
}

fn value_token(v: &Value) -> Option<Token> {
    Some(format!("v:{}", serde_json::to_string(v).ok()?))
}

impl FieldSet {
    /// The fields present in `obj` within `scope`.
    pub fn from_object(obj: &Value, root: Node<'_>, scope: Scope) -> Self {
        let mut set = BTreeSet::new();
        let Some(map) = obj.as_object() else {
            return Self(set);
        };
        match scope {
            Scope::Main => {
                if let Some(meta) = map.get("metadata").and_then(Value::as_object) {
                    let meta_node = root.property("metadata");
                    for key in MANAGED_META {
                        if let Some(v) = meta.get(key) {
                            let mut path = vec!["f:metadata".to_string(), format!("f:{key}")];
                            walk(v, meta_node.property(key), &mut path, &mut set);
                        }
                    }
                }
                for (key, v) in map {
                    if matches!(key.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                        continue;
                    }
                    let mut path = vec![format!("f:{key}")];
                    walk(v, root.property(key), &mut path, &mut set);
                }
            }
            Scope::Status => {
                if let Some(v) = map.get("status") {
                    let mut path = vec!["f:status".to_string()];
                    walk(v, root.property("status"), &mut path, &mut set);
                }
            }
        }
        Self(set)
    }

    /// Parses a `fieldsV1` object.
    pub fn from_fields_v1(v: &Value) -> Self {
        fn rec(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
            let Some(m) = v.as_object() else { return };
            if m.is_empty() && !path.is_empty() {
                out.insert(path.clone());
                return;
            }
            for (k, child) in m {
                if k == "." {
                    // the whole object is never a member (as in structured-merge-diff)
                    if !path.is_empty() {
                        out.insert(path.clone());
                    }
                } else {
                    path.push(k.clone());
                    rec(child, path, out);
                    path.pop();
                }
            }
        }
        let mut out = BTreeSet::new();
        rec(v, &mut Vec::new(), &mut out);
        Self(out)
    }

    /// Renders the `fieldsV1` object.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        fn insert(node: &mut Map<String, Value>, path: &[Token], item: bool) {
            let Some((first, rest)) = path.split_first() else {
                if item {
                    node.insert(".".into(), Value::Object(Map::new()));
                }
                return;
            };
            let entry = node
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(next) = entry {
                insert(next, rest, item);
            }
        }
        for path in &self.0 {
            // "." marks a member that is also the parent of members (else only its children
            // would be read back), and, as the API server writes it, every list item
            let parent = self
                .0
                .range::<FieldPath, _>((Bound::Excluded(path), Bound::Unbounded))
                .next()
                .is_some_and(|next| next.starts_with(path));
            let item = parent || path.last().is_some_and(|t| t.starts_with("k:"));
            insert(&mut root, path, item);
        }
        Value::Object(root)
    }

    /// Whether the set has no members.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `path` is a member.
    pub fn contains(&self, path: &FieldPath) -> bool {
        self.0.contains(path)
    }

    /// Whether `path` or anything below it is a member.
    pub fn contains_prefix(&self, path: &FieldPath) -> bool {
        self.0
            .range(path.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(path))
    }

    /// The members.
    pub fn iter(&self) -> impl Iterator<Item = &FieldPath> {
        self.0.iter()
    }

    /// Adds a member.
    pub fn insert(&mut self, path: FieldPath) {
        self.0.insert(path);
    }

    /// Removes a member; returns whether it was present.
    pub fn remove(&mut self, path: &FieldPath) -> bool {
        self.0.remove(path)
    }

    /// Members of `self` not in `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&other.0).cloned().collect())
    }
}

fn walk(v: &Value, node: Node<'_>, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !node.is_atomic_map() => {
            for (k, child) in m {
                path.push(format!("f:{k}"));
                walk(child, node.property(k), path, out);
                path.pop();
            }
        }
        Value::Array(items) if node.is_known() => match node.list_type() {
            ListType::Atomic => {
                out.insert(path.clone());
            }
            ListType::Set => {
                for item in items {
                    if let Some(t) = value_token(item) {
                        path.push(t);
                        out.insert(path.clone());
                        path.pop();
                    }
                }
            }
            ListType::Map(keys) => {
                for item in items {
                    let Some(t) = key_token(item, &keys) else {
                        continue;
                    };
                    path.push(t);
                    out.insert(path.clone());
                    walk(item, node.items(), path, out);
                    path.pop();
                }
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

enum Step {
    Field(String),
    Key(Map<String, Value>),
    Value(Value),
}

fn step(token: &str) -> Option<Step> {
    if let Some(f) = token.strip_prefix("f:") {
        Some(Step::Field(f.to_string()))
    } else if let Some(k) = token.strip_prefix("k:") {
        serde_json::from_str::<Map<String, Value>>(k)
            .ok()
            .map(Step::Key)
    } else if let Some(v) = token.strip_prefix("v:") {
        serde_json::from_str(v).ok().map(Step::Value)
    } else {
        None
    }
}

fn item_matches(item: &Value, step: &Step) -> bool {
    match step {
        Step::Key(keys) => keys.iter().all(|(k, v)| item.get(k) == Some(v)),
        Step::Value(v) => item == v,
        Step::Field(_) => false,
    }
}

/// The value at `path` in `obj`.
pub fn value_at<'a>(obj: &'a Value, path: &[Token]) -> Option<&'a Value> {
    let mut cur = obj;
    for tok in path {
        let s = step(tok)?;
        cur = match (&s, cur) {
            (Step::Field(f), Value::Object(m)) => m.get(f)?,
            (Step::Key(_) | Step::Value(_), Value::Array(a)) => {
                a.iter().find(|i| item_matches(i, &s))?
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// Removes the member at `path` from `obj` (a field, a list-map item or a set element).
pub fn remove_at(obj: &mut Value, path: &[Token]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = obj;
    for tok in parents {
        let Some(s) = step(tok) else { return false };
        let next = match (&s, cur) {
            (Step::Field(f), Value::Object(m)) => m.get_mut(f),
            (Step::Key(_) | Step::Value(_), Value::Array(a)) => {
                a.iter_mut().find(|i| item_matches(i, &s))
            }
            _ => None,
        };
        let Some(next) = next else { return false };
        cur = next;
    }
    let Some(s) = step(last) else { return false };
    match (&s, cur) {
        (Step::Field(f), Value::Object(m)) => m.remove(f).is_some(),
        (Step::Key(_) | Step::Value(_), Value::Array(a)) => {
            let before = a.len();
            a.retain(|i| !item_matches(i, &s));
            a.len() != before
        }
        _ => false,
    }
}

/// `.spec.containers[name="c"].image`, the notation of conflict messages.
pub fn display_path(path: &[Token]) -> String {
    let mut out = String::new();
    for tok in path {
        match step(tok) {
            Some(Step::Field(f)) => {
                out.push('.');
                out.push_str(&f);
            }
            Some(Step::Key(keys)) => {
                let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Some(Step::Value(v)) => out.push_str(&format!("[={v}]")),
            None => out.push_str(tok),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;
    use serde_json::json;

    fn schema() -> std::sync::Arc<Schema> {
        Schema::embedded().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn fields_v1_round_trip_and_list_semantics() {
        let s = schema();
        let o = json!({
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "a", "labels": {"app": "x"}, "finalizers": ["f1"]},
            "spec": {"predictor": {"minReplicas": 1,
                "model": {"env": [{"name": "c", "value": "i"}], "args": ["a", "b"]}}},
            "status": {"url": "u"}
        });
        let set = FieldSet::from_object(&o, s.root(), Scope::Main);
        let v1 = set.to_fields_v1();
        assert_eq!(
            v1,
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}, "f:finalizers": {"v:\"f1\"": {}}},
                "f:spec": {"f:predictor": {"f:minReplicas": {}, "f:model": {"f:args": {},
                    "f:env": {"k:{\"name\":\"c\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}
            })
        );
        assert_eq!(FieldSet::from_fields_v1(&v1), set);
        let status = FieldSet::from_object(&o, s.root(), Scope::Status);
        assert_eq!(status.to_fields_v1(), json!({"f:status": {"f:url": {}}}));
    }

    #[test]
    fn value_at_and_remove_at_follow_keys() {
        let mut o =
            json!({"spec": {"l": [{"name": "a", "x": 1}, {"name": "b", "x": 2}], "s": ["p", "q"]}});
        let p: FieldPath = vec![
            "f:spec".into(),
            "f:l".into(),
            "k:{\"name\":\"b\"}".into(),
            "f:x".into(),
        ];
        assert_eq!(value_at(&o, &p), Some(&json!(2)));
        assert_eq!(display_path(&p), ".spec.l[name=\"b\"].x");
        assert!(remove_at(&mut o, &p[..3]));
        assert!(remove_at(
            &mut o,
            &["f:spec".into(), "f:s".into(), "v:\"p\"".into()]
        ));
        assert_eq!(
            o,
            json!({"spec": {"l": [{"name": "a", "x": 1}], "s": ["q"]}})
        );
    }
}
