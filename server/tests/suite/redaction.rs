//! No response, audit record, event, stored row or log line contains an
//! issued enrollment secret, runtime token, CSR body, nonce or raw
//! fingerprint.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

async fn no_secret_appears_in_lists_audit_events_stored_rows_or_logs(backend: Backend) {
    let h = Harness::start(backend).await;
    let (agent, runtime, _) = h.enroll(TENANT_A).await;
    assert_eq!(h.heartbeat(&agent, &runtime, 1).await.0, StatusCode::OK);
    let (secret, _) = h.issue_token(TENANT_A, 2).await;
    let bad = h
        .exchange(&h.exchange_body(
            &secret,
            "-----BEGIN CERTIFICATE REQUEST-----\nZmFrZQ==\n-----END CERTIFICATE REQUEST-----\n",
        ))
        .await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST);
    let nonce = oneprotect_server::secrets::b64(&oneprotect_server::secrets::random_bytes::<24>());
    h.remember(&nonce);
    let csr = p256_csr();
    h.remember(csr_body(&csr));
    let (status, rotated) = h
        .call(
            &ops::rotate_agent_certificate(&agent),
            Some(&runtime),
            Some(&json!({"csr_pem": csr, "nonce": nonce})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    h.remember(rotated["runtime_token"]["token"].as_str().expect("token"));
    h.call(&ops::revoke_agent(&agent), Some(&h.admin(TENANT_A)), Some(&json!({}))).await;
    assert_eq!(h.heartbeat(&agent, &runtime, 2).await.0, StatusCode::FORBIDDEN);

    let mut haystacks = Vec::new();
    for route in [
        ops::list_agents(),
        ops::list_enrollment_tokens(),
        ops::list_audit_events().query("limit", 200),
        ops::list_events().query("limit", 200),
    ] {
        let (_, v) = h.call(&route, Some(&h.admin(TENANT_A)), None).await;
        haystacks.push((route.operation_id().to_owned(), v.to_string()));
    }
    let route = ops::get_agent(&agent);
    let (_, v) = h.call(&route, Some(&h.admin(TENANT_A)), None).await;
    haystacks.push((route.operation_id().to_owned(), v.to_string()));
    for row in h.store.dump_all_rows().await.expect("dump rows") {
        haystacks.push(("stored row".into(), row));
    }
    haystacks.push((
        "logs".into(),
        String::from_utf8_lossy(&logs().lock().unwrap_or_else(|p| p.into_inner())).into_owned(),
    ));

    let secrets = h.secrets.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(secrets.len() >= 10, "the scan has material: {}", secrets.len());
    for secret in secrets.iter().filter(|s| s.len() >= 16) {
        for (source, text) in &haystacks {
            assert!(!text.contains(secret.as_str()), "a secret leaked into {source}");
        }
    }
    let stored = haystacks.iter().filter(|(s, _)| s == "stored row").count();
    assert!(stored > 10, "the store was scanned ({stored} rows)");
}

crate::both_backends!(no_secret_appears_in_lists_audit_events_stored_rows_or_logs);
