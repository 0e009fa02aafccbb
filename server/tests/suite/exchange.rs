//! The exchange: CSR verification, nonce rules, fail-closed secrets, rate
//! limiting, persistence.

use chrono::Duration;
use oneprotect_server::error::TokenFailure;
use oneprotect_server::model::{
    AgentIdentityRecord, AgentStatus, AuditRecord, CertificateRecord, EnrollmentCommit, EnrollmentOutcome,
    OutboxEvent,
};
use reqwest::StatusCode;

use crate::harness::*;

async fn openssl_ec_and_rsa_csrs_enroll_with_their_public_key_recorded(backend: Backend) {
    let h = Harness::start(backend).await;
    for (args, algorithm) in [
        (vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "ecdsa-p256"),
        (vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"], "ecdsa-p384"),
        (vec!["-newkey", "rsa:2048"], "rsa"),
        (vec!["-newkey", "ed25519"], "ed25519"),
    ] {
        let (secret, _) = h.issue_token(TENANT_A, 1).await;
        let r = h.exchange(&h.exchange_body(&secret, &openssl_csr(&args))).await;
        assert_eq!(r.0, StatusCode::CREATED, "{algorithm}: {}", r.1);
        assert_eq!(r.1["certificate"]["public_key_algorithm"], algorithm);
        // The CA names the agent, not what the CSR asked for.
        assert_eq!(
            r.1["certificate"]["subject"],
            format!("CN={}", r.1["agent"]["agent_id"].as_str().expect("id"))
        );
        assert_eq!(r.1["agent"]["status"], "enrolled");
        assert_eq!(r.1["runtime_token"]["scope"], "agent_heartbeat");
    }
}

async fn broken_weak_and_garbage_csrs_are_rejected_without_consuming_the_token(backend: Backend) {
    let h = Harness::start(backend).await;
    let (secret, id) = h.issue_token(TENANT_A, 1).await;
    let good = openssl_csr(&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let der = pem_to_der(&good);
    let mut broken = der.clone();
    let last = broken.len() - 3;
    broken[last] ^= 0x55;
    let broken = der_to_pem(&broken);
    let weak = openssl_csr(&["-newkey", "rsa:1024"]);
    let sha1_rsa = openssl_csr(&["-newkey", "rsa:2048", "-sha1"]);
    let md5_rsa = openssl_csr(&["-newkey", "rsa:2048", "-md5"]);
    let sha1_ec = openssl_csr(&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-sha1"]);
    for (csr, what) in [
        (broken, "broken signature"),
        (weak, "1024-bit RSA"),
        (sha1_rsa, "SHA-1 with RSA"),
        (md5_rsa, "MD5 with RSA"),
        (sha1_ec, "ECDSA with SHA-1"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n".into(),
            "garbage",
        ),
        ("not pem at all".into(), "not PEM"),
    ] {
        let r = h.exchange(&h.exchange_body(&secret, &csr)).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, ProblemCode::CsrInvalid);
        if what.contains("SHA-1") || what.contains("MD5") {
            let detail = r.1["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains("weak or unsupported algorithm"),
                "{what}: refused for its algorithm, not another reason: {detail}"
            );
        }
        assert!(
            !r.1["detail"].as_str().unwrap_or_default().contains(csr_body(&csr)) || csr_body(&csr).is_empty(),
            "{what}: the CSR is not echoed"
        );
    }
    let mut body = h.exchange_body(&secret, &good);
    // The contract's pattern refuses a nonce that is not base64url before the service sees it.
    body["nonce"] = serde_json::Value::String("not a nonce, has spaces!!".into());
    let r = h.exchange(&body).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, ProblemCode::RequestInvalid);
    assert!(r.1["detail"].as_str().unwrap_or_default().contains("/nonce"), "{}", r.1);
    assert_eq!(
        h.token_metadata(TENANT_A, &id).await["use_count"],
        0,
        "malformed requests do not burn the token"
    );
    assert_eq!(
        h.exchange(&h.exchange_body(&secret, &good)).await.0,
        StatusCode::CREATED,
        "the token still works"
    );
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).expect("base64")
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
    format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", lines.join("\n"))
}

