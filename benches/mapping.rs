//! Mapping throughput: intent → manifest bytes (`render_json`) against serializing the same
//! finished `InferenceService` with `serde_json::to_vec` (the floor), on one core.
//!
//! Run with `cargo bench --bench mapping`. Besides criterion's report, the bench prints the
//! ratio measured in the same run: both loops alternate over many rounds and the median round
//! of each is compared, so machine noise hits both alike. It reports on-CPU time (the thread's
//! scheduler statistics on Linux) next to wall time: on a shared machine wall time also counts
//! the time other processes hold the core.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deploy_worker::intent::Intent;
use deploy_worker::kserve::{InferenceService, RenderOptions, render, render_json};

/// The realistic intent: Triton on a GPU with resources, batcher, replicas and a timeout.
const INTENT: &[u8] = include_bytes!("../examples/intents/triton-gpu-batcher.json");

fn fixture() -> (Intent, RenderOptions, InferenceService) {
    let intent = Intent::from_json(INTENT).expect("the example intent parses");
    let opts = RenderOptions::default();
    let isvc = render(&intent, &opts).expect("the example intent renders");
    (intent, opts, isvc)
}

fn mapping(c: &mut Criterion) {
    let (intent, opts, isvc) = fixture();
    let mut group = c.benchmark_group("mapping");
    group.throughput(Throughput::Elements(1));
    group.bench_function("render_json (intent -> manifest bytes)", |b| {
        b.iter(|| render_json(black_box(&intent), black_box(&opts)))
    });
    group.bench_function("serde_json::to_vec (floor)", |b| {
        b.iter(|| serde_json::to_vec(black_box(&isvc)))
    });
    group.bench_function("validate (Intent::validate only)", |b| {
        b.iter(|| black_box(&intent).validate().map(|s| s.generation))
    });
    group.bench_function("render (typed InferenceService)", |b| {
        b.iter(|| render(black_box(&intent), black_box(&opts)))
    });
    group.finish();
}

/// This thread's on-CPU time in nanoseconds (Linux `schedstat`), falling back to wall time.
/// The machine is shared: on-CPU time does not grow while another process holds the core,
/// which wall time does.
fn cpu_ns(wall: Instant) -> u128 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| wall.elapsed().as_nanos())
}

/// Runs each of `fs` `n` times, appending (cpu ns, wall ns) per call to its round lists.
fn round(rounds: &mut [Vec<(f64, f64)>; 2], n: u32, fs: [&dyn Fn(); 2], epoch: Instant) {
    for (times, f) in rounds.iter_mut().zip(fs) {
        let wall = Instant::now();
        let cpu = cpu_ns(epoch);
        for _ in 0..n {
            f();
        }
        let cpu = (cpu_ns(epoch) - cpu) as f64 / f64::from(n);
        let wall = wall.elapsed().as_nanos() as f64 / f64::from(n);
        times.push((cpu, wall));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ratio_report() {
    let (intent, opts, isvc) = fixture();
    let render = || {
        black_box(render_json(black_box(&intent), black_box(&opts)).ok());
    };
    let floor = || {
        black_box(serde_json::to_vec(black_box(&isvc)).ok());
    };
    let epoch = Instant::now();
    let mut rounds = [Vec::new(), Vec::new()];
    round(&mut rounds, 20_000, [&render, &floor], epoch); // warm-up, discarded
    rounds = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline || rounds[0].len() < 15 {
        round(&mut rounds, 50_000, [&render, &floor], epoch);
    }
    // on-CPU time may be accounted in scheduler ticks (4 ms here), far coarser than a round:
    // averaging over all rounds cancels that out; wall time is exact, and its median drops
    // rounds in which other processes took the core
    let cpu = |i: usize| rounds[i].iter().map(|t| t.0).sum::<f64>() / rounds[i].len() as f64;
    let wall = |i: usize| median(rounds[i].iter().map(|t| t.1).collect());
    let (r_cpu, f_cpu, r_wall, f_wall) = (cpu(0), cpu(1), wall(0), wall(1));
    let bytes = render_json(&intent, &opts).map_or(0, |b| b.len());
    println!();
    println!(
        "mapping ratio (same run, {} alternating rounds of 50,000 calls each, one core, {bytes}-byte manifest):",
        rounds[0].len()
    );
    println!("                       on-CPU time (mean)                wall time (median)");
    println!(
        "  render_json          {r_cpu:7.1} ns  {:>10.0} manifests/s   {r_wall:7.1} ns  {:>10.0} manifests/s",
        1e9 / r_cpu,
        1e9 / r_wall
    );
    println!(
        "  serde_json::to_vec   {f_cpu:7.1} ns  {:>10.0} manifests/s   {f_wall:7.1} ns  {:>10.0} manifests/s  (floor)",
        1e9 / f_cpu,
        1e9 / f_wall
    );
    println!(
        "  ratio render_json / floor: {:.2}x on-CPU, {:.2}x wall",
        r_cpu / f_cpu,
        r_wall / f_wall
    );
}

fn ratio(_: &mut Criterion) {
    // `cargo test --benches` runs benches once as smoke tests, and `--profile-time` is for
    // profilers: the timing report is for `cargo bench` only
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--profile-time") {
        ratio_report();
    }
}

criterion_group!(benches, mapping, ratio);
criterion_main!(benches);
