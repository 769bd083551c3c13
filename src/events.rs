//! JetStream contract: the stream, the two durable consumers and the event payload.
//!
//! The platform's API services publish to stream `MLOPS_SERVING` (subjects `mlops.serving.*`,
//! work-queue retention). The worker creates the stream with exactly those settings when it is
//! missing and never changes an existing one. It binds one durable pull consumer per subject it
//! acts on, with explicit acks, so several worker replicas can share the work.
//!
//! An event only says "look at endpoint X" (level-triggered: ARCHITECTURE.md): the payload is
//! decoded strictly — a JSON object no larger than [`MAX_EVENT_BYTES`], `endpoint_id` a UUID, the
//! other fields UUIDs or strings when present — and everything else is read from Postgres. Unknown
//! fields are ignored so the platform can add fields without breaking older workers.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{FromConsumer, PullConsumer, pull},
    stream,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

/// The platform's serving stream.
pub const STREAM: &str = "MLOPS_SERVING";
/// Subjects captured by [`STREAM`].
pub const STREAM_SUBJECTS: &str = "mlops.serving.*";
/// Published when an endpoint is created or a serving field changes.
pub const DEPLOY_SUBJECT: &str = "mlops.serving.deploy_requested";
/// Published when an endpoint is deleted (its row soft-deleted by the API).
pub const DELETE_SUBJECT: &str = "mlops.serving.delete_requested";
/// Durable consumer for [`DEPLOY_SUBJECT`].
pub const DEPLOY_CONSUMER: &str = "deploy-worker";
/// Durable consumer for [`DELETE_SUBJECT`].
pub const DELETE_CONSUMER: &str = "deploy-worker-delete";
/// Largest payload the worker decodes; real events are a few hundred bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// What an event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Converge the endpoint's InferenceService to its current intent.
    Deploy,
    /// Remove the endpoint's InferenceService.
    Delete,
}

impl EventKind {
    /// The kind of event a subject carries, if the worker consumes that subject.
    pub fn from_subject(subject: &str) -> Option<Self> {
        match subject {
            DEPLOY_SUBJECT => Some(Self::Deploy),
            DELETE_SUBJECT => Some(Self::Delete),
            _ => None,
        }
    }

    /// Lower-case name used in history rows, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Delete => "delete",
        }
    }
}

/// The payload of a serving event, as the platform publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServingEvent {
    /// The endpoint to look at; the only field the worker needs.
    pub endpoint_id: Uuid,
    /// Tenant of the endpoint; must match the row when present.
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    /// Project of the endpoint; must match the row when present.
    #[serde(default)]
    pub project_id: Option<Uuid>,
    /// Endpoint name (informational).
    #[serde(default)]
    pub name: Option<String>,
    /// Model id (informational).
    #[serde(default)]
    pub model_id: Option<Uuid>,
    /// Model version id (informational: the worker reads the current one from the row).
    #[serde(default)]
    pub model_version_id: Option<Uuid>,
}

/// Why a payload was refused. Refused messages are terminated and recorded, never retried.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload exceeds [`MAX_EVENT_BYTES`].
    #[error(
        "payload is {size} bytes, more than the {MAX_EVENT_BYTES}-byte limit for serving events"
    )]
    TooLarge {
        /// Size of the refused payload.
        size: usize,
    },
    /// The payload is not the JSON object the platform publishes.
    #[error(
        "payload is not a valid serving event: {0}; publish a JSON object with a UUID `endpoint_id`"
    )]
    Invalid(String),
}

impl ServingEvent {
    /// Decodes a payload strictly (see the module docs).
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::TooLarge {
                size: payload.len(),
            });
        }
        // serde accepts a struct written as a JSON array too; the contract is an object.
        if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(DecodeError::Invalid("expected a JSON object".into()));
        }
        // Checked as UTF-8 once, whole: read from a `str`, serde_json skips the check it would
        // otherwise make for every key and value (most of a decode's cost).
        let text = std::str::from_utf8(payload)
            .map_err(|err| DecodeError::Invalid(format!("the payload is not UTF-8 ({err})")))?;
        serde_json::from_str(text).map_err(|err| DecodeError::Invalid(err.to_string()))
    }
}

