//! The InferenceService CRD schema, applied the way the API server applies a structural
//! schema: **prune** unknown fields (or reject them under `fieldValidation=Strict`), apply
//! **defaults**, then **validate** and answer 422 with one cause per violation.
//!
//! The file (`inferenceservice-v1beta1.schema.json`, the CRD's `openAPIV3Schema`) declares
//! `metadata` only as `type: object`; the real server validates ObjectMeta with Go types, so at
//! load time `metadata` is replaced with a schema for ObjectMeta (see [`object_meta_schema`]).
//! Validation itself is done by the `jsonschema` crate; the `x-kubernetes-*` keys it ignores are
//! read here through [`Node`], which the pruning, defaulting and server-side-apply code use to
//! learn list semantics (`x-kubernetes-list-type` `map`/`set`/`atomic`, list-map keys,
//! `x-kubernetes-map-type: atomic`) and `x-kubernetes-preserve-unknown-fields`.

use crate::error::{Cause, SimError};
use jsonschema::error::ValidationErrorKind;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

/// The InferenceService v1beta1 structural schema this crate embeds (KServe, Apache-2.0; see
/// `schema/PROVENANCE.md` for the release it comes from). Used unless another file is given.
pub const EMBEDDED_SCHEMA: &str = include_str!("../schema/inferenceservice-v1beta1.schema.json");

/// What [`Schema::path`] reports for the embedded schema.
pub const EMBEDDED_SCHEMA_NAME: &str = "<embedded inferenceservice-v1beta1.schema.json>";

/// The loaded CRD schema and its compiled validator.
pub struct Schema {
    root: Value,
    validator: jsonschema::Validator,
    path: PathBuf,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("path", &self.path).finish()
    }
}

/// List semantics of an array node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole (the default for CRD lists).
    Atomic,
    /// Items are scalars, merged as a set.
    Set,
    /// Items are objects identified by these keys.
    Map(Vec<String>),
}

/// A position in the schema; `None` means "no schema here" (a preserve-unknown region).
#[derive(Clone, Copy, Debug)]
pub struct Node<'a>(Option<&'a Map<String, Value>>);

impl<'a> Node<'a> {
    /// A node without schema.
    pub fn unknown() -> Self {
        Node(None)
    }

    fn get(self, key: &str) -> Option<&'a Value> {
        self.0.and_then(|s| s.get(key))
    }

    /// The schema of property `key` (or of the map values when the node is a map).
    pub fn property(self, key: &str) -> Node<'a> {
        if let Some(p) = self
            .get("properties")
            .and_then(|p| p.get(key))
            .and_then(Value::as_object)
        {
            return Node(Some(p));
        }
        Node(self.get("additionalProperties").and_then(Value::as_object))
    }

    /// The schema of the items of an array node.
    pub fn items(self) -> Node<'a> {
        Node(self.get("items").and_then(Value::as_object))
    }

    /// Whether this node declares named properties (a struct).
    pub fn has_properties(self) -> bool {
        self.get("properties").is_some()
    }

    /// Whether unknown fields are kept here.
    pub fn preserves_unknown(self) -> bool {
        self.get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether this object is replaced as a whole by apply (`x-kubernetes-map-type: atomic`).
    pub fn is_atomic_map(self) -> bool {
        self.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
    }

    /// Whether there is schema information at all.
    pub fn is_known(self) -> bool {
        self.0.is_some()
    }

    /// List semantics of an array node.
    pub fn list_type(self) -> ListType {
        match self.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => {
                let keys = self
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|k| k.as_str().map(str::to_string))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                if keys.is_empty() {
                    ListType::Atomic
                } else {
                    ListType::Map(keys)
                }
            }
            _ => ListType::Atomic,
        }
    }
}

