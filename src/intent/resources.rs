//! Requests and limits: the intent's resource lists checked entry by entry (names, quantities,
//! requests not above limits), the worker's defaults, and their sorted iteration for
//! rendering.

use std::fmt;

use serde_json::{Map, Value};

use super::*;

/// A resource quantity as written in the intent, checked for syntax and sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityRef<'a> {
    /// A quantity string such as `500m` or `4Gi`.
    Str(&'a str),
    /// A JSON integer (or the `1` added for `gpu: true`).
    Int(u64),
}

impl fmt::Display for QuantityRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantityRef::Str(s) => f.write_str(s),
            QuantityRef::Int(n) => write!(f, "{n}"),
        }
    }
}

/// `model.resources` after validation and the GPU rule, borrowing the intent's JSON maps:
/// [`Resources::requests`] and [`Resources::limits`] list the entries sorted by name (as
/// Kubernetes' maps are), with the GPU added by `gpu: true` where a side lacked it. Nothing is
/// copied or allocated on the render path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources<'a> {
    requests: Option<&'a Map<String, Value>>,
    limits: Option<&'a Map<String, Value>>,
    gpu_request: Option<QuantityRef<'a>>,
    gpu_limit: Option<QuantityRef<'a>>,
    // whether each map iterates in name order (always, unless serde_json's `preserve_order`
    // feature is on); checked once during validation
    requests_sorted: bool,
    limits_sorted: bool,
}

impl<'a> Resources<'a> {
    /// Requests, sorted by resource name.
    pub fn requests(&self) -> ResourceIter<'a> {
        ResourceIter::new(self.requests, self.gpu_request, self.requests_sorted)
    }

    /// Limits, sorted by resource name.
    pub fn limits(&self) -> ResourceIter<'a> {
        ResourceIter::new(self.limits, self.gpu_limit, self.limits_sorted)
    }

    /// The limit set for `name`, if any.
    #[cfg(test)]
    pub(super) fn limit(&self, name: &str) -> Option<QuantityRef<'a>> {
        match self.gpu_limit {
            Some(q) if name == GPU_RESOURCE => Some(q),
            _ => self.limits?.get(name).and_then(quantity_ref),
        }
    }

    /// An upper bound of the number of entries on both sides.
    pub fn max_entries(&self) -> usize {
        self.requests.map_or(0, Map::len) + self.limits.map_or(0, Map::len) + 2
    }
}

/// `name=quantity` pairs separated by commas (`cpu=250m,memory=512Mi`), the format of
/// `KSERVE_DEFAULT_REQUESTS` and `KSERVE_DEFAULT_LIMITS`; empty or `none` for no entries. Each
/// name and quantity is checked as an endpoint's are; extended resources such as GPUs are
/// refused (an endpoint asks for a GPU with `runtime_config.gpu`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceList(Map<String, Value>);

/// A malformed [`ResourceList`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResourceListError(String);

impl std::str::FromStr for ResourceList {
    type Err = ResourceListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map = Map::new();
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(Self(map));
        }
        for pair in s.split(',') {
            let Some((name, q)) = pair.split_once('=') else {
                return Err(ResourceListError(format!(
                    "{pair:?} is not name=quantity; write e.g. \"cpu=250m,memory=512Mi\" (or \"none\")"
                )));
            };
            let (name, q) = (name.trim(), Value::String(q.trim().to_owned()));
            resource_entry(name, &q, "default").map_err(|e| ResourceListError(e.to_string()))?;
            if is_extended_resource(name) {
                return Err(ResourceListError(format!(
                    "{name}: an extended resource such as a GPU cannot be a default; endpoints ask for GPUs with runtime_config.gpu"
                )));
            }
            if map.insert(name.to_owned(), q).is_some() {
                return Err(ResourceListError(format!("{name} is given twice")));
            }
        }
        Ok(Self(map))
    }
}

impl fmt::Display for ResourceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, (name, q)) in self.0.iter().enumerate() {
            let q = q.as_str().unwrap_or_default();
            write!(f, "{}{name}={q}", if i > 0 { "," } else { "" })?;
        }
        Ok(())
    }
}

/// Requests and limits for an endpoint that names no `runtime_config.resources`, so that no
/// model server runs as a BestEffort pod (first evicted, refused under a ResourceQuota). Kept
/// in the intent's own JSON shape: they pass through the same checks and rendering as an
/// endpoint's resources, and `gpu: true` adds the GPU on top.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DefaultResources {
    requests: Option<Map<String, Value>>,
    limits: Option<Map<String, Value>>,
    /// Whether the pair passes [`check`](Self::check), found once when it is made: an endpoint
    /// that names no resources (most of them) then takes the defaults without checking every
    /// quantity again.
    checked: bool,
}

