//! The OneProtect conformance harness: a catalogue of named checks, each a
//! promise of the contract, run against a live deployment (`http`), the
//! server in-process (`local`, with a controllable clock and storage
//! inspection) or the agent binary against a mock platform (`agent`).

pub mod agent_target;
pub mod bench;
pub mod checks;
pub mod ctx;
pub mod faults;
pub mod local;
pub mod report;
pub mod runner;

use std::future::Future;
use std::pin::Pin;

pub use ctx::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Redaction,
    Replay,
    Expiry,
    TenantIsolation,
    FailClosed,
}

impl Family {
    pub const ALL: [Family; 5] = [Family::Redaction, Family::Replay, Family::Expiry, Family::TenantIsolation, Family::FailClosed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redaction => "redaction",
            Self::Replay => "replay",
            Self::Expiry => "expiry",
            Self::TenantIsolation => "tenant-isolation",
            Self::FailClosed => "fail-closed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Http,
    Local,
    Agent,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One named promise of the contract.
pub struct Check {
    /// Stable id, `<family>.<promise>`.
    pub id: &'static str,
    pub family: Family,
    pub promise: &'static str,
    pub targets: &'static [Target],
    pub run: for<'a> fn(&'a Ctx) -> CheckFuture<'a>,
}

/// Turns `Result<(), String>` (with `?` on helpers) into an outcome.
pub fn outcome(result: Result<(), String>) -> Outcome {
    match result {
        Ok(()) => Outcome::Pass,
        Err(e) => Outcome::Fail(e),
    }
}

/// Fails with `message` unless `condition` holds.
pub fn ensure(condition: bool, message: impl Into<String>) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message.into()) }
}

/// Fails unless the answer has this status and problem code.
pub fn expect_problem(a: &ctx::Answer, status: u16, code: &str) -> Result<(), String> {
    ensure(a.status == status && a.code() == code, format!("expected {status} {code}, got {} {}", a.status, a.code()))
}

pub fn random_nonce() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
