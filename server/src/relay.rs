//! The relay: every committed outbox event, published to NATS JetStream on
//! the subject its AsyncAPI channel names, then marked published.
//!
//! Delivery is at least once. An event is marked only after the broker
//! acknowledged it; the JetStream message id is the event id, so an event
//! re-sent after a crash between the acknowledgement and the mark, or after
//! a failed mark, is dropped by the broker's de-duplication window (the
//! stream's `duplicate_window`). Events leave in commit order: one relay
//! claims at a time (on PostgreSQL, across replicas, by an advisory lock
//! held with the claim), a batch is published in sequence order, and only
//! the acknowledged prefix of a batch is marked, so the first event that
//! failed is the first one re-sent. Consumers de-duplicate by the event id
//! (`id`) beyond the broker's window.
//!
//! A broker outage never reaches the HTTP API: events wait in the outbox,
//! the relay retries with a bounded back-off, and the lag metric shows how
//! old the oldest waiting event is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use oneprotect_contracts::events::{EVENT_SUBJECTS, subject_of};

use crate::clock::Clock;
use crate::metrics::{Metrics, RELAY_DUPLICATES, RELAY_LAG, RELAY_PUBLISHED, RELAY_RETRIES};
use crate::store::{RelayEvent, Store};

/// The stream the platform creates or verifies at start.
pub const DEFAULT_STREAM: &str = "ONEPROTECT_EVENTS";
/// Events claimed per round (one transaction, one pipeline of publishes).
pub const BATCH: u32 = 512;
/// How long an idle relay waits before looking again.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// The back-off after a failed round: doubled per failure up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Where and how the relay publishes.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `nats://host:port` (or `tls://…`), comma-separated for a cluster.
    pub url: String,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// PEM roots that verify the broker's certificate; TLS is then required.
    pub ca_file: Option<PathBuf>,
    pub stream: String,
    /// How long the stream keeps an event (its `max_age`).
    pub max_age: Duration,
    /// The broker's de-duplication window by message id.
    pub duplicate_window: Duration,
}

impl RelayConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            credentials_file: None,
            ca_file: None,
            stream: DEFAULT_STREAM.to_owned(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(600),
        }
    }
}

/// The stream's subjects: every channel address of the contract.
pub fn contract_subjects() -> Vec<String> {
    EVENT_SUBJECTS.iter().map(|(_, subject)| (*subject).to_owned()).collect()
}

/// The subject an outbox event is published on, from its `dataschema`.
pub fn subject_for(payload: &str) -> Result<&'static str, String> {
    #[derive(serde::Deserialize)]
    struct Schema {
        dataschema: String,
    }
    let schema: Schema =
        serde_json::from_str(payload).map_err(|e| format!("the stored event is not a CloudEvent: {e}"))?;
    subject_of(&schema.dataschema).ok_or_else(|| format!("no channel carries `{}`", schema.dataschema))
}

/// Connects to the broker. Returns at once: the client keeps connecting
/// (and reconnecting) in the background, so an unreachable broker at start
/// delays events, never the server.
pub async fn connect(config: &RelayConfig) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name("oneprotect-server relay")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5));
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("the NATS credentials file {}: {e}", path.display()))?;
    }
    if let Some(path) = &config.ca_file {
        if !path.is_file() {
            return Err(format!("the NATS CA file {} does not exist", path.display()));
        }
        options = options.add_root_certificates(path.clone()).require_tls(true);
    }
    options.connect(&config.url).await.map_err(|e| format!("NATS at {}: {e}", config.url))
}

/// Creates the stream, or verifies the existing one carries every contract
/// subject (adding any it lacks: a new event type in a new release).
pub async fn ensure_stream(js: &jetstream::Context, config: &RelayConfig) -> Result<(), String> {
    let wanted = jetstream::stream::Config {
        name: config.stream.clone(),
        subjects: contract_subjects(),
        description: Some("OneProtect platform events (CloudEvents, structured JSON)".into()),
        retention: jetstream::stream::RetentionPolicy::Limits,
        storage: jetstream::stream::StorageType::File,
        max_age: config.max_age,
        duplicate_window: config.duplicate_window,
        ..Default::default()
    };
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| format!("stream {}: {e}", config.stream))?;
    let existing = stream.info().await.map_err(|e| format!("stream {}: {e}", config.stream))?.config.clone();
    let missing: Vec<String> =
        wanted.subjects.iter().filter(|s| !covers(&existing.subjects, s)).cloned().collect();
    if existing.duplicate_window.is_zero() {
        return Err(format!(
            "stream {} has no de-duplication window: re-sent events would be stored twice",
            config.stream
        ));
    }
    if !missing.is_empty() {
        let mut updated = existing.clone();
        updated.subjects.extend(missing);
        js.update_stream(updated).await.map_err(|e| format!("stream {}: {e}", config.stream))?;
    }
    Ok(())
}

/// Whether one of a stream's subject filters matches `subject` (`*` is one
/// token, a final `>` one or more).
pub fn covers(filters: &[String], subject: &str) -> bool {
    filters.iter().any(|filter| {
        let mut want = subject.split('.');
        for token in filter.split('.') {
            match (token, want.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (t, Some(w)) if t == w => {}
                _ => return false,
            }
        }
        want.next().is_none()
    })
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub claimed: usize,
    pub published: usize,
    pub duplicates: usize,
}

