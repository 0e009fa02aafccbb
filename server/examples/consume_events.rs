//! A consumer of the platform's events: a durable JetStream pull consumer
//! on the stream the relay publishes to, filtered by event type (a subject
//! from the contract) and by tenant (the CloudEvents `tenantid`).
//!
//! ```text
//! cargo run -p oneprotect-server --example consume_events -- \
//!     --nats-url nats://127.0.0.1:4222 --type agent.enrolled --tenant tenant-dev
//! ```
//!
//! Delivery is at least once: the consumer acknowledges each message after
//! handling it, and skips an event whose `id` it has already handled (a
//! relay that crashed between the broker's acknowledgement and its own mark
//! re-sends; the broker drops such a re-send inside its de-duplication
//! window, this check covers the rest). The durable name keeps the
//! consumer's position across restarts.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use clap::Parser;
use futures_util::StreamExt;
use oneprotect_contracts::events::{EVENT_VERSIONS, subject_of};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, default_value = oneprotect_server::relay::DEFAULT_STREAM)]
    stream: String,
    /// The consumer's durable name (its position survives restarts).
    #[arg(long, default_value = "oneprotect-example")]
    durable: String,
    /// Only this event type (every version of it); default: every type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only this tenant's events.
    #[arg(long)]
    tenant: Option<String>,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long)]
    max: Option<usize>,
}

/// Event ids already handled, the most recent first out (bounded).
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    const CAPACITY: usize = 100_000;

    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == Self::CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let subjects: Vec<String> = match &args.event_type {
        Some(t) => EVENT_VERSIONS
            .iter()
            .filter(|(ty, _)| ty == t)
            .filter_map(|(_, schema)| subject_of(schema).map(str::to_owned))
            .collect(),
        None => Vec::new(),
    };
    // One subject per consumer works with every JetStream server (several
    // need NATS 2.10); a type published in two versions names two subjects.
    let filter_subject = match (args.event_type.as_deref(), subjects.as_slice()) {
        (None, _) => String::new(),
        (Some(_), [one]) => one.clone(),
        (Some(t), []) => return Err(format!("the contract has no event type {t:?}").into()),
        (Some(t), _) => {
            return Err(format!("{t} is published in several versions: consume each subject").into());
        }
    };
    let js = jetstream::new(async_nats::connect(&args.nats_url).await?);
    let stream = js.get_stream(&args.stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            &args.durable,
            pull::Config {
                durable_name: Some(args.durable.clone()),
                filter_subject,
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    let mut seen = Seen { ids: HashSet::new(), order: VecDeque::new() };
    let mut handled = 0;
    while let Some(message) = messages.next().await {
        let message = message?;
        let event: serde_json::Value = serde_json::from_slice(&message.payload)?;
        let id = event["id"].as_str().unwrap_or_default();
        let tenant_matches = args.tenant.as_deref().is_none_or(|t| event["tenantid"] == t);
        if tenant_matches && seen.first_time(id) {
            println!("{} {} {} {}", event["time"], message.subject, event["tenantid"], event["type"]);
            handled += 1;
        }
        message.ack().await?;
        if args.max.is_some_and(|max| handled >= max) {
            break;
        }
    }
    Ok(())
}
