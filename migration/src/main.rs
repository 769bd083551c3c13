//! The migration crate's own CLI (`cargo run -p migration -- up`), reading `DATABASE_URL`.
//! Every command runs on one connection holding the migration advisory lock, so it never
//! races the worker or another `migrate`.

use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    cli::run_cli_with_connection(migration::Migrator, migration::connect_locked).await;
}
