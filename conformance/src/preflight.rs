//! Before any check runs against a deployment: is it reachable (TLS
//! verified), are both credentials accepted, tenant admins, and of two
//! different tenants? Each failure is one line naming the cause, so a
//! reviewer fixes the invocation instead of reading 26 failed checks.

use std::error::Error as _;
use std::time::Duration;

use serde_json::Value;

use crate::{Ctx, Tenant};

/// How long one preflight request may take.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// The one-line cause of a failed request: the innermost error of the
/// chain, classified where the cause is a common one.
pub fn describe(error: &reqwest::Error) -> String {
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = error.source();
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    let all = chain.join(": ").to_ascii_lowercase();
    let innermost = chain.last().cloned().unwrap_or_else(|| error.to_string());
    if error.is_timeout() {
        "no answer in time (timed out)".to_owned()
    } else if all.contains("certificate")
        || all.contains("invalidcertificate")
        || all.contains("unknownissuer")
    {
        format!("certificate verification failed: {innermost}")
    } else if all.contains("connection refused") {
        "connection refused".to_owned()
    } else if all.contains("dns error")
        || all.contains("failed to lookup address")
        || all.contains("name or service not known")
    {
        format!("the host name does not resolve ({innermost})")
    } else if error.is_builder() {
        format!("not a usable URL ({innermost})")
    } else if all.contains("tls") || all.contains("handshake") {
        format!("TLS failed: {innermost}")
    } else {
        innermost
    }
}

/// Checks a base URL's form: an absolute http(s) URL.
pub fn parse_base_url(base: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(base)
        .map_err(|e| format!("--base-url {base:?} is not a URL ({e}); give it as https://host[:port]"))?;
    match url.scheme() {
        "http" | "https" if url.host_str().is_some() => Ok(url),
        _ => Err(format!("--base-url {base:?} is not an http:// or https:// URL")),
    }
}

/// What a tenant-admin credential claims: read from the JWT's payload,
/// which the deployment has verified when it accepts the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialClaims {
    pub tenant_id: String,
    pub roles: Vec<String>,
}

pub fn credential_claims(token: &str) -> Option<CredentialClaims> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let tenant_id = value.get("tenant_id")?.as_str()?.to_owned();
    let roles = value.get("roles")?.as_array()?.iter().filter_map(Value::as_str).map(str::to_owned).collect();
    Some(CredentialClaims { tenant_id, roles })
}

fn name(tenant: Tenant) -> &'static str {
    match tenant {
        Tenant::A => "credential A",
        Tenant::B => "credential B",
    }
}

/// Runs the preflight; `Err` is the single line to print.
pub async fn preflight(ctx: &Ctx) -> Result<(), String> {
    // The API itself, not `/healthz`: operations endpoints are often kept
    // off the public proxy, and the checks need the API.
    let url = format!("{}/api/v1/agents?limit=1", ctx.base);
    let mut tenants = Vec::new();
    for tenant in Tenant::BOTH {
        let token = ctx.admin(tenant);
        let resp = ctx
            .http
            .get(&url)
            .bearer_auth(token)
            .timeout(PREFLIGHT_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {}", ctx.base, describe(&e)))?;
        if let Some(der) =
            resp.extensions().get::<reqwest::tls::TlsInfo>().and_then(reqwest::tls::TlsInfo::peer_certificate)
        {
            *ctx.tls_certificate_sha256.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(crate::evidence::sha256_hex(der));
        }
        match resp.status().as_u16() {
            200 => {}
            401 => {
                return Err(format!(
                    "{} was refused (401): expired, or not signed for this deployment's issuer, audience and key",
                    name(tenant)
                ));
            }
            403 => {
                return Err(format!(
                    "{} may not list agents (403); the suite needs a tenant_admin credential",
                    name(tenant)
                ));
            }
            404 => {
                return Err(format!(
                    "{} has no /api/v1/agents (404); is --base-url the platform's API root?",
                    ctx.base
                ));
            }
            other => return Err(format!("listing agents with {} answered {other}", name(tenant))),
        }
        let claims = credential_claims(token)
            .ok_or_else(|| format!("{} is not a JWT with tenant_id and roles claims", name(tenant)))?;
        if !claims.roles.iter().any(|r| r == "tenant_admin") {
            return Err(format!(
                "{} has roles {:?}; the suite needs tenant_admin",
                name(tenant),
                claims.roles
            ));
        }
        tenants.push(claims.tenant_id);
    }
    if tenants[0] == tenants[1] {
        return Err(format!(
            "credentials A and B are of the same tenant ({}); tenant isolation needs a tenant_admin of a second tenant as B",
            tenants[0]
        ));
    }
    Ok(())
}
