//! The platform CA as relying parties see it: certificates from the exchange
//! and the rotation verified by `openssl` against the served chain, the
//! record's serial and fingerprint, and the CRL.

use std::path::Path;

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write fixture file");
    path
}

/// Runs `openssl` and returns (success, stdout + stderr).
fn openssl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command line tool is required for these tests");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `openssl verify` of `cert` against `chain` at the platform's clock, with `options`.
fn openssl_verify(h: &Harness, options: &[&str], chain: &Path, cert: &Path) -> (bool, String) {
    let at = h.clock_now().timestamp().to_string();
    let mut args = vec!["verify", "-attime", &at];
    args.extend_from_slice(options);
    args.extend(["-CAfile", chain.to_str().expect("UTF-8 path"), cert.to_str().expect("UTF-8 path")]);
    openssl(&args)
}

fn der_of_pem(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).expect("PEM body")
}

async fn served_chain(h: &Harness) -> String {
    let (status, chain) = h.call(&ops::get_ca_certificates(), None, None).await;
    assert_eq!(status, StatusCode::OK);
    chain.as_str().expect("PEM text").to_owned()
}

async fn served_crl(h: &Harness) -> String {
    let (status, crl) = h.call(&ops::get_certificate_revocation_list(), None, None).await;
    assert_eq!(status, StatusCode::OK, "{crl}");
    crl.as_str().expect("PEM text").to_owned()
}

