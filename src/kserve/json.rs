//! The byte path of [`render_json`](super::render_json): a small JSON writer that emits
//! exactly what serde_json emits for the typed manifest, without scanning constant keys.

use crate::intent::{Autoscaler, Intent, QuantityRef, ServingSpec, UtilizationMetric};

use super::*;

// `render_json`'s writer. serde_json spends most of its time scanning every key and value for
// characters to escape; here keys are constants known to need no escaping, and values are
// checked with a branch-free scan before being copied. The writer emits exactly what
// `serde_json::to_vec(&build(..))` emits (same field order and skip rules as the owned types,
// same escapes); the tests compare the bytes for every generated intent.

/// `,"<key>":` for a literal key, as [`Object::key`] takes it (the comma is dropped for an
/// object's first key): one copy per key instead of four writes.
macro_rules! key {
    ($k:expr) => {
        concat!(",\"", $k, "\":")
    };
}

/// A JSON value position in the output.
pub(super) struct Json<'o>(pub(super) &'o mut Vec<u8>);

/// An open JSON object; `key` writes the separator and the key, `end` the closing brace.
pub(super) struct Object<'w, 'o> {
    w: &'w mut Json<'o>,
    empty: bool,
}

impl<'o> Json<'o> {
    #[inline]
    fn object(&mut self) -> Object<'_, 'o> {
        self.0.push(b'{');
        Object {
            w: self,
            empty: true,
        }
    }

    /// A string value, escaped as serde_json escapes it.
    #[inline]
    fn str(&mut self, s: &str) {
        write_json_str(self.0, s);
    }

    /// A string value that needs no escaping by construction (constants, digits, hex, UUIDs).
    #[inline]
    fn plain(&mut self, s: &str) {
        debug_assert!(!needs_escape(s.as_bytes()), "{s}");
        self.0.push(b'"');
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(b'"');
    }

    #[inline]
    fn uint(&mut self, n: u64) {
        write_u64(self.0, n);
    }

    /// A number as a JSON string (`"3"`).
    #[inline]
    fn uint_str(&mut self, n: u64) {
        self.0.push(b'"');
        write_u64(self.0, n);
        self.0.push(b'"');
    }

    #[inline]
    fn int(&mut self, n: i64) {
        if n < 0 {
            self.0.push(b'-');
        }
        self.uint(n.unsigned_abs());
    }
}

impl<'o> Object<'_, 'o> {
    /// Writes the separator and the key; `key` comes from `key!` (`,"<key>":`).
    #[inline]
    fn key(&mut self, key: &'static str) -> &mut Json<'o> {
        let bytes = key.as_bytes();
        debug_assert!(
            bytes.starts_with(b",\"")
                && bytes.ends_with(b"\":")
                && !needs_escape(&bytes[2..bytes.len() - 2]),
            "{key}"
        );
        let bytes = if self.empty { &bytes[1..] } else { bytes };
        self.empty = false;
        self.w.0.extend_from_slice(bytes);
        self.w
    }

    #[inline]
    fn end(self) {
        self.w.0.push(b'}');
    }
}

/// Whether serde_json would escape any byte of `b` (`"`, `\` or a control character).
/// Eight bytes at a time with the classic SWAR tests: `has_zero(v)` flags a zero byte (here: a
/// byte equal to `"` or `\` after the XOR), `(v - 0x2020..) & !v & 0x8080..` a byte below 0x20
/// (bytes >= 0x80 never match). They can over-report only in a word that also holds a true
/// match, so `false` is exact and a `true` merely takes the careful escaping path.
#[inline]
pub(super) fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(w);
        let v = u64::from_le_bytes(bytes);
        let control = v.wrapping_sub(0x20 * ONES) & !v & HIGHS;
        if control | has_zero(v ^ QUOTES) | has_zero(v ^ BACKSLASHES) != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// Writes `s` as a JSON string with serde_json's escapes: `\"`, `\\`, `\b`, `\t`, `\n`, `\f`,
/// `\r`, other control characters as `\u00xx`; everything else (including `/` and non-ASCII)
/// as is.
pub(super) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
    } else {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let control;
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                0x08 => b"\\b",
                b'\t' => b"\\t",
                b'\n' => b"\\n",
                0x0c => b"\\f",
                b'\r' => b"\\r",
                0x00..=0x1f => {
                    control = [
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(b >> 4)],
                        HEX[usize::from(b & 0xf)],
                    ];
                    &control
                }
                _ => continue,
            };
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(escape);
            start = i + 1;
        }
        out.extend_from_slice(&bytes[start..]);
    }
    out.push(b'"');
}

/// Appends the decimal digits of `n`.
pub(super) fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while n > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[i..]);
}

/// The manifest, in the field order of the owned types (ObjectMeta's is alphabetical).
pub(super) fn write_manifest(
    out: &mut Vec<u8>,
    intent: &Intent,
    spec: &ServingSpec<'_>,
    opts: &RenderOptions,
) {
    let mut json = Json(out);
    let mut root = json.object();
    root.key(key!("apiVersion")).plain(API_VERSION);
    root.key(key!("kind")).plain(KIND);
    write_metadata(root.key(key!("metadata")), intent, spec, opts);
    let mut spec_obj = root.key(key!("spec")).object();
    write_predictor(spec_obj.key(key!("predictor")), spec);
    spec_obj.end();
    root.end();
}

