//! Renders an endpoint intent into its KServe InferenceService through the library API: the
//! same pure mapping the worker applies (validate, then build the typed manifest), printed as
//! YAML, plus the exact JSON bytes of the fast path.
//!
//! ```sh
//! cargo run --example render_intent                                   # the Triton example
//! cargo run --example render_intent -- examples/intents/canary-knative.json
//! ```

use std::path::PathBuf;

use deploy_worker::intent::Intent;
use deploy_worker::kserve::{self, RenderOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os().nth(1).map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("examples/intents/triton-gpu-batcher.json")
        },
        PathBuf::from,
    );
    let bytes = std::fs::read(&path).map_err(|err| format!("{}: {err}", path.display()))?;
    // An intent file holds the endpoint row's fields plus the model version's artifact_uri.
    let intent = Intent::from_json(&bytes).map_err(|err| format!("{}: {err}", path.display()))?;

    // Namespace `mlops-serving`, prefix `isvc`, Prometheus scraping on: the worker's defaults.
    let options = RenderOptions::default();
    let manifest = kserve::render(&intent, &options)
        .map_err(|err| format!("invalid intent (the worker would end it ERROR): {err}"))?;
    println!("{}", kserve::to_yaml(&manifest)?.trim_end());

    let json = kserve::render_json(&intent, &options)?;
    eprintln!(
        "{}: {} bytes of JSON, InferenceService {}",
        path.display(),
        json.len(),
        kserve::isvc_name(&options.name_prefix, intent.endpoint_id)
    );
    Ok(())
}
