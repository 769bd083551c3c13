//! Redaction: known secrets replaced by `[redacted]` in every log line, exported span and
//! stored text (see the folder's module doc for what counts as a secret).

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::RwLock;
use std::time::Duration;

use opentelemetry::trace::Status;
use opentelemetry_sdk::Resource;
use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// Values that must never appear in logs.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Vec<String>);

/// The process-wide secrets every output is redacted with.
pub(super) static KNOWN: RwLock<Secrets> = RwLock::new(Secrets(Vec::new()));

/// Adds `secrets` to the process-wide set that logs, exported spans, HTTP bodies and database
/// writes are redacted with. Secrets are only ever added: several workers in one process
/// (tests, embedders) each add theirs.
pub fn register_secrets(secrets: Secrets) {
    if secrets.is_empty() {
        return;
    }
    // A poisoned lock only means a panic elsewhere mid-update; the list is still usable.
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    known.merge(secrets);
}

/// `text` with every process-wide secret ([`register_secrets`]) replaced by `[redacted]`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    if known.is_empty() {
        return Cow::Borrowed(text);
    }
    match known.redact(text) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(owned) => Cow::Owned(owned),
    }
}

/// [`redact`] into an owned string, for values that are stored or sent on.
pub fn redacted(text: String) -> String {
    match redact(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(owned) => owned,
    }
}

impl Secrets {
    /// Secrets found in connection URLs (their passwords, or a lone user part used as a token)
    /// and in the OTLP header variables (their values, e.g. `authorization=Bearer …`).
    pub fn collect<'a>(urls: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let mut found: Vec<String> = urls.into_iter().flatten().flat_map(url_secrets).collect();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Ok(headers) = std::env::var(name) {
                found.extend(
                    headers
                        .split(',')
                        .filter_map(|pair| pair.split_once('=').map(|(_, v)| v.trim().to_owned())),
                );
            }
        }
        Self::new(found)
    }

    /// These values, also as JSON and `{:?}` escape them (a password with a `"` or `\\` in it
    /// appears escaped in JSON logs and debug output). Very short ones are ignored: redacting
    /// them would mangle logs.
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        // inside the quotes of a JSON string and of `{:?}` output
        let escaped = |v: &str| {
            let quoted = [serde_json::Value::from(v).to_string(), format!("{v:?}")];
            quoted.map(|q| {
                q.strip_prefix('"')
                    .and_then(|q| q.strip_suffix('"'))
                    .unwrap_or(v)
                    .to_owned()
            })
        };
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| v.len() >= 4)
            .flat_map(|v| {
                let [json, debug] = escaped(&v);
                [v, json, debug]
            })
            .collect();
        // Longest first, so a secret containing another is redacted whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self(values)
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `other`'s values (already expanded by [`Secrets::new`]).
    fn merge(&mut self, other: Secrets) {
        self.0.extend(other.0);
        self.0
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.0.dedup();
    }

    /// `text` with every secret replaced by `[redacted]`.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.0 {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), "[redacted]"));
            }
        }
        out
    }
}

/// The secrets of a connection URL, raw and percent-decoded: the password of
/// `scheme://user:password@host/…`, or the user part when there is no password (NATS token URLs:
/// `nats://token@host`), and the values of query parameters whose name contains `password`
/// (`password`, `sslpassword`), `token` or `secret` (`postgres://u@h/db?password=…`).
pub fn url_secrets(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |raw: &str| {
        let decoded = percent_decode(raw);
        let plus = decoded.replace('+', " ");
        for value in [raw.to_owned(), decoded, plus] {
            if !value.is_empty() && !out.contains(&value) {
                out.push(value);
            }
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some((userinfo, _host)) = authority.rsplit_once('@') {
        push(match userinfo.split_once(':') {
            Some((_, password)) => password,
            None => userinfo,
        });
    }
    let query = rest
        .split_once('?')
        .map_or("", |(_, q)| q.split('#').next().unwrap_or_default());
    for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        let key = percent_decode(key).to_ascii_lowercase();
        if ["password", "token", "secret"]
            .iter()
            .any(|word| key.contains(word))
        {
            push(value);
        }
    }
    out
}

pub(super) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A [`MakeWriter`] that redacts the process-wide secrets ([`register_secrets`]) from what
/// passes through it; [`subscriber`] wraps every log writer in one.
#[derive(Debug, Clone)]
pub struct Redacting<M> {
    inner: M,
}

impl<M> Redacting<M> {
    /// Wraps `inner`.
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

/// The writer made by [`Redacting`].
pub struct RedactingWriter<W> {
    pub(super) inner: W,
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Both formatters hand over one whole line per call, so a secret is never split.
        let text = String::from_utf8_lossy(buf);
        match redact(&text) {
            Cow::Borrowed(_) => self.inner.write_all(buf)?,
            Cow::Owned(clean) => self.inner.write_all(clean.as_bytes())?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer_for(meta),
        }
    }
}

/// A span exporter that redacts the process-wide secrets ([`register_secrets`]) from every
/// span it passes on: name, string attributes, events (name and attributes: log lines inside
/// a span become its events), links and the error status. The OTLP exporter is wrapped in one.
#[derive(Debug)]
pub struct RedactingExporter<E> {
    inner: E,
}

impl<E> RedactingExporter<E> {
    /// Wraps `inner`.
    pub fn new(inner: E) -> Self {
        Self { inner }
    }
}

pub(super) fn redact_cow(text: &mut Cow<'static, str>) {
    if let Cow::Owned(clean) = redact(text) {
        *text = Cow::Owned(clean);
    }
}

pub(super) fn redact_attributes(attributes: &mut [opentelemetry::KeyValue]) {
    use opentelemetry::{Array, StringValue, Value as Attr};
    let clean = |s: &StringValue| match redact(s.as_str()) {
        Cow::Borrowed(_) => None,
        Cow::Owned(owned) => Some(StringValue::from(owned)),
    };
    for kv in attributes {
        match &mut kv.value {
            Attr::String(s) => {
                if let Some(c) = clean(s) {
                    *s = c;
                }
            }
            Attr::Array(Array::String(list)) => {
                for s in list {
                    if let Some(c) = clean(s) {
                        *s = c;
                    }
                }
            }
            _ => {}
        }
    }
}

pub(super) fn redact_span(span: &mut opentelemetry_sdk::trace::SpanData) {
    redact_cow(&mut span.name);
    redact_attributes(&mut span.attributes);
    for event in &mut span.events.events {
        redact_cow(&mut event.name);
        redact_attributes(&mut event.attributes);
    }
    for link in &mut span.links.links {
        redact_attributes(&mut link.attributes);
    }
    if let Status::Error { description } = &mut span.status {
        redact_cow(description);
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for RedactingExporter<E>
{
    fn export(
        &self,
        mut batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        batch.iter_mut().for_each(redact_span);
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
