//! Enrollment token lifecycle, expiry, exhaustion, replay, concurrency and
//! admin authentication.

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

async fn token_lifecycle_is_visible_in_list_and_revocation_stops_exchange(backend: Backend) {
    let h = Harness::start(backend).await;
    let (secret, id) = h.issue_token(TENANT_A, 2).await;
    let meta = h.token_metadata(TENANT_A, &id).await;
    assert_eq!(
        (meta["status"].as_str(), meta["use_count"].as_u64(), meta["max_uses"].as_u64()),
        (Some("active"), Some(0), Some(2))
    );

    let (status, _) = h.exchange(&h.exchange_body(&secret, &p256_csr())).await;
    assert_eq!(status, StatusCode::CREATED);
    let meta = h.token_metadata(TENANT_A, &id).await;
    assert_eq!(meta["use_count"], 1);
    assert!(meta["last_used_at"].is_string(), "last_used_at is recorded: {meta}");

    let (status, revoked) = h
        .call(
            &ops::revoke_enrollment_token(&id),
            Some(&h.admin(TENANT_A)),
            Some(&json!({"reason": "rollout done"})),
        )
        .await;
    assert_eq!((status, revoked["status"].as_str()), (StatusCode::OK, Some("revoked")));
    let again = h.call(&ops::revoke_enrollment_token(&id), Some(&h.admin(TENANT_A)), Some(&json!({}))).await;
    assert_eq!(again.0, StatusCode::OK, "revoking twice is idempotent");

    let refused = h.exchange(&h.exchange_body(&secret, &p256_csr())).await;
    assert_problem(&refused, StatusCode::UNAUTHORIZED, ProblemCode::EnrollmentTokenInvalid);
    assert_eq!(h.token_metadata(TENANT_A, &id).await["use_count"], 1, "a refused exchange consumes nothing");

    let audit = h.audit(TENANT_A).await;
    assert!(
        audit.iter().any(|a| a["action"] == "agent.exchange"
            && a["outcome"] == "failure"
            && a["reason_code"] == "token_revoked"),
        "the precise reason is audited"
    );
    let events = h.events(TENANT_A).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for expected in [
        "agent.enrollment_token.issued",
        "agent.enrolled",
        "agent.enrollment_token.revoked",
        "agent.enrollment.failed",
    ] {
        assert!(types.contains(&expected), "{expected} emitted: {types:?}");
    }
    assert_eq!(
        types.iter().filter(|t| **t == "agent.enrollment_token.revoked").count(),
        1,
        "an idempotent revoke emits once"
    );
    let failed = events.iter().find(|e| e["type"] == "agent.enrollment.failed").expect("failed event");
    assert_eq!(failed["data"]["reason"], "token_revoked");
}

async fn expired_exhausted_unknown_and_revoked_tokens_get_the_same_public_answer(backend: Backend) {
    let h = Harness::start(backend).await;
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        v.as_object_mut().expect("object").remove("request_id");
        v
    };
    // Exhausted.
    let (once, _) = h.issue_token(TENANT_A, 1).await;
    assert_eq!(h.exchange(&h.exchange_body(&once, &p256_csr())).await.0, StatusCode::CREATED);
    let exhausted = h.exchange(&h.exchange_body(&once, &p256_csr())).await;
    // Unknown but well formed.
    let unknown_secret = oneprotect_server::secrets::mint_enrollment_token();
    let unknown = h
        .exchange(&h.exchange_body(secrecy::ExposeSecret::expose_secret(&unknown_secret.secret), &p256_csr()))
        .await;
    // Right id, wrong secret.
    let (real, _) = h.issue_token(TENANT_A, 5).await;
    let forged =
        format!("{}{}", &real[..real.len() - 4], if real.ends_with("AAAA") { "BBBB" } else { "AAAA" });
    let wrong_secret = h.exchange(&h.exchange_body(&forged, &p256_csr())).await;
    // Expired.
    let (soon, soon_id) = h.issue_token(TENANT_A, 5).await;
    h.clock.advance(Duration::seconds(3600));
    let expired = h.exchange(&h.exchange_body(&soon, &p256_csr())).await;
    assert_eq!(h.token_metadata(TENANT_A, &soon_id).await["status"], "expired");

    for r in [&exhausted, &unknown, &wrong_secret, &expired] {
        assert_problem(r, StatusCode::UNAUTHORIZED, ProblemCode::EnrollmentTokenInvalid);
        assert_eq!(strip(&r.1), strip(&exhausted.1), "no oracle: every invalid token gets the same body");
    }
    let reasons: Vec<String> =
        h.audit(TENANT_A).await.iter().filter_map(|a| a["reason_code"].as_str().map(str::to_owned)).collect();
    for reason in ["token_exhausted", "token_expired", "token_unknown"] {
        assert!(reasons.iter().any(|r| r == reason), "{reason} audited: {reasons:?}");
    }
}

