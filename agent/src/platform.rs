//! Calls to the platform through the generated client. The bearer rides in
//! a default header marked sensitive; errors keep only status, problem
//! code and `Retry-After`.

use std::time::Duration;

use oneprotect_contracts::client::{Client, Error};
use oneprotect_contracts::types::Problem;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use crate::backoff::parse_retry_after;
use crate::config::Config;

pub const USER_AGENT: &str = concat!("oneprotect-agent/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No HTTP answer: connection, TLS, timeout, unreadable body.
    Transport(String),
    /// An HTTP answer other than success.
    Status { status: u16, code: Option<String>, retry_after: Option<Duration> },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "transport error: {e}"),
            Self::Status { status, code, .. } => write!(f, "platform answered {status} ({})", code.as_deref().unwrap_or("no code")),
        }
    }
}

pub fn classify(e: Error<Problem>) -> CallError {
    match e {
        Error::ErrorResponse(rv) => CallError::Status {
            status: rv.status().as_u16(),
            retry_after: parse_retry_after(rv.headers().get("retry-after").and_then(|v| v.to_str().ok())),
            code: Some(rv.into_inner().code),
        },
        Error::UnexpectedResponse(resp) => CallError::Status {
            status: resp.status().as_u16(),
            retry_after: parse_retry_after(resp.headers().get("retry-after").and_then(|v| v.to_str().ok())),
            code: None,
        },
        Error::CommunicationError(e) | Error::ResponseBodyError(e) | Error::InvalidUpgrade(e) => CallError::Transport(e.without_url().to_string()),
        Error::InvalidResponsePayload(_, e) => CallError::Transport(format!("unreadable response: {e}")),
        Error::InvalidRequest(e) | Error::Custom(e) => CallError::Transport(e),
    }
}

/// The generated client, with the runtime token as its bearer when given.
pub fn client(config: &Config, bearer: Option<&SecretString>) -> Result<Client, String> {
    // Nothing about an agent call is redirected: a 3xx is an answer to back
    // off from, never a place to send the bearer, the CSR or telemetry.
    let redirects = if crate::faults::active("follows-redirects") { reqwest::redirect::Policy::limited(10) } else { reqwest::redirect::Policy::none() };
    let mut builder =
        reqwest::Client::builder().user_agent(USER_AGENT).timeout(Duration::from_secs(30)).connect_timeout(Duration::from_secs(10)).redirect(redirects);
    if let Some(ca) = &config.ca_bundle {
        let pem = std::fs::read(ca).map_err(|e| format!("ca_bundle {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("ca_bundle {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_bundle {}: no certificate found", ca.display()));
        }
        builder = builder.tls_certs_only(certs);
    }
    if let Some(token) = bearer {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(|_| "the runtime token is not a valid header value".to_string())?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    let http = builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    Ok(Client::new_with_client(&config.platform_url, http))
}

/// A fresh key pair and a CSR for it.
pub struct KeyAndCsr {
    pub private_key_pem: SecretString,
    pub csr_pem: String,
}

/// ECDSA P-256 key and a PKCS#10 request naming the host.
pub fn new_key_and_csr(hostname: &str) -> Result<KeyAndCsr, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| format!("cannot generate a key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, hostname.chars().take(64).collect::<String>());
    let csr = params.serialize_request(&key).map_err(|e| format!("cannot build the CSR: {e}"))?;
    let csr_pem = csr.pem().map_err(|e| e.to_string())?;
    Ok(KeyAndCsr { private_key_pem: SecretString::from(key.serialize_pem()), csr_pem })
}

/// 256 random bits, base64url: a fresh nonce for every attempt.
pub fn new_nonce() -> SecretString {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn nonces_are_fresh_and_well_formed() {
        let nonces: BTreeSet<String> = (0..1000).map(|_| new_nonce().expose_secret().to_owned()).collect();
        assert_eq!(nonces.len(), 1000, "no nonce repeats");
        for n in &nonces {
            assert_eq!(n.len(), 43);
            assert!(n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }

    #[test]
    fn a_generated_csr_is_p256_and_names_the_host() {
        let k = new_key_and_csr("host.fixture").expect("csr");
        assert!(k.csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(k.private_key_pem.expose_secret().contains("PRIVATE KEY"));
        let other = new_key_and_csr("host.fixture").expect("csr");
        assert_ne!(k.csr_pem, other.csr_pem, "a fresh key every time");
    }
}
