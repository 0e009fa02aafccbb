//! Two server replicas on one PostgreSQL database: the protections that
//! live in the database hold across them (token uses, nonce replay,
//! revocation, the failed-exchange limit).

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

/// Two platforms, each with its own store connection pool and HTTP
/// listener, on one throwaway PostgreSQL database.
async fn two_replicas() -> (Harness, Harness) {
    two_replicas_with(Options::default).await
}

async fn two_replicas_with(options: impl Fn() -> Options) -> (Harness, Harness) {
    let pg = PgDatabase::create().await;
    let first = open_store(Backend::Postgres, Some(&pg), None).await;
    let second = open_store(Backend::Postgres, Some(&pg), None).await;
    let clock = || Arc::new(oneprotect_server::clock::ManualClock::new(t0()));
    // The first replica owns the database (and drops it at the end).
    let a = Harness::serve(first, clock(), options(), None, Some(pg), None).await;
    let b = Harness::serve(second, clock(), options(), None, None, None).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_k_use_token_exchanged_concurrently_through_two_replicas_enrolls_exactly_k_agents() {
    let (a, b) = two_replicas().await;
    let (secret, id) = a.issue_token(TENANT_A, 5).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..12 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let (http, url, body) = (
            replica.http.clone(),
            format!("{}/api/v1/agent-enrollment/exchange", replica.base),
            a.exchange_body(&secret, &p256_csr()),
        );
        set.spawn(async move {
            let resp = http.post(url).json(&body).send().await.expect("send");
            let status = resp.status();
            let code = resp
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned));
            (status, code)
        });
    }
    let answers = set.join_all().await;
    let created = answers.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
    let refused = answers
        .iter()
        .filter(|(s, c)| *s == StatusCode::UNAUTHORIZED && c.as_deref() == Some("enrollment_token_invalid"))
        .count();
    assert_eq!((created, refused), (5, 7), "{answers:?}");
    assert_eq!(b.token_metadata(TENANT_A, &id).await["use_count"], 5);
    let (_, agents) = b.call(&ops::list_agents().query("limit", 200), Some(&b.admin(TENANT_A)), None).await;
    assert_eq!(agents["items"].as_array().map(Vec::len), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_through_one_replica_refuses_the_next_heartbeat_through_the_other() {
    let (a, b) = two_replicas().await;
    let (agent, token, _) = a.enroll(TENANT_A).await;
    assert_eq!(b.heartbeat(&agent, &token, 1).await.0, StatusCode::OK);
    let (status, _) = a
        .call(&ops::revoke_agent(&agent), Some(&a.admin(TENANT_A)), Some(&json!({"reason": "replicas"})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let r = b.heartbeat(&agent, &token, 2).await;
    assert_problem(&r, StatusCode::FORBIDDEN, ProblemCode::IdentityRevoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_used_through_one_replica_is_a_replay_through_the_other() {
    let (a, b) = two_replicas().await;
    let (first, _) = a.issue_token(TENANT_A, 1).await;
    let (second, second_id) = a.issue_token(TENANT_A, 1).await;
    let body = a.exchange_body(&first, &p256_csr());
    assert_eq!(a.exchange(&body).await.0, StatusCode::CREATED);
    let mut replay = b.exchange_body(&second, &p256_csr());
    replay["nonce"] = body["nonce"].clone();
    let r = b.exchange(&replay).await;
    assert_problem(&r, StatusCode::CONFLICT, ProblemCode::NonceReplayed);
    assert_eq!(a.token_metadata(TENANT_A, &second_id).await["use_count"], 0, "the replay consumed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_exchanges_spread_across_two_replicas_trip_the_limit_at_the_configured_count() {
    const LIMIT: u32 = 6;
    let (a, b) = two_replicas_with(|| Options {
        policy: oneprotect_server::service::Policy { failure_limit: LIMIT, ..Default::default() },
        ..Options::default()
    })
    .await;
    let unknown = oneprotect_server::secrets::mint_enrollment_token();
    let unknown = secrecy::ExposeSecret::expose_secret(&unknown.secret).to_owned();
    // 20 failing attempts from one source, at once, half through each replica.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let (http, url, body) = (
            replica.http.clone(),
            format!("{}/api/v1/agent-enrollment/exchange", replica.base),
            a.exchange_body(&unknown, &p256_csr()),
        );
        set.spawn(async move { http.post(url).json(&body).send().await.expect("send").status() });
    }
    let answers = set.join_all().await;
    let failed = answers.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let limited = answers.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((failed, limited), (LIMIT as usize, 20 - LIMIT as usize), "{answers:?}");
    // The budget is spent on both: a valid token is refused through either.
    let (secret, _) = a.issue_token(TENANT_A, LIMIT + 1).await;
    for replica in [&a, &b] {
        let r = replica.exchange(&replica.exchange_body(&secret, &p256_csr())).await;
        assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, ProblemCode::RateLimited);
    }
    // The window passes by the platform's clock, on both replicas (to a
    // time finer than the database keeps, as a real clock's is).
    let later = chrono::Duration::minutes(1) + chrono::Duration::nanoseconds(123_456_789);
    a.clock.advance(later);
    b.clock.advance(later);
    // A success gives its slot back: more successes than the limit pass.
    for i in 0..=LIMIT {
        let replica = if i % 2 == 0 { &a } else { &b };
        let r = replica.exchange(&replica.exchange_body(&secret, &p256_csr())).await;
        assert_eq!(r.0, StatusCode::CREATED, "success {i}: {r:?}");
    }
}
