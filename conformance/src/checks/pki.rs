//! The platform CA as a relying party sees it: the certificate the exchange
//! issues, checked with the harness's own X.509 parser against the chain
//! the deployment publishes, and the CRL after a revocation.

use oneprotect_contracts::contract::ops;
use serde_json::{Value, json};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::*;

use super::{BOTH, LOCAL};
use crate::{Check, Checked, Ctx, Tenant, Verdict, ensure};

pub(super) const CHECKS: &[Check] = &[
    check!(
        "fail-closed.issued-certificate-chains-to-the-published-ca",
        FailClosed,
        BOTH,
        "the exchange's certificate is signed by the CA that /api/v1/pki/ca publishes, certifies the CSR's key, and has the agent profile: CN = agent id, one SPIFFE URI naming tenant and agent, clientAuth only, CA:false, a positive serial of at least 64 bits, SKI and AKI",
        issued_certificate
    ),
    check!(
        "fail-closed.revoked-certificate-listed-in-the-crl",
        FailClosed,
        BOTH,
        "after an identity is revoked, the CRL at /api/v1/pki/crl, signed by the published CA, lists its certificate's serial",
        revoked_certificate_in_crl
    ),
    check!(
        "fail-closed.mtls-agent-calls-require-the-certificate",
        FailClosed,
        BOTH,
        "where agents authenticate by certificate (ONEPROTECT_AGENT_AUTH=mtls or mtls+bearer), a heartbeat with the agent's certificate is accepted and one with only its runtime token is 401 unauthenticated",
        mtls_requires_certificate
    ),
    check!(
        "fail-closed.mtls-certificate-bound-to-its-agent",
        FailClosed,
        BOTH,
        "agent A's certificate on agent B's path is 403 actor_mismatch, and a self-signed certificate naming agent A never reaches the API",
        mtls_bound_to_agent
    ),
    check!(
        "fail-closed.mtls-revoked-certificate-refused",
        FailClosed,
        BOTH,
        "after revocation the next heartbeat with the identity's certificate is 403 identity_revoked",
        mtls_revoked
    ),
    check!(
        "expiry.mtls-expired-certificate-refused",
        Expiry,
        LOCAL,
        "at its notAfter the certificate is still accepted; a second later (by the platform's clock) it is refused",
        mtls_expired
    ),
    check!(
        "expiry.mtls-superseded-certificate-refused-after-grace",
        Expiry,
        LOCAL,
        "after a rotation by certificate the old certificate heartbeats until the rotation grace ends, then is 401 client_certificate_invalid",
        mtls_superseded
    ),
];

/// An agent enrolled with a key the check keeps, and its mTLS client.
struct CertifiedAgent {
    id: String,
    tenant_id: String,
    token: String,
    identity_pem: String,
    tls: reqwest::Client,
    not_after: chrono::DateTime<chrono::Utc>,
}

fn tls_client(ctx: &Ctx, identity: Option<&str>) -> Result<reqwest::Client, Verdict> {
    Ok(ctx.mtls_listener()?.tls.client(identity)?)
}

async fn certified_agent(ctx: &Ctx, tenant: Tenant) -> Result<CertifiedAgent, Verdict> {
    let (key, csr) = crate::ctx::p256_key_and_csr();
    let (secret, _) = ctx.issue_token(tenant, 1).await?;
    let mut body = ctx.exchange_body(&secret)?;
    body["csr_pem"] = Value::String(csr);
    let a = ctx.exchange(&body).await?;
    ensure(a.status == 201, format!("exchange answered {} {}", a.status, a.code()))?;
    let certificate = a.body["certificate_pem"].as_str().ok_or("no certificate_pem")?;
    let der = pem_blocks(certificate, "CERTIFICATE")?.remove(0);
    ensure(
        parse(&der)?.public_key().raw == csr_spki(&body)?.as_slice(),
        "the issued certificate does not certify the CSR's key: the agent could not present it",
    )?;
    let identity_pem = format!("{certificate}{key}");
    ctx.remember(&key);
    Ok(CertifiedAgent {
        id: a.body["agent"]["agent_id"].as_str().ok_or("no agent id")?.to_owned(),
        tenant_id: a.body["agent"]["tenant_id"].as_str().ok_or("no tenant id")?.to_owned(),
        token: a.body["runtime_token"]["token"].as_str().ok_or("no runtime token")?.to_owned(),
        tls: tls_client(ctx, Some(&identity_pem))?,
        identity_pem,
        not_after: serde_json::from_value(a.body["certificate"]["not_after"].clone())
            .map_err(|_| "the certificate record has no not_after".to_owned())?,
    })
}

