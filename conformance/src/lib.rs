//! The OneProtect conformance harness: a catalogue of named checks, each a
//! promise of the contract, run against a live deployment (`http`), the
//! server in-process (`local`, with a controllable clock and storage
//! inspection) or the agent binary against a mock platform (`agent`).

pub mod agent_target;
pub mod bench;
pub mod bench_events;
pub mod bench_mtls;
pub mod checks;
pub mod ctx;
pub mod evidence;
pub mod faults;
pub mod local;
pub mod nats;
pub mod preflight;
pub mod profile;
pub mod report;
pub mod runner;

use oneprotect_contracts::contract::ProblemCode;
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
    pub const ALL: [Family; 5] =
        [Family::Redaction, Family::Replay, Family::Expiry, Family::TenantIsolation, Family::FailClosed];

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
#[serde(tag = "outcome", content = "detail", rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Fail(String),
    /// The target cannot run it (a local power, another backend).
    Skip(String),
    /// The target could run it, but this run did not ask for it (a real
    /// wait without `--allow-waits`): a certified run refuses these.
    NotRequested(String),
    /// It failed, and the run's profile declared that failure, with why.
    ExpectedFailure(String),
}

pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One named promise of the contract.
#[derive(Clone)]
pub struct Check {
    /// Stable id, `<family>.<promise>`.
    pub id: &'static str,
    pub family: Family,
    pub promise: &'static str,
    pub targets: &'static [Target],
    /// Waits in real time (`--allow-waits`): runs beside the other checks.
    pub waits: bool,
    pub run: for<'a> fn(&'a Ctx) -> CheckFuture<'a>,
}

/// Why a check did not pass: it found a broken promise, or it could not run
/// here (`?` on `ctx.needs(…)` skips).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fail(String),
    Skip(String),
    NotRequested(String),
}

impl Verdict {
    /// Prefixes a failure's message (skips are left as they are).
    pub fn context(self, prefix: impl std::fmt::Display) -> Self {
        match self {
            Self::Fail(m) => Self::Fail(format!("{prefix}: {m}")),
            skip => skip,
        }
    }
}

impl From<String> for Verdict {
    fn from(message: String) -> Self {
        Self::Fail(message)
    }
}

impl From<&str> for Verdict {
    fn from(message: &str) -> Self {
        Self::Fail(message.to_owned())
    }
}

/// What a check returns: `Ok(())` is a pass.
pub type Checked = Result<(), Verdict>;

/// Turns a check's result into its reported outcome.
pub fn outcome(result: Checked) -> Outcome {
    match result {
        Ok(()) => Outcome::Pass,
        Err(Verdict::Fail(e)) => Outcome::Fail(e),
        Err(Verdict::Skip(e)) => Outcome::Skip(e),
        Err(Verdict::NotRequested(e)) => Outcome::NotRequested(e),
    }
}

/// Fails with `message` unless `condition` holds.
pub fn ensure(condition: bool, message: impl Into<String>) -> Checked {
    if condition { Ok(()) } else { Err(Verdict::Fail(message.into())) }
}

/// Fails unless the answer has this status and problem code.
pub fn expect_problem(a: &ctx::Answer, status: u16, code: ProblemCode) -> Checked {
    ensure(
        a.status == status && a.code() == code,
        format!("expected {status} {code}, got {} {}", a.status, a.code()),
    )
}

/// The two tenants a run works in: A owns what the checks create, B is the
/// outsider that must see and change none of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tenant {
    A,
    B,
}

impl Tenant {
    pub const BOTH: [Tenant; 2] = [Tenant::A, Tenant::B];
}

pub fn random_nonce() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