impl DefaultResources {
    /// No defaults: an endpoint that names no resources gets none.
    pub const NONE: DefaultResources = DefaultResources {
        requests: None,
        limits: None,
        checked: true,
    };

    /// Defaults from the two lists (an empty list sets nothing on its side).
    pub fn new(requests: ResourceList, limits: ResourceList) -> Self {
        let side = |l: ResourceList| (!l.0.is_empty()).then_some(l.0);
        let mut defaults = Self {
            requests: side(requests),
            limits: side(limits),
            checked: false,
        };
        defaults.checked = defaults.check().is_ok();
        defaults
    }

    /// Checks the pair as an endpoint's resources are checked: a request may not exceed the
    /// limit of the same resource.
    pub fn check(&self) -> Result<(), IntentError> {
        resources(None, false, self).map(|_| ())
    }

    fn sides(&self) -> [Option<&Map<String, Value>>; 2] {
        [self.requests.as_ref(), self.limits.as_ref()]
    }
}

/// Entries of a validated resource map in name order, with an extra entry merged in.
pub struct ResourceIter<'a> {
    inner: ResourceIterInner<'a>,
}

pub(super) enum ResourceIterInner<'a> {
    /// The map iterates in name order (a `BTreeMap`, serde_json's default).
    Sorted {
        entries: std::iter::Peekable<serde_json::map::Iter<'a>>,
        extra: Option<(&'a str, QuantityRef<'a>)>,
    },
    /// The map keeps insertion order (serde_json's `preserve_order` feature): sorted copy.
    Collected(std::vec::IntoIter<(&'a str, QuantityRef<'a>)>),
    /// No map: only the extra entry, if any.
    Extra(Option<(&'a str, QuantityRef<'a>)>),
}

impl<'a> ResourceIter<'a> {
    fn new(
        map: Option<&'a Map<String, Value>>,
        gpu: Option<QuantityRef<'a>>,
        sorted: bool,
    ) -> Self {
        let extra = gpu.map(|q| (GPU_RESOURCE, q));
        let inner = match map {
            None => ResourceIterInner::Extra(extra),
            Some(m) if !sorted => {
                let mut all: Vec<_> = m
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str(), quantity_ref(v)?)))
                    .chain(extra)
                    .collect();
                all.sort_unstable_by(|a, b| a.0.cmp(b.0));
                ResourceIterInner::Collected(all.into_iter())
            }
            Some(m) => ResourceIterInner::Sorted {
                entries: m.iter().peekable(),
                extra,
            },
        };
        ResourceIter { inner }
    }
}

impl<'a> Iterator for ResourceIter<'a> {
    type Item = (&'a str, QuantityRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            ResourceIterInner::Collected(it) => it.next(),
            ResourceIterInner::Extra(extra) => extra.take(),
            ResourceIterInner::Sorted { entries, extra } => loop {
                match (entries.peek(), *extra) {
                    (Some((k, _)), Some((name, _))) if name < k.as_str() => return extra.take(),
                    (Some(_), _) => {
                        let (k, v) = entries.next()?;
                        // `null` entries mean "not set"
                        if let Some(q) = quantity_ref(v) {
                            return Some((k.as_str(), q));
                        }
                    }
                    (None, _) => return extra.take(),
                }
            },
        }
    }
}

/// The quantity of a validated map entry (`None` for `null`).
pub(super) fn quantity_ref(v: &Value) -> Option<QuantityRef<'_>> {
    match v {
        Value::String(s) => Some(QuantityRef::Str(s)),
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f as u64))
            .map(QuantityRef::Int),
        _ => None,
    }
}