/// A heartbeat on the mutual TLS listener: (status, code), or the transport error.
async fn mtls_heartbeat(
    ctx: &Ctx,
    client: &reqwest::Client,
    agent: &str,
    bearer: Option<&str>,
    sequence: u64,
) -> Result<Result<(u16, String), String>, Verdict> {
    let base = ctx.mtls_listener()?.base;
    let body = json!({"sequence": sequence, "collected_at": chrono::Utc::now(), "hostname": ctx.hostname(), "agent_version": "conformance"});
    let mut req = client.post(format!("{base}{}", ops::post_agent_heartbeat(agent).path)).json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    Ok(match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or_default();
            Ok((status, v["code"].as_str().unwrap_or_default().to_owned()))
        }
        Err(e) => Err(crate::preflight::describe(&e)),
    })
}

fn expect(answer: Result<(u16, String), String>, status: u16, code: &str) -> Checked {
    match answer {
        Ok((s, c)) if s == status && c == code => Ok(()),
        Ok((s, c)) => Err(Verdict::Fail(format!("expected {status} {code}, got {s} {c}"))),
        Err(e) => Err(Verdict::Fail(format!("expected {status} {code}, got a transport error: {e}"))),
    }
}

/// The runtime token an agent sends beside its certificate: only where the
/// deployment wants both (`mtls+bearer`).
fn beside(ctx: &Ctx, agent: &CertifiedAgent) -> Result<Option<String>, Verdict> {
    Ok(ctx.mtls_listener()?.with_bearer.then(|| agent.token.clone()))
}

pub async fn mtls_requires_certificate(ctx: &Ctx) -> Checked {
    ctx.mtls_listener()?;
    let a = certified_agent(ctx, Tenant::A).await?;
    expect(mtls_heartbeat(ctx, &a.tls, &a.id, beside(ctx, &a)?.as_deref(), 1).await?, 200, "")?;
    let plain = tls_client(ctx, None)?;
    expect(mtls_heartbeat(ctx, &plain, &a.id, Some(&a.token), 2).await?, 401, "unauthenticated")
}

pub async fn mtls_bound_to_agent(ctx: &Ctx) -> Checked {
    ctx.mtls_listener()?;
    let a = certified_agent(ctx, Tenant::A).await?;
    let b = certified_agent(ctx, Tenant::A).await?;
    expect(mtls_heartbeat(ctx, &a.tls, &b.id, None, 1).await?, 403, "actor_mismatch")?;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, a.id.as_str());
    let uri = format!(
        "spiffe://{}/tenant/{}/agent/{}",
        oneprotect_server::pki::DEFAULT_TRUST_DOMAIN,
        a.tenant_id,
        a.id
    );
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().map_err(|_| "IA5".to_owned())?)];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = params.self_signed(&key).map_err(|e| e.to_string())?;
    let forger = tls_client(ctx, Some(&format!("{}{}", forged.pem(), key.serialize_pem())))?;
    match mtls_heartbeat(ctx, &forger, &a.id, None, 2).await? {
        Err(_) => Ok(()),
        Ok((s, c)) => Err(Verdict::Fail(format!("a self-signed certificate reached the API: {s} {c}"))),
    }
}

