//! PLACEHOLDER until the mapping branch lands.
use uuid::Uuid;

/// Intent.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Intent {
    pub endpoint_id: Uuid,
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    #[serde(default)]
    pub runtime: Option<String>,
    #[serde(default)]
    pub model_id: Option<Uuid>,
    #[serde(default)]
    pub model_version_id: Option<Uuid>,
    #[serde(default)]
    pub artifact_uri: Option<String>,
    #[serde(default)]
    pub traffic: Option<serde_json::Value>,
    #[serde(default)]
    pub autoscaling: Option<serde_json::Value>,
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    #[serde(default)]
    pub generation: i64,
}

/// Error.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct IntentError {
    pub field: String,
    pub problem: String,
}
