//! `enroll`: token + fresh key/CSR + fresh nonce → identity on disk, then
//! the enrollment token is removed from wherever it came from.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use oneprotect_contracts::types;
use rand::SeedableRng;
use secrecy::{ExposeSecret, SecretString};

use crate::backoff::Backoff;
use crate::config::{Config, remove_enrollment_token};
use crate::exit;
use crate::platform::{CallError, classify, client, new_key_and_csr, new_nonce};
use crate::state::{Identity, IssuedCertificate, StateDir, rewrite_keeping_mode};

/// Attempts before giving up on transient failures.
const MAX_ATTEMPTS: u32 = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Config,
    File(PathBuf),
    Stdin,
    Environment,
}

pub struct EnrollOptions {
    pub force: bool,
    pub token_file: Option<PathBuf>,
    pub token_stdin: bool,
}

/// Outcome of `enroll`: an exit code and a message for the operator.
pub type Outcome = (u8, String);

fn read_token(config: &Config, options: &EnrollOptions) -> Result<(SecretString, TokenSource), String> {
    if options.token_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the token from stdin: {e}"))?;
        let t = text.trim();
        if t.is_empty() {
            return Err("no enrollment token on stdin".into());
        }
        return Ok((SecretString::from(t.to_owned()), TokenSource::Stdin));
    }
    if let Some(path) = options.token_file.clone().or_else(|| config.enrollment_token_file.clone()) {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("enrollment token file {}: {e}", path.display()))?;
        let t = text.trim();
        if t.is_empty() {
            return Err(format!("enrollment token file {} is empty", path.display()));
        }
        return Ok((SecretString::from(t.to_owned()), TokenSource::File(path)));
    }
    match &config.enrollment_token {
        Some(t) => {
            Ok((t.clone(), if config.token_in_file { TokenSource::Config } else { TokenSource::Environment }))
        }
        None => Err(format!(
            "no enrollment token: set `enrollment_token` or `enrollment_token_file` in {}, or pass --token-file / --token-stdin",
            config.path.display()
        )),
    }
}

fn remove_token(config: &Config, source: &TokenSource) -> Result<(), String> {
    match source {
        TokenSource::Config if crate::faults::active("token-left-in-config") => Ok(()),
        TokenSource::Config => {
            let text = std::fs::read_to_string(&config.path)
                .map_err(|e| format!("{}: {e}", config.path.display()))?;
            let without = remove_enrollment_token(&text);
            rewrite_keeping_mode(&config.path, without.as_bytes()).map_err(|e| e.to_string())
        }
        TokenSource::File(path) => std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display())),
        TokenSource::Stdin | TokenSource::Environment => Ok(()),
    }
}