async fn a_replayed_nonce_is_rejected_and_consumes_nothing(backend: Backend) {
    let h = Harness::start(backend).await;
    let (secret, id) = h.issue_token(TENANT_A, 5).await;
    let body = h.exchange_body(&secret, &p256_csr());
    assert_eq!(h.exchange(&body).await.0, StatusCode::CREATED);
    assert_problem(&h.exchange(&body).await, StatusCode::CONFLICT, ProblemCode::NonceReplayed);
    assert_eq!(h.token_metadata(TENANT_A, &id).await["use_count"], 1, "the replay rolled back its token use");
    let audit = h.audit(TENANT_A).await;
    assert!(audit.iter().any(|a| a["reason_code"] == "nonce_replayed"));
}

async fn a_nonce_replayed_with_another_token_consumes_none_of_its_uses(backend: Backend) {
    let h = Harness::start(backend).await;
    let (first, _) = h.issue_token(TENANT_A, 1).await;
    let (second, second_id) = h.issue_token(TENANT_A, 2).await;
    let body = h.exchange_body(&first, &p256_csr());
    assert_eq!(h.exchange(&body).await.0, StatusCode::CREATED);
    let mut replay = body.clone();
    replay["enrollment_token"] = serde_json::Value::String(second.clone());
    assert_problem(&h.exchange(&replay).await, StatusCode::CONFLICT, ProblemCode::NonceReplayed);
    assert_eq!(
        h.token_metadata(TENANT_A, &second_id).await["use_count"],
        0,
        "the valid token kept both uses"
    );
    assert_eq!(h.exchange(&h.exchange_body(&second, &p256_csr())).await.0, StatusCode::CREATED);
    assert_eq!(h.exchange(&h.exchange_body(&second, &p256_csr())).await.0, StatusCode::CREATED);
}

async fn a_refused_token_is_answered_before_a_replayed_nonce(backend: Backend) {
    let h = Harness::start(backend).await;
    let (secret, id) = h.issue_token(TENANT_A, 1).await;
    let body = h.exchange_body(&secret, &p256_csr());
    assert_eq!(h.exchange(&body).await.0, StatusCode::CREATED);
    // The token is now exhausted and the nonce used: the token decides.
    assert_problem(&h.exchange(&body).await, StatusCode::UNAUTHORIZED, ProblemCode::EnrollmentTokenInvalid);
    assert_eq!(h.token_metadata(TENANT_A, &id).await["use_count"], 1);
    let audit = h.audit(TENANT_A).await;
    assert!(
        audit.iter().any(|a| a["reason_code"] == "token_exhausted"),
        "the audit names the token's reason"
    );
}

/// An enrollment write as the service builds it, with a given nonce hash.
fn enrollment(
    token_id: uuid::Uuid,
    tenant: &str,
    now: chrono::DateTime<chrono::Utc>,
    nonce_hash: &str,
) -> EnrollmentCommit {
    let (agent_id, certificate_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    EnrollmentCommit {
        token_id,
        now,
        nonce_hash: oneprotect_server::model::KeyedHash::from_stored(nonce_hash.into()),
        identity: AgentIdentityRecord {
            agent_id,
            tenant_id: tenant.into(),
            collector_id: uuid::Uuid::new_v4(),
            asset_id: uuid::Uuid::new_v4(),
            site_id: None,
            status: AgentStatus::Enrolled,
            hostname: Some("store.fixture".into()),
            agent_version: Some("0.1.0".into()),
            os_family: None,
            enrollment_token_id: token_id,
            certificate_id,
            previous_certificate_id: None,
            rotated_at: None,
            fingerprint_hash: None,
            enrolled_at: now,
            last_seen_at: None,
            last_sequence: None,
            revoked_at: None,
        },
        certificate: CertificateRecord {
            certificate_id,
            tenant_id: tenant.into(),
            agent_id,
            public_key_algorithm: "ecdsa-p256".into(),
            public_key_sha256: "00".repeat(32),
            subject: "CN=store.fixture".into(),
            serial_number: "01".into(),
            certificate_sha256: Some(oneprotect_server::secrets::sha256_hex(certificate_id.as_bytes())),
            not_before: now,
            not_after: now + Duration::days(1),
            status: oneprotect_server::model::CertificateStatus::Active,
        },
        audit: AuditRecord {
            audit_id: uuid::Uuid::new_v4(),
            tenant_id: tenant.into(),
            occurred_at: now,
            actor_type: oneprotect_server::model::ActorType::Anonymous,
            actor_id: "anonymous".into(),
            action: oneprotect_server::model::AuditAction::AgentExchange,
            target_type: "agent".into(),
            target_id: Some(agent_id.to_string()),
            outcome: oneprotect_server::model::AuditOutcome::Success,
            reason_code: None,
            request_id: "fixture".into(),
            details: Default::default(),
        },
        event: OutboxEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.into(),
            event_type: "agent.enrolled".into(),
            occurred_at: now,
            payload: r#"{"fixture":true}"#.into(),
        },
    }
}