pub async fn mtls_revoked(ctx: &Ctx) -> Checked {
    ctx.mtls_listener()?;
    let a = certified_agent(ctx, Tenant::A).await?;
    let bearer = beside(ctx, &a)?;
    expect(mtls_heartbeat(ctx, &a.tls, &a.id, bearer.as_deref(), 1).await?, 200, "")?;
    let r = ctx
        .call(&ops::revoke_agent(&a.id), Some(ctx.admin(Tenant::A)), Some(&json!({"reason": "conformance"})))
        .await?;
    ensure(r.status == 200, format!("revocation answered {}", r.status))?;
    expect(mtls_heartbeat(ctx, &a.tls, &a.id, bearer.as_deref(), 2).await?, 403, "identity_revoked")
}

pub async fn mtls_superseded(ctx: &Ctx) -> Checked {
    let clock = ctx.needs("the platform clock", &ctx.local.clock)?;
    let base = ctx.needs("the platform's mutual TLS listener", &ctx.local.mtls_base)?;
    let old = certified_agent(ctx, Tenant::A).await?;
    let (key, csr) = crate::ctx::p256_key_and_csr();
    let nonce = crate::random_nonce();
    ctx.remember(&nonce);
    let resp = old
        .tls
        .post(format!("{base}{}", ops::rotate_agent_certificate(&old.id).path))
        .json(&json!({"csr_pem": csr, "nonce": nonce}))
        .send()
        .await
        .map_err(|e| crate::preflight::describe(&e))?;
    ensure(resp.status().as_u16() == 200, format!("rotation by certificate answered {}", resp.status()))?;
    let rotated: Value = resp.json().await.map_err(|e| e.to_string())?;
    if let Some(t) = rotated["runtime_token"]["token"].as_str() {
        ctx.remember(t);
    }
    ctx.remember(&key);
    let new = tls_client(
        ctx,
        Some(&format!("{}{key}", rotated["certificate_pem"].as_str().ok_or("no certificate_pem")?)),
    )?;
    expect(mtls_heartbeat(ctx, &new, &old.id, None, 1).await?, 200, "")?;
    expect(mtls_heartbeat(ctx, &old.tls, &old.id, None, 2).await?, 200, "")?;
    clock
        .advance(oneprotect_server::service::Policy::default().rotation_grace + chrono::Duration::seconds(1));
    expect(mtls_heartbeat(ctx, &old.tls, &old.id, None, 3).await?, 401, "client_certificate_invalid")?;
    expect(mtls_heartbeat(ctx, &new, &old.id, None, 4).await?, 200, "")
}

/// The DER of every `label` block in `pem`.
fn pem_blocks(pem: &str, label: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label == label {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(format!("no {label} block"));
    }
    Ok(out)
}

/// The published chain's issuing certificate (DER).
async fn published_ca(ctx: &Ctx) -> Result<(String, Vec<u8>), String> {
    let a = ctx.call(&ops::get_ca_certificates(), None, None).await?;
    if a.status != 200 {
        return Err(format!("GET /api/v1/pki/ca answered {}", a.status));
    }
    let chain = a.body.as_str().ok_or("the CA chain is not text")?.to_owned();
    let issuing = pem_blocks(&chain, "CERTIFICATE")?.remove(0);
    Ok((chain, issuing))
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der).map(|(_, c)| c).map_err(|_| "not an X.509 certificate".to_owned())
}