async fn fifty_parallel_exchanges_against_a_three_use_token_create_exactly_three_identities(
    backend: Backend,
) {
    let h = std::sync::Arc::new(Harness::start(backend).await);
    let (secret, id) = h.issue_token(TENANT_A, 3).await;
    let bodies: Vec<_> = (0..50).map(|_| h.exchange_body(&secret, &p256_csr())).collect();
    let mut tasks = Vec::new();
    for body in bodies {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.exchange(&body).await.0 }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.expect("task") {
            StatusCode::CREATED => created += 1,
            StatusCode::UNAUTHORIZED => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 3);
    assert_eq!(h.token_metadata(TENANT_A, &id).await["use_count"], 3);
    let (_, agents) = h.call(&ops::list_agents().query("limit", 200), Some(&h.admin(TENANT_A)), None).await;
    assert_eq!(agents["items"].as_array().map(Vec::len), Some(3));
}

async fn issue_bounds_are_enforced_and_viewers_cannot_write(backend: Backend) {
    let h = Harness::start(backend).await;
    for body in [
        json!({"ttl_seconds": 59}),
        json!({"ttl_seconds": 2_592_001}),
        json!({"ttl_seconds": 3600, "max_uses": 0}),
        json!({"ttl_seconds": 3600, "max_uses": 10_001}),
        json!({"max_uses": 1}),
    ] {
        let r = h.call(&ops::issue_enrollment_token(), Some(&h.admin(TENANT_A)), Some(&body)).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, ProblemCode::RequestInvalid);
    }
    let viewer = h.viewer(TENANT_A);
    let r = h.call(&ops::issue_enrollment_token(), Some(&viewer), Some(&json!({"ttl_seconds": 3600}))).await;
    assert_problem(&r, StatusCode::FORBIDDEN, ProblemCode::Forbidden);
    let r = h.call(&ops::list_enrollment_tokens(), Some(&viewer), None).await;
    assert_eq!(r.0, StatusCode::OK, "viewers may read");
    let (_, v) = h
        .call(&ops::issue_enrollment_token(), Some(&h.admin(TENANT_A)), Some(&json!({"ttl_seconds": 3600})))
        .await;
    assert_eq!(v["token"]["max_uses"], 1, "max_uses defaults to 1");
    h.remember(v["enrollment_token"].as_str().unwrap_or_default());
}

async fn a_token_bound_to_a_site_and_collector_binds_every_identity_it_enrolls(backend: Backend) {
    let h = Harness::start(backend).await;
    let collector = uuid::Uuid::new_v4().to_string();
    let v = h
        .issue(
            TENANT_A,
            json!({"ttl_seconds": 3600, "max_uses": 2, "site_id": "lon-1", "collector_id": collector}),
        )
        .await;
    let secret = v["enrollment_token"].as_str().expect("secret").to_owned();
    for _ in 0..2 {
        let (status, enrolled) = h.exchange(&h.exchange_body(&secret, &p256_csr())).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            (enrolled["agent"]["site_id"].as_str(), enrolled["agent"]["collector_id"].as_str()),
            (Some("lon-1"), Some(collector.as_str()))
        );
    }
}

async fn forged_expired_and_confused_admin_tokens_are_rejected(backend: Backend) {
    let h = Harness::start(backend).await;
    let list = |t: String| {
        let h = &h;
        async move { h.call(&ops::list_agents(), Some(&t), None).await }
    };
    let now = h.clock_now();
    assert_problem(
        &list(h.admin_token(TENANT_A, &["tenant_admin"], now - Duration::minutes(5))).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::Unauthenticated,
    );
    assert_problem(
        &list(h.admin_token(TENANT_A, &["auditor"], now + Duration::hours(1))).await,
        StatusCode::UNAUTHORIZED,
        ProblemCode::Unauthenticated,
    );
    let b64 = |v: serde_json::Value| oneprotect_server::secrets::b64(v.to_string().as_bytes());
    let claims = json!({"sub": "x", "tenant_id": TENANT_A, "roles": ["tenant_admin"], "exp": (now + Duration::hours(1)).timestamp(), "iss": ISSUER, "aud": AUDIENCE});
    let alg_none = format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims.clone()));
    assert_problem(&list(alg_none).await, StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated);
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("someone-else");
    let wrong_aud = oneprotect_server::admin_auth::mint_hs256(
        ADMIN_SECRET,
        &serde_json::from_value(wrong_aud).expect("claims"),
    )
    .expect("mint");
    assert_problem(&list(wrong_aud).await, StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated);
    let other_key = oneprotect_server::admin_auth::mint_hs256(
        b"another-secret-that-is-long-enough-000000",
        &serde_json::from_value(claims.clone()).expect("claims"),
    )
    .expect("mint");
    assert_problem(&list(other_key).await, StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated);
    let mut bad_tenant = claims;
    bad_tenant["tenant_id"] = json!("_unattributed");
    let bad_tenant = oneprotect_server::admin_auth::mint_hs256(
        ADMIN_SECRET,
        &serde_json::from_value(bad_tenant).expect("claims"),
    )
    .expect("mint");
    assert_problem(&list(bad_tenant).await, StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated);
}

