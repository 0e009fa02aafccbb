//! Agent calls authenticated by mutual TLS: the server's own TLS listener,
//! real client certificates issued by the exchange and the rotation, and
//! every identity rule applied to the certificate as to a runtime token.

use chrono::Duration;
use oneprotect_server::service::{AgentAuth, Policy};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;

async fn start(backend: Backend, agent_auth: AgentAuth) -> Harness {
    let policy = Policy { agent_auth, failure_limit: 10_000, ..Policy::default() };
    Harness::start_with(backend, Options { policy, tls: true, ..Options::default() }).await
}

/// An enrolled agent of the harness: its id, runtime token and a client
/// presenting its certificate.
struct Agent {
    id: String,
    token: String,
    tls: reqwest::Client,
    /// The certificate and key, PEM.
    identity: String,
    enrolled: Value,
}

fn new_key_and_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("CSR").pem().expect("PEM");
    (key.serialize_pem(), csr)
}

async fn enroll(h: &Harness, tenant: &str) -> Agent {
    let (key, csr) = new_key_and_csr();
    let (secret, _) = h.issue_token(tenant, 1).await;
    let (status, enrolled) = h.exchange(&h.exchange_body(&secret, &csr)).await;
    assert_eq!(status, StatusCode::CREATED, "{enrolled}");
    let identity = format!("{}{key}", enrolled["certificate_pem"].as_str().expect("certificate"));
    Agent {
        id: enrolled["agent"]["agent_id"].as_str().expect("agent").to_owned(),
        token: enrolled["runtime_token"]["token"].as_str().expect("token").to_owned(),
        tls: tls_client(&test_ca(), Some(&identity)),
        identity,
        enrolled,
    }
}

async fn heartbeat(
    h: &Harness,
    via: &reqwest::Client,
    path_agent: &str,
    bearer: Option<&str>,
    seq: u64,
) -> (StatusCode, Value) {
    h.call_via(via, &ops::post_agent_heartbeat(path_agent), bearer, Some(&heartbeat_body(seq))).await
}

/// Rotates with the agent's certificate (and `bearer`); the new agent state.
async fn rotate(h: &Harness, agent: &Agent, bearer: Option<&str>) -> (StatusCode, Value, Option<Agent>) {
    let (key, csr) = new_key_and_csr();
    let nonce = oneprotect_server::secrets::b64(&oneprotect_server::secrets::random_bytes::<24>());
    h.remember(&nonce);
    let body = json!({ "csr_pem": csr, "nonce": nonce });
    let (status, v) =
        h.call_via(&agent.tls, &ops::rotate_agent_certificate(&agent.id), bearer, Some(&body)).await;
    let next = (status == StatusCode::OK).then(|| {
        let identity = format!("{}{key}", v["certificate_pem"].as_str().expect("PEM"));
        Agent {
            id: agent.id.clone(),
            token: v["runtime_token"]["token"].as_str().expect("token").to_owned(),
            tls: tls_client(&test_ca(), Some(&identity)),
            identity,
            enrolled: v.clone(),
        }
    });
    (status, v, next)
}

async fn under_mtls_the_certificate_is_the_credential_and_its_absence_is_401(backend: Backend) {
    let h = start(backend, AgentAuth::Mtls).await;
    let a = enroll(&h, TENANT_A).await;
    let (status, v) = heartbeat(&h, &a.tls, &a.id, None, 1).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // No certificate: 401, whatever bearer comes along.
    let r = heartbeat(&h, &h.http, &a.id, None, 2).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated);
    let r = heartbeat(&h, &h.http, &a.id, Some(&a.token), 2).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated);
    // The identity is the certificate's: the agent is listed active.
    let (_, agent) = h.call(&ops::get_agent(&a.id), Some(&h.admin(TENANT_A)), None).await;
    assert_eq!(agent["status"], "active");
    assert!(agent["last_seen_at"].is_string(), "{agent}");
}

