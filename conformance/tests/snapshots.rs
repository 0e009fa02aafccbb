//! The redacted shape of every response, audit record and event of the
//! canonical enrollment scenario, and the contract's operations and
//! statuses, pinned as insta snapshots. Values that differ per run (ids,
//! times, secrets, hashes) are replaced by placeholders; everything else —
//! field names, codes, statuses, event types, audit actions — must not drift
//! unnoticed.

use oneprotect_conformance::local;
use oneprotect_contracts::contract::ops;
use serde_json::{Map, Value, json};

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

fn is_time(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

fn redact(value: &Value, run_id: &str) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let redacted = match (k.as_str(), v) {
                    ("enrollment_token" | "token", Value::String(_)) => json!("[secret]"),
                    ("request_id", Value::String(_)) => json!("[request-id]"),
                    ("serial_number" | "certificate_serial", Value::String(_)) => json!("[serial]"),
                    ("certificate_pem" | "ca_chain_pem", Value::String(pem)) => {
                        json!(format!(
                            "[pem: {} certificate(s)]",
                            pem.matches("-----BEGIN CERTIFICATE-----").count()
                        ))
                    }
                    // The CA names the agent: CN = its id.
                    ("subject", Value::String(s)) if s.strip_prefix("CN=").is_some_and(is_uuid) => {
                        json!("CN=[uuid]")
                    }
                    ("key_id" | "runtime_token_key_id", Value::String(_)) => json!("[key-id]"),
                    _ => redact(v, run_id),
                };
                out.insert(k.clone(), redacted);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| redact(v, run_id)).collect()),
        Value::String(s) if is_uuid(s) => json!("[uuid]"),
        Value::String(s) if is_time(s) => json!("[time]"),
        Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => json!("[sha256]"),
        Value::String(s) if s.contains(run_id) => Value::String(s.replace(run_id, "[run-id]")),
        // Each local platform's admin subjects are unique to it.
        Value::String(s) if s.starts_with("admin-") && s.contains('@') => {
            json!(format!("admin-[platform]@{}", s.split_once('@').map(|(_, t)| t).unwrap_or_default()))
        }
        other => other.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canonical_enrollment_scenario_has_a_stable_redacted_shape() {
    let platform = local::start(None, None).await.expect("local platform");
    let ctx = &platform.ctx;
    let mut transcript = Vec::new();
    let mut record = |step: &str, status: u16, body: &Value| {
        transcript.push(json!({"step": step, "status": status, "body": redact(body, &ctx.run_id)}))
    };

    let issued = ctx
        .call(
            &ops::issue_enrollment_token(),
            Some(ctx.admin(oneprotect_conformance::Tenant::A)),
            Some(&json!({"ttl_seconds": 600, "max_uses": 1, "label": "snapshot"})),
        )
        .await
        .expect("issue");
    record("issue enrollment token", issued.status, &issued.body);
    let secret = issued.body["enrollment_token"].as_str().expect("secret").to_owned();
    let enrolled = ctx
        .exchange(&ctx.exchange_body(&secret).expect("a well-formed exchange body"))
        .await
        .expect("exchange");
    record("exchange", enrolled.status, &enrolled.body);
    let agent = enrolled.body["agent"]["agent_id"].as_str().expect("agent").to_owned();
    let runtime = enrolled.body["runtime_token"]["token"].as_str().expect("runtime").to_owned();
    let hb = ctx.heartbeat(&agent, &runtime, 1).await.expect("heartbeat");
    record("heartbeat", hb.status, &hb.body);
    let dup = ctx.heartbeat(&agent, &runtime, 1).await.expect("heartbeat");
    record("duplicate heartbeat", dup.status, &dup.body);
    let refused = ctx
        .exchange(&ctx.exchange_body(&secret).expect("a well-formed exchange body"))
        .await
        .expect("exchange");
    record("exchange with the used token", refused.status, &refused.body);
    for (step, route) in [
        ("list tokens", ops::list_enrollment_tokens()),
        ("list agents", ops::list_agents()),
        ("audit trail", ops::list_audit_events()),
        ("events", ops::list_events()),
    ] {
        let a = ctx.call(&route, Some(ctx.admin(oneprotect_conformance::Tenant::A)), None).await.expect(step);
        record(step, a.status, &a.body);
    }
    let revoked = ctx
        .call(
            &ops::revoke_agent(&agent),
            Some(ctx.admin(oneprotect_conformance::Tenant::A)),
            Some(&json!({"reason": "snapshot"})),
        )
        .await
        .expect("revoke");
    record("revoke agent", revoked.status, &revoked.body);
    let after = ctx.heartbeat(&agent, &runtime, 2).await.expect("heartbeat");
    record("heartbeat after revocation", after.status, &after.body);

    insta::assert_json_snapshot!("canonical_enrollment_scenario", transcript);
}

#[test]
fn the_contracts_operations_and_documented_statuses_are_pinned() {
    let operations: Vec<Value> = oneprotect_contracts::contract::OPERATIONS
        .iter()
        .map(|op| {
            json!({
                "operation": op.operation_id,
                "route": format!("{} {}", op.method, op.path),
                "security": op.security,
                "request": op.request_schema,
                "responses": op.responses.iter().map(|(s, r)| format!("{s} {r:?}")).collect::<Vec<_>>(),
            })
        })
        .collect();
    insta::assert_json_snapshot!("contract_operations", operations);
}
