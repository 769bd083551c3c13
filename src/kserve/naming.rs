//! Names on the cluster: the InferenceService's name (prefix plus a hash of the endpoint id,
//! short enough for the predictor's host name), and the labels and annotations the worker
//! owns.

use uuid::Uuid;

/// `apiVersion` of the manifests.
pub const API_VERSION: &str = "serving.kserve.io/v1beta1";
/// `kind` of the manifests.
pub const KIND: &str = "InferenceService";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "deploy-worker";

/// Label marking objects the worker manages.
pub const LABEL_MANAGED_BY: &str = label_managed_by!();
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "deploy-worker";
/// Label carrying the tenant id.
pub const LABEL_TENANT_ID: &str = label_tenant_id!();
/// Label carrying the project id.
pub const LABEL_PROJECT_ID: &str = label_project_id!();
/// Label carrying the endpoint id; the worker only touches objects whose label matches.
pub const LABEL_ENDPOINT_ID: &str = label_endpoint_id!();

/// The endpoint label of the earlier (Python) worker's objects; with [`legacy_name`] it marks
/// an object the worker adopts instead of creating a second one beside it.
pub const LEGACY_LABEL_ENDPOINT_ID: &str = "mlops.platform/endpoint_id";

/// The earlier worker's InferenceService name for `endpoint_id`: `isvc-` and the first 8 hex
/// digits of the id.
pub fn legacy_name(endpoint_id: Uuid) -> String {
    let mut hex = endpoint_id.simple().to_string();
    hex.truncate(8);
    format!("isvc-{hex}")
}

/// Annotation carrying the endpoint's spec generation.
pub const ANNOTATION_SPEC_GENERATION: &str = annotation_spec_generation!();
/// Annotation carrying a hash of the spec the worker applied ([`spec_hash`]): an object whose
/// spec no longer hashes to it was changed by someone else and is repaired. Set at apply time
/// by the Kubernetes deployer, not by the renderers, so `render` output stays what the
/// platform's intent alone determines.
pub const ANNOTATION_SPEC_HASH: &str = "mlops.platform/spec-hash";
/// KServe's autoscaler class annotation.
pub const ANNOTATION_AUTOSCALER_CLASS: &str = annotation_autoscaler_class!();
/// KServe's deployment mode annotation.
pub const ANNOTATION_DEPLOYMENT_MODE: &str = annotation_deployment_mode!();
/// KServe's Prometheus scraping annotation.
pub const ANNOTATION_PROMETHEUS_SCRAPING: &str = annotation_prometheus_scraping!();

/// Hex digits of the endpoint-derived part of a name.
pub const NAME_HASH_LEN: usize = 16;

/// Longest InferenceService name the worker creates.
///
/// KServe and Knative derive further names from it, and the tightest is a Kubernetes Service
/// name, which must be a DNS-1035 label (at most 63 characters):
/// - KServe names the predictor component `<name>-predictor` (Knative Service, or Deployment,
///   Service and HPA/ScaledObject in Standard mode): `name + 10`;
/// - Knative names revisions `<ksvc>-<5-digit generation>`, i.e. `<name>-predictor-00001`
///   (also a label value, at most 63), and creates for every revision a Kubernetes Service of
///   that name and a private one, `<name>-predictor-00001-private`: `name + 24`;
/// - its Deployment `<name>-predictor-00001-deployment` is `name + 27` but Deployment names may
///   be DNS subdomains (253), so it is not the limit.
///
/// `name + 24 <= 63` gives 39. The hostnames are checked with the namespace by
/// [`RenderOptions::validate`]: KServe's default domain template
/// `{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}` makes `<name>-predictor-<namespace>` one
/// DNS label.
pub const MAX_NAME_LEN: usize = 39;

/// Longest name prefix: `MAX_NAME_LEN` minus `-` and the 16 hex digits.
pub const MAX_PREFIX_LEN: usize = MAX_NAME_LEN - NAME_HASH_LEN - 1;

pub(super) const DNS_LABEL_MAX: usize = 63;
pub(super) const PREDICTOR_HOST_INFIX: &str = "-predictor-";

/// The InferenceService name for an endpoint: `{prefix}-{16 lowercase hex}`, the hex being the
/// high 64 bits of the endpoint UUID XOR its low 64 bits (all 122 random bits of a v4 UUID
/// contribute, so names stay collision-resistant at 64 bits).
pub fn isvc_name(prefix: &str, endpoint_id: Uuid) -> String {
    let hex = name_hash(endpoint_id);
    let mut name = String::with_capacity(prefix.len() + 1 + NAME_HASH_LEN);
    name.push_str(prefix);
    name.push('-');
    name.push_str(hex.as_str());
    name
}

pub(super) struct NameHash(pub(super) [u8; NAME_HASH_LEN]);

impl NameHash {
    fn as_str(&self) -> &str {
        // only ASCII hex digits are ever written into the buffer
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

pub(super) fn name_hash(endpoint_id: Uuid) -> NameHash {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (hi, lo) = endpoint_id.as_u64_pair();
    let folded = hi ^ lo;
    let mut out = [0u8; NAME_HASH_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((folded >> (60 - 4 * i)) & 0xf) as usize];
    }
    NameHash(out)
}