async fn a_certificate_is_refused_on_another_agents_path_and_a_self_signed_one_at_the_handshake(
    backend: Backend,
) {
    let h = start(backend, AgentAuth::Mtls).await;
    let a = enroll(&h, TENANT_A).await;
    let b = enroll(&h, TENANT_A).await;
    let other_tenant = enroll(&h, TENANT_B).await;
    let r = heartbeat(&h, &a.tls, &b.id, None, 1).await;
    assert_problem(&r, StatusCode::FORBIDDEN, ProblemCode::ActorMismatch);
    // Another tenant's agent and an agent that does not exist: one answer.
    let cross = heartbeat(&h, &a.tls, &other_tenant.id, None, 1).await;
    let unknown = heartbeat(&h, &a.tls, &uuid::Uuid::new_v4().to_string(), None, 1).await;
    assert_problem(&cross, StatusCode::FORBIDDEN, ProblemCode::ActorMismatch);
    assert_problem(&unknown, StatusCode::FORBIDDEN, ProblemCode::ActorMismatch);
    // A self-signed certificate naming agent A's SPIFFE id: the handshake fails.
    let key = rcgen::KeyPair::generate().expect("key");
    let uri = format!("spiffe://{TRUST_DOMAIN}/tenant/{TENANT_A}/agent/{}", a.id);
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("IA5"))];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = params.self_signed(&key).expect("self-signed");
    let forger = tls_client(&test_ca(), Some(&format!("{}{}", forged.pem(), key.serialize_pem())));
    let sent = forger
        .post(format!("{}{}", h.base, ops::post_agent_heartbeat(&a.id).path))
        .json(&heartbeat_body(1))
        .send()
        .await;
    assert!(sent.is_err(), "a certificate the platform CA did not sign never reaches the API");
    // Agent A was never touched by any of it.
    let (status, _) = heartbeat(&h, &a.tls, &a.id, None, 1).await;
    assert_eq!(status, StatusCode::OK);
}

async fn a_revoked_identitys_certificate_is_refused_on_the_very_next_request(backend: Backend) {
    let h = start(backend, AgentAuth::Mtls).await;
    let a = enroll(&h, TENANT_A).await;
    assert_eq!(heartbeat(&h, &a.tls, &a.id, None, 1).await.0, StatusCode::OK);
    let (status, _) = h.call(&ops::revoke_agent(&a.id), Some(&h.admin(TENANT_A)), Some(&json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    let r = heartbeat(&h, &a.tls, &a.id, None, 2).await;
    assert_problem(&r, StatusCode::FORBIDDEN, ProblemCode::IdentityRevoked);
    let (status, v, _) = rotate(&h, &a, None).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("identity_revoked")));
}

async fn after_a_rotation_the_old_certificate_heartbeats_only_inside_the_grace_and_never_rotates(
    backend: Backend,
) {
    let h = start(backend, AgentAuth::Mtls).await;
    let old = enroll(&h, TENANT_A).await;
    let (status, v, new) = rotate(&h, &old, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let new = new.expect("rotated");
    assert_ne!(new.enrolled["certificate"]["serial_number"], old.enrolled["certificate"]["serial_number"]);
    assert_eq!(heartbeat(&h, &new.tls, &new.id, None, 1).await.0, StatusCode::OK);
    // The old certificate: heartbeats until the grace ends, a rotation never.
    let (status, v, _) = rotate(&h, &old, None).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("client_certificate_invalid")));
    let grace = Policy::default().rotation_grace;
    h.clock.advance(grace - Duration::seconds(1));
    assert_eq!(heartbeat(&h, &old.tls, &old.id, None, 2).await.0, StatusCode::OK);
    h.clock.advance(Duration::seconds(1));
    let r = heartbeat(&h, &old.tls, &old.id, None, 3).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, ProblemCode::ClientCertificateInvalid);
    assert_eq!(heartbeat(&h, &new.tls, &new.id, None, 4).await.0, StatusCode::OK);
}

