//! Render options: the worker's settings that shape every manifest (namespace, name prefix,
//! default resources, deployment-mode names, the tenant policy), checked once at start-up.

use std::fmt;

use crate::intent::{DefaultResources, DeploymentMode};
use crate::policy::TenantPolicy;

use super::*;

/// Which names the deployment mode annotation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModeNames {
    /// `Knative` / `Standard` (current KServe).
    #[default]
    Current,
    /// `Serverless` / `RawDeployment`, for KServe releases before the rename.
    Legacy,
}

impl ModeNames {
    /// The annotation value for `mode`.
    pub fn name(self, mode: DeploymentMode) -> &'static str {
        match (self, mode) {
            (ModeNames::Current, DeploymentMode::Knative) => "Knative",
            (ModeNames::Current, DeploymentMode::Standard) => "Standard",
            (ModeNames::Legacy, DeploymentMode::Knative) => "Serverless",
            (ModeNames::Legacy, DeploymentMode::Standard) => "RawDeployment",
        }
    }
}

impl std::str::FromStr for ModeNames {
    type Err = OptionsError;

    /// `current` or `legacy` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("current") {
            Ok(ModeNames::Current)
        } else if s.eq_ignore_ascii_case("legacy") {
            Ok(ModeNames::Legacy)
        } else {
            Err(OptionsError::ModeNames { value: s.into() })
        }
    }
}

impl fmt::Display for ModeNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModeNames::Current => "current",
            ModeNames::Legacy => "legacy",
        })
    }
}

/// Worker-wide settings of the mapping (from the environment / CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// Namespace of the InferenceServices (`KSERVE_NAMESPACE`).
    pub namespace: String,
    /// Name prefix (`KSERVE_NAME_PREFIX`).
    pub name_prefix: String,
    /// Global default of the Prometheus scraping annotation (on unless configured off);
    /// `runtime_config.enablePrometheusScraping` overrides it per endpoint.
    pub prometheus_scraping: bool,
    /// Deployment mode names to write.
    pub mode_names: ModeNames,
    /// Resources of an endpoint that names none (`KSERVE_DEFAULT_REQUESTS`/`_LIMITS`).
    pub default_resources: DefaultResources,
    /// What a tenant may ask for (`TENANT_STORAGE_URI_SCHEMES`, `TENANT_SERVICE_ACCOUNTS`).
    pub policy: TenantPolicy,
}

/// Default of `KSERVE_DEFAULT_REQUESTS` (the earlier worker's requests).
pub const DEFAULT_REQUESTS: &str = "cpu=250m,memory=512Mi";
/// Default of `KSERVE_DEFAULT_LIMITS` (the earlier worker's limits).
pub const DEFAULT_LIMITS: &str = "cpu=1,memory=1Gi";

impl Default for RenderOptions {
    /// The settings' defaults: the earlier worker's default resources and the safe tenant
    /// policy.
    fn default() -> Self {
        let list = |s: &str| s.parse().unwrap_or_default();
        RenderOptions {
            namespace: "mlops-serving".into(),
            name_prefix: "isvc".into(),
            prometheus_scraping: true,
            mode_names: ModeNames::Current,
            default_resources: DefaultResources::new(list(DEFAULT_REQUESTS), list(DEFAULT_LIMITS)),
            policy: TenantPolicy::default(),
        }
    }
}

/// A worker setting that would produce names or hosts Kubernetes or KServe reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// The name prefix is not usable.
    #[error(
        "KSERVE_NAME_PREFIX {prefix:?}: {reason}; use a short lowercase prefix such as \"isvc\""
    )]
    Prefix {
        /// The rejected prefix.
        prefix: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The namespace is not usable.
    #[error("KSERVE_NAMESPACE {namespace:?}: {reason}")]
    Namespace {
        /// The rejected namespace.
        namespace: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The default requests and limits contradict each other.
    #[error(
        "KSERVE_DEFAULT_REQUESTS / KSERVE_DEFAULT_LIMITS: {0}; make every default request at most the default limit of the same resource"
    )]
    DefaultResources(String),
    /// Unknown mode-names setting.
    #[error(
        "deployment mode names {value:?}: use \"current\" (Knative/Standard) or \"legacy\" (Serverless/RawDeployment)"
    )]
    ModeNames {
        /// The rejected value.
        value: String,
    },
}

/// Checks a name prefix: the names it produces must be DNS-1035 labels (a lowercase letter,
/// then lowercase letters, digits and '-') no longer than [`MAX_NAME_LEN`].
pub fn validate_prefix(prefix: &str) -> Result<(), OptionsError> {
    let err = |reason: String| OptionsError::Prefix {
        prefix: prefix.into(),
        reason,
    };
    let b = prefix.as_bytes();
    if b.is_empty() {
        return Err(err("the prefix is empty".into()));
    }
    if !b[0].is_ascii_lowercase() {
        return Err(err(
            "names must start with a lowercase letter (DNS-1035)".into()
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(err(format!(
            "{c:?} is not allowed: names may contain lowercase letters, digits and '-' only (DNS-1035)"
        )));
    }
    if b.len() > MAX_PREFIX_LEN {
        return Err(err(format!(
            "{} characters is too long: names are `<prefix>-<16 hex>` and KServe/Knative derive `<name>-predictor-00001-private`, a 63-character Service name, so the prefix can have at most {MAX_PREFIX_LEN}",
            b.len()
        )));
    }
    Ok(())
}

impl RenderOptions {
    /// Checks the settings once at start-up, so that no manifest rendered with them can be
    /// refused by Kubernetes for its name or hosts.
    pub fn validate(&self) -> Result<(), OptionsError> {
        validate_prefix(&self.name_prefix)?;
        self.default_resources
            .check()
            .map_err(|err| OptionsError::DefaultResources(err.to_string()))?;
        let ns = &self.namespace;
        let err = |reason: String| OptionsError::Namespace {
            namespace: ns.clone(),
            reason,
        };
        let b = ns.as_bytes();
        let label = !b.is_empty()
            && b.len() <= DNS_LABEL_MAX
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if !label {
            return Err(err(
                "a namespace is a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters".into(),
            ));
        }
        let name_len = self.name_prefix.len() + 1 + NAME_HASH_LEN;
        let host_label = name_len + PREDICTOR_HOST_INFIX.len() + ns.len();
        if host_label > DNS_LABEL_MAX {
            return Err(err(format!(
                "KServe's default host `<name>-predictor-<namespace>` would be {host_label} characters, over the 63 of a DNS label; shorten the namespace or KSERVE_NAME_PREFIX (together at most {} characters)",
                DNS_LABEL_MAX - PREDICTOR_HOST_INFIX.len() - 1 - NAME_HASH_LEN
            )));
        }
        Ok(())
    }
}
