//! Identity-bound heartbeat: every refusal has its code and an audit
//! record; duplicates are idempotent; rotation supersedes old tokens.

use chrono::Duration;
use oneprotect_server::runtime_token::{RuntimeClaims, claims_for};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::harness::*;

fn claims_of(enrolled: &serde_json::Value, now: chrono::DateTime<chrono::Utc>) -> RuntimeClaims {
    let id =
        |p: &str| Uuid::parse_str(enrolled.pointer(p).and_then(|v| v.as_str()).expect("id")).expect("uuid");
    claims_for(
        TENANT_A,
        id("/agent/agent_id"),
        id("/agent/collector_id"),
        id("/agent/asset_id"),
        id("/agent/certificate_id"),
        now,
        Duration::hours(1),
    )
}

async fn audited_failures(h: &Harness, tenant: &str, reason: &str) -> usize {
    h.audit(tenant)
        .await
        .iter()
        .filter(|a| {
            a["action"] == "agent.heartbeat" && a["outcome"] == "failure" && a["reason_code"] == reason
        })
        .count()
}

async fn accepted_heartbeats_activate_the_identity_and_duplicates_emit_no_second_event(backend: Backend) {
    let h = Harness::start(backend).await;
    let (agent, runtime, _) = h.enroll(TENANT_A).await;
    let first = h.heartbeat(&agent, &runtime, 7).await;
    assert_eq!(
        (first.0, first.1["duplicate"].as_bool(), first.1["status"].as_str()),
        (StatusCode::OK, Some(false), Some("active"))
    );
    let dup = h.heartbeat(&agent, &runtime, 7).await;
    assert_eq!((dup.0, dup.1["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
    let older = h.heartbeat(&agent, &runtime, 3).await;
    assert_eq!(older.1["duplicate"], true, "an older sequence is a replay, acknowledged without effect");
    assert_eq!(h.heartbeat(&agent, &runtime, 8).await.1["duplicate"], false);
    let events = h.events(TENANT_A).await;
    let count = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert_eq!(count("asset.discovered"), 1);
    assert_eq!(count("asset.telemetry.received"), 2, "two distinct sequences, two events");
    let position = |t: &str| events.iter().position(|e| e["type"] == t);
    assert!(
        position("asset.discovered") < position("asset.telemetry.received"),
        "the asset is announced before its telemetry"
    );
    let (_, v) = h.call(&ops::get_agent(&agent), Some(&h.admin(TENANT_A)), None).await;
    assert_eq!((v["status"].as_str(), v["hostname"].as_str()), (Some("active"), Some("host-1.fixture")));
    assert!(v["last_seen_at"].is_string());
}

async fn tampered_expired_unknown_key_and_wrong_scope_runtime_tokens_fail_closed(backend: Backend) {
    let h = Harness::start(backend).await;
    let (agent, runtime, enrolled) = h.enroll(TENANT_A).await;
    let parts: Vec<&str> = runtime.split('.').collect();
    let mut forged = claims_of(&enrolled, h.clock_now());
    forged.tenant_id = TENANT_B.into();
    let tampered_payload = format!(
        "{}.{}.{}.{}.{}",
        parts[0],
        parts[1],
        parts[2],
        oneprotect_server::secrets::b64(&serde_json::to_vec(&forged).expect("json")),
        parts[4]
    );
    assert_problem(
        &h.heartbeat(&agent, &tampered_payload, 1).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::RuntimeTokenInvalid,
    );
    let flipped = if parts[4].starts_with('A') { "B" } else { "A" };
    let tampered_sig =
        format!("{}.{}.{}.{}.{flipped}{}", parts[0], parts[1], parts[2], parts[3], &parts[4][1..]);
    assert_problem(
        &h.heartbeat(&agent, &tampered_sig, 1).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::RuntimeTokenInvalid,
    );
    let unknown_kid = format!("{}.{}.kdeadbeef0000.{}.{}", parts[0], parts[1], parts[3], parts[4]);
    assert_problem(
        &h.heartbeat(&agent, &unknown_kid, 1).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::RuntimeTokenInvalid,
    );
    let mut scoped = claims_of(&enrolled, h.clock_now());
    scoped.scope = "agent_admin".into();
    assert_problem(
        &h.heartbeat(&agent, &h.runtime_token_for(&scoped), 1).await,
        StatusCode::FORBIDDEN,
        ProblemCode::ScopeForbidden,
    );
    let mut user = claims_of(&enrolled, h.clock_now());
    user.sub_type = "user".into();
    assert_problem(
        &h.heartbeat(&agent, &h.runtime_token_for(&user), 1).await,
        StatusCode::FORBIDDEN,
        ProblemCode::NotServiceAccount,
    );
    assert_problem(
        &h.heartbeat(&agent, &h.admin(TENANT_A), 1).await,
        StatusCode::FORBIDDEN,
        ProblemCode::NotServiceAccount,
    );
    h.clock.advance(Duration::hours(25));
    assert_problem(
        &h.heartbeat(&agent, &runtime, 1).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::RuntimeTokenInvalid,
    );
    let reasons: Vec<String> = h
        .audit(TENANT_A)
        .await
        .iter()
        .chain(h.audit(TENANT_B).await.iter())
        .filter_map(|a| a["reason_code"].as_str().map(str::to_owned))
        .collect();
    for r in ["scope_forbidden", "not_service_account"] {
        assert!(reasons.iter().any(|x| x == r), "{r} audited in the tenant: {reasons:?}");
    }
    let unattributed =
        h.store.list_audit(oneprotect_server::model::UNATTRIBUTED_TENANT, None, 200).await.expect("audit");
    let reasons: Vec<&str> = unattributed.items.iter().filter_map(|a| a.reason_code.as_deref()).collect();
    for r in ["runtime_token_bad_signature", "runtime_token_unknown_key", "runtime_token_expired"] {
        assert!(reasons.contains(&r), "{r} audited (unattributed): {reasons:?}");
    }
}

async fn unknown_revoked_stale_actor_and_collector_mismatches_each_get_their_code_and_an_audit_record(
    backend: Backend,
) {
    let h = Harness::start(backend).await;
    let (agent, runtime, enrolled) = h.enroll(TENANT_A).await;
    let (other_agent, _, _) = h.enroll(TENANT_A).await;

    let r = h.heartbeat(&other_agent, &runtime, 1).await;
    assert_problem(&r, StatusCode::FORBIDDEN, ProblemCode::ActorMismatch);
    assert_eq!(audited_failures(&h, TENANT_A, "actor_mismatch").await, 1);

    let mut wrong_collector = claims_of(&enrolled, h.clock_now());
    wrong_collector.collector_id = Uuid::new_v4();
    assert_problem(
        &h.heartbeat(&agent, &h.runtime_token_for(&wrong_collector), 1).await,
        StatusCode::FORBIDDEN,
        ProblemCode::CollectorMismatch,
    );
    assert_eq!(audited_failures(&h, TENANT_A, "collector_mismatch").await, 1);

    let ghost_id = Uuid::new_v4();
    let mut ghost = claims_of(&enrolled, h.clock_now());
    ghost.agent_id = ghost_id;
    assert_problem(
        &h.heartbeat(&ghost_id.to_string(), &h.runtime_token_for(&ghost), 1).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::IdentityUnknown,
    );
    assert_eq!(audited_failures(&h, TENANT_A, "identity_unknown").await, 1);

    let mut cross = claims_of(&enrolled, h.clock_now());
    cross.tenant_id = TENANT_B.into();
    assert_problem(
        &h.heartbeat(&agent, &h.runtime_token_for(&cross), 1).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::IdentityUnknown,
    );

    assert_eq!(h.heartbeat(&agent, &runtime, 1).await.0, StatusCode::OK);
    let r = h
        .call(&ops::revoke_agent(&agent), Some(&h.admin(TENANT_A)), Some(&json!({"reason": "lost laptop"})))
        .await;
    assert_eq!((r.0, r.1["status"].as_str()), (StatusCode::OK, Some("revoked")));
    assert_problem(
        &h.heartbeat(&agent, &runtime, 2).await,
        StatusCode::FORBIDDEN,
        ProblemCode::IdentityRevoked,
    );
    assert_eq!(audited_failures(&h, TENANT_A, "identity_revoked").await, 1);
    assert!(h.events(TENANT_A).await.iter().any(|e| e["type"] == "agent.revoked"));
    assert!(
        h.store
            .dump_all_rows()
            .await
            .expect("dump")
            .iter()
            .any(|r| r.starts_with("agent_revocations:") && r.contains(&agent))
    );

    let (stale_agent, _, _) = h.enroll(TENANT_A).await;
    h.clock.advance(Duration::days(8));
    // The enrollment token expired long ago; a fresh one reaches the staleness rule.
    let identity = h
        .store
        .get_identity(TENANT_A, Uuid::parse_str(&stale_agent).expect("uuid"))
        .await
        .expect("get")
        .expect("exists");
    let fresh = h.runtime_token_for(&claims_for(
        TENANT_A,
        identity.agent_id,
        identity.collector_id,
        identity.asset_id,
        identity.certificate_id,
        h.clock_now(),
        Duration::hours(1),
    ));
    assert_problem(
        &h.heartbeat(&stale_agent, &fresh, 1).await,
        StatusCode::FORBIDDEN,
        ProblemCode::IdentityStale,
    );
    assert_eq!(audited_failures(&h, TENANT_A, "identity_stale").await, 1);
    let (_, v) = h.call(&ops::get_agent(&stale_agent), Some(&h.admin(TENANT_A)), None).await;
    assert_eq!(v["status"], "stale");
}

async fn rotation_issues_a_new_token_and_supersedes_the_old_one_after_the_grace_period(backend: Backend) {
    let h = Harness::start(backend).await;
    let (agent, old, enrolled) = h.enroll(TENANT_A).await;
    let nonce = oneprotect_server::secrets::b64(&oneprotect_server::secrets::random_bytes::<24>());
    h.remember(&nonce);
    let csr = p256_csr();
    h.remember(csr_body(&csr));
    let body = json!({"csr_pem": csr, "nonce": nonce});
    let (status, rotated) = h.call(&ops::rotate_agent_certificate(&agent), Some(&old), Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["runtime_token"]["token"].as_str().expect("token").to_owned();
    h.remember(&new);
    assert_ne!(rotated["certificate"]["certificate_id"], enrolled["certificate"]["certificate_id"]);
    assert_eq!(h.heartbeat(&agent, &new, 1).await.0, StatusCode::OK);
    assert_eq!(
        h.heartbeat(&agent, &old, 2).await.0,
        StatusCode::OK,
        "the old token works during the grace period"
    );
    let replay = h.call(&ops::rotate_agent_certificate(&agent), Some(&new), Some(&body)).await;
    assert_problem(&replay, StatusCode::CONFLICT, ProblemCode::NonceReplayed);
    // The grace runs from the rotation, not from the last heartbeat: late
    // in it the old token still works, just after it the old token fails.
    h.clock.advance(Duration::minutes(4));
    assert_eq!(
        h.heartbeat(&agent, &old, 3).await.0,
        StatusCode::OK,
        "the old token works until the grace period ends"
    );
    h.clock.advance(Duration::minutes(2));
    assert_problem(
        &h.heartbeat(&agent, &old, 4).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::RuntimeTokenInvalid,
    );
    assert_eq!(h.heartbeat(&agent, &new, 5).await.0, StatusCode::OK);
    assert!(h.events(TENANT_A).await.iter().any(|e| e["type"] == "agent.certificate.rotated"));
}

async fn heartbeat_from(h: &Harness, agent: &str, runtime: &str, sequence: u64, hostname: &str) {
    let body = json!({"sequence": sequence, "collected_at": "2026-11-22T10:00:00Z", "hostname": hostname, "agent_version": "0.1.0", "os_family": "linux"});
    let (status, v) = h.call(&ops::post_agent_heartbeat(agent), Some(runtime), Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

async fn the_asset_row_follows_its_facts_at_once_and_its_last_seen_time_at_the_resolution(backend: Backend) {
    use oneprotect_server::model::{ASSET_LAST_SEEN_RESOLUTION, AssetRecord};
    let h = Harness::start(backend).await;
    let (agent, runtime, enrolled) = h.enroll(TENANT_A).await;
    let asset_id = Uuid::parse_str(enrolled["agent"]["asset_id"].as_str().expect("asset")).expect("uuid");
    let asset = |h: &Harness| {
        let store = h.store.clone();
        async move { store.get_asset(TENANT_A, asset_id).await.expect("read").expect("asset row") }
    };
    let t0 = h.clock_now();
    heartbeat_from(&h, &agent, &runtime, 1, "host-1.fixture").await;
    let created: AssetRecord = asset(&h).await;
    assert_eq!(
        (created.hostname.as_deref(), created.first_seen_at, created.last_seen_at),
        (Some("host-1.fixture"), t0, t0)
    );
    // Unchanged facts within the resolution: the row is left alone.
    h.clock.advance(ASSET_LAST_SEEN_RESOLUTION - Duration::seconds(1));
    heartbeat_from(&h, &agent, &runtime, 2, "host-1.fixture").await;
    assert_eq!(asset(&h).await.last_seen_at, t0);
    // A changed fact is written at once.
    h.clock.advance(Duration::milliseconds(500));
    heartbeat_from(&h, &agent, &runtime, 3, "host-1.renamed.fixture").await;
    let renamed = asset(&h).await;
    assert_eq!(
        (renamed.hostname.as_deref(), renamed.last_seen_at),
        (Some("host-1.renamed.fixture"), h.clock_now())
    );
    // Unchanged for a whole resolution: last_seen_at is refreshed.
    h.clock.advance(ASSET_LAST_SEEN_RESOLUTION);
    heartbeat_from(&h, &agent, &runtime, 4, "host-1.renamed.fixture").await;
    assert_eq!(asset(&h).await.last_seen_at, h.clock_now());
    // The identity's own last_seen_at is exact on every heartbeat.
    h.clock.advance(Duration::seconds(1));
    heartbeat_from(&h, &agent, &runtime, 5, "host-1.renamed.fixture").await;
    let identity = h
        .store
        .get_identity(TENANT_A, Uuid::parse_str(&agent).expect("uuid"))
        .await
        .expect("read")
        .expect("identity");
    assert_eq!(identity.last_seen_at, Some(h.clock_now()));
    assert_eq!(asset(&h).await.first_seen_at, t0);
}

/// `/metrics` describes every series (`# HELP`, `# TYPE`) and times each
/// route by its template, method and status.
async fn metrics_describe_every_series_and_time_each_route(backend: Backend) {
    let h = Harness::start(backend).await;
    let (agent, runtime, _) = h.enroll(TENANT_A).await;
    assert_eq!(h.heartbeat(&agent, &runtime, 1).await.0, StatusCode::OK);
    let text =
        h.http.get(format!("{}/metrics", h.base)).send().await.expect("send").text().await.expect("text");
    let types: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    assert!(types.len() >= 3, "{text}");
    for name in &types {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP line: {text}");
    }
    let route = "route=\"/api/v1/agents/{agent_id}/telemetry/heartbeat\",method=\"POST\",status=\"200\"";
    assert!(text.contains(&format!("oneprotect_http_request_duration_seconds_count{{{route}}} 1")), "{text}");
    assert!(!text.contains(&agent), "series are labelled by route template, never by an id: {text}");
    // The heartbeat went through the store's writer: one batch at least,
    // nothing left waiting.
    let sample =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok());
    assert_eq!(sample("oneprotect_store_write_queue_depth"), Some(0), "{text}");
    assert!(sample("oneprotect_store_write_batch_size_count").is_some_and(|n| n >= 1), "{text}");
    assert!(
        sample("oneprotect_store_write_batch_size_sum") >= sample("oneprotect_store_write_batch_size_count"),
        "{text}"
    );
}

/// The deployment serves the contract it implements, whole: every
/// top-level field survives the typed answer.
async fn the_served_contracts_are_the_ones_the_server_was_built_from(backend: Backend) {
    let h = Harness::start(backend).await;
    let resp = h.http.get(format!("{}/api/v1/openapi.json", h.base)).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let served: serde_json::Value = resp.json().await.expect("json");
    let built: serde_json::Value =
        serde_json::from_str(oneprotect_contracts::contract::OPENAPI_JSON).expect("embedded contract");
    assert_eq!(served, built, "the served document is the embedded one, nothing dropped");
    assert!(served["components"]["schemas"]["Problem"].is_object());
    let resp = h.http.get(format!("{}/api/v1/asyncapi.json", h.base)).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let served: serde_json::Value = resp.json().await.expect("json");
    let built: serde_json::Value =
        serde_json::from_str(oneprotect_contracts::contract::ASYNCAPI_JSON).expect("embedded event contract");
    assert_eq!(served, built, "the served event contract is the embedded one, nothing dropped");
    assert!(served["channels"].as_object().is_some_and(|c| !c.is_empty()));
}

crate::both_backends!(
    the_served_contracts_are_the_ones_the_server_was_built_from,
    metrics_describe_every_series_and_time_each_route,
    accepted_heartbeats_activate_the_identity_and_duplicates_emit_no_second_event,
    tampered_expired_unknown_key_and_wrong_scope_runtime_tokens_fail_closed,
    unknown_revoked_stale_actor_and_collector_mismatches_each_get_their_code_and_an_audit_record,
    rotation_issues_a_new_token_and_supersedes_the_old_one_after_the_grace_period,
    the_asset_row_follows_its_facts_at_once_and_its_last_seen_time_at_the_resolution,
);
