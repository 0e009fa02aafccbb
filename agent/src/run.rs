//! `run`: heartbeat until told to stop, renew the runtime token before it
//! expires, back off on transient failures, and stop with a distinct code
//! when the platform rejects the identity (keeping every file).

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use oneprotect_contracts::client::Client;
use oneprotect_contracts::types;
use rand::SeedableRng;
use rand::rngs::StdRng;
use secrecy::{ExposeSecret, SecretString};

use crate::backoff::{Backoff, splayed};
use crate::config::Config;
use crate::enroll::Outcome;
use crate::exit::{self, Reaction, reaction_to_status};
use crate::platform::{CallError, classify, client, new_key_and_csr, new_nonce};
use crate::state::{
    AgentState, IDENTITY_FILE, IssuedCertificate, KEY_FILE, StateDir, StateError, TOKEN_FILE,
};
use crate::telemetry::Collector;

/// Renewal starts at a fraction of the credentials' lifetime drawn once per
/// run from this range, so a fleet enrolled together does not renew
/// together.
const RENEW_BETWEEN: std::ops::Range<f64> = 0.70..0.85;

/// When `fraction` of the lifetime from `from` to `to` has passed.
fn point_in(from: DateTime<Utc>, to: DateTime<Utc>, fraction: f64) -> DateTime<Utc> {
    let lifetime = (to - from).num_milliseconds().max(0) as f64;
    from + chrono::Duration::milliseconds((lifetime * fraction) as i64)
}

/// Whether the runtime token or the certificate (whichever comes first)
/// is due for renewal at `now`.
fn renewal_due(state: &AgentState, fraction: f64, now: DateTime<Utc>) -> bool {
    if crate::faults::active("renewal-never-fires") {
        return false;
    }
    let identity = &state.identity;
    let token = point_in(identity.runtime_token_issued_at, identity.runtime_token_expires_at, fraction);
    let certificate = match (identity.certificate_not_before, identity.certificate_not_after) {
        (Some(from), Some(to)) if !crate::faults::active("renewal-ignores-certificate") => {
            point_in(from, to, fraction)
        }
        _ => token,
    };
    now >= token.min(certificate)
}

/// A certificate that expired while the agent was not running cannot be
/// renewed: the platform no longer accepts it, so the agent must enroll again.
fn certificate_expired(state: &AgentState, now: DateTime<Utc>) -> Option<String> {
    let not_after = state.identity.certificate_not_after?;
    (state.certificate_pem.is_some() && now >= not_after).then(|| {
        format!(
            "the agent's certificate expired at {not_after}; enroll again (`oneprotect-agent enroll --force`)"
        )
    })
}

fn load(config: &Config) -> Result<AgentState, Outcome> {
    let dir = StateDir::new(&config.state_dir);
    if !dir.is_enrolled() {
        return Err((
            exit::CONFIG,
            format!(
                "not enrolled: no identity in {}; run `oneprotect-agent enroll` first",
                config.state_dir.display()
            ),
        ));
    }
    dir.load().map_err(|e| match e {
        StateError::TooOpen { .. } => (exit::CONFIG, format!("refusing to run: {e}")),
        other => (exit::CONFIG, format!("cannot load the identity: {other}")),
    })
}

/// Rotates the key, certificate record and runtime token.
async fn rotate(api: &Client, dir: &StateDir, state: &mut AgentState) -> Result<(), CallError> {
    let hostname = sysinfo::System::host_name().unwrap_or_else(|_| "unknown".into());
    let keys = new_key_and_csr(&hostname).map_err(CallError::Transport)?;
    let body: types::CertificateRotateRequest = serde_json::from_value(
        serde_json::json!({ "csr_pem": keys.csr_pem, "nonce": new_nonce().expose_secret() }),
    )
    .map_err(|e| CallError::Transport(format!("rotation request does not fit the contract: {e}")))?;
    let rotated =
        api.rotate_agent_certificate(&state.identity.agent_id, &body).await.map_err(classify)?.into_inner();
    let token = SecretString::from(rotated.runtime_token.token);
    let mut identity = state.identity.clone();
    identity.certificate_id = rotated.certificate.certificate_id;
    identity.runtime_token_issued_at = Utc::now();
    identity.runtime_token_expires_at = rotated.runtime_token.expires_at;
    identity.runtime_token_key_id = rotated.runtime_token.key_id;
    identity.certificate_not_before = Some(rotated.certificate.not_before);
    identity.certificate_not_after = Some(rotated.certificate.not_after);
    let record = serde_json::to_value(&rotated.certificate).unwrap_or_default();
    let persist = || -> Result<(), StateError> {
        dir.write_private(KEY_FILE, keys.private_key_pem.expose_secret().as_bytes())?;
        if crate::faults::active("renewed-key-world-readable") {
            crate::faults::loosen(&dir.file(KEY_FILE));
        }
        dir.write_private(TOKEN_FILE, token.expose_secret().as_bytes())?;
        dir.save_certificate(&IssuedCertificate {
            record: &record,
            certificate_pem: &rotated.certificate_pem,
            ca_chain_pem: &rotated.ca_chain_pem,
        })?;
        dir.write_private(IDENTITY_FILE, &serde_json::to_vec_pretty(&identity).unwrap_or_default())
    };
    persist()
        .map_err(|e| CallError::Transport(format!("rotated, but could not save the new identity: {e}")))?;
    *state = AgentState {
        identity,
        runtime_token: token,
        private_key_pem: keys.private_key_pem,
        certificate_pem: Some(rotated.certificate_pem.to_string()),
    };
    tracing::info!(certificate_id = %state.identity.certificate_id, "runtime token and certificate record rotated");
    Ok(())
}

