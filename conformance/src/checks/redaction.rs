use oneprotect_contracts::contract::ops;
use serde_json::json;

use super::{BOTH, LOCAL};
use crate::ctx::Listing;
use crate::{Check, Checked, Ctx, Tenant, ensure};

pub(super) const CHECKS: &[Check] = &[
    check!(
        "redaction.issued-secret-shown-once",
        Redaction,
        BOTH,
        "the enrollment secret appears in the issue response and in no list or later answer",
        secret_shown_once
    ),
    check!(
        "redaction.audit-and-events-carry-no-secret",
        Redaction,
        BOTH,
        "no audit record or event contains a secret, CSR, nonce or bearer",
        audit_and_events_clean
    ),
    check!(
        "redaction.broker-events-match-the-outbox",
        Redaction,
        BOTH,
        "every event a run produces arrives on the broker once, on its contract channel, validating against its schema, byte for byte the event the platform stored, and carries no secret",
        broker_events_match
    ),
    check!(
        "redaction.fingerprint-never-stored-raw",
        Redaction,
        LOCAL,
        "a hardware fingerprint hash is stored only keyed, never as the agent sent it",
        fingerprint_not_raw
    ),
    check!(
        "redaction.problems-do-not-echo-input",
        Redaction,
        BOTH,
        "a rejected body is described by field, never echoed",
        problems_do_not_echo
    ),
];

/// Scans of everything the run left behind: they run after every other
/// check, so every operation of the run is covered.
pub(super) const FINAL_CHECKS: &[Check] = &[
    check!(
        "redaction.store-holds-no-secret",
        Redaction,
        LOCAL,
        "no stored row of any table contains a secret the run produced",
        store_clean
    ),
    check!(
        "redaction.logs-hold-no-secret",
        Redaction,
        LOCAL,
        "no server log line contains a secret or a bearer credential",
        logs_clean
    ),
];

/// Runs the canonical scenario (issue, exchange, heartbeat, a refused
/// exchange) so that there is material to scan.
async fn scenario(ctx: &Ctx) -> Checked {
    let (agent, runtime, _) = ctx.enroll(Tenant::A).await?;
    ensure(ctx.heartbeat(&agent, &runtime, 1).await?.status == 200, "heartbeat refused")?;
    let (secret, _) = ctx.issue_token(Tenant::A, 1).await?;
    let mut bad = ctx.exchange_body(&secret)?;
    bad["csr_pem"] =
        json!("-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n");
    ctx.exchange(&bad).await?;
    Ok(())
}

fn scan(ctx: &Ctx, source: &str, text: &str) -> Checked {
    for s in ctx.secrets() {
        ensure(!text.contains(&s), format!("a secret ({} chars) appears in {source}", s.len()))?;
    }
    Ok(())
}

pub async fn secret_shown_once(ctx: &Ctx) -> Checked {
    let (secret, id) = ctx.issue_token(Tenant::A, 1).await?;
    let tokens = ctx.list(Tenant::A, Listing::Tokens).await?;
    let text = serde_json::to_string(&tokens).unwrap_or_default();
    ensure(text.contains(&id), "the issued token is listed")?;
    ensure(!text.contains(&secret), "the enrollment secret appears in the token list")?;
    let revoked =
        ctx.call(&ops::revoke_enrollment_token(&id), Some(ctx.admin(Tenant::A)), Some(&json!({}))).await?;
    ensure(!revoked.body.to_string().contains(&secret), "the enrollment secret appears in the revoke answer")
}

pub async fn audit_and_events_clean(ctx: &Ctx) -> Checked {
    scenario(ctx).await?;
    let audit = ctx.list(Tenant::A, Listing::Audit).await?;
    let events = ctx.list(Tenant::A, Listing::Events).await?;
    ensure(!audit.is_empty() && !events.is_empty(), "the scenario left audit records and events")?;
    for e in &events {
        oneprotect_contracts::events::validate(e)
            .map_err(|v| format!("an emitted event does not match its schema: {v}"))?;
    }
    scan(ctx, "the audit trail", &serde_json::to_string(&audit).unwrap_or_default())?;
    scan(ctx, "the event stream", &serde_json::to_string(&events).unwrap_or_default())?;
    let agents = ctx.list(Tenant::A, Listing::Agents).await?;
    scan(ctx, "the agent list", &serde_json::to_string(&agents).unwrap_or_default())
}

pub async fn store_clean(ctx: &Ctx) -> Checked {
    let store = ctx.needs("storage inspection", &ctx.local.store)?;
    scenario(ctx).await?;
    let rows = store.dump_all_rows().await.map_err(|e| format!("cannot inspect the store: {e}"))?;
    ensure(rows.len() > 5, "the store holds the scenario's rows")?;
    for row in &rows {
        scan(ctx, &format!("a stored row of {}", row.split(':').next().unwrap_or("?")), row)?;
    }
    Ok(())
}