/// The race the service's own token check cannot see: two exchanges that
/// both found the token redeemable reach the store with the same nonce.
async fn the_store_judges_the_token_before_the_nonce_and_a_refusal_writes_nothing(backend: Backend) {
    let h = Harness::start(backend).await;
    let now = h.clock_now();
    let (_, single) = h.issue_token(TENANT_A, 1).await;
    let (_, spare) = h.issue_token(TENANT_A, 1).await;
    let (single, spare) =
        (uuid::Uuid::parse_str(&single).expect("uuid"), uuid::Uuid::parse_str(&spare).expect("uuid"));
    let identities =
        || async { h.store.list_identities(TENANT_A, None, 200).await.expect("identities").items.len() };
    assert_eq!(
        h.store
            .commit_enrollment(&enrollment(single, TENANT_A, now, "fixture-nonce-hash"))
            .await
            .expect("commit"),
        EnrollmentOutcome::Enrolled
    );
    assert_eq!(
        h.store
            .commit_enrollment(&enrollment(single, TENANT_A, now, "fixture-nonce-hash"))
            .await
            .expect("commit"),
        EnrollmentOutcome::TokenRejected(TokenFailure::Exhausted),
        "an exhausted token is the answer, not the replayed nonce"
    );
    assert_eq!(
        h.store
            .commit_enrollment(&enrollment(spare, TENANT_A, now, "fixture-nonce-hash"))
            .await
            .expect("commit"),
        EnrollmentOutcome::NonceReplayed
    );
    assert_eq!(identities().await, 1, "refusals wrote no identity");
    assert_eq!(
        h.token_metadata(TENANT_A, &spare.to_string()).await["use_count"],
        0,
        "the replay consumed no use"
    );
    assert_eq!(
        h.store
            .commit_enrollment(&enrollment(spare, TENANT_A, now, "fixture-other-nonce-hash"))
            .await
            .expect("commit"),
        EnrollmentOutcome::Enrolled
    );
}

async fn a_missing_runtime_secret_fails_closed_with_nothing_written(backend: Backend) {
    let h = Harness::start_with(backend, Options { runtime_secret: None, ..Options::default() }).await;
    let (secret, id) = h.issue_token(TENANT_A, 1).await;
    let r = h.exchange(&h.exchange_body(&secret, &p256_csr())).await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, ProblemCode::RuntimeSecretUnavailable);
    assert_eq!(h.token_metadata(TENANT_A, &id).await["use_count"], 0);
    let (_, agents) = h.call(&ops::list_agents(), Some(&h.admin(TENANT_A)), None).await;
    assert_eq!(agents["items"].as_array().map(Vec::len), Some(0), "no identity was written");
    let rows = h.store.dump_all_rows().await.expect("dump");
    assert!(
        !rows.iter().any(|r| r.starts_with("agent_device_certificates:") || r.starts_with("agent_enrollment_nonces:")),
        "no certificate or nonce was written"
    );
    let hb = h.heartbeat(&uuid::Uuid::new_v4().to_string(), "oprt.v1.k.x.y", 1).await;
    assert_problem(&hb, StatusCode::SERVICE_UNAVAILABLE, ProblemCode::RuntimeSecretUnavailable);
}

async fn repeated_failed_exchanges_are_rate_limited_with_retry_after(backend: Backend) {
    let options = Options {
        policy: oneprotect_server::service::Policy { failure_limit: 3, ..Default::default() },
        ..Options::default()
    };
    let h = Harness::start_with(backend, options).await;
    let unknown = oneprotect_server::secrets::mint_enrollment_token();
    let unknown = secrecy::ExposeSecret::expose_secret(&unknown.secret).to_owned();
    for _ in 0..3 {
        assert_problem(
            &h.exchange(&h.exchange_body(&unknown, &p256_csr())).await,
            StatusCode::UNAUTHORIZED,
            ProblemCode::EnrollmentTokenInvalid,
        );
    }
    let (secret, _) = h.issue_token(TENANT_A, 1).await;
    let limited = h.exchange(&h.exchange_body(&secret, &p256_csr())).await;
    assert_problem(&limited, StatusCode::TOO_MANY_REQUESTS, ProblemCode::RateLimited);
    h.clock.advance(Duration::minutes(1));
    assert_eq!(
        h.exchange(&h.exchange_body(&secret, &p256_csr())).await.0,
        StatusCode::CREATED,
        "the window passes with the clock"
    );
}

