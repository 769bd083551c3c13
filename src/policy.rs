//! Tenant policy: what an endpoint may ask for when tenants share one namespace and one worker.
//!
//! The intent's own rules (`crate::intent`) check syntax; these check permission, with
//! settings the operator chooses (see [`TenantPolicy`]):
//!
//! - **Storage URI schemes** (`TENANT_STORAGE_URI_SCHEMES`, default `s3,gs,https,hf`). KServe's
//!   storage initializer downloads the model with the pod's credentials, so a `pvc://` URI
//!   could mount another tenant's volume and `file://` (or a bare path) could read the node's
//!   or the image's files. The default allows the object stores and Hugging Face: `s3://`,
//!   `gs://`, `https://` (Azure Blob Storage is reached through its `https://` URLs — KServe has
//!   no `azure://` scheme) and `hf://`. Plain `http://` is not allowed by default.
//! - **Service accounts** (`TENANT_SERVICE_ACCOUNTS`, default `none`). In a shared namespace a
//!   tenant naming another tenant's service account would run with its storage credentials, so
//!   no `runtime_config.serviceAccountName` is accepted until the operator sets a rule: one or
//!   more comma-separated name patterns where `{tenant_id}` and `{project_id}` stand for the
//!   endpoint's ids and `*` for any run of characters, e.g. `tenant-{tenant_id}-*`. Tenant ids
//!   are fixed-length UUIDs, so such a pattern never matches another tenant's names.
//!
//! A violation is an [`IntentError::Policy`]: the endpoint ends `ERROR` with a reason naming
//! the rule and the setting that changes it. Both renderers of `crate::kserve` apply the policy,
//! so `deploy-worker render` refuses what the worker refuses.

use std::fmt;
use std::str::FromStr;

use crate::intent::{Intent, IntentError, ServingSpec};

/// Environment variable of the allowed storage URI schemes.
pub const STORAGE_SCHEMES_VAR: &str = "TENANT_STORAGE_URI_SCHEMES";
/// Environment variable of the service-account rule.
pub const SERVICE_ACCOUNTS_VAR: &str = "TENANT_SERVICE_ACCOUNTS";

/// The policy an intent must satisfy, besides its own rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantPolicy {
    /// Allowed `storageUri` schemes.
    pub storage_schemes: StorageSchemes,
    /// Which `serviceAccountName` values a tenant may set.
    pub service_accounts: ServiceAccountRule,
}

/// A policy setting that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

impl TenantPolicy {
    /// Checks the validated `spec` of `intent` against the policy.
    pub fn check(&self, intent: &Intent, spec: &ServingSpec<'_>) -> Result<(), IntentError> {
        self.storage_schemes.check(spec.storage_uri)?;
        if let Some(name) = spec.service_account_name {
            self.service_accounts.check(name, intent)?;
        }
        Ok(())
    }
}

/// Allowed storage URI schemes, lowercase (schemes compare case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSchemes(Vec<String>);

impl Default for StorageSchemes {
    /// The object stores and Hugging Face: `s3`, `gs`, `https`, `hf`.
    fn default() -> Self {
        Self(["s3", "gs", "https", "hf"].map(String::from).to_vec())
    }
}

impl StorageSchemes {
    /// Whether `uri`'s scheme is allowed.
    pub fn allows(&self, uri: &str) -> bool {
        scheme(uri).is_some_and(|s| self.0.iter().any(|a| a.eq_ignore_ascii_case(s)))
    }

    fn check(&self, uri: &str) -> Result<(), IntentError> {
        if self.allows(uri) {
            return Ok(());
        }
        let rule = match scheme(uri) {
            Some(s) => format!(
                "storage URI scheme \"{}\" is not one of the allowed schemes {self}",
                s.to_ascii_lowercase()
            ),
            None => format!("a storage URI needs a scheme, one of {self}"),
        };
        Err(IntentError::Policy {
            field: "artifact_uri".into(),
            rule,
            remedy: format!(
                "register the model version's artifact in an allowed store, or have the operator allow the scheme with {STORAGE_SCHEMES_VAR} (--tenant-storage-uri-schemes)"
            ),
        })
    }
}

/// The scheme of `scheme://...` when it has the RFC 3986 syntax.
fn scheme(uri: &str) -> Option<&str> {
    let (s, _) = uri.split_once("://")?;
    let b = s.as_bytes();
    let ok = b.first().is_some_and(u8::is_ascii_alphabetic)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
    ok.then_some(s)
}

impl FromStr for StorageSchemes {
    type Err = PolicyError;

