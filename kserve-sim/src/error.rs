//! Errors, in the two shapes the stand-in needs.
//!
//! [`ApiError`] is what a client sees: it renders as a `metav1.Status` body (`kind: Status`,
//! `status: Failure`, `reason`, `message`, `details.causes[]`, `code`) with the same HTTP code,
//! reason and message wording the Kubernetes API server uses, because clients (the `kube` crate,
//! `kubectl`) branch on `code` and `reason`. [`SimError`] is what the embedding program sees when
//! the stand-in itself cannot start or write its kubeconfig.

use serde_json::{Value, json};
use std::path::PathBuf;

/// API group of the served resource, used in error details.
pub(crate) const GROUP: &str = "serving.kserve.io";
/// Plural resource name, used in error details and messages.
pub(crate) const PLURAL: &str = "inferenceservices";

/// One entry of `details.causes` in a `Status` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable reason, e.g. `FieldValueInvalid`, `FieldManagerConflict`.
    pub reason: String,
    /// Human-readable message for this one field.
    pub message: String,
    /// The field path, e.g. `spec.predictor.minReplicas`.
    pub field: String,
}

/// An error answered to an API client as a `metav1.Status` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code (also the `code` field).
    pub code: u16,
    /// `reason` field (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// `message` field.
    pub message: String,
    /// `details.name` when the error is about one object.
    pub name: Option<String>,
    /// `details.causes`.
    pub causes: Vec<Cause>,
    /// `details.retryAfterSeconds` (and the `Retry-After` header) for 429.
    pub retry_after_seconds: Option<u32>,
    /// Whether `details` carries group and kind (object-level errors do, path errors do not).
    pub with_kind: bool,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            name: None,
            causes: Vec::new(),
            retry_after_seconds: None,
            with_kind: false,
        }
    }

    fn for_object(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self.with_kind = true;
        self
    }

    /// 404 for a named object that does not exist.
    pub fn not_found(name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{PLURAL}.{GROUP} \"{name}\" not found"),
        )
        .for_object(name)
    }

    /// 404 for a path the server does not serve.
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409 on create when the name is taken.
    pub fn already_exists(name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{PLURAL}.{GROUP} \"{name}\" already exists"),
        )
        .for_object(name)
    }

    /// 409 for a stale `resourceVersion` (optimistic concurrency).
    pub fn conflict_modified(name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {PLURAL}.{GROUP} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .for_object(name)
    }

    /// 409 for a failed precondition (uid / resourceVersion in DeleteOptions or the body).
    pub fn precondition_failed(name: &str, what: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {PLURAL}.{GROUP} \"{name}\": {what}"),
        )
        .for_object(name)
    }

    /// 409 for server-side apply conflicts, one cause per conflicting field.
    pub fn apply_conflict(name: &str, message: String, causes: Vec<Cause>) -> Self {
        let mut e = Self::new(409, "Conflict", message).for_object(name);
        e.causes = causes;
        e
    }

    /// 422 with one cause per invalid field.
    pub fn invalid(name: &str, causes: Vec<Cause>) -> Self {
        let detail = match causes.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!(
                "[{}]",
                many.iter()
                    .map(|c| format!("{}: {}", c.field, c.message))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("InferenceService.{GROUP} \"{name}\" is invalid: {detail}"),
        )
        .for_object(name);
        e.causes = causes;
        e
    }

    /// 422 for invalid request options (e.g. apply without `fieldManager`).
    pub fn invalid_options(kind: &str, field: &str, message: &str) -> Self {
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind}.meta.k8s.io \"\" is invalid: {field}: {message}"),
        );
        e.causes = vec![Cause {
            reason: "FieldValueRequired".into(),
            message: message.into(),
            field: field.into(),
        }];
        e
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 405 for a verb the path does not support.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 415 for a body media type the server does not accept.
    pub fn unsupported_media_type(got: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({got}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
            ),
        )
    }

    /// 406 for an `Accept` header the server cannot satisfy.
    pub fn not_acceptable(what: &str) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/yaml ({what})"
            ),
        )
    }

    /// 410 for a resourceVersion older than the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 504 for a watch or list from a resourceVersion the server has not reached (a client
    /// that outlived a restore of the API server's storage), worded as the API server does.
    pub fn resource_version_too_large(requested: u64, current: u64) -> Self {
        let mut e = Self::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        );
        e.causes = vec![Cause {
            reason: "ResourceVersionTooLarge".into(),
            message: "Too large resource version".into(),
            field: String::new(),
        }];
        e
    }

    /// 403 for a request an admission webhook denied, worded as the API server reports it
    /// (controller-runtime answers a validator's plain error with `403 Forbidden`).
    pub fn webhook_denied(webhook: &str, why: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!("admission webhook \"{webhook}\" denied the request: {why}"),
        )
    }

    /// 429 with a retry hint (injected throttling).
    pub fn too_many_requests(retry_after_seconds: u32) -> Self {
        let mut e = Self::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        );
        e.retry_after_seconds = Some(retry_after_seconds);
        e
    }

    /// 404 for a create in a namespace that does not exist, as the API server words it.
    pub fn namespace_not_found(namespace: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
        );
        e.name = Some(namespace.to_owned());
        e
    }

    /// 403 as RBAC answers it: `verb` on InferenceServices (`name`, when one) in `namespace`.
    pub fn forbidden(verb: &str, name: Option<&str>, namespace: Option<&str>) -> Self {
        let what = name.map_or_else(
            || format!("{PLURAL}.{GROUP}"),
            |n| format!("{PLURAL}.{GROUP} \"{n}\""),
        );
        let scope = namespace.map_or_else(
            || "at the cluster scope".to_owned(),
            |ns| format!("in the namespace \"{ns}\""),
        );
        Self::new(
            403,
            "Forbidden",
            format!(
                "{what} is forbidden: User \"system:serviceaccount:kserve-sim:client\" cannot \
                 {verb} resource \"{PLURAL}\" in API group \"{GROUP}\" {scope}"
            ),
        )
    }

    /// 500 (injected faults and unexpected internal states).
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        );
        e.causes = vec![Cause {
            reason: String::new(),
            message,
            field: String::new(),
        }];
        e
    }

    /// The `metav1.Status` JSON body.
    pub fn to_status(&self) -> Value {
        let mut details = serde_json::Map::new();
        if let Some(name) = &self.name {
            details.insert("name".into(), json!(name));
        }
        if self.with_kind {
            details.insert("group".into(), json!(GROUP));
            details.insert("kind".into(), json!(PLURAL));
        }
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|c| {
                    let mut m = serde_json::Map::new();
                    if !c.reason.is_empty() {
                        m.insert("reason".into(), json!(c.reason));
                    }
                    m.insert("message".into(), json!(c.message));
                    if !c.field.is_empty() {
                        m.insert("field".into(), json!(c.field));
                    }
                    Value::Object(m)
                })
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(s) = self.retry_after_seconds {
            details.insert("retryAfterSeconds".into(), json!(s));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Why the stand-in could not start, or could not write what was asked of it.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The CRD schema file could not be read.
    #[error(
        "cannot read the InferenceService CRD schema {path}: {source} (pass --crd-schema / SimConfig::crd_schema pointing at inferenceservice-v1beta1.schema.json)"
    )]
    SchemaRead {
        /// The path that was tried.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CRD schema file is not JSON.
    #[error("the CRD schema {path} is not valid JSON: {source}")]
    SchemaParse {
        /// The path that was read.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The CRD schema is JSON but not a usable JSON schema.
    #[error("the CRD schema {path} cannot be compiled into a validator: {message}")]
    SchemaCompile {
        /// The path that was read.
        path: PathBuf,
        /// What the schema compiler said.
        message: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (choose another --listen address or port 0)")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server or its thread failed to start.
    #[error("the kserve-sim HTTP server failed to start: {0}")]
    Start(String),
    /// The kubeconfig could not be written.
    #[error("cannot write the kubeconfig to {path}: {source}")]
    WriteKubeconfig {
        /// Where it was to be written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
