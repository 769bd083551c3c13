//! The `deploy-worker` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

/// mimalloc rather than the system allocator: the worker allocates many small, short-lived
/// objects per event across threads, and mimalloc both spends less CPU on them and hands memory
/// back to the operating system once a burst of in-flight deploys is over, where glibc keeps
/// the peak resident (see the README's performance figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    deploy_worker::cli::main()
}
