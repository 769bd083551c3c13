//! The `deploy-worker` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

/// mimalloc rather than the system allocator: the worker allocates many small, short-lived
/// objects per event across threads, and mimalloc both spends less CPU on them and hands memory
/// back to the operating system once a burst of in-flight deploys is over, where glibc keeps
/// the peak resident (see the README's performance figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc 2's `mi_option_e`; the crate names no constant
/// for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long memory freed by the worker stays mapped before mimalloc hands it back, in ms.
///
/// mimalloc's default, 10 ms, is shorter than the gap between two group commits under load:
/// the pages a batch of passes freed were handed back and faulted in again (zeroed by the
/// kernel) by the next batch — two thirds of the worker's page faults in the throughput
/// benchmark, about a tenth of its CPU. A tenth of a second keeps them for reuse while the
/// worker is busy; once idle it hands everything back at once (`mi_collect`) as before.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

fn main() -> ExitCode {
    // An operator's own setting wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: not thread safe, hence first thing in `main`, before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    deploy_worker::cli::main()
}