    /// Comma-separated schemes, e.g. `s3,gs,https,hf` (`://` after a scheme is accepted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut schemes = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let name = item.strip_suffix("://").unwrap_or(item);
            if scheme(&format!("{name}://")).is_none() {
                return Err(PolicyError(format!(
                    "{STORAGE_SCHEMES_VAR}: {item:?} is not a URI scheme; list schemes such as s3,gs,https,hf"
                )));
            }
            let name = name.to_ascii_lowercase();
            if !schemes.contains(&name) {
                schemes.push(name);
            }
        }
        if schemes.is_empty() {
            return Err(PolicyError(format!(
                "{STORAGE_SCHEMES_VAR} is empty: no endpoint could deploy; list the allowed schemes, e.g. s3,gs,https,hf"
            )));
        }
        Ok(Self(schemes))
    }
}

impl fmt::Display for StorageSchemes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Placeholder for the endpoint's tenant id in a service-account pattern.
pub const TENANT_PLACEHOLDER: &str = "{tenant_id}";
/// Placeholder for the endpoint's project id in a service-account pattern.
pub const PROJECT_PLACEHOLDER: &str = "{project_id}";

/// Which `runtime_config.serviceAccountName` values are allowed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ServiceAccountRule {
    /// None: the predictor runs under the namespace's default service account (the default).
    #[default]
    Forbidden,
    /// Names matching one of these patterns (`{tenant_id}`, `{project_id}`, `*`).
    Patterns(Vec<String>),
}

impl ServiceAccountRule {
    /// Whether `name` is allowed for `intent`'s tenant and project.
    pub fn allows(&self, name: &str, intent: &Intent) -> bool {
        match self {
            ServiceAccountRule::Forbidden => false,
            ServiceAccountRule::Patterns(patterns) => patterns.iter().any(|p| {
                let expanded = p
                    .replace(TENANT_PLACEHOLDER, &intent.tenant_id.to_string())
                    .replace(PROJECT_PLACEHOLDER, &intent.project_id.to_string());
                glob_match(&expanded, name)
            }),
        }
    }

    fn check(&self, name: &str, intent: &Intent) -> Result<(), IntentError> {
        if self.allows(name, intent) {
            return Ok(());
        }
        let rule = match self {
            ServiceAccountRule::Forbidden => format!(
                "serviceAccountName {name:?}: no service account may be named until the operator sets a rule"
            ),
            ServiceAccountRule::Patterns(_) => format!(
                "serviceAccountName {name:?} matches none of the allowed patterns {self} for tenant {}",
                intent.tenant_id
            ),
        };
        Err(IntentError::Policy {
            field: "runtime_config.serviceAccountName".into(),
            rule,
            remedy: format!(
                "remove serviceAccountName or use an allowed name; the operator sets the rule with {SERVICE_ACCOUNTS_VAR} (--tenant-service-accounts), e.g. \"tenant-{TENANT_PLACEHOLDER}-*\""
            ),
        })
    }
}

/// `*` matches any run of characters (possibly empty); everything else matches itself.
/// Linear backtracking over the last `*`: no input makes it slow.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl FromStr for ServiceAccountRule {
    type Err = PolicyError;

    /// `none` (or empty), or comma-separated patterns of lowercase letters, digits, `-`, `.`,
    /// `*` and the placeholders `{tenant_id}` and `{project_id}`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(ServiceAccountRule::Forbidden);
        }
        let mut patterns = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bare = p
                .replace(TENANT_PLACEHOLDER, "")
                .replace(PROJECT_PLACEHOLDER, "");
            if let Some(c) = bare
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-.*".contains(*c)))
            {
                return Err(PolicyError(format!(
                    "{SERVICE_ACCOUNTS_VAR}: pattern {p:?} has {c:?}; use lowercase letters, digits, '-', '.', '*' and the placeholders {TENANT_PLACEHOLDER} and {PROJECT_PLACEHOLDER}, or \"none\""
                )));
            }
            patterns.push(p.to_owned());
        }
        Ok(ServiceAccountRule::Patterns(patterns))
    }
}