/// Every rule of the agent profile, in the order a reviewer reads them.
fn judge_profile(
    cert: &X509Certificate<'_>,
    ca: &X509Certificate<'_>,
    enrolled: &Value,
    spki: &[u8],
) -> Checked {
    let agent = enrolled["agent"]["agent_id"].as_str().ok_or("no agent id")?;
    let tenant = enrolled["agent"]["tenant_id"].as_str().ok_or("no tenant id")?;
    ensure(ca.is_ca(), "the published CA certificate is not a CA")?;
    ensure(cert.issuer() == ca.subject(), "the certificate's issuer is not the published CA")?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| "the certificate is not signed by the published CA".to_owned())?;
    ensure(cert.public_key().raw == spki, "the certificate does not certify the CSR's key")?;
    ensure(cert.subject().to_string() == format!("CN={agent}"), format!("subject is {}", cert.subject()))?;
    let serial = cert.raw_serial();
    let serial = serial.strip_prefix(&[0]).unwrap_or(serial);
    ensure(
        !serial.is_empty() && serial.len() >= 8,
        format!("the serial has {} bytes, fewer than 8", serial.len()),
    )?;
    ensure(cert.tbs_certificate.serial.bits() <= 160, "the serial is longer than 20 bytes")?;
    ensure(
        enrolled["certificate"]["serial_number"].as_str()
            == Some(&oneprotect_server::secrets::hex(
                cert.raw_serial().strip_prefix(&[0]).unwrap_or(cert.raw_serial()),
            )),
        "the record's serial_number is not the certificate's serial",
    )?;
    let (mut eku, mut san, mut bc, mut ski, mut aki) = (false, false, false, false, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(e) => {
                ensure(
                    e.client_auth && !e.server_auth && !e.any && e.other.is_empty() && !e.code_signing,
                    "the extended key usage is not clientAuth alone",
                )?;
                eku = true;
            }
            ParsedExtension::SubjectAlternativeName(names) => {
                let uris: Vec<&str> = names
                    .general_names
                    .iter()
                    .map(|n| match n {
                        GeneralName::URI(u) => Ok(*u),
                        other => Err(format!("an unexpected subject alternative name {other:?}")),
                    })
                    .collect::<Result<_, _>>()?;
                let suffix = format!("/tenant/{tenant}/agent/{agent}");
                ensure(
                    uris.len() == 1 && uris[0].starts_with("spiffe://") && uris[0].ends_with(&suffix),
                    format!("the URI names are {uris:?}, not one SPIFFE id ending in {suffix}"),
                )?;
                san = true;
            }
            ParsedExtension::BasicConstraints(b) => {
                ensure(!b.ca, "the certificate is a CA (basicConstraints CA:TRUE)")?;
                bc = true;
            }
            ParsedExtension::KeyUsage(k) => {
                ensure(
                    !k.key_cert_sign() && !k.crl_sign(),
                    "the key usage allows signing certificates or CRLs",
                )?;
            }
            ParsedExtension::SubjectKeyIdentifier(_) => ski = true,
            ParsedExtension::AuthorityKeyIdentifier(_) => aki = true,
            _ => {}
        }
    }
    ensure(eku, "no extended key usage")?;
    ensure(san, "no SPIFFE URI subject alternative name")?;
    ensure(bc, "no basicConstraints (CA:false)")?;
    ensure(ski && aki, "no subject or authority key identifier")
}

/// The SubjectPublicKeyInfo of the CSR an exchange body carried.
fn csr_spki(body: &Value) -> Result<Vec<u8>, String> {
    let der = pem_blocks(body["csr_pem"].as_str().ok_or("no CSR")?, "CERTIFICATE REQUEST")?.remove(0);
    let (_, csr) =
        X509CertificationRequest::from_der(&der).map_err(|_| "the harness's CSR does not parse")?;
    Ok(csr.certification_request_info.subject_pki.raw.to_vec())
}