/// Posts exchange bodies at once, each with an optional `X-Forwarded-For`; the statuses in order.
async fn exchange_all(h: &Harness, requests: Vec<(serde_json::Value, Option<String>)>) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for (i, (body, forwarded)) in requests.into_iter().enumerate() {
        let (http, url) = (h.http.clone(), format!("{}/api/v1/agent-enrollment/exchange", h.base));
        set.spawn(async move {
            let mut req = http.post(url).json(&body);
            if let Some(f) = forwarded {
                req = req.header("x-forwarded-for", f);
            }
            (i, req.send().await.expect("send").status().as_u16())
        });
    }
    let mut out = set.join_all().await;
    out.sort();
    out.into_iter().map(|(_, s)| s).collect()
}

/// The same token id with another secret. The secret part is base64url and
/// can itself contain `_`: the id is the second `_`-separated field.
fn wrong_secret_for(secret: &str) -> String {
    let mut fields = secret.splitn(3, '_');
    let (prefix, id) =
        (fields.next().expect("prefix"), fields.next().expect("an enrollment token has an id part"));
    format!("{prefix}_{id}_{}", "A".repeat(43))
}

/// Slots are taken before the work: 100 failures in flight at once against
/// a limit of 20 are 20 refusals of the token and 80 of the rate.
async fn a_parallel_burst_of_failed_exchanges_stops_exactly_at_the_limit(backend: Backend) {
    let options = Options {
        policy: oneprotect_server::service::Policy { failure_limit: 20, ..Default::default() },
        ..Options::default()
    };
    let h = Harness::start_with(backend, options).await;
    let unknown = oneprotect_server::secrets::mint_enrollment_token();
    let unknown = secrecy::ExposeSecret::expose_secret(&unknown.secret).to_owned();
    let csr = p256_csr();
    let statuses =
        exchange_all(&h, (0..100).map(|_| (h.exchange_body(&unknown, &csr), None)).collect()).await;
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 20, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 80, "{statuses:?}");
}

/// Failures count against the source, and against a token id only from the
/// source that failed on it: whoever sees a token id cannot lock out its
/// holder. Behind a trusted proxy the source is the client it names.
async fn failures_on_a_token_id_from_other_sources_never_lock_out_its_holder(backend: Backend) {
    let trusted =
        oneprotect_server::source::TrustedProxies::parse("127.0.0.1, ::1").expect("fixture proxies");
    let policy = oneprotect_server::service::Policy {
        failure_limit: 20,
        trusted_proxies: trusted,
        ..Default::default()
    };
    let h = Harness::start_with(backend, Options { policy, ..Options::default() }).await;
    let (secret, _) = h.issue_token(TENANT_A, 1).await;
    let wrong = wrong_secret_for(&secret);
    let csr = p256_csr();
    // 21 sources fail once each on the holder's token id, one source 20 times.
    let mut requests: Vec<_> =
        (0..21).map(|i| (h.exchange_body(&wrong, &csr), Some(format!("203.0.113.{i}")))).collect();
    requests.extend((0..20).map(|_| (h.exchange_body(&wrong, &csr), Some("198.51.100.9".to_owned()))));
    let statuses = exchange_all(&h, requests).await;
    assert!(statuses.iter().all(|s| *s == 401), "every failure is answered for what it is: {statuses:?}");
    let noisy =
        exchange_all(&h, vec![(h.exchange_body(&wrong, &csr), Some("198.51.100.9".to_owned()))]).await;
    assert_eq!(noisy, vec![429], "the source that failed 20 times is limited");
    let holder =
        exchange_all(&h, vec![(h.exchange_body(&secret, &p256_csr()), Some("192.0.2.50".to_owned()))]).await;
    assert_eq!(holder, vec![201], "the holder, from its own address, enrolls");
}

