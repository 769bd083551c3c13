//! PLACEHOLDER until the mapping branch lands.
use crate::intent::{Intent, IntentError};
use uuid::Uuid;

/// name
pub fn isvc_name(prefix: &str, endpoint_id: Uuid) -> String {
    let (hi, lo) = endpoint_id.as_u64_pair();
    format!("{prefix}-{:016x}", hi ^ lo)
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeNames {
    Current,
    Legacy,
}
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub namespace: String,
    pub name_prefix: String,
    pub prometheus_scraping: bool,
    pub mode_names: ModeNames,
}
#[derive(Debug, Clone, serde::Serialize)]
pub struct InferenceService {
    pub name: String,
}
pub fn render(intent: &Intent, opts: &RenderOptions) -> Result<InferenceService, IntentError> {
    if intent.artifact_uri.is_none() {
        return Err(IntentError {
            field: "model_version_id".into(),
            problem: "model version has no artifact_uri".into(),
        });
    }
    Ok(InferenceService {
        name: isvc_name(&opts.name_prefix, intent.endpoint_id),
    })
}
pub fn render_json(intent: &Intent, opts: &RenderOptions) -> Result<Vec<u8>, IntentError> {
    Ok(serde_json::to_vec(&render(intent, opts)?).unwrap_or_default())
}
