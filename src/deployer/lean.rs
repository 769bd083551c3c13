//! InferenceServices as the k8s deployer reads them: `metadata.managedFields` skipped while
//! parsing.
//!
//! Profiling k8s mode (1,000–3,000 deploys against the stand-in) showed about a third of the
//! worker's CPU per deploy going into managed fields: every watch event and every API response
//! carries each field manager's `fieldsV1` tree, which serde built into nested JSON maps, the
//! informer's cache cloned and both dropped again — and the worker never reads them (ownership
//! is the API server's business under server-side apply). [`LeanInferenceService`] is the
//! type the deployer's `Api` parses into: the same object with `managedFields` (and the other
//! metadata the worker does not use) skipped by the parser, converted to the worker's
//! [`InferenceService`] by moving its parts.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::{NamespaceResourceScope, Resource};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::kserve::{InferenceService, InferenceServiceSpec, InferenceServiceStatus};

/// An InferenceService parsed without its managed fields.
#[derive(Clone, Debug, Deserialize)]
pub struct LeanInferenceService {
    /// Metadata without `managedFields`.
    #[serde(deserialize_with = "metadata_without_managed_fields")]
    pub metadata: ObjectMeta,
    /// The spec.
    pub spec: InferenceServiceSpec,
    /// The status, once the controller wrote one.
    #[serde(default)]
    pub status: Option<InferenceServiceStatus>,
}

/// The metadata fields the worker reads; every other key (`managedFields` above all) is
/// skipped by the parser without being built.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsedMetadata {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    finalizers: Option<Vec<String>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

fn metadata_without_managed_fields<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<ObjectMeta, D::Error> {
    let used = UsedMetadata::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: used.name,
        namespace: used.namespace,
        uid: used.uid,
        resource_version: used.resource_version,
        generation: used.generation,
        labels: used.labels,
        annotations: used.annotations,
        finalizers: used.finalizers,
        creation_timestamp: used.creation_timestamp,
        deletion_timestamp: used.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

impl Serialize for LeanInferenceService {
    /// As the worker's [`InferenceService`] serializes: `apiVersion` and `kind` first.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_struct("InferenceService", 5)?;
        object.serialize_field("apiVersion", &InferenceService::api_version(&()))?;
        object.serialize_field("kind", &InferenceService::kind(&()))?;
        object.serialize_field("metadata", &self.metadata)?;
        object.serialize_field("spec", &self.spec)?;
        if let Some(status) = &self.status {
            object.serialize_field("status", status)?;
        }
        object.end()
    }
}

impl Resource for LeanInferenceService {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        InferenceService::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        InferenceService::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        InferenceService::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        InferenceService::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl From<LeanInferenceService> for InferenceService {
    fn from(lean: LeanInferenceService) -> Self {
        InferenceService {
            metadata: lean.metadata,
            spec: lean.spec,
            status: lean.status,
        }
    }
}

impl From<InferenceService> for LeanInferenceService {
    fn from(full: InferenceService) -> Self {
        LeanInferenceService {
            metadata: full.metadata,
            spec: full.spec,
            status: full.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_without_managed_fields_and_serializes_like_the_full_type() {
        let text = json!({
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "name": "isvc-a", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                "generation": 2, "labels": {"a": "b"}, "annotations": {"c": "d"},
                "finalizers": ["f"], "ownerReferences": [],
                "managedFields": [{"manager": "m", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:predictor": {}}}}]
            },
            "spec": {"predictor": {"minReplicas": 1}},
            "status": {"observedGeneration": 2, "url": "http://x"}
        });
        let lean: LeanInferenceService = serde_json::from_value(text.clone()).unwrap();
        assert_eq!(lean.metadata.managed_fields, None);
        let full: InferenceService = serde_json::from_value(text).unwrap();
        assert!(full.metadata.managed_fields.is_some());
        let mut expected = full.clone();
        expected.metadata.managed_fields = None;
        expected.metadata.owner_references = None;
        let converted = InferenceService::from(lean.clone());
        assert_eq!(converted, expected);
        assert_eq!(
            serde_json::to_value(&lean).unwrap(),
            serde_json::to_value(&expected).unwrap()
        );
    }
}
