//! Calls to the platform through the generated client. The bearer rides in
//! a default header marked sensitive; errors keep only status, problem
//! code and `Retry-After`.

use std::time::Duration;

use oneprotect_contracts::client::{Client, ClientOptions, Error};
use oneprotect_contracts::types::Problem;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use crate::backoff::parse_retry_after;
use crate::config::Config;

pub const USER_AGENT: &str = concat!("oneprotect-agent/", env!("CARGO_PKG_VERSION"));

/// The largest answer the agent reads from the platform: an enrollment or
/// rotation answer is a few KiB. A longer body fails the call (checked
/// while streaming, so it never sits in memory) and is backed off from.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No HTTP answer: connection, timeout, unreadable or oversized body.
    Transport(String),
    /// The platform's TLS certificate does not verify against the trusted
    /// CAs (`ca_bundle`, else the system's): a configuration problem that
    /// retrying cannot solve.
    Certificate(String),
    /// An HTTP answer other than success.
    Status { status: u16, code: Option<String>, retry_after: Option<Duration> },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "transport error: {e}"),
            Self::Certificate(e) => write!(f, "{e}"),
            Self::Status { status, code, .. } => {
                write!(f, "platform answered {status} ({})", code.as_deref().unwrap_or("no code"))
            }
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
        Error::CommunicationError(e) | Error::ResponseBodyError(e) | Error::InvalidUpgrade(e) => transport(e),
        Error::InvalidResponsePayload(_, e) => CallError::Transport(format!("unreadable response: {e}")),
        Error::InvalidRequest(e) | Error::Custom(e) => CallError::Transport(e),
    }
}

/// A transport failure described by its whole chain of causes (reqwest's own
/// text, "error sending request", names none), without the URL's path.
fn transport(e: reqwest::Error) -> CallError {
    let host = e.url().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_else(|| "the platform".into());
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    // rustls names a certificate that does not verify "invalid peer certificate: <reason>".
    match text.find("invalid peer certificate") {
        Some(at) => CallError::Certificate(format!(
            "certificate verification failed for {host} ({}): check ca_bundle against the platform's certificate",
            &text[at..]
        )),
        None => CallError::Transport(text),
    }
}

/// The generated client. With an enrolled agent's state it presents the
/// agent's certificate at the TLS handshake (mutual TLS) and the runtime
/// token as its bearer, so it works under every `ONEPROTECT_AGENT_AUTH`
/// policy of the platform.
pub fn client(config: &Config, agent: Option<&crate::state::AgentState>) -> Result<Client, String> {
    let bearer = agent.map(|a| &a.runtime_token);
    // Nothing about an agent call is redirected: a 3xx is an answer to back
    // off from, never a place to send the bearer, the CSR or telemetry.
    let redirects = if crate::faults::active("follows-redirects") {
        reqwest::redirect::Policy::limited(10)
    } else {
        reqwest::redirect::Policy::none()
    };
    let timeout = if crate::faults::active("request-never-times-out") {
        Duration::from_secs(86_400)
    } else {
        config.request_timeout
    };
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .redirect(redirects);
    if let Some(ca) = &config.ca_bundle {
        let pem = std::fs::read(ca).map_err(|e| format!("ca_bundle {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_bundle {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_bundle {}: no certificate found", ca.display()));
        }
        builder = builder.tls_certs_only(certs);
    }
    if let Some(agent) = agent
        && let Some(certificate) = &agent.certificate_pem
        && config.platform_url.starts_with("https://")
        && !crate::faults::active("no-client-certificate")
    {
        let pem = format!("{certificate}{}", agent.private_key_pem.expose_secret());
        let identity = reqwest::Identity::from_pem(pem.as_bytes())
            .map_err(|e| format!("the agent's certificate and key cannot be used for TLS: {e}"))?;
        builder = builder.identity(identity);
    }
    if let Some(token) = bearer {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| "the runtime token is not a valid header value".to_string())?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    let http = builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let max_response_bytes =
        if crate::faults::active("reads-whole-body") { usize::MAX } else { MAX_RESPONSE_BYTES };
    Ok(Client::new_with_client(&config.platform_url, http, ClientOptions { max_response_bytes }))
}

/// A fresh key pair and a CSR for it.
pub struct KeyAndCsr {
    pub private_key_pem: SecretString,
    pub csr_pem: String,
}

/// ECDSA P-256 key and a PKCS#10 request naming the host.
pub fn new_key_and_csr(hostname: &str) -> Result<KeyAndCsr, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate a key: {e}"))?;
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

    /// A TLS platform on loopback for `localhost` (certificate `cert`)
    /// answering every request with a health document; returns its port.
    async fn tls_platform(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls;
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(socket).await else { continue };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let body = r#"{"status":"ok"}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        port
    }

    fn config_trusting(dir: &std::path::Path, port: u16, ca: &rcgen::CertifiedKey<rcgen::KeyPair>) -> Config {
        let bundle = dir.join("ca.pem");
        std::fs::write(&bundle, ca.cert.pem()).expect("write bundle");
        let text = format!(
            "platform_url: https://localhost:{port}\nca_bundle: {}\nrequest_timeout: 5\n",
            bundle.display()
        );
        Config::parse(&text, std::path::Path::new("agent.yaml")).expect("config")
    }

    #[tokio::test]
    async fn a_platform_certificate_outside_the_ca_bundle_is_named_as_such() {
        let served = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let port = tls_platform(&served).await;
        let dir = tempfile::tempdir().expect("tempdir");

        // The platform's own certificate in the bundle: the call succeeds,
        // so the refusal below is the bundle's doing.
        let trusting = client(&config_trusting(dir.path(), port, &served), None).expect("client");
        trusting.get_health().await.map_err(classify).expect("a trusted certificate verifies");

        let wrong = client(&config_trusting(dir.path(), port, &other), None).expect("client");
        match wrong.get_health().await.map_err(classify) {
            Err(CallError::Certificate(message)) => {
                assert!(message.starts_with("certificate verification failed for localhost"), "{message}");
                assert!(message.contains("(invalid peer certificate: "), "the reason is named: {message}");
                assert!(message.contains("ca_bundle"), "the fix is named: {message}");
            }
            other => panic!("expected a certificate error, got {other:?}"),
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
