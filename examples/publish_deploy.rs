//! Publishes one deploy event exactly as the platform's API does when an endpoint is created
//! or a serving field changes: the JSON payload on `mlops.serving.deploy_requested`, a
//! `Nats-Msg-Id` header (JetStream drops a duplicate publish with the same id) and a W3C
//! `traceparent` header from a new trace, which it prints so the worker's trace of this event
//! can be found in Jaeger.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example publish_deploy -- \
//!     --tenant-id aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa \
//!     --project-id bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb \
//!     --endpoint-id 33333333-3333-3333-3333-333333333333 --name fraud
//! ```

use clap::Parser;
use deploy_worker::events::{self, EventKind};
use deploy_worker::publish::{self, EventFields, ModelVersionRef};
use opentelemetry::trace::TraceContextExt;
use uuid::Uuid;

/// The fields of the event (the endpoint row's, as the platform knows them).
#[derive(Debug, Parser)]
struct Args {
    /// NATS server with JetStream.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Tenant of the endpoint.
    #[arg(long)]
    tenant_id: Uuid,
    /// Project of the endpoint.
    #[arg(long)]
    project_id: Uuid,
    /// The endpoint.
    #[arg(long)]
    endpoint_id: Uuid,
    /// Its name.
    #[arg(long)]
    name: String,
    /// Model served (with --model-version-id).
    #[arg(long, requires = "model_version_id")]
    model_id: Option<Uuid>,
    /// Model version served (with --model-id).
    #[arg(long, requires = "model_id")]
    model_version_id: Option<Uuid>,
    /// `Nats-Msg-Id` (default: a new UUID); publishing twice with one id delivers once.
    #[arg(long)]
    message_id: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let args = Args::parse();
    let client = async_nats::connect(&args.nats_url).await?;
    let js = async_nats::jetstream::new(client);
    // The platform's API services create the stream; do the same if it is missing.
    js.get_or_create_stream(events::stream_config()).await?;

    let fields = EventFields {
        tenant_id: args.tenant_id,
        project_id: args.project_id,
        endpoint_id: args.endpoint_id,
        name: &args.name,
        model: args
            .model_id
            .zip(args.model_version_id)
            .map(|(model_id, model_version_id)| ModelVersionRef {
                model_id,
                model_version_id,
            }),
    };
    let message_id = args
        .message_id
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    // The trace of the API request that publishes: the worker's spans become its children.
    let cx = publish::publisher_context();
    publish::publish_traced(&js, EventKind::Deploy, &fields, &message_id, &cx).await?;

    let trace_id = cx.span().span_context().trace_id();
    println!("subject:     {}", events::DEPLOY_SUBJECT);
    println!(
        "payload:     {}",
        String::from_utf8_lossy(&publish::payload(&fields))
    );
    println!("Nats-Msg-Id: {message_id}");
    println!(
        "traceparent: {}",
        publish::traceparent(&cx).unwrap_or_default()
    );
    println!("find it in Jaeger: search for trace id {trace_id} (service deploy-worker)");
    Ok(())
}