/// Without a trusted proxy, `X-Forwarded-For` is the client's own claim and
/// changes nothing: the peer is the source.
async fn an_untrusted_peer_cannot_spread_its_failures_with_x_forwarded_for(backend: Backend) {
    let options = Options {
        policy: oneprotect_server::service::Policy { failure_limit: 3, ..Default::default() },
        ..Options::default()
    };
    let h = Harness::start_with(backend, options).await;
    let unknown = oneprotect_server::secrets::mint_enrollment_token();
    let unknown = secrecy::ExposeSecret::expose_secret(&unknown.secret).to_owned();
    let csr = p256_csr();
    for i in 0..3 {
        let s =
            exchange_all(&h, vec![(h.exchange_body(&unknown, &csr), Some(format!("203.0.113.{i}")))]).await;
        assert_eq!(s, vec![401]);
    }
    let s = exchange_all(&h, vec![(h.exchange_body(&unknown, &csr), Some("203.0.113.99".to_owned()))]).await;
    assert_eq!(s, vec![429], "a fourth failure from the same peer is limited whatever it forwards");
}

/// Every refusal of the exchange the service decides is audited exactly
/// once, with its precise reason, under the tenant that can be known: none
/// before a token is verified, the token's once it is.
async fn every_exchange_refusal_is_audited_exactly_once_under_the_tenant_it_can_name(backend: Backend) {
    use oneprotect_server::secrets::{b64, random_bytes};
    use oneprotect_server::service::{ExchangeInput, RequestMeta};
    use secrecy::{ExposeSecret, SecretString};
    use serde_json::json;
    let h = Harness::start(backend).await;
    let p = platform(h.store.clone(), h.clock.clone(), &Options::default());
    let csr = p256_csr();
    let fresh_nonce = || b64(&random_bytes::<24>());
    let input = |token: &str, csr: &str, nonce: String, fingerprint: Option<&str>| ExchangeInput {
        enrollment_token: SecretString::from(token.to_owned()),
        csr_pem: csr.to_owned(),
        nonce: SecretString::from(nonce),
        hostname: "host-1.fixture".into(),
        agent_version: "0.1.0".into(),
        os_family: None,
        hardware_fingerprint_hash: fingerprint.map(|f| SecretString::from(f.to_owned())),
    };
    let meta = |id: &str| RequestMeta {
        request_id: id.to_owned(),
        request_id_from_caller: false,
        remote_addr: None,
        source: None,
    };

    let (two_uses, _) = h.issue_token(TENANT_A, 2).await;
    let (one_use, _) = h.issue_token(TENANT_A, 1).await;
    let (revoked, revoked_id) = h.issue_token(TENANT_A, 1).await;
    h.call(&ops::revoke_enrollment_token(&revoked_id), Some(&h.admin(TENANT_A)), Some(&json!({}))).await;
    let short_lived = h.issue(TENANT_A, json!({"ttl_seconds": 60})).await["enrollment_token"]
        .as_str()
        .expect("secret")
        .to_owned();
    let unknown = oneprotect_server::secrets::mint_enrollment_token();
    let unknown = unknown.secret.expose_secret().to_owned();
    let replayed_nonce = fresh_nonce();
    assert!(p.exchange(input(&one_use, &csr, fresh_nonce(), None), &meta("setup-1")).await.is_ok());
    assert!(p.exchange(input(&two_uses, &csr, replayed_nonce.clone(), None), &meta("setup-2")).await.is_ok());

    let cases: Vec<(&str, ExchangeInput, &str, &str)> = vec![
        ("nonce", input(&two_uses, &csr, "short".into(), None), "nonce_invalid", UNATTRIBUTED),
        ("csr", input(&two_uses, "not a csr", fresh_nonce(), None), "csr_invalid", UNATTRIBUTED),
        (
            "fingerprint",
            input(&two_uses, &csr, fresh_nonce(), Some(&"AB".repeat(32))),
            "request_invalid",
            UNATTRIBUTED,
        ),
        ("malformed", input("garbage", &csr, fresh_nonce(), None), "token_unknown", UNATTRIBUTED),
        ("unknown", input(&unknown, &csr, fresh_nonce(), None), "token_unknown", UNATTRIBUTED),
        (
            "wrong-secret",
            input(&wrong_secret_for(&two_uses), &csr, fresh_nonce(), None),
            "token_unknown",
            TENANT_A,
        ),
        ("revoked", input(&revoked, &csr, fresh_nonce(), None), "token_revoked", TENANT_A),
        ("exhausted", input(&one_use, &csr, fresh_nonce(), None), "token_exhausted", TENANT_A),
        ("replayed", input(&two_uses, &csr, replayed_nonce, None), "nonce_replayed", TENANT_A),
    ];
    h.clock.advance(Duration::seconds(61));
    let mut all = cases;
    all.push(("expired", input(&short_lived, &csr, fresh_nonce(), None), "token_expired", TENANT_A));
    for (name, case, reason, tenant) in all {
        let refused = p.exchange(case, &meta(name)).await;
        assert!(refused.is_err(), "{name}: refused");
        for t in [UNATTRIBUTED, TENANT_A] {
            let records: Vec<_> = h
                .store
                .list_audit(t, None, 200)
                .await
                .expect("audit")
                .items
                .into_iter()
                .filter(|a| a.request_id == name)
                .collect();
            let expected = usize::from(t == tenant);
            assert_eq!(records.len(), expected, "{name}: {expected} record(s) under {t}: {records:?}");
            if let Some(a) = records.first() {
                assert_eq!(
                    (a.action.as_str(), a.outcome.as_str(), a.reason_code.as_deref()),
                    ("agent.exchange", "failure", Some(reason)),
                    "{name}"
                );
            }
        }
    }
}