pub async fn logs_clean(ctx: &Ctx) -> Checked {
    let logs = ctx.needs("captured server logs", &ctx.local.logs)?;
    scenario(ctx).await?;
    let text = logs.since_start();
    ensure(!text.is_empty(), "the server logged something")?;
    // The capture may hold other platforms' lines (tests run several in one
    // process), so the scan looks for this run's own credentials, each of
    // which is unique to the run.
    scan(ctx, "the server logs", &text)
}

pub async fn problems_do_not_echo(ctx: &Ctx) -> Checked {
    let marker = format!("opet_{}_CONFORMANCE_MARKER_{}", ctx.run_id, "x".repeat(240));
    let mut body = ctx.exchange_body("placeholder")?;
    body["enrollment_token"] = json!(marker);
    let a = ctx.exchange(&body).await?;
    ensure(a.status == 400, format!("an over-long token is 400, got {}", a.status))?;
    ensure(!a.body.to_string().contains("CONFORMANCE_MARKER"), "the rejection echoes the submitted value")
}

pub async fn fingerprint_not_raw(ctx: &Ctx) -> Checked {
    let store = ctx.needs("storage inspection", &ctx.local.store)?;
    let (secret, _) = ctx.issue_token(Tenant::A, 1).await?;
    let fingerprint = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    ctx.remember(&fingerprint);
    let mut body = ctx.exchange_body(&secret)?;
    body["hardware_fingerprint_hash"] = json!(fingerprint);
    let a = ctx.exchange(&body).await?;
    ensure(a.status == 201, format!("the exchange with a fingerprint answered {} {}", a.status, a.code()))?;
    let rows = store.dump_all_rows().await.map_err(|e| format!("cannot inspect the store: {e}"))?;
    let agent = a.body["agent"]["agent_id"].as_str().unwrap_or_default();
    ensure(rows.iter().any(|r| r.contains(agent)), "the enrolled identity is stored")?;
    ensure(
        !rows.iter().any(|r| r.contains(&fingerprint)),
        "the fingerprint hash is stored as sent, not keyed",
    )
}

/// How long the broker check waits for the relay to deliver the run's
/// events: a deployment's relay may lag behind its load; the local
/// target's relays in-process.
const RELAY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
const LOCAL_RELAY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn broker_events_match(ctx: &Ctx) -> Checked {
    use futures_util::StreamExt;
    let nats = ctx.nats.clone().ok_or_else(|| {
        crate::Verdict::Skip(
            "needs the deployment's NATS server (--nats-url; the local target launches its own)".into(),
        )
    })?;
    // Read from a little before the scenario: the broker may hold the
    // deployment's whole history.
    let from = time::OffsetDateTime::from_unix_timestamp(chrono::Utc::now().timestamp() - 120)
        .map_err(|e| e.to_string())?;
    scenario(ctx).await?;
    let stored = ctx.list(Tenant::A, Listing::Events).await?;
    ensure(!stored.is_empty(), "the scenario left events")?;
    let mut waiting: std::collections::BTreeMap<String, &serde_json::Value> =
        stored.iter().filter_map(|e| e["id"].as_str().map(|id| (id.to_owned(), e))).collect();
    let total = waiting.len();
    let client = async_nats::connect(&nats.url).await.map_err(|e| format!("NATS at {}: {e}", nats.url))?;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&nats.stream).await.map_err(|e| format!("stream {}: {e}", nats.stream))?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartTime { start_time: from },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("a consumer on {}: {e}", nats.stream))?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let within = if ctx.local.store.is_some() { LOCAL_RELAY_DEADLINE } else { RELAY_DEADLINE };
    let deadline = tokio::time::Instant::now() + within;
    while !waiting.is_empty() {
        let next = tokio::time::timeout_at(deadline, messages.next()).await;
        let Ok(Some(Ok(message))) = next else { break };
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        let event: serde_json::Value = serde_json::from_str(&payload)
            .map_err(|e| format!("a message on {} is not JSON: {e}", message.subject))?;
        let Some(id) = event["id"].as_str() else { continue };
        let Some(expected) = waiting.remove(id) else {
            ensure(!stored.iter().any(|e| e["id"] == id), format!("event {id} arrived twice"))?;
            continue;
        };
        ensure(
            &event == expected,
            format!(
                "event {id} on the broker differs from the event the platform stored (tenant or content)"
            ),
        )?;
        let dataschema = event["dataschema"].as_str().unwrap_or_default();
        ensure(
            oneprotect_contracts::events::subject_of(dataschema) == Some(message.subject.as_str()),
            format!("event {id} arrived on {}, not on its contract channel", message.subject),
        )?;
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        ensure(
            msg_id == id,
            format!("event {id} was published with message id {msg_id:?}, not its event id"),
        )?;
        oneprotect_contracts::events::validate(&event)
            .map_err(|v| format!("an event on the broker does not match its schema: {v}"))?;
        scan(ctx, "the broker's events", &payload)?;
    }
    ensure(
        waiting.is_empty(),
        format!(
            "{} of the run's {total} events never arrived on the broker within {} s",
            waiting.len(),
            within.as_secs()
        ),
    )
}
