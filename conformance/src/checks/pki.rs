//! The platform CA as a relying party sees it: the certificate the exchange
//! issues, checked with the harness's own X.509 parser against the chain
//! the deployment publishes, and the CRL after a revocation.

use oneprotect_contracts::contract::ops;
use serde_json::{Value, json};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::*;

use super::BOTH;
use crate::{Check, Checked, Ctx, Tenant, ensure};

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
];

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