const UNATTRIBUTED: &str = oneprotect_server::model::UNATTRIBUTED_TENANT;

async fn restarting_keeps_tokens_identities_and_runtime_tokens(backend: Backend) {
    let h = Harness::start(backend).await;
    let (agent, runtime, _) = h.enroll(TENANT_A).await;
    let (secret, id) = h.issue_token(TENANT_A, 2).await;
    assert_eq!(h.heartbeat(&agent, &runtime, 1).await.0, StatusCode::OK);
    let mut h = h;
    let (clock, pg, sqlite_path, tmp) = h.take_for_restart();
    drop(h);
    let store = open_store(backend, pg.as_ref(), sqlite_path.as_deref()).await;
    let restarted = Harness::serve(store, clock, Options::default(), tmp, pg, sqlite_path).await;
    assert_eq!(restarted.token_metadata(TENANT_A, &id).await["use_count"], 0);
    let (status, v) = restarted.call(&ops::get_agent(&agent), Some(&restarted.admin(TENANT_A)), None).await;
    assert_eq!((status, v["status"].as_str()), (StatusCode::OK, Some("active")));
    assert_eq!(
        restarted.heartbeat(&agent, &runtime, 2).await.0,
        StatusCode::OK,
        "runtime tokens survive a restart"
    );
    assert_eq!(
        restarted.exchange(&restarted.exchange_body(&secret, &p256_csr())).await.0,
        StatusCode::CREATED
    );
}

crate::both_backends!(
    openssl_ec_and_rsa_csrs_enroll_with_their_public_key_recorded,
    broken_weak_and_garbage_csrs_are_rejected_without_consuming_the_token,
    a_replayed_nonce_is_rejected_and_consumes_nothing,
    a_nonce_replayed_with_another_token_consumes_none_of_its_uses,
    a_refused_token_is_answered_before_a_replayed_nonce,
    the_store_judges_the_token_before_the_nonce_and_a_refusal_writes_nothing,
    a_missing_runtime_secret_fails_closed_with_nothing_written,
    repeated_failed_exchanges_are_rate_limited_with_retry_after,
    a_parallel_burst_of_failed_exchanges_stops_exactly_at_the_limit,
    failures_on_a_token_id_from_other_sources_never_lock_out_its_holder,
    an_untrusted_peer_cannot_spread_its_failures_with_x_forwarded_for,
    every_exchange_refusal_is_audited_exactly_once_under_the_tenant_it_can_name,
    restarting_keeps_tokens_identities_and_runtime_tokens,
);

#[test]
fn a_wrong_secret_for_a_token_keeps_its_id_whatever_its_secret_contains() {
    use secrecy::ExposeSecret;
    for _ in 0..1000 {
        let minted = oneprotect_server::secrets::mint_enrollment_token();
        let secret = minted.secret.expose_secret();
        let wrong = wrong_secret_for(secret);
        assert_ne!(wrong, secret);
        assert_eq!(oneprotect_server::secrets::parse_enrollment_token(&wrong), Some(minted.id), "{secret}");
    }
}
