//! The `demo` binary: `scripts/demo` runs it (see [`devkit::demo`]).

use std::process::ExitCode;

/// mimalloc, as in the worker binary: the demo reports the worker's throughput and latency,
/// which should be measured with the allocator production uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    devkit::demo::main()
}