/// Runs until `shutdown` resolves (exit 0) or the platform rejects the
/// identity (exit 3 or 4).
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Outcome {
    let mut state = match load(config) {
        Ok(s) => s,
        Err(o) => return o,
    };
    if let Some(expired) = certificate_expired(&state, Utc::now()) {
        return (exit::IDENTITY_UNKNOWN, expired);
    }
    let dir = StateDir::new(&config.state_dir);
    let mut collector = match Collector::new() {
        Ok(c) => c,
        Err(e) => return (exit::RUNTIME, e),
    };
    let mut api = match client(config, Some(&state)) {
        Ok(c) => c,
        Err(e) => return (exit::CONFIG, e),
    };
    tracing::info!(agent_id = %state.identity.agent_id, interval_s = config.heartbeat_interval.as_secs(), "running");
    let mut rng = StdRng::from_os_rng();
    let renew_fraction = rand::Rng::random_range(&mut rng, RENEW_BETWEEN);
    let mut backoff = Backoff::default();
    let mut renew_backoff = Backoff::default();
    let mut renew_not_before = Utc::now();
    let mut pending_sequence: Option<u64> = None;
    // Failed attempts since the last accepted heartbeat; recovery is logged once.
    let mut failed_attempts: u32 = 0;
    let mut delay = Duration::ZERO;
    let stopped = if crate::faults::active("sigterm-exits-1") { exit::RUNTIME } else { exit::OK };
    let mut memory_sequence = 0u64;
    tokio::pin!(shutdown);
    loop {
        if crate::faults::active("sigterm-ignored-while-waiting") {
            tokio::time::sleep(delay).await;
            delay = Duration::ZERO;
        }
        tokio::select! {
            () = &mut shutdown => return (stopped, "stopped".into()),
            () = tokio::time::sleep(delay) => {}
        }
        if renewal_due(&state, renew_fraction, Utc::now()) && Utc::now() >= renew_not_before {
            let outcome = tokio::select! {
                () = &mut shutdown => return (stopped, "stopped".into()),
                r = rotate(&api, &dir, &mut state) => r,
            };
            match outcome {
                Ok(()) => {
                    renew_backoff.reset();
                    api = match client(config, Some(&state)) {
                        Ok(c) => c,
                        Err(e) => return (exit::CONFIG, e),
                    };
                }
                Err(CallError::Status { status, code, retry_after }) => match reaction_to_status(status) {
                    Reaction::Stop(code_out) => {
                        return (
                            code_out,
                            format!(
                                "the platform rejected the identity during renewal: {status} {}",
                                code.as_deref().unwrap_or("")
                            ),
                        );
                    }
                    _ => {
                        let wait = renew_backoff.next_delay(retry_after, &mut rng);
                        renew_not_before = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                        tracing::warn!(
                            status,
                            code = code.as_deref().unwrap_or(""),
                            retry_in_ms = wait.as_millis() as u64,
                            "runtime token renewal failed"
                        );
                    }
                },
                Err(CallError::Transport(e) | CallError::Certificate(e)) => {
                    let wait = renew_backoff.next_delay(None, &mut rng);
                    renew_not_before = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "runtime token renewal failed");
                }
            }
        }

        let sequence = match pending_sequence {
            Some(s) => s,
            None if crate::faults::active("sequence-restarts-at-one") => {
                memory_sequence += 1;
                memory_sequence
            }
            None => match dir.next_sequence() {
                Ok(s) => s,
                Err(e) => return (exit::RUNTIME, format!("cannot persist the heartbeat sequence: {e}")),
            },
        };
        let body = match collector.heartbeat(sequence, env!("CARGO_PKG_VERSION")) {
            Ok(b) => b,
            Err(e) => return (exit::RUNTIME, e),
        };
        let result = tokio::select! {
            () = &mut shutdown => return (stopped, "stopped".into()),
            r = api.post_agent_heartbeat(&state.identity.agent_id, &body) => r.map_err(classify),
        };
        match result {
            Ok(accepted) => {
                let accepted = accepted.into_inner();
                tracing::debug!(sequence, duplicate = accepted.duplicate, "heartbeat accepted");
                if failed_attempts > 0 {
                    tracing::info!(failed_attempts, "heartbeats recovered");
                    failed_attempts = 0;
                }
                if let Err(e) = dir.record_accepted_heartbeat(sequence, accepted.accepted_at) {
                    tracing::warn!(error = %e, "cannot record the last accepted heartbeat");
                }
                backoff.reset();
                pending_sequence = None;
                delay = splayed(config.heartbeat_interval, &mut rng);
            }
            Err(CallError::Status { status, code, retry_after }) => match reaction_to_status(status) {
                Reaction::Stop(exit_code) => {
                    return (
                        exit_code,
                        format!(
                            "the platform rejected this identity: {status} {}; files kept in {}",
                            code.as_deref().unwrap_or(""),
                            config.state_dir.display()
                        ),
                    );
                }
                Reaction::Retry => {
                    failed_attempts += 1;
                    pending_sequence = Some(sequence);
                    let retry_after = if crate::faults::active("heartbeat-ignores-retry-after") {
                        None
                    } else {
                        retry_after
                    };
                    delay = backoff.next_delay(retry_after, &mut rng);
                    if (300..400).contains(&status) {
                        tracing::warn!(
                            status,
                            retry_in_ms = delay.as_millis() as u64,
                            "the platform answered a redirect; agent calls are never redirected: fix platform_url"
                        );
                    } else {
                        tracing::warn!(
                            status,
                            code = code.as_deref().unwrap_or(""),
                            retry_in_ms = delay.as_millis() as u64,
                            "heartbeat not accepted; backing off"
                        );
                    }
                }
                Reaction::Skip | Reaction::Accepted => {
                    pending_sequence = None;
                    delay = splayed(config.heartbeat_interval, &mut rng);
                    tracing::error!(
                        status,
                        code = code.as_deref().unwrap_or(""),
                        "heartbeat refused as malformed; skipping this sample"
                    );
                }
            },
            // A certificate that does not verify is backed off from like any
            // transport failure: the platform may be mid-way through replacing
            // its certificate, and the message names the problem.
            Err(CallError::Transport(e) | CallError::Certificate(e)) => {
                failed_attempts += 1;
                pending_sequence = Some(sequence);
                delay = backoff.next_delay(None, &mut rng);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach the platform; backing off");
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + seconds, 0).expect("time")
    }

    /// Token valid [0, token_end), certificate valid [0, cert_end).
    fn state(token_end: i64, cert_end: Option<i64>) -> AgentState {
        AgentState {
            identity: crate::state::Identity {
                agent_id: uuid::Uuid::from_u128(1),
                tenant_id: "tenant-fixture".into(),
                collector_id: uuid::Uuid::from_u128(2),
                asset_id: uuid::Uuid::from_u128(3),
                certificate_id: uuid::Uuid::from_u128(4),
                platform_url: "https://p.example".into(),
                enrolled_at: at(0),
                runtime_token_issued_at: at(0),
                runtime_token_expires_at: at(token_end),
                runtime_token_key_id: "k1".into(),
                certificate_not_before: cert_end.map(|_| at(0)),
                certificate_not_after: cert_end.map(at),
            },
            runtime_token: SecretString::from("fixture-token"),
            private_key_pem: SecretString::from("fixture-key"),
            certificate_pem: cert_end.map(|_| "fixture certificate".to_owned()),
        }
    }

    #[test]
    fn renewal_is_due_at_the_drawn_fraction_of_whichever_lifetime_ends_first() {
        // A 1000 s token and a 100 s certificate at 0.75: due at 75 s.
        let s = state(1000, Some(100));
        assert!(!renewal_due(&s, 0.75, at(74)));
        assert!(renewal_due(&s, 0.75, at(75)));
        // The token first: due at 750 s of a 1000 s token.
        let s = state(1000, Some(100_000));
        assert!(!renewal_due(&s, 0.75, at(749)));
        assert!(renewal_due(&s, 0.75, at(750)));
        // No certificate (a platform that issued none): the token alone.
        let s = state(1000, None);
        assert!(!renewal_due(&s, 0.70, at(699)));
        assert!(renewal_due(&s, 0.70, at(700)));
    }

    #[test]
    fn the_drawn_fraction_stays_inside_70_to_85_percent() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let f = rand::Rng::random_range(&mut rng, RENEW_BETWEEN);
            assert!((0.70..0.85).contains(&f), "{f}");
        }
    }

    #[test]
    fn a_certificate_that_expired_while_stopped_means_enrolling_again() {
        let s = state(1000, Some(100));
        assert_eq!(certificate_expired(&s, at(99)), None);
        let message = certificate_expired(&s, at(100)).expect("expired");
        assert!(message.contains("enroll again"), "{message}");
        assert_eq!(
            certificate_expired(&state(1000, None), at(5000)),
            None,
            "no certificate, nothing expires"
        );
    }
}
