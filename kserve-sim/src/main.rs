//! The `kserve-sim` binary: the KServe stand-in from the command line, for trying the worker's
//! k8s mode (and `kubectl`) without a cluster:
//!
//! ```text
//! cargo build --release --locked --workspace --bin kserve-sim
//! target/release/kserve-sim --listen 127.0.0.1:6443 --kubeconfig-out kserve-sim.kubeconfig
//! kubectl --kubeconfig kserve-sim.kubeconfig get isvc --watch
//! ```
//!
//! It is a tool of the repository, not part of the worker: the production `deploy-worker`
//! binary neither contains it nor its schema validator.

use std::process::ExitCode;

use clap::Parser;

/// KServe stand-in: a Kubernetes API server for InferenceServices with a simulated KServe
/// controller. Serves until Ctrl-C or SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "kserve-sim", version)]
struct Cli {
    #[command(flatten)]
    sim: kserve_sim::SimArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kserve_sim::run(cli.sim)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