/// Errors while binding the stream and consumers.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The stream could not be read or created.
    #[error(
        "cannot get or create JetStream stream {STREAM}: {0}; check NATS_URL and that JetStream is enabled (nats-server -js)"
    )]
    Stream(#[source] jetstream::context::CreateStreamError),
    /// A consumer could not be read or created.
    #[error("cannot bind durable consumer {name} on {STREAM}: {source}")]
    Consumer {
        /// The consumer's durable name.
        name: &'static str,
        /// What NATS said.
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    /// An existing consumer has a setting the worker cannot run with.
    #[error(
        "durable consumer {name} exists with {setting} = {found}; the worker needs {needed}. \
         Delete the consumer (the worker recreates it) or change that setting"
    )]
    Unusable {
        /// The consumer's durable name.
        name: &'static str,
        /// The consumer setting.
        setting: &'static str,
        /// What the consumer has.
        found: String,
        /// What the worker needs, and why.
        needed: &'static str,
    },
    /// An existing consumer filters a different subject than the worker expects.
    #[error(
        "durable consumer {name} exists but filters {found:?}, not {expected}; delete it or fix its filter"
    )]
    WrongFilter {
        /// The consumer's durable name.
        name: &'static str,
        /// The subject it should filter.
        expected: &'static str,
        /// The subject it filters.
        found: String,
    },
}

/// How the worker's consumers are configured when it creates them.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings {
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Cap on delivered-but-unacked messages per consumer (bounds the worker's memory).
    pub max_ack_pending: i64,
}

/// The two bound consumers.
pub struct Consumers {
    /// Consumer of [`DEPLOY_SUBJECT`].
    pub deploy: PullConsumer,
    /// Consumer of [`DELETE_SUBJECT`].
    pub delete: PullConsumer,
}

