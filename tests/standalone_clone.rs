//! The repository stands alone: a fresh clone in a directory with nothing beside it (no
//! `../shared`, nothing the developers' machines happen to have next to their checkout) builds
//! and passes the Kubernetes tests, whose stand-in validates every object against the KServe
//! schema the repository embeds.
//!
//! The clone reuses this build's compiled dependencies (hard links into its own target
//! directory, or a copy where links cannot be made), so only the workspace's own crates are
//! compiled again. It clones the committed `HEAD`: uncommitted edits are not part of a clone.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>` of the running build, found from this test binary's own path
/// (`target/<profile>/deps/standalone_clone-…`).
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary sits in target/<profile>/deps")
        .to_path_buf()
}

fn run(command: &mut Command) {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(status.success(), "{shown} failed: {status}");
}

#[test]
fn a_clone_with_nothing_beside_it_passes_the_kubernetes_tests() {
    let repo = env!("CARGO_MANIFEST_DIR");
    if !Path::new(repo).join(".git").exists() {
        panic!("{repo} is not a git checkout: this test clones it");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let clone = dir.path().join("deploy-worker");
    run(Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks", repo])
        .arg(&clone));
    assert!(
        !dir.path().join("shared").exists(),
        "nothing may stand beside the clone"
    );

    let profile_dir = clone
        .join("target")
        .join(build_dir().file_name().expect("profile directory name"));
    std::fs::create_dir_all(&profile_dir).expect("clone target dir");
    for part in ["deps", "build", ".fingerprint"] {
        let from = build_dir().join(part);
        let linked = Command::new("cp")
            .arg("-al")
            .arg(&from)
            .arg(&profile_dir)
            .status()
            .is_ok_and(|s| s.success());
        if !linked {
            run(Command::new("cp").arg("-a").arg(&from).arg(&profile_dir));
        }
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .current_dir(&clone)
        .env("CARGO_TARGET_DIR", clone.join("target"))
        .args([
            "test",
            "--locked",
            "--offline",
            "--workspace",
            "--test",
            "kubernetes",
            "--test",
            "crud",
        ])
        .output()
        .expect("run cargo test in the clone");
    if !output.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let tail: Vec<&str> = text.lines().rev().take(120).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "the clone's k8s tests failed ({}):\n{}",
            output.status,
            tail.join("\n")
        );
    }
}