/// The serials `openssl crl` lists, lowercase hex, after verifying the
/// CRL's signature against the chain.
fn crl_serials(dir: &Path, crl_pem: &str, chain_path: &Path) -> Vec<String> {
    let crl = write(dir, "crl.pem", crl_pem);
    let (ok, text) = openssl(&[
        "crl",
        "-in",
        crl.to_str().expect("UTF-8 path"),
        "-CAfile",
        chain_path.to_str().expect("UTF-8 path"),
        "-noout",
        "-text",
    ]);
    assert!(ok && text.contains("verify OK"), "openssl crl -verify: {text}");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

async fn every_key_type_gets_a_certificate_openssl_verifies_as_a_client_certificate(backend: Backend) {
    let h = Harness::start(backend).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let chain = served_chain(&h).await;
    let chain_path = write(dir.path(), "chain.pem", &chain);
    for key_args in [
        vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        vec!["-newkey", "rsa:2048"],
        vec!["-newkey", "ed25519"],
    ] {
        let csr = openssl_csr(&key_args);
        let (secret, _) = h.issue_token(TENANT_A, 1).await;
        let (status, r) = h.exchange(&h.exchange_body(&secret, &csr)).await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        assert_eq!(r["ca_chain_pem"], chain.as_str(), "the response carries the served chain");
        let cert_pem = r["certificate_pem"].as_str().expect("certificate PEM");
        let cert = write(dir.path(), "agent.pem", cert_pem);
        let (ok, text) = openssl_verify(&h, &["-purpose", "sslclient"], &chain_path, &cert);
        assert!(ok && text.contains(": OK"), "{key_args:?}: {text}");
        // clientAuth only: the certificate cannot serve TLS.
        let (ok, _) = openssl_verify(&h, &["-purpose", "sslserver"], &chain_path, &cert);
        assert!(!ok, "{key_args:?}: an agent certificate is not a server certificate");
        // The CSR's key, and the SPIFFE id of the tenant and agent.
        let csr_path = write(dir.path(), "agent.csr", &csr);
        let (_, csr_key) =
            openssl(&["req", "-in", csr_path.to_str().expect("UTF-8 path"), "-noout", "-pubkey"]);
        let (_, cert_key) =
            openssl(&["x509", "-in", cert.to_str().expect("UTF-8 path"), "-noout", "-pubkey"]);
        assert_eq!(csr_key, cert_key, "{key_args:?}");
        let agent = r["agent"]["agent_id"].as_str().expect("agent id");
        let (_, text) = openssl(&["x509", "-in", cert.to_str().expect("UTF-8 path"), "-noout", "-text"]);
        assert!(
            text.contains(&format!("URI:spiffe://{TRUST_DOMAIN}/tenant/{TENANT_A}/agent/{agent}")),
            "{text}"
        );
        assert!(text.contains("CA:FALSE") && text.contains("TLS Web Client Authentication"), "{text}");
        // The record keeps the serial and the fingerprint, never the PEM.
        let der = der_of_pem(cert_pem);
        assert_eq!(r["certificate"]["certificate_sha256"], oneprotect_server::secrets::sha256_hex(&der));
        let (_, serial) = openssl(&["x509", "-in", cert.to_str().expect("UTF-8 path"), "-noout", "-serial"]);
        assert_eq!(
            serial.trim().trim_start_matches("serial=").to_ascii_lowercase(),
            r["certificate"]["serial_number"].as_str().expect("serial")
        );
        assert_eq!(serial.trim().len(), "serial=".len() + 32, "a 16-byte serial");
    }
    let events = h.events(TENANT_A).await;
    let enrolled: Vec<&Value> = events.iter().filter(|e| e["type"] == "agent.enrolled").collect();
    assert_eq!(enrolled.len(), 4);
    for e in &enrolled {
        assert_eq!(e["data"]["certificate_sha256"].as_str().map(str::len), Some(64), "{e}");
        assert_eq!(e["data"]["certificate_serial"].as_str().map(str::len), Some(32), "{e}");
    }
    let audit = h.audit(TENANT_A).await;
    assert!(
        audit
            .iter()
            .filter(|a| a["action"] == "agent.exchange")
            .all(|a| a["details"]["certificate_sha256"].as_str().is_some_and(|f| f.len() == 64))
    );
    for row in h.store.dump_all_rows().await.expect("rows") {
        assert!(!row.contains("BEGIN CERTIFICATE"), "no certificate is stored: {row}");
    }
}

async fn rotation_supersedes_the_certificate_and_the_crl_lists_it_once_the_grace_has_passed(
    backend: Backend,
) {
    let h = Harness::start(backend).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let chain_path = write(dir.path(), "chain.pem", &served_chain(&h).await);
    let (agent, token, enrolled) = h.enroll(TENANT_A).await;
    let old_serial = enrolled["certificate"]["serial_number"].as_str().expect("serial").to_owned();
    let nonce = oneprotect_server::secrets::b64(&oneprotect_server::secrets::random_bytes::<24>());
    h.remember(&nonce);
    let body = json!({ "csr_pem": p256_csr(), "nonce": nonce });
    let (status, rotated) = h.call(&ops::rotate_agent_certificate(&agent), Some(&token), Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_serial = rotated["certificate"]["serial_number"].as_str().expect("serial").to_owned();
    assert_ne!(new_serial, old_serial);
    let new_cert = write(dir.path(), "new.pem", rotated["certificate_pem"].as_str().expect("PEM"));
    let (ok, text) = openssl_verify(&h, &["-purpose", "sslclient"], &chain_path, &new_cert);
    assert!(ok, "{text}");
    let rotated_event =
        h.events(TENANT_A).await.into_iter().find(|e| e["type"] == "agent.certificate.rotated");
    assert_eq!(rotated_event.expect("rotated event")["data"]["certificate_serial"], new_serial.as_str());

    // The store's rule at its boundaries: superseded at or before the
    // cut-off, and unexpired.
    let rotated_at = h.clock_now();
    let withdrawn = |now, before| {
        let store = h.store.clone();
        async move {
            store
                .revoked_certificates(now, before)
                .await
                .expect("CRL entries")
                .into_iter()
                .map(|r| r.serial_hex)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(withdrawn(rotated_at, rotated_at).await, vec![old_serial.clone()]);
    assert!(withdrawn(rotated_at, rotated_at - Duration::seconds(1)).await.is_empty());
    let old_not_after: chrono::DateTime<chrono::Utc> =
        enrolled["certificate"]["not_after"].as_str().expect("not_after").parse().expect("time");
    assert_eq!(withdrawn(old_not_after - Duration::seconds(1), rotated_at).await, vec![old_serial.clone()]);
    assert!(withdrawn(old_not_after, rotated_at).await.is_empty(), "an expired certificate leaves the CRL");

    // Inside the grace the old certificate is not withdrawn yet.
    assert!(crl_serials(dir.path(), &served_crl(&h).await, &chain_path).is_empty());
    h.clock.advance(h_grace() - Duration::seconds(1));
    assert!(crl_serials(dir.path(), &served_crl(&h).await, &chain_path).is_empty());
    // A signed CRL is reused for a while, then re-signed with the old serial.
    h.clock.advance(Duration::seconds(1));
    let cached = served_crl(&h).await;
    assert!(crl_serials(dir.path(), &cached, &chain_path).is_empty(), "reused");
    h.clock.advance(Duration::seconds(30));
    let crl = served_crl(&h).await;
    assert_eq!(crl_serials(dir.path(), &crl, &chain_path), vec![old_serial.clone()]);
    let crl_path = write(dir.path(), "crl.pem", &crl);
    let (_, text) = openssl(&["crl", "-in", crl_path.to_str().expect("UTF-8 path"), "-noout", "-text"]);
    assert!(text.contains("Superseded") && !text.contains("Cessation Of Operation"), "{text}");

    // Revoking the identity withdraws its current certificate at once.
    let (status, _) = h
        .call(&ops::revoke_agent(&agent), Some(&h.admin(TENANT_A)), Some(&json!({ "reason": "lost laptop" })))
        .await;
    assert_eq!(status, StatusCode::OK);
    let crl = served_crl(&h).await;
    let mut listed = crl_serials(dir.path(), &crl, &chain_path);
    listed.sort();
    let mut expected = vec![old_serial.clone(), new_serial.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    let crl_path = write(dir.path(), "crl.pem", &crl);
    let (_, text) = openssl(&["crl", "-in", crl_path.to_str().expect("UTF-8 path"), "-noout", "-text"]);
    // Every certificate of a revoked identity is revoked, the superseded one too.
    assert_eq!(text.matches("Cessation Of Operation").count(), 2, "{text}");
    assert!(!text.contains(TENANT_A) && !text.contains(&agent), "the CRL names no tenant or agent");
    // `openssl verify -crl_check` now refuses the revoked certificate.
    let crl_option = crl_path.to_str().expect("UTF-8 path");
    let (ok, text) = openssl_verify(&h, &["-crl_check", "-CRLfile", crl_option], &chain_path, &new_cert);
    assert!(!ok && text.contains("revoked"), "{text}");

    // Expired certificates leave the CRL.
    h.clock.advance(Duration::days(31));
    assert!(crl_serials(dir.path(), &served_crl(&h).await, &chain_path).is_empty());
}

fn h_grace() -> Duration {
    oneprotect_server::service::Policy::default().rotation_grace
}

async fn the_crl_lists_every_tenants_withdrawn_certificates(backend: Backend) {
    let h = Harness::start(backend).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let chain_path = write(dir.path(), "chain.pem", &served_chain(&h).await);
    let mut expected = Vec::new();
    for tenant in [TENANT_A, TENANT_B] {
        let (agent, _, enrolled) = h.enroll(tenant).await;
        let _kept = h.enroll(tenant).await;
        expected.push(enrolled["certificate"]["serial_number"].as_str().expect("serial").to_owned());
        let (status, _) = h.call(&ops::revoke_agent(&agent), Some(&h.admin(tenant)), Some(&json!({}))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let mut listed = crl_serials(dir.path(), &served_crl(&h).await, &chain_path);
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected, "both tenants' revoked certificates, and only those");
}

async fn without_a_ca_the_exchange_fails_closed_and_consumes_nothing(backend: Backend) {
    let h = Harness::start_with(backend, Options { ca: None, ..Options::default() }).await;
    let (secret, id) = h.issue_token(TENANT_A, 1).await;
    let r = h.exchange(&h.exchange_body(&secret, &p256_csr())).await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, ProblemCode::CertificateAuthorityUnavailable);
    assert_eq!(h.token_metadata(TENANT_A, &id).await["use_count"], 0);
    let r = h.call(&ops::get_ca_certificates(), None, None).await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, ProblemCode::CertificateAuthorityUnavailable);
    let r = h.call(&ops::get_certificate_revocation_list(), None, None).await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, ProblemCode::CertificateAuthorityUnavailable);
}

crate::both_backends!(
    every_key_type_gets_a_certificate_openssl_verifies_as_a_client_certificate,
    rotation_supersedes_the_certificate_and_the_crl_lists_it_once_the_grace_has_passed,
    the_crl_lists_every_tenants_withdrawn_certificates,
    without_a_ca_the_exchange_fails_closed_and_consumes_nothing,
);