async fn an_expired_certificate_is_refused_by_the_platforms_clock(backend: Backend) {
    // Silence would make the identity stale first: the certificate is what expires here.
    let policy =
        Policy { agent_auth: AgentAuth::Mtls, stale_after: Duration::days(365), ..Policy::default() };
    let h = Harness::start_with(backend, Options { policy, tls: true, ..Options::default() }).await;
    let a = enroll(&h, TENANT_A).await;
    let not_after: chrono::DateTime<chrono::Utc> =
        a.enrolled["certificate"]["not_after"].as_str().expect("not_after").parse().expect("time");
    // The last second of the validity (inclusive, RFC 5280) is accepted.
    h.clock.set(not_after);
    assert_eq!(heartbeat(&h, &a.tls, &a.id, None, 1).await.0, StatusCode::OK);
    // A second later the handshake itself refuses it, by the platform's clock.
    h.clock.set(not_after + Duration::seconds(1));
    let fresh = tls_client(&test_ca(), Some(&a.identity));
    let sent = fresh
        .post(format!("{}{}", h.base, ops::post_agent_heartbeat(&a.id).path))
        .json(&heartbeat_body(2))
        .send()
        .await;
    assert!(sent.is_err(), "an expired certificate fails the handshake");
}

async fn an_expired_forwarded_certificate_is_refused_by_the_platforms_clock(backend: Backend) {
    let policy = Policy {
        agent_auth: AgentAuth::Mtls,
        client_certificate_header: Some("x-ssl-client-cert".into()),
        trusted_proxies: oneprotect_server::source::TrustedProxies::parse("127.0.0.1").expect("proxies"),
        stale_after: Duration::days(365),
        ..Policy::default()
    };
    let h = Harness::start_with(backend, Options { policy, ..Options::default() }).await;
    let (secret, _) = h.issue_token(TENANT_A, 1).await;
    let (_, csr) = new_key_and_csr();
    let (_, enrolled) = h.exchange(&h.exchange_body(&secret, &csr)).await;
    let agent = enrolled["agent"]["agent_id"].as_str().expect("agent");
    let pem = enrolled["certificate_pem"].as_str().expect("PEM");
    let not_after: chrono::DateTime<chrono::Utc> =
        enrolled["certificate"]["not_after"].as_str().expect("not_after").parse().expect("time");
    h.clock.set(not_after);
    assert_eq!(forwarded_heartbeat(&h, agent, pem, 1).await.0, StatusCode::OK);
    // Verified once and kept: the validity is still judged on every request.
    h.clock.set(not_after + Duration::seconds(1));
    let (status, v) = forwarded_heartbeat(&h, agent, pem, 2).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("client_certificate_invalid")));
}

async fn under_mtls_and_bearer_the_token_must_belong_to_the_presented_certificate(backend: Backend) {
    let h = start(backend, AgentAuth::MtlsAndBearer).await;
    let old = enroll(&h, TENANT_A).await;
    assert_eq!(heartbeat(&h, &old.tls, &old.id, Some(&old.token), 1).await.0, StatusCode::OK);
    let r = heartbeat(&h, &old.tls, &old.id, None, 2).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated);
    let r = heartbeat(&h, &h.http, &old.id, Some(&old.token), 2).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated);
    let (status, v, new) = rotate(&h, &old, Some(&old.token)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let new = new.expect("rotated");
    // Inside the grace both pairs work, but never crossed.
    assert_eq!(heartbeat(&h, &new.tls, &new.id, Some(&new.token), 2).await.0, StatusCode::OK);
    assert_eq!(heartbeat(&h, &old.tls, &old.id, Some(&old.token), 3).await.0, StatusCode::OK);
    let r = heartbeat(&h, &old.tls, &old.id, Some(&new.token), 4).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, ProblemCode::ClientCertificateInvalid);
    let r = heartbeat(&h, &new.tls, &new.id, Some(&old.token), 4).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, ProblemCode::ClientCertificateInvalid);
}

async fn under_bearer_the_runtime_token_alone_authenticates_over_tls(backend: Backend) {
    let h = start(backend, AgentAuth::Bearer).await;
    let a = enroll(&h, TENANT_A).await;
    assert_eq!(heartbeat(&h, &h.http, &a.id, Some(&a.token), 1).await.0, StatusCode::OK);
    let r = heartbeat(&h, &a.tls, &a.id, None, 2).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated);
}

