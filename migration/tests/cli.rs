//! The migration crate's own CLI applies the same migrations, reports them applied, and
//! several of it started at once on a fresh database all succeed (the advisory lock).

use std::process::Command;

use devkit::sandbox::LocalPostgres;

fn migration(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_migration"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("run the migration CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn up_applies_every_migration_and_status_lists_them_applied() {
    let pg = LocalPostgres::start().expect("start postgres");
    let (ok, text) = migration(&pg.url(), &["up"]);
    assert!(ok, "{text}");
    let (ok, status) = migration(&pg.url(), &["status"]);
    assert!(ok, "{status}");
    for name in [
        "m20260101_000001_platform_tables",
        "m20260101_000002_worker_columns",
        "m20261201_000201_retention_indexes",
    ] {
        let line = status
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{status}"));
        assert!(line.contains("Applied"), "{line}");
    }
    // Running it again is a no-op.
    let (ok, text) = migration(&pg.url(), &["up"]);
    assert!(ok, "{text}");
}

#[test]
fn concurrent_up_commands_on_a_fresh_database_all_succeed() {
    let pg = LocalPostgres::start().expect("start postgres");
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_migration"))
                .arg("up")
                .env("DATABASE_URL", pg.url())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn the migration CLI")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "a concurrent `up` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ok, status) = migration(&pg.url(), &["status"]);
    assert!(ok, "{status}");
    assert_eq!(
        status.lines().filter(|l| l.contains("Applied")).count(),
        <migration::Migrator as sea_orm_migration::MigratorTrait>::migrations().len(),
        "{status}"
    );
}