/// The stream configuration the platform uses, for creating it when missing.
pub fn stream_config() -> stream::Config {
    stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![STREAM_SUBJECTS.to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

impl BindError {
    /// Whether trying again may succeed: NATS did not answer, or answered with an error a
    /// JetStream cluster gives while it elects a leader or several replicas create the same
    /// consumer at once. A consumer whose settings the worker cannot run with is not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Stream(_) | Self::Consumer { .. })
    }
}

/// Gets or creates the stream, then gets or creates both durable consumers; transient failures
/// are retried for about half a minute (replicas starting together on a JetStream cluster
/// create the same consumers at once, and some of them time out).
pub async fn bind_with_retries(
    js: &jetstream::Context,
    settings: ConsumerSettings,
) -> Result<Consumers, BindError> {
    const ATTEMPTS: u32 = 8;
    let mut attempt = 1;
    loop {
        match bind(js, settings).await {
            Err(err) if err.is_transient() && attempt < ATTEMPTS => {
                let delay = Duration::from_millis(250 * 2u64.pow(attempt.min(5)));
                tracing::warn!(error = %err, attempt, ?delay, "cannot bind the consumers yet; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            bound => return bound,
        }
    }
}

/// Gets or creates the stream, then gets or creates both durable consumers.
pub async fn bind(
    js: &jetstream::Context,
    settings: ConsumerSettings,
) -> Result<Consumers, BindError> {
    let stream = js
        .get_or_create_stream(stream_config())
        .await
        .map_err(BindError::Stream)?;
    let deploy = bind_consumer(&stream, DEPLOY_CONSUMER, DEPLOY_SUBJECT, settings).await?;
    let delete = bind_consumer(&stream, DELETE_CONSUMER, DELETE_SUBJECT, settings).await?;
    Ok(Consumers { deploy, delete })
}

async fn bind_consumer(
    stream: &jetstream::stream::Stream,
    name: &'static str,
    subject: &'static str,
    settings: ConsumerSettings,
) -> Result<PullConsumer, BindError> {
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: subject.to_owned(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        // Transient failures are nak'ed with a delay and must never run out of deliveries;
        // permanent ones are terminated explicitly.
        max_deliver: -1,
        max_ack_pending: settings.max_ack_pending,
        ..Default::default()
    };
    let mut consumer: PullConsumer = stream
        .get_or_create_consumer(name, config)
        .await
        .map_err(|source| BindError::Consumer { name, source })?;
    // A consumer created by someone else (the platform, the Python worker) is used as found
    // only where its settings keep the worker's delivery guarantees.
    let found = match consumer.info().await {
        Ok(info) => info.config.clone(),
        Err(_) => consumer.cached_info().config.clone(),
    };
    if found.filter_subject != subject {
        return Err(BindError::WrongFilter {
            name,
            expected: subject,
            found: found.filter_subject,
        });
    }
    if found.ack_policy != jetstream::consumer::AckPolicy::Explicit {
        return Err(BindError::Unusable {
            name,
            setting: "ack_policy",
            found: format!("{:?}", found.ack_policy),
            needed: "explicit acks: each message is acked only once its request is committed",
        });
    }
    if found.max_deliver > 0 {
        // Finite deliveries would silently drop an event after a few transient failures.
        // Raising the limit only ever delivers more, so it is safe to fix in place.
        tracing::warn!(
            consumer = name,
            max_deliver = found.max_deliver,
            "durable consumer limits deliveries; updating it to unlimited (max_deliver = -1)"
        );
        let mut updated = pull::Config::try_from_consumer_config(found.clone()).map_err(|err| {
            BindError::Unusable {
                name,
                setting: "deliver_subject",
                found: err.to_string(),
                needed: "a pull consumer",
            }
        })?;
        updated.max_deliver = -1;
        // JetStream updates a durable consumer's editable settings when it is created again
        // under the same name.
        consumer = stream
            .create_consumer(updated)
            .await
            .map_err(|source| BindError::Consumer { name, source })?;
    }
    if found.ack_wait != settings.ack_wait || found.max_ack_pending != settings.max_ack_pending {
        tracing::info!(consumer = name, ack_wait = ?found.ack_wait,
            max_ack_pending = found.max_ack_pending,
            "using the durable consumer's own ack wait and ack-pending limit");
    }
    Ok(consumer)
}

/// When JetStream stored `message`, read from its `$JS.ACK.` reply subject: the one field of
/// [`jetstream::Message::info`] that accepting a message needs. Reading all nine fields cost 2 %
/// of the worker's CPU; this reads one, where `info` finds it — the timestamp is the sixth
/// token after the prefix in the original 7-token form and the eighth in the form with domain
/// and account hash (9 tokens or more, ADR-15). `None` when the message has no such subject.
pub fn published_at(message: &jetstream::Message) -> Option<DateTime<Utc>> {
    let tokens = message.reply.as_deref()?.strip_prefix("$JS.ACK.")?;
    // where the first nine tokens end: enough to tell the two forms apart
    let mut dots = [0usize; 9];
    let mut found = 0;
    for (at, byte) in tokens.bytes().enumerate() {
        if byte == b'.' {
            dots[found] = at;
            found += 1;
            if found == dots.len() {
                break;
            }
        }
    }
    let timestamp = match found + 1 {
        9.. => 7,
        7 | 8 => 5,
        _ => return None,
    };
    // a token after the timestamp exists in both forms, so its end is a dot
    let token = &tokens[dots[timestamp - 1] + 1..dots[timestamp]];
    token
        .parse::<i64>()
        .ok()
        .map(DateTime::from_timestamp_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::{Strategy, ValueTree};

    #[test]
    fn decodes_the_platform_payload() {
        let id = Uuid::new_v4();
        let payload = format!(
            r#"{{"tenant_id":"{id}","project_id":"{id}","endpoint_id":"{id}","name":"fraud","model_id":null}}"#
        );
        let event = ServingEvent::decode(payload.as_bytes()).unwrap();
        assert_eq!(event.endpoint_id, id);
        assert_eq!(event.tenant_id, Some(id));
        assert_eq!(event.model_id, None);
        assert_eq!(event.model_version_id, None);
    }

    #[test]
    fn refuses_bad_payloads_with_a_reason() {
        for (payload, needle) in [
            (&b"not json"[..], "expected"),
            (br#"{"tenant_id":null}"#, "missing field `endpoint_id`"),
            (br#"{"endpoint_id":"abc"}"#, "UUID"),
            (br#"{"endpoint_id":42}"#, "invalid type"),
            (b"{\"endpoint_id\":\"\xff\xfe\"}", "not UTF-8"),
            (b"{\"name\":\"caf\xc3\"}", "not UTF-8"),
            (
                br#"["6d0c5e8e-5f0e-4f4e-9d2b-3f1f0c1a2b3c"]"#,
                "expected a JSON object",
            ),
            (b"", "expected a JSON object"),
            (
                br#"{"endpoint_id":"6d0c5e8e-5f0e-4f4e-9d2b-3f1f0c1a2b3c","tenant_id":"x"}"#,
                "UUID",
            ),
        ] {
            let err = ServingEvent::decode(payload).unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        assert_eq!(
            ServingEvent::decode(&big),
            Err(DecodeError::TooLarge {
                size: MAX_EVENT_BYTES + 1
            })
        );
    }

    /// A JetStream message with `reply` as its reply subject, on a client that never connects
    /// (only `info` is called on it).
    async fn message_with_reply(reply: &str) -> jetstream::Message {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:1")
            .await
            .unwrap();
        jetstream::Message {
            message: async_nats::Message {
                subject: DEPLOY_SUBJECT.into(),
                reply: Some(reply.into()),
                payload: Default::default(),
                headers: None,
                status: None,
                description: None,
                length: 0,
            },
            context: jetstream::new(client),
        }
    }

    #[tokio::test]
    async fn the_publish_time_is_read_where_the_client_reads_it() {
        // the two forms as servers send them (the longer one with and without its last token)
        let nanos = 1_764_000_000_123_456_789i64;
        for reply in [
            format!("$JS.ACK.MLOPS_SERVING.deploy-worker.1.42.7.{nanos}.3"),
            format!("$JS.ACK._.4ade0f.MLOPS_SERVING.deploy-worker.1.42.7.{nanos}.3"),
            format!("$JS.ACK.hub.4ade0f.MLOPS_SERVING.deploy-worker.2.42.7.{nanos}.0.x1"),
        ] {
            let message = message_with_reply(&reply).await;
            let published = DateTime::from_timestamp_nanos(nanos);
            assert_eq!(published_at(&message), Some(published), "{reply}");
            assert_eq!(message.info().unwrap().published, published, "{reply}");
        }
        // anything else: wherever the client reads a time, ours is the same
        let tokens =
            proptest::collection::vec("[A-Za-z0-9_]{1,8}|[0-9]{1,20}|-?[0-9]{1,19}", 0..13);
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let mut replies = vec!["_INBOX.abc".to_owned(), "$JS.ACK.".to_owned()];
        for _ in 0..512 {
            let drawn = tokens.new_tree(&mut runner).unwrap().current();
            replies.push(format!("$JS.ACK.{}", drawn.join(".")));
        }
        let mut compared = 0;
        for reply in replies {
            let message = message_with_reply(&reply).await;
            if let Ok(info) = message.info() {
                assert_eq!(published_at(&message), Some(info.published), "{reply}");
                compared += 1;
            }
        }
        assert!(compared >= 10, "only {compared} subjects the client reads");
    }

    #[test]
    fn subjects_map_to_kinds() {
        assert_eq!(
            EventKind::from_subject(DEPLOY_SUBJECT),
            Some(EventKind::Deploy)
        );
        assert_eq!(
            EventKind::from_subject(DELETE_SUBJECT),
            Some(EventKind::Delete)
        );
        assert_eq!(EventKind::from_subject("mlops.serving.other"), None);
    }
}
