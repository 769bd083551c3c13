//! The least-privilege database role: the grants in `deploy/sql/worker-role.sql`, applied by
//! `deploy-worker migrate --grant-to ROLE`.
//!
//! The file is the one source: it is written for `psql -v worker_role=NAME -f …` (the role
//! appears as the psql variable `:"worker_role"`), and [`statements`] substitutes the same
//! variable with the quoted role name, so both ways grant exactly the same thing.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};

/// The grants file, as shipped in `deploy/sql/worker-role.sql`.
pub const WORKER_ROLE_SQL: &str = include_str!("../deploy/sql/worker-role.sql");

/// The psql variable standing for the role in [`WORKER_ROLE_SQL`].
const ROLE_VARIABLE: &str = ":\"worker_role\"";

/// Why the grants could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The role name cannot be a Postgres role.
    #[error("invalid role name {0:?}: give a name of 1 to 63 bytes without NUL")]
    InvalidRole(String),
    /// Postgres refused a grant.
    #[error(
        "granting to {role} failed at `{statement}`: {error}; the role must exist and the \
         migrations must have run (as the tables' owner)"
    )]
    Database {
        /// The role.
        role: String,
        /// The statement that failed.
        statement: String,
        /// What Postgres said.
        error: String,
    },
}

/// The statements of [`WORKER_ROLE_SQL`] for `role` (comments dropped, the role quoted as an
/// identifier).
pub fn statements(role: &str) -> Result<Vec<String>, GrantError> {
    if role.is_empty() || role.len() > 63 || role.contains('\0') {
        return Err(GrantError::InvalidRole(role.to_owned()));
    }
    let quoted = format!("\"{}\"", role.replace('"', "\"\""));
    let code: String = WORKER_ROLE_SQL
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(code
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace(ROLE_VARIABLE, &quoted))
        .collect())
}

/// Applies the grants to `role` in one transaction (all or nothing).
pub async fn grant(db: &DatabaseConnection, role: &str) -> Result<(), GrantError> {
    let failed = |statement: &str, err: sea_orm::DbErr| GrantError::Database {
        role: role.to_owned(),
        statement: statement.to_owned(),
        error: err.to_string(),
    };
    let txn = db.begin().await.map_err(|err| failed("BEGIN", err))?;
    for statement in statements(role)? {
        txn.execute_raw(Statement::from_string(
            DbBackend::Postgres,
            statement.clone(),
        ))
        .await
        .map_err(|err| failed(&statement, err))?;
    }
    txn.commit().await.map_err(|err| failed("COMMIT", err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_is_a_grant_to_the_quoted_role() {
        let granted = statements("deploy_worker").expect("valid");
        assert!(granted.len() >= 6, "{granted:?}");
        for s in &granted {
            assert!(s.starts_with("GRANT "), "{s}");
            assert!(s.ends_with("TO \"deploy_worker\""), "{s}");
        }
    }

    #[test]
    fn a_role_name_cannot_break_out_of_its_quotes() {
        let quoted = statements("x\"; DROP TABLE endpoints; --").expect("quoted");
        assert!(
            quoted
                .iter()
                .all(|s| s.ends_with("TO \"x\"\"; DROP TABLE endpoints; --\"")),
            "{quoted:?}"
        );
        assert!(statements("").is_err());
        assert!(statements(&"r".repeat(64)).is_err());
    }
}