/// The credential is judged before anything else: an unauthenticated
/// caller learns nothing of the validation rules, and a viewer is refused a
/// write whatever it sends. Each refusal is audited once, nothing is written.
async fn the_credential_is_judged_before_the_body(backend: Backend) {
    let h = Harness::start(backend).await;
    let invalid = json!({"ttl_seconds": 0});
    let forged = h.admin_token(TENANT_A, &["tenant_admin"], h.clock_now() + Duration::hours(1)) + "x";
    let r = h.call(&ops::issue_enrollment_token(), Some(&forged), Some(&invalid)).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated);
    assert!(!r.1.to_string().contains("ttl_seconds"), "the refusal says nothing about the body: {}", r.1);

    let r = h.call(&ops::issue_enrollment_token(), Some(&h.viewer(TENANT_A)), Some(&invalid)).await;
    assert_problem(&r, StatusCode::FORBIDDEN, ProblemCode::Forbidden);
    let r = h.call(&ops::revoke_agent("not-a-uuid"), Some(&h.viewer(TENANT_A)), Some(&json!([]))).await;
    assert_problem(&r, StatusCode::FORBIDDEN, ProblemCode::Forbidden);

    let (agent, runtime, _) = h.enroll(TENANT_A).await;
    let override_body = json!({"sequence": 1, "collected_at": "2026-11-22T10:00:00Z", "hostname": "h", "agent_version": "v", "tenant_id": TENANT_B});
    let r =
        h.call(&ops::post_agent_heartbeat(&agent), Some(&format!("{runtime}x")), Some(&override_body)).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, ProblemCode::RuntimeTokenInvalid);
    // With a valid credential the same body is judged, and refused for what it is.
    let r = h.call(&ops::post_agent_heartbeat(&agent), Some(&runtime), Some(&override_body)).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, ProblemCode::IdentityOverrideRejected);
    let r = h.call(&ops::post_agent_heartbeat("not-a-uuid"), Some(&runtime), Some(&override_body)).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, ProblemCode::ParameterInvalid);

    let (_, tokens) = h.call(&ops::list_enrollment_tokens(), Some(&h.admin(TENANT_A)), None).await;
    assert_eq!(
        tokens["items"].as_array().map(Vec::len),
        Some(1),
        "only the enrollment's own token exists: {tokens}"
    );
    let audit = h.audit(TENANT_A).await;
    let forbidden: Vec<_> = audit.iter().filter(|a| a["reason_code"] == "forbidden").collect();
    assert_eq!(forbidden.len(), 2, "each viewer refusal audited once under its tenant: {audit:?}");
    assert!(
        forbidden.iter().any(|a| a["action"] == "enrollment_token.issue")
            && forbidden.iter().any(|a| a["action"] == "agent.revoke")
    );
}

/// Audit records name where a request came from (resolved through trusted
/// proxies) and whether its request id was the caller's.
async fn audit_records_carry_the_source_address_and_a_caller_request_id_is_marked(backend: Backend) {
    let trusted =
        oneprotect_server::source::TrustedProxies::parse("127.0.0.1, ::1").expect("fixture proxies");
    let policy = oneprotect_server::service::Policy {
        trusted_proxies: trusted,
        failure_limit: 10_000,
        ..Default::default()
    };
    let h = Harness::start_with(backend, Options { policy, ..Options::default() }).await;
    let resp = h
        .http
        .post(format!("{}/api/v1/agent-enrollment/tokens", h.base))
        .bearer_auth(h.viewer(TENANT_A))
        .header("x-request-id", "caller-chosen-1")
        .header("x-forwarded-for", "203.0.113.77")
        .json(&json!({"ttl_seconds": 600}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    h.issue_token(TENANT_A, 1).await;
    let audit = h.audit(TENANT_A).await;
    let refused =
        audit.iter().find(|a| a["request_id"] == "caller-chosen-1").expect("the refusal is audited");
    assert_eq!(
        refused["details"]["source_address"], "203.0.113.77",
        "the client the trusted proxy names: {refused}"
    );
    assert_eq!(refused["details"]["request_id_origin"], "caller");
    let issued = audit
        .iter()
        .find(|a| a["action"] == "enrollment_token.issue" && a["outcome"] == "success")
        .expect("issue audited");
    assert_eq!(
        issued["details"]["source_address"], "127.0.0.1",
        "without a forwarded client, the peer: {issued}"
    );
    assert!(
        issued["details"].get("request_id_origin").is_none(),
        "a server-made request id is not marked: {issued}"
    );
}

crate::both_backends!(
    audit_records_carry_the_source_address_and_a_caller_request_id_is_marked,
    the_credential_is_judged_before_the_body,
    token_lifecycle_is_visible_in_list_and_revocation_stops_exchange,
    expired_exhausted_unknown_and_revoked_tokens_get_the_same_public_answer,
    fifty_parallel_exchanges_against_a_three_use_token_create_exactly_three_identities,
    issue_bounds_are_enforced_and_viewers_cannot_write,
    a_token_bound_to_a_site_and_collector_binds_every_identity_it_enrolls,
    forged_expired_and_confused_admin_tokens_are_rejected,
);
