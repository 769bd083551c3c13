//! Runs the KServe stand-in from the command line, for trying it with `kubectl`:
//!
//! ```text
//! cargo run -p kserve-sim --example serve -- --listen 127.0.0.1:0 --kubeconfig-out /tmp/kserve-sim.kubeconfig
//! kubectl --kubeconfig /tmp/kserve-sim.kubeconfig get isvc --watch
//! ```
//!
//! The main `deploy-worker` binary offers the same as `deploy-worker kserve-sim`.

use clap::Parser;

/// KServe stand-in (Kubernetes API for InferenceServices + simulated controller).
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    sim: kserve_sim::SimArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kserve_sim::run(Cli::parse().sim).await
}