pub(super) fn resources<'a>(
    v: Option<&'a Value>,
    gpu: bool,
    defaults: &'a DefaultResources,
) -> Result<Option<Resources<'a>>, IntentError> {
    let m = object(v, "runtime_config.resources")?;
    let mut requests = object(member(m, "requests"), REQUESTS)?;
    let mut limits = object(member(m, "limits"), LIMITS)?;
    let mut from_checked_defaults = false;
    if !names_any(requests) && !names_any(limits) {
        // the endpoint names no resources: the worker's defaults (checked at start-up)
        [requests, limits] = defaults.sides();
        from_checked_defaults = defaults.checked;
    }
    if requests.is_none() && limits.is_none() && !gpu {
        return Ok(None);
    }
    let requests_sorted = requests.is_none_or(|m| m.keys().is_sorted());
    let limits_sorted = limits.is_none_or(|m| m.keys().is_sorted());
    if from_checked_defaults && !gpu {
        // every entry was checked when the defaults were made, and nothing is added to them
        return Ok(Some(Resources {
            requests,
            limits,
            gpu_request: None,
            gpu_limit: None,
            requests_sorted,
            limits_sorted,
        }));
    }

    // One merge-join over both sides in name order: every entry is checked and parsed once,
    // each request meets its limit without a lookup.
    let mut reqs = SortedEntries::new(requests, requests_sorted).peekable();
    let mut lims = SortedEntries::new(limits, limits_sorted).peekable();
    let (mut gpu_request, mut gpu_limit) = (None, None);
    let mut gpu_seen = false;
    let mut entries = 0usize;
    loop {
        let (req, lim) = match (reqs.peek(), lims.peek()) {
            (None, None) => break,
            (Some(_), None) => (reqs.next(), None),
            (None, Some(_)) => (None, lims.next()),
            (Some(r), Some(l)) => match r.0.cmp(l.0) {
                std::cmp::Ordering::Less => (reqs.next(), None),
                std::cmp::Ordering::Greater => (None, lims.next()),
                std::cmp::Ordering::Equal => (reqs.next(), lims.next()),
            },
        };
        let name = req.or(lim).map_or("", |e| e.0);
        let req = req
            .map(|(_, v)| resource_entry(name, v, REQUESTS))
            .transpose()?;
        let lim = lim
            .map(|(_, v)| resource_entry(name, v, LIMITS))
            .transpose()?;
        entries += 1;
        let extended = is_extended_resource(name);
        let lim = if name == GPU_RESOURCE && gpu {
            // `gpu: true` puts the GPU on both sides (extended resources must be equal in
            // both): an explicit count on one side is copied to the other
            gpu_seen = true;
            match (req, lim) {
                (Some(r), None) => {
                    gpu_limit = Some(r.0);
                    Some(r)
                }
                (None, Some(l)) => {
                    gpu_request = Some(l.0);
                    None // the copied request equals its limit
                }
                _ => lim,
            }
        } else {
            lim
        };
        let Some((req, r)) = req else { continue };
        match lim {
            None if extended => {
                return Err(IntentError::Conflict {
                    field: format!("{LIMITS}.{name}"),
                    problem: format!(
                        "must be set because requests sets it ({req}); Kubernetes does not overcommit extended resources (or use runtime_config.gpu: true for GPUs)"
                    ),
                });
            }
            None => {}
            Some((lim, l)) if extended && r != l => {
                return Err(IntentError::Conflict {
                    field: format!("{REQUESTS}.{name}"),
                    problem: format!(
                        "{req} differs from limits.{name} ({lim}); an extended resource's request must equal its limit"
                    ),
                });
            }
            Some((lim, l)) if r > l => {
                return Err(IntentError::Conflict {
                    field: format!("{REQUESTS}.{name}"),
                    problem: format!(
                        "{req} is more than limits.{name} ({lim}); a request cannot exceed its limit"
                    ),
                });
            }
            Some(_) => {}
        }
    }
    if gpu && !gpu_seen {
        // no count on either side: one GPU
        gpu_request = Some(QuantityRef::Int(1));
        gpu_limit = Some(QuantityRef::Int(1));
        entries += 1;
    }
    if entries == 0 {
        return Ok(None);
    }
    Ok(Some(Resources {
        requests,
        limits,
        gpu_request,
        gpu_limit,
        requests_sorted,
        limits_sorted,
    }))
}

/// Whether a resource map has an entry that is not `null`.
pub(super) fn names_any(side: Option<&Map<String, Value>>) -> bool {
    side.is_some_and(|m| m.values().any(|v| !v.is_null()))
}

pub(super) const REQUESTS: &str = "runtime_config.resources.requests";
pub(super) const LIMITS: &str = "runtime_config.resources.limits";

/// Non-null entries of a resource map in name order: the map's own order when it is sorted
/// (serde_json's default `BTreeMap`), else a sorted copy.
pub(super) enum SortedEntries<'a> {
    Map(serde_json::map::Iter<'a>),
    Sorted(std::vec::IntoIter<(&'a String, &'a Value)>),
    Empty,
}

impl<'a> SortedEntries<'a> {
    fn new(map: Option<&'a Map<String, Value>>, sorted: bool) -> Self {
        match map {
            None => SortedEntries::Empty,
            Some(m) if sorted => SortedEntries::Map(m.iter()),
            Some(m) => {
                let mut all: Vec<_> = m.iter().collect();
                all.sort_unstable_by(|a, b| a.0.cmp(b.0));
                SortedEntries::Sorted(all.into_iter())
            }
        }
    }
}

