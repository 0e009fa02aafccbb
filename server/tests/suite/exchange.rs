//! The exchange: CSR verification, nonce rules, fail-closed secrets, rate
//! limiting, persistence.

use chrono::Duration;
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
        assert_eq!(r.1["certificate"]["subject"], "CN=openssl.fixture");
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
    for (csr, what) in [
        (broken, "broken signature"),
        (weak, "1024-bit RSA"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n".into(), "garbage"),
        ("not pem at all".into(), "not PEM"),
    ] {
        let r = h.exchange(&h.exchange_body(&secret, &csr)).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "csr_invalid");
        assert!(!r.1["detail"].as_str().unwrap_or_default().contains(csr_body(&csr)) || csr_body(&csr).is_empty(), "{what}: the CSR is not echoed");
    }
    let mut body = h.exchange_body(&secret, &good);
    body["nonce"] = serde_json::Value::String("not a nonce, has spaces!!".into());
    assert_problem(&h.exchange(&body).await, StatusCode::BAD_REQUEST, "nonce_invalid");
    assert_eq!(h.token_metadata(TENANT_A, &id).await["use_count"], 0, "malformed requests do not burn the token");
    assert_eq!(h.exchange(&h.exchange_body(&secret, &good)).await.0, StatusCode::CREATED, "the token still works");
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
    assert_problem(&h.exchange(&body).await, StatusCode::CONFLICT, "nonce_replayed");
    assert_eq!(h.token_metadata(TENANT_A, &id).await["use_count"], 1, "the replay rolled back its token use");
    let audit = h.audit(TENANT_A).await;
    assert!(audit.iter().any(|a| a["reason_code"] == "nonce_replayed"));
}

async fn a_missing_runtime_secret_fails_closed_with_nothing_written(backend: Backend) {
    let h = Harness::start_with(backend, Options { runtime_secret: None, ..Options::default() }).await;
    let (secret, id) = h.issue_token(TENANT_A, 1).await;
    let r = h.exchange(&h.exchange_body(&secret, &p256_csr())).await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "runtime_secret_unavailable");
    assert_eq!(h.token_metadata(TENANT_A, &id).await["use_count"], 0);
    let (_, agents) = h.call("listAgents", "GET", "/api/v1/agents", Some(&h.admin(TENANT_A)), None).await;
    assert_eq!(agents["items"].as_array().map(Vec::len), Some(0), "no identity was written");
    let rows = h.store.dump_all_rows().await.expect("dump");
    assert!(
        !rows.iter().any(|r| r.starts_with("agent_device_certificates:") || r.starts_with("agent_enrollment_nonces:")),
        "no certificate or nonce was written"
    );
    let hb = h.heartbeat(&uuid::Uuid::new_v4().to_string(), "oprt.v1.k.x.y", 1).await;
    assert_problem(&hb, StatusCode::SERVICE_UNAVAILABLE, "runtime_secret_unavailable");
}

async fn repeated_failed_exchanges_are_rate_limited_with_retry_after(backend: Backend) {
    let options = Options { policy: oneprotect_server::service::Policy { failure_limit: 3, ..Default::default() }, ..Options::default() };
    let h = Harness::start_with(backend, options).await;
    let unknown = oneprotect_server::secrets::mint_enrollment_token();
    let unknown = secrecy::ExposeSecret::expose_secret(&unknown.secret).to_owned();
    for _ in 0..3 {
        assert_problem(&h.exchange(&h.exchange_body(&unknown, &p256_csr())).await, StatusCode::UNAUTHORIZED, "enrollment_token_invalid");
    }
    let (secret, _) = h.issue_token(TENANT_A, 1).await;
    let limited = h.exchange(&h.exchange_body(&secret, &p256_csr())).await;
    assert_problem(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    h.clock.advance(Duration::minutes(1));
    assert_eq!(h.exchange(&h.exchange_body(&secret, &p256_csr())).await.0, StatusCode::CREATED, "the window passes with the clock");
}

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
    let (status, v) = restarted.call("getAgent", "GET", &format!("/api/v1/agents/{agent}"), Some(&restarted.admin(TENANT_A)), None).await;
    assert_eq!((status, v["status"].as_str()), (StatusCode::OK, Some("active")));
    assert_eq!(restarted.heartbeat(&agent, &runtime, 2).await.0, StatusCode::OK, "runtime tokens survive a restart");
    assert_eq!(restarted.exchange(&restarted.exchange_body(&secret, &p256_csr())).await.0, StatusCode::CREATED);
}

crate::both_backends!(
    openssl_ec_and_rsa_csrs_enroll_with_their_public_key_recorded,
    broken_weak_and_garbage_csrs_are_rejected_without_consuming_the_token,
    a_replayed_nonce_is_rejected_and_consumes_nothing,
    a_missing_runtime_secret_fails_closed_with_nothing_written,
    repeated_failed_exchanges_are_rate_limited_with_retry_after,
    restarting_keeps_tokens_identities_and_runtime_tokens,
);