impl fmt::Display for ServiceAccountRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceAccountRule::Forbidden => f.write_str("none"),
            ServiceAccountRule::Patterns(p) => f.write_str(&p.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn intent(uri: &str, sa: Option<&str>) -> Intent {
        let mut rc = serde_json::Map::new();
        if let Some(sa) = sa {
            rc.insert("serviceAccountName".into(), sa.into());
        }
        Intent {
            endpoint_id: Uuid::new_v4(),
            tenant_id: Uuid::parse_str("0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e").expect("uuid"),
            project_id: Uuid::parse_str("1c2d3e4f-5a6b-4c7d-9e8f-0a1b2c3d4e5f").expect("uuid"),
            name: "e".into(),
            runtime: None,
            model_id: None,
            model_version_id: Some(Uuid::new_v4()),
            artifact_uri: Some(uri.into()),
            traffic: None,
            autoscaling: None,
            runtime_config: Some(rc.into()),
            generation: 1,
        }
    }

    fn check(policy: &TenantPolicy, intent: &Intent) -> Result<(), String> {
        let spec = intent.validate().map_err(|e| e.to_string())?;
        policy.check(intent, &spec).map_err(|e| e.to_string())
    }

    #[test]
    fn default_schemes_allow_object_stores_and_hugging_face_only() {
        let policy = TenantPolicy::default();
        for ok in [
            "s3://b/m",
            "gs://b/m",
            "https://acct.blob.core.windows.net/c/m",
            "hf://org/model",
            "S3://b/m",
        ] {
            assert_eq!(check(&policy, &intent(ok, None)), Ok(()), "{ok}");
        }
        for bad in [
            "pvc://other-tenant-volume/model",
            "file:///etc/passwd",
            "http://plain/model",
            "azure://c/m",
            "/mnt/models",
            "oci://registry/model:1",
        ] {
            let err = check(&policy, &intent(bad, None)).expect_err(bad);
            assert!(
                err.starts_with("artifact_uri: ") && err.contains("tenant policy"),
                "{err}"
            );
            assert!(err.contains("TENANT_STORAGE_URI_SCHEMES"), "{err}");
            assert!(err.contains("s3,gs,https,hf"), "{err}");
        }
        let err = check(&policy, &intent("pvc://v/m", None)).expect_err("pvc");
        assert!(err.contains("scheme \"pvc\""), "{err}");
    }

    #[test]
    fn schemes_are_configurable() {
        let schemes: StorageSchemes = "s3, PVC://".parse().expect("parses");
        assert_eq!(schemes.to_string(), "s3,pvc");
        assert!(schemes.allows("pvc://vol/m"));
        assert!(!schemes.allows("gs://b/m"));
        for bad in ["", " , ", "s 3", "3s", "s3/"] {
            let err = bad.parse::<StorageSchemes>().expect_err(bad);
            assert!(err.to_string().contains(STORAGE_SCHEMES_VAR), "{err}");
        }
    }

    #[test]
    fn no_service_account_is_allowed_by_default() {
        let policy = TenantPolicy::default();
        assert_eq!(check(&policy, &intent("s3://b/m", None)), Ok(()));
        let err = check(&policy, &intent("s3://b/m", Some("default"))).expect_err("refused");
        assert!(
            err.starts_with("runtime_config.serviceAccountName: ")
                && err.contains("no service account may be named")
                && err.contains("TENANT_SERVICE_ACCOUNTS"),
            "{err}"
        );
    }

    #[test]
    fn service_account_patterns_bind_names_to_the_tenant() {
        let policy = TenantPolicy {
            service_accounts: "tenant-{tenant_id}-*, shared-{project_id}"
                .parse()
                .expect("rule"),
            ..TenantPolicy::default()
        };
        let own = "tenant-0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e-reader";
        assert_eq!(check(&policy, &intent("s3://b/m", Some(own))), Ok(()));
        let project = "shared-1c2d3e4f-5a6b-4c7d-9e8f-0a1b2c3d4e5f";
        assert_eq!(check(&policy, &intent("s3://b/m", Some(project))), Ok(()));
        let other = "tenant-99999999-4f5a-4b6c-8d7e-9f0a1b2c3d4e-reader";
        let err = check(&policy, &intent("s3://b/m", Some(other))).expect_err("other tenant");
        assert!(
            err.contains(
                "matches none of the allowed patterns tenant-{tenant_id}-*,shared-{project_id}"
            ) && err.contains("0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e")
                && err.contains("TENANT_SERVICE_ACCOUNTS"),
            "{err}"
        );
        for bad in ["Tenant-{tenant_id}", "sa_{tenant_id}", "{tenant}"] {
            let err = bad.parse::<ServiceAccountRule>().expect_err(bad);
            assert!(err.to_string().contains(SERVICE_ACCOUNTS_VAR), "{err}");
        }
        assert_eq!(
            "none".parse::<ServiceAccountRule>(),
            Ok(ServiceAccountRule::Forbidden)
        );
    }

    #[test]
    fn glob_matching() {
        for (p, t) in [
            ("a*", "a"),
            ("a*c", "abbc"),
            ("*", ""),
            ("a**b", "ab"),
            ("x", "x"),
        ] {
            assert!(glob_match(p, t), "{p} {t}");
        }
        for (p, t) in [("a*c", "abcd"), ("", "a"), ("ab", "a"), ("a*b*c", "acb")] {
            assert!(!glob_match(p, t), "{p} {t}");
        }
    }
}