pub struct Relay {
    store: Arc<dyn Store>,
    js: jetstream::Context,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relay")
    }
}

impl Relay {
    pub fn new(
        store: Arc<dyn Store>,
        client: async_nats::Client,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Present (at zero) from the start, so a dashboard sees the relay.
        for counter in [RELAY_PUBLISHED, RELAY_DUPLICATES, RELAY_RETRIES] {
            metrics.add(counter, 0);
        }
        metrics.set_gauge(RELAY_LAG, 0.0);
        Self { store, js: jetstream::new(client), clock, metrics }
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publishes one batch of unpublished events and marks the
    /// acknowledged prefix. An error means the round stopped early; what
    /// was acknowledged before it is marked all the same.
    pub async fn round(&self) -> Result<Round, String> {
        let claim = self.store.claim_unpublished_events(BATCH).await.map_err(|e| e.to_string())?;
        let events = claim.events();
        let now = self.clock.now();
        let lag = events.first().map_or(0.0, |e| (now - e.event.occurred_at).as_seconds_f64().max(0.0));
        self.metrics.set_gauge(RELAY_LAG, lag);
        let mut round = Round { claimed: events.len(), ..Round::default() };
        let (acks, mut failure) = self.send(events).await;
        for ack in acks {
            match ack.await {
                Ok(ack) => {
                    round.published += 1;
                    round.duplicates += usize::from(ack.duplicate);
                }
                Err(e) => {
                    failure = Some(format!("the broker did not acknowledge an event: {e}"));
                    break;
                }
            }
        }
        let marked = claim.mark_published(round.published, self.clock.now()).await;
        self.metrics.add(RELAY_PUBLISHED, round.published as u64);
        self.metrics.add(RELAY_DUPLICATES, round.duplicates as u64);
        if let Err(e) = marked {
            return Err(format!("published events could not be marked (they will be re-sent): {e}"));
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(round),
        }
    }

    /// Publishes `events` in order without waiting for each acknowledgement;
    /// stops at the first that cannot be sent.
    async fn send(&self, events: &[RelayEvent]) -> (Vec<PublishAckFuture>, Option<String>) {
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            let subject = match subject_for(&e.event.payload) {
                Ok(s) => s,
                Err(reason) => {
                    return (acks, Some(format!("event {} cannot be routed: {reason}", e.event.event_id)));
                }
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, e.event.event_id.as_str());
            headers.insert("Content-Type", "application/cloudevents+json");
            match self.js.publish_with_headers(subject, headers, Bytes::from(e.event.payload.clone())).await {
                Ok(ack) => acks.push(ack),
                Err(err) => return (acks, Some(format!("publishing event {}: {err}", e.event.event_id))),
            }
        }
        (acks, None)
    }

    /// Relays until `stop` turns true: rounds back to back while events
    /// wait, a short poll when none do, a bounded back-off after a failure.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = BACKOFF_START;
        loop {
            if *stop.borrow() {
                return;
            }
            let wait = match self.round().await {
                Ok(round) => {
                    backoff = BACKOFF_START;
                    if round.claimed == 0 { IDLE_POLL } else { Duration::ZERO }
                }
                Err(e) => {
                    self.metrics.add(RELAY_RETRIES, 1);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "event relay round failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                    wait
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// Makes sure the stream exists (retrying while the broker is
/// unreachable) and relays until `stop`.
pub async fn start(
    config: RelayConfig,
    client: async_nats::Client,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let relay = Relay::new(store, client, clock, metrics);
    let mut backoff = BACKOFF_START;
    loop {
        match ensure_stream(relay.jetstream(), &config).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "the event stream is not ready; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
        }
    }
    tracing::info!(stream = %config.stream, "relaying events to NATS JetStream");
    relay.run(stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_filters_match_by_token() {
        let f = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(covers(&f(&["oneprotect.events.>"]), "oneprotect.events.agent.enrolled"));
        assert!(!covers(&f(&["oneprotect.events.>"]), "oneprotect.events"), "`>` needs one token or more");
        assert!(covers(&f(&["oneprotect.events.agent.*"]), "oneprotect.events.agent.enrolled"));
        assert!(!covers(&f(&["oneprotect.events.agent.*"]), "oneprotect.events.agent.certificate.rotated"));
        assert!(covers(&f(&["oneprotect.events.agent.enrolled"]), "oneprotect.events.agent.enrolled"));
        assert!(!covers(&f(&["oneprotect.events.agent.enrolled"]), "oneprotect.events.agent.enrolled.x"));
        assert!(!covers(&f(&["oneprotect.events.agent.enrolled.x"]), "oneprotect.events.agent.enrolled"));
        assert!(!covers(&f(&["oneprotect.event.>"]), "oneprotect.events.agent.enrolled"));
    }

    #[test]
    fn every_subject_comes_from_the_contract_and_an_unknown_schema_is_not_routed() {
        assert_eq!(contract_subjects().len(), EVENT_SUBJECTS.len());
        for (schema, subject) in EVENT_SUBJECTS {
            let payload = serde_json::json!({"dataschema": schema}).to_string();
            assert_eq!(subject_for(&payload), Ok(subject));
        }
        assert!(subject_for(r#"{"dataschema":"https://example.invalid/x.json"}"#).is_err());
        assert!(subject_for("not json").is_err());
    }
}