/// How unknown fields are treated (`fieldValidation` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop unknown fields and report them in `Warning` headers (the server default).
    #[default]
    Warn,
    /// Reject the request with 400 when an unknown field is present.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter (`Ignore`, `Warn`, `Strict`).
    pub fn parse(s: Option<&str>) -> Result<Self, crate::error::ApiError> {
        match s {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(crate::error::ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// Schema of ObjectMeta as the API server enforces it for custom resources.
pub fn object_meta_schema() -> Value {
    let string = json!({"type": "string"});
    let string_map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    json!({
        "type": "object",
        "properties": {
            "name": string, "generateName": string, "namespace": string, "selfLink": string,
            "uid": string, "resourceVersion": string,
            "generation": {"type": "integer"},
            "creationTimestamp": {"type": ["string", "null"]},
            "deletionTimestamp": {"type": ["string", "null"]},
            "deletionGracePeriodSeconds": {"type": "integer"},
            "labels": string_map, "annotations": string_map,
            "finalizers": {"type": "array", "items": string, "x-kubernetes-list-type": "set"},
            "ownerReferences": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["uid"],
                "items": {
                    "type": "object",
                    "required": ["apiVersion", "kind", "name", "uid"],
                    "properties": {
                        "apiVersion": string, "kind": string, "name": string, "uid": string,
                        "controller": {"type": "boolean"},
                        "blockOwnerDeletion": {"type": "boolean"}
                    }
                }
            },
            "managedFields": {
                "type": "array",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }
        }
    })
}

impl Schema {
    /// Reads and compiles the schema file.
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::SchemaRead {
            path: path.to_path_buf(),
            source,
        })?;
        let root: Value = serde_json::from_str(&text).map_err(|source| SimError::SchemaParse {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_value(root, path)
    }

    /// Like [`Schema::load`], but compiled once per process for each file (and file
    /// modification time): a test process starting many instances pays the compilation once.
    pub fn load_shared(path: &Path) -> Result<Arc<Self>, SimError> {
        type Cache = Mutex<HashMap<PathBuf, (Option<SystemTime>, Arc<Schema>)>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let modified = std::fs::metadata(&key).and_then(|m| m.modified()).ok();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some((m, schema)) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && *m == modified
        {
            return Ok(schema.clone());
        }
        let schema = Arc::new(Self::load(path)?);
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (modified, schema.clone()));
        Ok(schema)
    }

    /// The embedded schema ([`EMBEDDED_SCHEMA`]), compiled once per process.
    pub fn embedded() -> Result<Arc<Self>, SimError> {
        static EMBEDDED: OnceLock<Arc<Schema>> = OnceLock::new();
        if let Some(schema) = EMBEDDED.get() {
            return Ok(schema.clone());
        }
        let path = Path::new(EMBEDDED_SCHEMA_NAME);
        let root: Value =
            serde_json::from_str(EMBEDDED_SCHEMA).map_err(|source| SimError::SchemaParse {
                path: path.to_path_buf(),
                source,
            })?;
        let schema = Arc::new(Self::from_value(root, path)?);
        Ok(EMBEDDED.get_or_init(|| schema).clone())
    }

    /// The schema at `path`, or the embedded one when `path` is `None`.
    pub fn resolve(path: Option<&Path>) -> Result<Arc<Self>, SimError> {
        match path {
            Some(path) => Self::load_shared(path),
            None => Self::embedded(),
        }
    }

    /// Compiles an already parsed schema.
    pub fn from_value(mut root: Value, path: &Path) -> Result<Self, SimError> {
        let compile_err = |message: String| SimError::SchemaCompile {
            path: path.to_path_buf(),
            message,
        };
        let props = root
            .get_mut("properties")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| compile_err("the schema has no top-level properties".into()))?;
        props.insert("metadata".into(), object_meta_schema());
        let validator = jsonschema::options()
            .should_validate_formats(false)
            .build(&root)
            .map_err(|e| compile_err(e.to_string()))?;
        Ok(Self {
            root,
            validator,
            path: path.to_path_buf(),
        })
    }

    /// The root node.
    pub fn root(&self) -> Node<'_> {
        Node(self.root.as_object())
    }

    /// The schema document (with the ObjectMeta schema in place of `metadata`).
    pub fn document(&self) -> &Value {
        &self.root
    }

    /// The file the schema was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes fields the schema does not declare; returns their paths (`spec.foo`).
    pub fn prune(&self, obj: &mut Value) -> Vec<String> {
        let mut out = Vec::new();
        prune(obj, self.root(), "", &mut out);
        out
    }

    /// Fills in `default` values of absent properties inside objects that are present.
    pub fn apply_defaults(&self, obj: &mut Value) {
        apply_defaults(obj, self.root());
    }

    /// Validates the whole object; one cause per violation, in a stable order.
    pub fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes: Vec<Cause> = self
            .validator
            .iter_errors(obj)
            .map(|e| to_cause(&e))
            .collect();
        causes.sort_by(|a, b| a.field.cmp(&b.field).then(a.message.cmp(&b.message)));
        causes.dedup();
        causes
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn prune(value: &mut Value, node: Node<'_>, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let Some(schema) = node.0 else { return };
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keep_unknown = node.preserves_unknown() || additional == Some(&Value::Bool(true));
            let map_values = additional.and_then(Value::as_object).map(|s| Node(Some(s)));
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child = props
                    .and_then(|p| p.get(&key))
                    .and_then(Value::as_object)
                    .map(|s| Node(Some(s)))
                    .or(map_values);
                match child {
                    Some(child) => {
                        if let Some(v) = map.get_mut(&key) {
                            prune(v, child, &join(path, &key), out);
                        }
                    }
                    None if keep_unknown => {}
                    None => {
                        map.remove(&key);
                        out.push(join(path, &key));
                    }
                }
            }
        }
        Value::Array(items) => {
            let item_node = node.items();
            if item_node.is_known() {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item, item_node, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn apply_defaults(value: &mut Value, node: Node<'_>) {
    match value {
        Value::Object(map) => {
            let Some(schema) = node.0 else { return };
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (key, prop) in props {
                    if !map.contains_key(key)
                        && let Some(default) = prop.get("default")
                    {
                        map.insert(key.clone(), default.clone());
                    }
                }
            }
            for (key, v) in map.iter_mut() {
                apply_defaults(v, node.property(key));
            }
        }
        Value::Array(items) => {
            let item_node = node.items();
            for item in items {
                apply_defaults(item, item_node);
            }
        }
        _ => {}
    }
}

/// `Location` of the instance → `spec.containers[0].name`.
fn field_path(loc: &jsonschema::paths::Location) -> String {
    let mut out = String::new();
    for seg in loc.segments() {
        match seg {
            jsonschema::paths::LocationSegment::Property(p) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&p);
            }
            jsonschema::paths::LocationSegment::Index(i) => {
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Renders a value the way field errors quote it (`"text"`, `5`, `"object"` for composites).
fn quote(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        other => format!("{:?}", type_name(other)),
    }
}

fn to_cause(e: &jsonschema::ValidationError<'_>) -> Cause {
    let field = field_path(e.instance_path());
    let inst: &Value = e.instance();
    let invalid = |why: String| Cause {
        reason: "FieldValueInvalid".into(),
        message: format!("Invalid value: {}: {field} in body {why}", quote(inst)),
        field: field.clone(),
    };
    match e.kind() {
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                jsonschema::error::TypeKind::Single(t) => t.to_string(),
                jsonschema::error::TypeKind::Multiple(ts) => ts
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            };
            Cause {
                reason: "FieldValueTypeInvalid".into(),
                message: format!(
                    "Invalid value: {:?}: {field} in body must be of type {expected}: {:?}",
                    type_name(inst),
                    type_name(inst)
                ),
                field: field.clone(),
            }
        }
        ValidationErrorKind::AnyOf { .. } => Cause {
            reason: "FieldValueTypeInvalid".into(),
            message: format!(
                "Invalid value: {:?}: {field} in body must be of type integer,string: {:?}",
                type_name(inst),
                type_name(inst)
            ),
            field: field.clone(),
        },
        ValidationErrorKind::Required { property } => {
            let prop = property.as_str().unwrap_or_default();
            Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value".into(),
                field: join(&field, prop),
            }
        }
        ValidationErrorKind::Enum { options } => {
            let supported = options
                .as_array()
                .map(|a| a.iter().map(quote).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            Cause {
                reason: "FieldValueNotSupported".into(),
                message: format!(
                    "Unsupported value: {}: supported values: {supported}",
                    quote(inst)
                ),
                field: field.clone(),
            }
        }
        ValidationErrorKind::Pattern { pattern } => invalid(format!("should match '{pattern}'")),
        ValidationErrorKind::Minimum { limit } => {
            invalid(format!("should be greater than or equal to {limit}"))
        }
        ValidationErrorKind::Maximum { limit } => {
            invalid(format!("should be less than or equal to {limit}"))
        }
        ValidationErrorKind::MinItems { limit } => {
            invalid(format!("should have at least {limit} items"))
        }
        ValidationErrorKind::MaxItems { limit } => {
            invalid(format!("should have at most {limit} items"))
        }
        ValidationErrorKind::MinLength { limit } => {
            invalid(format!("should be at least {limit} chars long"))
        }
        ValidationErrorKind::MaxLength { limit } => Cause {
            reason: "FieldValueTooLong".into(),
            message: format!("Too long: may not be more than {limit} bytes"),
            field: field.clone(),
        },
        _ => invalid(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> std::sync::Arc<Schema> {
        Schema::embedded().unwrap_or_else(|e| panic!("{e}"))
    }

    fn isvc(predictor: Value) -> Value {
        json!({
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"predictor": predictor}
        })
    }

    #[test]
    fn valid_object_passes() {
        let s = schema();
        let o = isvc(json!({
            "minReplicas": 1,
            "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://b/m",
                      "resources": {"limits": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": 1}}}
        }));
        assert_eq!(s.validate(&o), vec![]);
    }

    #[test]
    fn type_errors_name_the_field() {
        let s = schema();
        let o = isvc(json!({"minReplicas": "two", "model": {"modelFormat": {}}}));
        let causes = s.validate(&o);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.predictor.minReplicas",
                "spec.predictor.model.modelFormat.name"
            ]
        );
        assert!(
            causes[0].message.contains("must be of type integer"),
            "{causes:?}"
        );
        assert_eq!(causes[1].message, "Required value");
    }

    #[test]
    fn quantities_are_int_or_string_with_a_pattern() {
        let s = schema();
        let o = isvc(json!({"model": {"modelFormat": {"name": "x"},
            "resources": {"limits": {"cpu": "lots", "memory": true}}}}));
        let fields: Vec<String> = s.validate(&o).into_iter().map(|c| c.field).collect();
        assert!(
            fields.contains(&"spec.predictor.model.resources.limits.cpu".to_string()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"spec.predictor.model.resources.limits.memory".to_string()),
            "{fields:?}"
        );
    }

    #[test]
    fn prune_drops_unknown_fields_but_keeps_status_and_map_values() {
        let s = schema();
        let mut o = isvc(
            json!({"bogus": 1, "model": {"modelFormat": {"name": "x"}, "extra": {"a": 1}},
            "nodeSelector": {"any-key": "v"}}),
        );
        o["status"] = json!({"anything": {"goes": true}});
        o["metadata"]["surprise"] = json!(1);
        let mut pruned = s.prune(&mut o);
        pruned.sort();
        assert_eq!(
            pruned,
            vec![
                "metadata.surprise",
                "spec.predictor.bogus",
                "spec.predictor.model.extra"
            ]
        );
        assert_eq!(o["spec"]["predictor"]["nodeSelector"]["any-key"], "v");
        assert_eq!(o["status"]["anything"]["goes"], true);
    }

    #[test]
    fn defaults_fill_present_objects_only() {
        let s = schema();
        let mut o = isvc(json!({"model": {"modelFormat": {"name": "x"}},
            "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}));
        s.apply_defaults(&mut o);
        assert_eq!(
            o["spec"]["predictor"]["containers"][0]["ports"][0]["protocol"],
            "TCP"
        );
        assert!(o["spec"]["predictor"].get("storageUris").is_none());
    }

    #[test]
    fn list_semantics_are_read_from_extensions() {
        let s = schema();
        let predictor = s.root().property("spec").property("predictor");
        assert_eq!(
            predictor.property("model").property("env").list_type(),
            ListType::Map(vec!["name".into()])
        );
        // Lists without x-kubernetes-list-type are atomic in a CRD.
        assert_eq!(
            predictor.property("containers").list_type(),
            ListType::Atomic
        );
        assert_eq!(
            predictor.property("model").property("args").list_type(),
            ListType::Atomic
        );
        assert_eq!(
            s.root()
                .property("metadata")
                .property("finalizers")
                .list_type(),
            ListType::Set
        );
    }
}