pub async fn issued_certificate(ctx: &Ctx) -> Checked {
    let (chain, issuing) = published_ca(ctx).await?;
    let ca = parse(&issuing)?;
    let (secret, _) = ctx.issue_token(Tenant::A, 1).await?;
    let body = ctx.exchange_body(&secret)?;
    let a = ctx.exchange(&body).await?;
    ensure(a.status == 201, format!("exchange answered {} {}", a.status, a.code()))?;
    ensure(
        a.body["ca_chain_pem"].as_str() == Some(chain.as_str()),
        "the exchange's CA chain is not the published one",
    )?;
    let der =
        pem_blocks(a.body["certificate_pem"].as_str().ok_or("no certificate_pem")?, "CERTIFICATE")?.remove(0);
    let cert = parse(&der)?;
    judge_profile(&cert, &ca, &a.body, &csr_spki(&body)?)?;
    ensure(
        a.body["certificate"]["certificate_sha256"].as_str()
            == Some(&oneprotect_server::secrets::sha256_hex(&der)),
        "the record's certificate_sha256 is not the certificate's fingerprint",
    )
}

pub async fn revoked_certificate_in_crl(ctx: &Ctx) -> Checked {
    let (_, issuing) = published_ca(ctx).await?;
    let ca = parse(&issuing)?;
    let (agent, _, enrolled) = ctx.enroll(Tenant::A).await?;
    let serial = enrolled["certificate"]["serial_number"].as_str().ok_or("no serial")?.to_owned();
    let r = ctx
        .call(&ops::revoke_agent(&agent), Some(ctx.admin(Tenant::A)), Some(&json!({"reason": "conformance"})))
        .await?;
    ensure(r.status == 200, format!("revocation answered {}", r.status))?;
    let a = ctx.call(&ops::get_certificate_revocation_list(), None, None).await?;
    ensure(a.status == 200, format!("GET /api/v1/pki/crl answered {}", a.status))?;
    let der = pem_blocks(a.body.as_str().ok_or("the CRL is not text")?, "X509 CRL")?.remove(0);
    let (_, crl) = CertificateRevocationList::from_der(&der).map_err(|_| "the CRL does not parse")?;
    ensure(crl.issuer() == ca.subject(), "the CRL's issuer is not the published CA")?;
    crl.verify_signature(ca.public_key())
        .map_err(|_| "the CRL is not signed by the published CA".to_owned())?;
    ensure(crl.next_update().is_some(), "the CRL has no nextUpdate")?;
    let listed = crl.iter_revoked_certificates().any(|r| {
        oneprotect_server::secrets::hex(r.raw_serial().strip_prefix(&[0]).unwrap_or(r.raw_serial())) == serial
    });
    ensure(listed, "the revoked identity's certificate serial is not in the CRL")
}

pub async fn mtls_expired(ctx: &Ctx) -> Checked {
    let clock = ctx.needs("the platform clock", &ctx.local.clock)?;
    let a = certified_agent(ctx, Tenant::A).await?;
    let before = oneprotect_server::clock::Clock::now(clock.as_ref());
    // The clock moves to the certificate's end and back: checks run one at a time here.
    clock.set(a.not_after);
    let at_end = mtls_heartbeat(ctx, &a.tls, &a.id, None, 1).await;
    clock.set(a.not_after + chrono::Duration::seconds(1));
    // A new connection: the certificate is judged at the handshake.
    let fresh = tls_client(ctx, Some(&a.identity_pem));
    let after_end = match &fresh {
        Ok(client) => mtls_heartbeat(ctx, client, &a.id, None, 2).await,
        Err(_) => Ok(Err("no client".into())),
    };
    clock.set(before);
    // Silent for a lifetime, the identity may be stale by then: any answer
    // but a refused certificate shows the certificate itself was accepted.
    match at_end? {
        Err(e) => return Err(Verdict::Fail(format!("at its notAfter the certificate was refused: {e}"))),
        Ok((s, c)) if c == "client_certificate_invalid" => {
            return Err(Verdict::Fail(format!("at its notAfter the certificate was answered {s} {c}")));
        }
        Ok(_) => {}
    }
    match after_end? {
        Err(_) => Ok(()),
        Ok((401, code)) if code == "client_certificate_invalid" => Ok(()),
        Ok((s, c)) => Err(Verdict::Fail(format!("an expired certificate was answered {s} {c}"))),
    }
}