pub async fn enroll(config: &Config, options: EnrollOptions) -> Outcome {
    let state = StateDir::new(&config.state_dir);
    if state.is_enrolled() && !options.force {
        return (
            exit::CONFIG,
            format!(
                "already enrolled (state in {}); pass --force to enroll again",
                config.state_dir.display()
            ),
        );
    }
    let (token, source) = match read_token(config, &options) {
        Ok(t) => t,
        Err(e) => return (exit::CONFIG, e),
    };
    let api = match client(config, None) {
        Ok(c) => c,
        Err(e) => return (exit::CONFIG, e),
    };
    let hostname = sysinfo::System::host_name().unwrap_or_else(|_| "unknown".into());
    let fingerprint =
        crate::fingerprint::machine_id().map(|id| crate::fingerprint::fingerprint_hash(id.expose_secret()));
    let mut backoff = Backoff::default();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut first_attempt: Option<(crate::platform::KeyAndCsr, SecretString)> = None;
    for attempt in 1..=MAX_ATTEMPTS {
        let keys = match new_key_and_csr(&hostname) {
            Ok(k) => k,
            Err(e) => return (exit::RUNTIME, e),
        };
        let mut nonce = new_nonce();
        let keys = if crate::faults::active("nonce-reused-on-retry") {
            let (k, n) = first_attempt.get_or_insert((keys, nonce.clone()));
            nonce = n.clone();
            crate::platform::KeyAndCsr {
                private_key_pem: k.private_key_pem.clone(),
                csr_pem: k.csr_pem.clone(),
            }
        } else {
            keys
        };
        if crate::faults::active("nonce-logged") {
            tracing::trace!(nonce = nonce.expose_secret(), "exchange nonce");
        }
        let body = serde_json::json!({
            "enrollment_token": token.expose_secret(),
            "csr_pem": keys.csr_pem,
            "nonce": nonce.expose_secret(),
            "hostname": hostname.chars().take(253).collect::<String>(),
            "agent_version": env!("CARGO_PKG_VERSION"),
            "os_family": std::env::consts::OS,
            "hardware_fingerprint_hash": fingerprint,
        });
        let body: types::EnrollmentExchangeRequest = match serde_json::from_value(body) {
            Ok(b) => b,
            Err(_) => {
                return (
                    exit::CONFIG,
                    "the enrollment token or host facts do not fit the contract (is the token complete?)"
                        .into(),
                );
            }
        };
        tracing::info!(attempt, "exchanging the enrollment token");
        match api.exchange_enrollment_token(&body).await.map_err(classify) {
            Ok(resp) => {
                let enrolled = resp.into_inner();
                let identity = Identity {
                    agent_id: enrolled.agent.agent_id,
                    tenant_id: enrolled.agent.tenant_id.clone(),
                    collector_id: enrolled.agent.collector_id,
                    asset_id: enrolled.agent.asset_id,
                    certificate_id: enrolled.certificate.certificate_id,
                    platform_url: config.platform_url.clone(),
                    enrolled_at: enrolled.agent.enrolled_at,
                    runtime_token_issued_at: Utc::now(),
                    runtime_token_expires_at: enrolled.runtime_token.expires_at,
                    runtime_token_key_id: enrolled.runtime_token.key_id.clone(),
                    certificate_not_before: Some(enrolled.certificate.not_before),
                    certificate_not_after: Some(enrolled.certificate.not_after),
                };
                let runtime_token = SecretString::from(enrolled.runtime_token.token);
                let record = serde_json::to_value(&enrolled.certificate).unwrap_or_default();
                let certificate = IssuedCertificate {
                    record: &record,
                    certificate_pem: &enrolled.certificate_pem,
                    ca_chain_pem: &enrolled.ca_chain_pem,
                };
                if let Err(e) = state.save(&identity, &runtime_token, &keys.private_key_pem, &certificate) {
                    return (
                        exit::RUNTIME,
                        format!("enrolled as {} but could not save the identity: {e}", identity.agent_id),
                    );
                }
                if let Err(e) = remove_token(config, &source) {
                    return (
                        exit::RUNTIME,
                        format!(
                            "enrolled as {}, but the enrollment token could not be removed: {e}; remove it by hand",
                            identity.agent_id
                        ),
                    );
                }
                tracing::info!(agent_id = %identity.agent_id, tenant_id = %identity.tenant_id, "enrolled");
                return (
                    exit::OK,
                    format!("enrolled as agent {} (tenant {})", identity.agent_id, identity.tenant_id),
                );
            }
            Err(CallError::Status { status, code, retry_after }) if status == 429 || status >= 500 => {
                let retry_after =
                    if crate::faults::active("enroll-ignores-retry-after") { None } else { retry_after };
                let delay = backoff.next_delay(retry_after, &mut rng);
                tracing::warn!(
                    status,
                    code = code.as_deref().unwrap_or(""),
                    delay_ms = delay.as_millis() as u64,
                    "enrollment not accepted yet; retrying with a fresh nonce"
                );
                tokio::time::sleep(delay).await;
            }
            Err(CallError::Status { status, code, .. }) => {
                return (
                    exit::ENROLLMENT_REFUSED,
                    format!(
                        "the platform refused the enrollment: {status} {}",
                        code.as_deref().unwrap_or("(no code)")
                    ),
                );
            }
            // Retrying cannot make a certificate verify: say so at once.
            Err(CallError::Certificate(e)) => return (exit::CONFIG, e),
            Err(CallError::Transport(e)) => {
                let delay = backoff.next_delay(None, &mut rng).max(Duration::from_millis(200));
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "cannot reach the platform; retrying with a fresh nonce");
                tokio::time::sleep(delay).await;
            }
        }
    }
    (exit::RUNTIME, format!("could not reach the platform after {MAX_ATTEMPTS} attempts"))
}
