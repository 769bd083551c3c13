//! The kubeconfig that points `kubectl` and the `kube` crate at a stand-in instance: one
//! cluster (`server: http://127.0.0.1:<port>`), one context with the chosen default
//! namespace, and a user without credentials (the stand-in does not authenticate).

use crate::error::SimError;
use serde_json::json;
use std::path::Path;

/// Name of the cluster, context and user entries.
pub const CONTEXT: &str = "kserve-sim";

/// Renders the kubeconfig YAML.
pub fn render(server: &str, namespace: &str) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": server}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace}}],
        "current-context": CONTEXT,
        "users": [{"name": CONTEXT, "user": {}}],
        "preferences": {}
    });
    // Serializing a JSON value to YAML cannot fail; fall back to JSON (valid YAML) regardless.
    serde_yaml::to_string(&doc).unwrap_or_else(|_| doc.to_string())
}

/// Writes the kubeconfig to `path`.
pub fn write(path: &Path, server: &str, namespace: &str) -> Result<(), SimError> {
    std::fs::write(path, render(server, namespace)).map_err(|source| SimError::WriteKubeconfig {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_names_server_and_namespace() {
        let y: serde_json::Value =
            serde_yaml::from_str(&render("http://127.0.0.1:1", "ns1")).unwrap_or_default();
        assert_eq!(y["clusters"][0]["cluster"]["server"], "http://127.0.0.1:1");
        assert_eq!(y["contexts"][0]["context"]["namespace"], "ns1");
        assert_eq!(y["current-context"], CONTEXT);
    }
}