crate::both_backends!(
    under_mtls_the_certificate_is_the_credential_and_its_absence_is_401,
    a_certificate_is_refused_on_another_agents_path_and_a_self_signed_one_at_the_handshake,
    a_revoked_identitys_certificate_is_refused_on_the_very_next_request,
    after_a_rotation_the_old_certificate_heartbeats_only_inside_the_grace_and_never_rotates,
    an_expired_certificate_is_refused_by_the_platforms_clock,
    under_mtls_and_bearer_the_token_must_belong_to_the_presented_certificate,
    under_bearer_the_runtime_token_alone_authenticates_over_tls,
    a_certificate_forwarded_by_a_trusted_proxy_is_verified_by_the_platform_itself,
    a_forwarded_certificate_from_an_untrusted_peer_is_ignored,
    an_expired_forwarded_certificate_is_refused_by_the_platforms_clock,
);

/// A harness whose platform reads client certificates a proxy at `proxies`
/// forwards in `x-ssl-client-cert` (plain HTTP, as behind a proxy).
async fn behind_proxy(backend: Backend, proxies: &str) -> Harness {
    let policy = Policy {
        agent_auth: AgentAuth::Mtls,
        client_certificate_header: Some("x-ssl-client-cert".into()),
        trusted_proxies: oneprotect_server::source::TrustedProxies::parse(proxies).expect("proxies"),
        failure_limit: 10_000,
        ..Policy::default()
    };
    Harness::start_with(backend, Options { policy, ..Options::default() }).await
}

fn url_encoded(pem: &str) -> String {
    pem.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

async fn forwarded_heartbeat(h: &Harness, agent: &str, pem: &str, seq: u64) -> (StatusCode, Value) {
    let resp = h
        .http
        .post(format!("{}{}", h.base, ops::post_agent_heartbeat(agent).path))
        .header("x-ssl-client-cert", url_encoded(pem))
        .json(&heartbeat_body(seq))
        .send()
        .await
        .expect("send");
    let status = resp.status();
    (status, resp.json().await.unwrap_or_default())
}

async fn a_certificate_forwarded_by_a_trusted_proxy_is_verified_by_the_platform_itself(backend: Backend) {
    let h = behind_proxy(backend, "127.0.0.1").await;
    let (secret, _) = h.issue_token(TENANT_A, 1).await;
    let (_, csr) = new_key_and_csr();
    let (status, enrolled) = h.exchange(&h.exchange_body(&secret, &csr)).await;
    assert_eq!(status, StatusCode::CREATED);
    let agent = enrolled["agent"]["agent_id"].as_str().expect("agent");
    let pem = enrolled["certificate_pem"].as_str().expect("PEM");
    assert_eq!(forwarded_heartbeat(&h, agent, pem, 1).await.0, StatusCode::OK);
    // A forwarded certificate is a claim: one the platform CA did not sign is refused.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    let uri = format!("spiffe://{TRUST_DOMAIN}/tenant/{TENANT_A}/agent/{agent}");
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("IA5"))];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = params.self_signed(&key).expect("forged").pem();
    let (status, v) = forwarded_heartbeat(&h, agent, &forged, 2).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("client_certificate_invalid")));
}

async fn a_forwarded_certificate_from_an_untrusted_peer_is_ignored(backend: Backend) {
    let h = behind_proxy(backend, "10.0.0.0/8").await;
    let (secret, _) = h.issue_token(TENANT_A, 1).await;
    let (_, csr) = new_key_and_csr();
    let (_, enrolled) = h.exchange(&h.exchange_body(&secret, &csr)).await;
    let agent = enrolled["agent"]["agent_id"].as_str().expect("agent");
    let pem = enrolled["certificate_pem"].as_str().expect("PEM");
    let (status, v) = forwarded_heartbeat(&h, agent, pem, 1).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthenticated")));
}