pub(super) fn write_metadata(
    w: &mut Json<'_>,
    intent: &Intent,
    spec: &ServingSpec<'_>,
    opts: &RenderOptions,
) {
    let mut meta = w.object();

    // BTreeMap order: the key constants sort in this order (a unit test checks it)
    let ann = annotations(spec, opts);
    let mut a = meta.key(key!("annotations")).object();
    a.key(key!(annotation_spec_generation!()))
        .uint_str(spec.generation);
    if let Some(class) = ann.autoscaler_class {
        a.key(key!(annotation_autoscaler_class!())).plain(class);
    }
    if let Some(mode) = ann.deployment_mode {
        a.key(key!(annotation_deployment_mode!())).plain(mode);
    }
    a.key(key!(annotation_prometheus_scraping!()))
        .plain(ann.prometheus_scraping);
    a.end();

    let mut uuid_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let mut l = meta.key(key!("labels")).object();
    l.key(key!(label_managed_by!())).plain(MANAGED_BY);
    l.key(key!(label_endpoint_id!()))
        .plain(intent.endpoint_id.hyphenated().encode_lower(&mut uuid_buf));
    l.key(key!(label_project_id!()))
        .plain(intent.project_id.hyphenated().encode_lower(&mut uuid_buf));
    l.key(key!(label_tenant_id!()))
        .plain(intent.tenant_id.hyphenated().encode_lower(&mut uuid_buf));
    l.end();

    // `<prefix>-<hash>` as one string, without building it first
    let out = &mut *meta.key(key!("name")).0;
    write_json_str(out, &opts.name_prefix);
    out.pop(); // reopen the string after the prefix
    out.push(b'-');
    out.extend_from_slice(&name_hash(intent.endpoint_id).0);
    out.push(b'"');

    meta.key(key!("namespace")).str(&opts.namespace);
    meta.end();
}

pub(super) fn write_predictor(w: &mut Json<'_>, spec: &ServingSpec<'_>) {
    let mut p = w.object();
    if let Some(v) = spec.min_replicas {
        p.key(key!("minReplicas")).int(v.into());
    }
    if let Some(v) = spec.max_replicas {
        p.key(key!("maxReplicas")).int(v.into());
    }
    match spec.autoscaler {
        Autoscaler::Default { metric, target } => {
            if let Some(t) = target {
                p.key(key!("scaleTarget")).int(t.into());
            }
            if let Some(m) = metric {
                p.key(key!("scaleMetric")).plain(m.as_str());
            }
        }
        Autoscaler::Keda { metric, target } => {
            // {"metrics":[{"type":"Resource","resource":{"name":..,"target":{..}}}]}
            let mut scaling = p.key(key!("autoScaling")).object();
            let metrics = scaling.key(key!("metrics"));
            metrics.0.push(b'[');
            let mut m = metrics.object();
            m.key(key!("type")).plain("Resource");
            let mut resource = m.key(key!("resource")).object();
            resource.key(key!("name")).plain(match metric {
                UtilizationMetric::Cpu => "cpu",
                UtilizationMetric::Memory => "memory",
            });
            let mut t = resource.key(key!("target")).object();
            t.key(key!("type")).plain("Utilization");
            t.key(key!("averageUtilization")).int(target.into());
            t.end();
            resource.end();
            m.end();
            metrics.0.push(b']');
            scaling.end();
        }
    }
    if let Some(v) = spec.timeout {
        p.key(key!("timeout")).int(v);
    }
    if let Some(v) = spec.canary_traffic_percent {
        p.key(key!("canaryTrafficPercent")).int(v);
    }
    if let Some(b) = spec.batcher {
        let mut batcher = p.key(key!("batcher")).object();
        if let Some(v) = b.max_batch_size {
            batcher.key(key!("maxBatchSize")).int(v);
        }
        if let Some(v) = b.max_latency {
            batcher.key(key!("maxLatency")).int(v);
        }
        if let Some(v) = b.timeout {
            batcher.key(key!("timeout")).int(v);
        }
        batcher.end();
    }
    if let Some(sa) = spec.service_account_name {
        // validated as a DNS subdomain: nothing JSON escapes
        p.key(key!("serviceAccountName")).plain(sa);
    }

    let mut model = p.key(key!("model")).object();
    let mut format = model.key(key!("modelFormat")).object();
    format.key(key!("name")).plain(spec.model_format);
    format.end();
    if let Some(v) = spec.protocol_version {
        model.key(key!("protocolVersion")).plain(v);
    }
    if let Some(v) = spec.runtime_version {
        // validated as an image tag: nothing JSON escapes
        model.key(key!("runtimeVersion")).plain(v);
    }
    model.key(key!("storageUri")).str(spec.storage_uri);
    if let Some(r) = &spec.resources {
        // ResourceRequirements order: claims (never set), limits, requests
        let mut res = model.key(key!("resources")).object();
        let mut limits = r.limits().peekable();
        if limits.peek().is_some() {
            write_resource_list(res.key(key!("limits")), limits);
        }
        let mut requests = r.requests().peekable();
        if requests.peek().is_some() {
            write_resource_list(res.key(key!("requests")), requests);
        }
        res.end();
    }
    model.end();
    p.end();
}

/// A quantity is always a JSON string, as `Quantity` serializes.
pub(super) fn write_resource_list<'a>(
    w: &mut Json<'_>,
    list: impl Iterator<Item = (&'a str, QuantityRef<'a>)>,
) {
    let out = &mut *w.0;
    out.push(b'{');
    for (i, (name, quantity)) in list.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // validation admits only qualified names and quantity syntax: nothing JSON escapes
        let mut value = Json(out);
        value.plain(name);
        value.0.push(b':');
        match quantity {
            QuantityRef::Str(s) => value.plain(s),
            QuantityRef::Int(n) => value.uint_str(n),
        }
    }
    out.push(b'}');
}