impl<'a> Iterator for SortedEntries<'a> {
    type Item = (&'a str, &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (k, v) = match self {
                SortedEntries::Map(it) => it.next()?,
                SortedEntries::Sorted(it) => it.next()?,
                SortedEntries::Empty => return None,
            };
            if !v.is_null() {
                return Some((k.as_str(), v));
            }
        }
    }
}

/// Checks one entry (name, quantity syntax and sign, whole extended resources) and returns its
/// quantity and value.
pub(super) fn resource_entry<'a>(
    name: &str,
    v: &'a Value,
    path: &str,
) -> Result<(QuantityRef<'a>, f64), IntentError> {
    // the field path is only built for an error: this runs on the hot path
    let field = || format!("{path}.{name}");
    if !is_resource_name(name) {
        return Err(invalid(
            &field(),
            name,
            "a resource name is a Kubernetes qualified name such as cpu, memory, ephemeral-storage or nvidia.com/gpu",
        ));
    }
    let (q, value) = quantity(v, field)?;
    if value.fract() != 0.0 && is_extended_resource(name) {
        return Err(IntentError::InvalidQuantity {
            field: format!("{path}.{name}"),
            value: q.to_string(),
            reason: "an extended resource such as a GPU is counted in whole units",
        });
    }
    Ok((q, value))
}

/// `(prefix, name)` of a qualified name, split at the first '/'.
pub(super) fn split_prefix(name: &str) -> (Option<&str>, &str) {
    match name.bytes().position(|b| b == b'/') {
        Some(i) => (Some(&name[..i]), &name[i + 1..]),
        None => (None, name),
    }
}

/// Extended resources (a domain-prefixed name outside `kubernetes.io`, such as
/// `nvidia.com/gpu`) are whole numbers and never overcommitted: Kubernetes requires a limit, and
/// the request equal to it.
pub fn is_extended_resource(name: &str) -> bool {
    match split_prefix(name) {
        (Some(domain), _) => domain != "kubernetes.io" && !domain.ends_with(".kubernetes.io"),
        (None, _) => false,
    }
}

pub(super) fn quantity(
    v: &Value,
    field: impl Fn() -> String,
) -> Result<(QuantityRef<'_>, f64), IntentError> {
    let invalid = |value: String, reason| IntentError::InvalidQuantity {
        field: field(),
        value,
        reason,
    };
    match v {
        Value::String(s) => match parse_quantity(s) {
            Some(x) if x < 0.0 || s.starts_with('-') => {
                Err(invalid(s.clone(), "resources cannot be negative"))
            }
            Some(x) => Ok((QuantityRef::Str(s), x)),
            None => Err(invalid(s.clone(), "not the Kubernetes quantity syntax")),
        },
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return Ok((QuantityRef::Int(u), u as f64));
            }
            if n.is_i64() {
                return Err(invalid(n.to_string(), "resources cannot be negative"));
            }
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && (0.0..1.8e19).contains(&f) => {
                    Ok((QuantityRef::Int(f as u64), f))
                }
                _ => Err(invalid(
                    n.to_string(),
                    "a JSON number must be a non-negative integer; write fractions as a string such as \"500m\" or \"0.5\"",
                )),
            }
        }
        other => Err(wrong_type(
            &field(),
            "a quantity string or a non-negative integer",
            other,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defaults taken without a second check come out exactly as checking them again would.
    #[test]
    fn checked_defaults_resolve_as_a_full_check_does() {
        let pairs = [
            ("cpu=250m,memory=512Mi", "cpu=1,memory=1Gi"),
            ("cpu=250m", "none"),
            ("none", "memory=2Gi,cpu=2"),
            ("none", "none"),
            // a request above its limit: never checked, so every endpoint is refused with why
            ("cpu=2", "cpu=1"),
        ];
        for (requests, limits) in pairs {
            let made = DefaultResources::new(list_of(requests), list_of(limits));
            let unchecked = DefaultResources {
                checked: false,
                ..made.clone()
            };
            assert_eq!(made.checked, made.check().is_ok(), "{requests} / {limits}");
            for gpu in [false, true] {
                assert_eq!(
                    resources(None, gpu, &made),
                    resources(None, gpu, &unchecked),
                    "{requests} / {limits}, gpu {gpu}"
                );
            }
        }
        assert!(!DefaultResources::new(list_of("cpu=2"), list_of("cpu=1")).checked);
    }

    fn list_of(s: &str) -> ResourceList {
        s.parse().unwrap()
    }
}
