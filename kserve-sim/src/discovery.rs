//! Discovery documents: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/serving.kserve.io`
//! and `/apis/serving.kserve.io/v1beta1`, in the legacy (non-aggregated) format that every
//! client falls back to. The core group is advertised with no resources (clients need it to
//! exist, nothing more); the only resource served is `inferenceservices` with its `status`
//! subresource, short name `isvc`, as the KServe CRD declares.

use crate::apply::API_VERSION;
use crate::error::{GROUP, PLURAL};
use crate::resource::KIND;
use serde_json::{Value, json};

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "gitVersion": concat!("v1.33.0-kserve-sim.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

/// `/api/v1`: only namespaces (read-only; every namespace exists), so that clients see a
/// non-empty core group.
pub fn core_resources() -> Value {
    json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [{
        "name": "namespaces", "singularName": "namespace", "namespaced": false,
        "kind": "Namespace", "verbs": ["get", "list"], "shortNames": ["ns"]
    }]})
}

/// `/api/v1/namespaces/{name}`: every namespace exists and is active.
pub fn namespace(name: &str) -> Value {
    json!({
        "kind": "Namespace", "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

/// `/api/v1/namespaces`.
pub fn namespace_list(names: &[String]) -> Value {
    json!({
        "kind": "NamespaceList", "apiVersion": "v1", "metadata": {},
        "items": names.iter().map(|n| namespace(n)).collect::<Vec<_>>()
    })
}

fn group() -> Value {
    json!({
        "name": GROUP,
        "versions": [{"groupVersion": API_VERSION, "version": "v1beta1"}],
        "preferredVersion": {"groupVersion": API_VERSION, "version": "v1beta1"}
    })
}

/// `/apis`.
pub fn groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group()]})
}

/// `/apis/serving.kserve.io`.
pub fn group_doc() -> Value {
    let mut g = group();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

/// `/apis/serving.kserve.io/v1beta1`.
pub fn resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": API_VERSION,
        "resources": [
            {
                "name": PLURAL,
                "singularName": "inferenceservice",
                "namespaced": true,
                "kind": KIND,
                "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
                "shortNames": ["isvc"],
                "storageVersionHash": "kserve-sim-v1beta1"
            },
            {
                "name": format!("{PLURAL}/status"),
                "singularName": "",
                "namespaced": true,
                "kind": KIND,
                "verbs": ["get", "patch", "update"]
            }
        ]
    })
}

/// Name of the InferenceService schema in the OpenAPI v3 document.
const SCHEMA_NAME: &str = "io.kserve.serving.v1beta1.InferenceService";

/// `/openapi/v3`: the index of per-group-version documents.
pub fn openapi_v3_root() -> Value {
    json!({
        "paths": {
            "apis/serving.kserve.io/v1beta1": {
                "serverRelativeURL": "/openapi/v3/apis/serving.kserve.io/v1beta1?hash=kserve-sim"
            }
        }
    })
}

fn param(name: &str, location: &str, required: bool) -> Value {
    json!({"name": name, "in": location, "required": required, "schema": {"type": "string"}})
}

/// `/openapi/v3/apis/serving.kserve.io/v1beta1`: the operations (kubectl looks for the
/// `fieldValidation` parameter of the PATCH operation to know the server validates fields)
/// and the CRD schema.
pub fn openapi_v3_group(schema: &Value) -> Value {
    let gvk = json!({"group": GROUP, "version": "v1beta1", "kind": KIND});
    let object_ref = json!({"$ref": format!("#/components/schemas/{SCHEMA_NAME}")});
    let ok = |desc: &str| json!({"200": {"description": desc, "content": {"application/json": {"schema": object_ref}}}});
    let write_params = || {
        json!([
            param("dryRun", "query", false),
            param("fieldManager", "query", false),
            param("fieldValidation", "query", false),
        ])
    };
    let op = |action: &str, id: &str, params: Value| {
        json!({
            "operationId": id,
            "parameters": params,
            "responses": ok("OK"),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        })
    };
    let mut patch_params = write_params();
    if let Some(a) = patch_params.as_array_mut() {
        a.push(param("force", "query", false));
    }
    let mut patch = op(
        "patch",
        "patchServingKserveIoV1beta1NamespacedInferenceService",
        patch_params,
    );
    patch["requestBody"] = json!({"content": {
        "application/apply-patch+yaml": {"schema": {"type": "object"}},
        "application/json-patch+json": {"schema": {"type": "object"}},
        "application/merge-patch+json": {"schema": {"type": "object"}}
    }});
    let mut schema = schema.clone();
    schema["x-kubernetes-group-version-kind"] = json!([gvk]);
    let item_path = format!("/apis/{API_VERSION}/namespaces/{{namespace}}/{PLURAL}/{{name}}");
    let collection_path = format!("/apis/{API_VERSION}/namespaces/{{namespace}}/{PLURAL}");
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": {
            item_path: {
                "parameters": [param("name", "path", true), param("namespace", "path", true)],
                "get": op("get", "readServingKserveIoV1beta1NamespacedInferenceService", json!([])),
                "put": op("put", "replaceServingKserveIoV1beta1NamespacedInferenceService", write_params()),
                "patch": patch,
                "delete": op("delete", "deleteServingKserveIoV1beta1NamespacedInferenceService", json!([param("dryRun", "query", false)])),
            },
            collection_path: {
                "parameters": [param("namespace", "path", true)],
                "get": op("list", "listServingKserveIoV1beta1NamespacedInferenceService", json!([])),
                "post": op("post", "createServingKserveIoV1beta1NamespacedInferenceService", write_params()),
            }
        },
        "components": {"schemas": {SCHEMA_NAME: schema}}
    })
}
