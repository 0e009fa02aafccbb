//! Deliberately faulty platforms, used only by the harness's own tests to
//! prove each check can fail. Each fault is one rule broken the way a
//! developer could break it (an off-by-one at a boundary, a missing
//! predicate, a truncated comparison, a wrong tenant, a wrong order), not a
//! whole bypass. They wrap the real store, policy and router from outside;
//! nothing faulty is compiled into the server crate, so no release build
//! can contain them.
//!
//! `Fault::caught_by` names the checks each fault must fail and a fragment
//! of the message each must fail with; the self-test runs the whole
//! catalogue against every fault and compares.

use oneprotect_contracts::contract::ProblemCode;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use oneprotect_server::admin_auth::AdminClaims;
use oneprotect_server::clock::Clock;
use oneprotect_server::model::*;
use oneprotect_server::runtime_token::{RuntimeClaims, RuntimeKeyring};
use oneprotect_server::service::Policy;
use oneprotect_server::store::{Store, StoreResult};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Ctx;

mod http;
mod store;

pub use http::{HttpFaultState, http_fault};
pub use store::FaultyStore;

/// One broken rule. The doc comment says what the faulty developer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Puts each token's secret into its `label` in list answers.
    LeakSecretInList,
    /// Copies the exchange's nonce into the audit record's details.
    NonceInAuditDetails,
    /// Stores the raw nonce instead of its keyed hash.
    RawNonceStored,
    /// Stores the agent's fingerprint hash as sent, not keyed.
    RawFingerprintStored,
    /// Logs the Authorization header.
    LogBearer,
    /// Logs the rotation answer, new runtime token included.
    LogRotationAnswer,
    /// Quotes the submitted enrollment token in a 400's detail.
    EchoRejectedValue,
    /// Stores a random value instead of the nonce hash.
    SkipNonceCheck,
    /// Keys nonce uniqueness by token instead of by tenant.
    NonceScopedPerToken,
    /// Stores `max_uses + 1`.
    IssueOneUseTooMany,
    /// Judges a repeated sequence with `<` instead of `<=`.
    EqualSequenceAccepted,
    /// Stores a random value instead of the rotation's nonce hash.
    SkipRotationNonce,
    /// Stores tokens with a day added to their expiry.
    TokenTtlIgnored,
    /// Judges token expiry with `>` instead of `>=` (the expiry instant still admits).
    TokenExpiryInclusive,
    /// Accepts a correctly signed runtime token after its `exp`.
    RuntimeExpiryIgnored,
    /// A rotation grace in hours where minutes were meant.
    GraceNeverEnds,
    /// A staleness window in years where days were meant.
    StaleNeverJudged,
    /// Accepts a correctly signed admin JWT after its `exp`.
    AdminExpIgnored,
    /// Ignores an admin JWT's `nbf`.
    AdminNbfIgnored,
    /// Reads an identity by id alone, without its tenant.
    SkipTenantPredicate,
    /// Revokes by id alone when the tenant's own lookup misses.
    RevokeAcrossTenants,
    /// Lists events without the tenant predicate.
    ListEventsAcrossTenants,
    /// Takes the agent id from the runtime token instead of matching it to the path.
    AgentFromToken,
    /// Writes an admin's refusal under the other tenant.
    RefusalAuditedUnderOtherTenant,
    /// Treats an admin request without a bearer as tenant A's admin.
    DefaultPrincipal,
    /// Accepts an unsigned (alg none) admin JWT.
    AcceptAlgNone,
    /// Accepts an HS256 admin JWT whatever its signature.
    AcceptAnySignature,
    /// Re-signs tampered runtime tokens instead of refusing them.
    AcceptTamperedRuntimeToken,
    /// Compares a runtime token's MAC only over the length presented.
    TruncatedMacAccepted,
    /// Does not check a runtime token's scope.
    ScopeIgnored,
    /// Accepts a tenant admin's JWT at an agent endpoint.
    AdminAcceptedAsAgent,
    /// Answers a revoked identity but does not write the revocation.
    RevokeIdentityNotWritten,
    /// Answers a revoked token but does not write the revocation.
    RevokeTokenNotWritten,
    /// Redeems the token before it checks the CSR.
    CsrCheckedAfterRedeem,
    /// Maps every body error, oversize included, to 400.
    OversizeAs400,
    /// Drops identity fields from a heartbeat body instead of refusing it.
    IdentityFieldsIgnored,
    /// Checks the write role on issue only, not on revokes.
    ViewerMayRevoke,
    /// Lets a missing runtime secret surface as 500.
    SecretlessAnswers500,
    /// Unknown paths fall through to the framework's plain-text 404.
    PlainTextNotFound,
    /// Drops the collector/asset binding check.
    CollectorCheckRemoved,
    /// Leaves row-level security unforced on one tenant table (PostgreSQL).
    RlsNotForced,
    /// Counts failed exchanges but never refuses (a limit read as "unlimited").
    LimiterNeverTrips,
    /// Judges the body of a protected operation before its credential, as
    /// the stubs once did: an unauthenticated caller learns the validation rules.
    BodyJudgedBeforeCredential,
    /// Answers the exchange with a self-signed certificate of the agent
    /// profile instead of the one the platform CA issued.
    ForeignCertificateIssued,
    /// Signs CRLs that list nothing: revocations never reach relying parties.
    CrlOmitsRevoked,
    /// Runs the mutual TLS listener under the bearer policy: the
    /// certificate authenticates nothing.
    MtlsPolicyIgnored,
    /// Takes the agent id from the client certificate instead of matching
    /// it to the path.
    AgentFromCertificate,
    /// Judges client certificates (at the handshake and after it) by a
    /// clock two minutes behind the platform's.
    MtlsClockBehind,
    /// The relay marks heartbeat events published without sending them:
    /// the outbox says delivered, the broker never saw them.
    RelayMarksUnsent,
}

impl Fault {
    /// Every fault that runs on the embedded store.
    pub const ALL: &'static [Fault] = &[
        Fault::LeakSecretInList,
        Fault::NonceInAuditDetails,
        Fault::RawNonceStored,
        Fault::RawFingerprintStored,
        Fault::LogBearer,
        Fault::LogRotationAnswer,
        Fault::EchoRejectedValue,
        Fault::SkipNonceCheck,
        Fault::NonceScopedPerToken,
        Fault::IssueOneUseTooMany,
        Fault::EqualSequenceAccepted,
        Fault::SkipRotationNonce,
        Fault::TokenTtlIgnored,
        Fault::TokenExpiryInclusive,
        Fault::RuntimeExpiryIgnored,
        Fault::GraceNeverEnds,
        Fault::StaleNeverJudged,
        Fault::AdminExpIgnored,
        Fault::AdminNbfIgnored,
        Fault::SkipTenantPredicate,
        Fault::RevokeAcrossTenants,
        Fault::ListEventsAcrossTenants,
        Fault::AgentFromToken,
        Fault::RefusalAuditedUnderOtherTenant,
        Fault::DefaultPrincipal,
        Fault::AcceptAlgNone,
        Fault::AcceptAnySignature,
        Fault::AcceptTamperedRuntimeToken,
        Fault::TruncatedMacAccepted,
        Fault::ScopeIgnored,
        Fault::AdminAcceptedAsAgent,
        Fault::RevokeIdentityNotWritten,
        Fault::RevokeTokenNotWritten,
        Fault::CsrCheckedAfterRedeem,
        Fault::OversizeAs400,
        Fault::IdentityFieldsIgnored,
        Fault::ViewerMayRevoke,
        Fault::SecretlessAnswers500,
        Fault::PlainTextNotFound,
        Fault::CollectorCheckRemoved,
        Fault::LimiterNeverTrips,
        Fault::BodyJudgedBeforeCredential,
        Fault::ForeignCertificateIssued,
        Fault::CrlOmitsRevoked,
        Fault::MtlsPolicyIgnored,
        Fault::AgentFromCertificate,
        Fault::MtlsClockBehind,
        Fault::RelayMarksUnsent,
    ];

    /// Faults that need PostgreSQL.
    pub const POSTGRES_ONLY: &'static [Fault] = &[Fault::RlsNotForced];

    /// The checks this fault fails, each with a fragment of its message.
    pub fn caught_by(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::LeakSecretInList => {
                &[("redaction.issued-secret-shown-once", "the enrollment secret appears in the token list")]
            }
            Self::NonceInAuditDetails => &[
                ("redaction.audit-and-events-carry-no-secret", "appears in the audit trail"),
                ("redaction.store-holds-no-secret", "appears in a stored row of audit_events"),
            ],
            Self::RawNonceStored => {
                &[("redaction.store-holds-no-secret", "appears in a stored row of agent_enrollment_nonces")]
            }
            Self::RawFingerprintStored => &[
                ("redaction.fingerprint-never-stored-raw", "the fingerprint hash is stored as sent"),
                ("redaction.store-holds-no-secret", "appears in a stored row of agent_identities"),
            ],
            Self::LogBearer | Self::LogRotationAnswer => {
                &[("redaction.logs-hold-no-secret", "appears in the server logs")]
            }
            Self::EchoRejectedValue => {
                &[("redaction.problems-do-not-echo-input", "the rejection echoes the submitted value")]
            }
            Self::SkipNonceCheck => &[
                ("replay.nonce-reuse-rejected", "expected 409 nonce_replayed, got 201"),
                ("replay.nonce-scoped-to-tenant", "expected 409 nonce_replayed, got 201"),
            ],
            Self::NonceScopedPerToken => {
                &[("replay.nonce-scoped-to-tenant", "expected 409 nonce_replayed, got 201")]
            }
            Self::IssueOneUseTooMany => {
                &[("replay.single-use-token-exhausted", "expected 401 enrollment_token_invalid, got 201")]
            }
            Self::EqualSequenceAccepted => {
                &[("replay.duplicate-heartbeat-acknowledged-once", "not acknowledged as a duplicate")]
            }
            Self::SkipRotationNonce => {
                &[("replay.rotation-nonce-reuse-rejected", "expected 409 nonce_replayed, got 200")]
            }
            Self::TokenTtlIgnored => &[
                ("expiry.enrollment-token-expires", "expected 401 enrollment_token_invalid, got 201"),
                (
                    "expiry.enrollment-token-expires-in-real-time",
                    "expected 401 enrollment_token_invalid, got 201",
                ),
                (
                    "expiry.enrollment-token-refused-at-its-expiry-instant",
                    "expected 401 enrollment_token_invalid, got 201",
                ),
            ],
            Self::TokenExpiryInclusive => &[(
                "expiry.enrollment-token-refused-at-its-expiry-instant",
                "expected 401 enrollment_token_invalid, got 201",
            )],
            Self::RuntimeExpiryIgnored => {
                &[("expiry.runtime-token-expires", "expected 401 runtime_token_invalid, got 200")]
            }
            Self::GraceNeverEnds => &[
                (
                    "expiry.rotated-token-superseded-after-grace",
                    "expected 401 runtime_token_invalid, got 200",
                ),
                (
                    "expiry.mtls-superseded-certificate-refused-after-grace",
                    "expected 401 client_certificate_invalid, got 200",
                ),
            ],
            Self::StaleNeverJudged => {
                &[("expiry.silent-identity-goes-stale", "expected 403 identity_stale, got 200")]
            }
            Self::AdminExpIgnored => {
                &[("expiry.expired-admin-token-rejected", "expected 401 unauthenticated, got 200")]
            }
            Self::AdminNbfIgnored => {
                &[("expiry.admin-token-not-yet-valid-rejected", "expected 401 unauthenticated, got 200")]
            }
            Self::SkipTenantPredicate => {
                &[("tenant-isolation.cross-tenant-agent-read-is-404", "expected 404 not_found, got 200")]
            }
            Self::RevokeAcrossTenants => {
                &[("tenant-isolation.cross-tenant-revokes-are-404", "expected 404 not_found, got 200")]
            }
            Self::ListEventsAcrossTenants => &[(
                "tenant-isolation.lists-are-tenant-scoped",
                "listEvents of tenant B shows tenant A's agent",
            )],
            Self::AgentFromToken => {
                &[("tenant-isolation.cross-agent-heartbeat-refused", "expected 403 actor_mismatch, got 200")]
            }
            Self::RefusalAuditedUnderOtherTenant => {
                &[("tenant-isolation.refusal-audited-under-its-tenant", "is not in tenant A's audit trail")]
            }
            Self::DefaultPrincipal => {
                &[("fail-closed.missing-bearer-is-401", "expected 401 unauthenticated, got 200")]
            }
            Self::AcceptAlgNone => {
                &[("fail-closed.alg-none-admin-token-rejected", "expected 401 unauthenticated, got 200")]
            }
            Self::AcceptAnySignature => {
                &[("fail-closed.forged-admin-token-rejected", "expected 401 unauthenticated, got 200")]
            }
            Self::AcceptTamperedRuntimeToken => &[(
                "fail-closed.tampered-runtime-token-rejected",
                "expected 401 runtime_token_invalid, got 200",
            )],
            Self::TruncatedMacAccepted => &[(
                "fail-closed.tampered-runtime-token-rejected",
                "truncated MAC: expected 401 runtime_token_invalid, got 200",
            )],
            Self::ScopeIgnored => {
                &[("fail-closed.wrong-scope-runtime-token-rejected", "expected 403 scope_forbidden, got 200")]
            }
            Self::AdminAcceptedAsAgent => &[(
                "fail-closed.admin-token-at-agent-endpoint-rejected",
                "expected 403 not_service_account, got 200",
            )],
            Self::RevokeIdentityNotWritten => &[
                ("fail-closed.revoked-identity-refused", "expected 403 identity_revoked, got 200"),
                ("fail-closed.revoked-certificate-listed-in-the-crl", "serial is not in the CRL"),
                ("fail-closed.mtls-revoked-certificate-refused", "expected 403 identity_revoked, got 200"),
            ],
            Self::RevokeTokenNotWritten => {
                &[("fail-closed.revoked-token-refused", "expected 401 enrollment_token_invalid, got 201")]
            }
            Self::CsrCheckedAfterRedeem => &[(
                "fail-closed.malformed-csr-keeps-the-token",
                "expected 400 csr_invalid, got 401 enrollment_token_invalid",
            )],
            Self::OversizeAs400 => &[(
                "fail-closed.malformed-and-oversize-bodies-rejected",
                "expected 413 payload_too_large, got 400 request_invalid",
            )],
            Self::IdentityFieldsIgnored => &[(
                "fail-closed.identity-override-rejected",
                "expected 400 identity_override_rejected, got 200",
            )],
            Self::ViewerMayRevoke => &[("fail-closed.viewer-cannot-write", "expected 403 forbidden, got")],
            Self::SecretlessAnswers500 => &[(
                "fail-closed.missing-runtime-secret-is-503",
                "expected 503 runtime_secret_unavailable, got 500 internal_error",
            )],
            Self::PlainTextNotFound => &[("fail-closed.unknown-routes-are-problems", "the 404 is not JSON")],
            Self::BodyJudgedBeforeCredential => &[
                ("fail-closed.credential-judged-before-body", "got 400 request_invalid"),
                ("fail-closed.viewer-cannot-write", "expected 403 forbidden, got 400 request_invalid"),
            ],
            Self::CollectorCheckRemoved => {
                &[("fail-closed.collector-binding-enforced", "expected 403 collector_mismatch, got 200")]
            }
            Self::LimiterNeverTrips => {
                &[("fail-closed.failed-exchanges-are-rate-limited", "no 429 after 200 failed exchanges")]
            }
            Self::ForeignCertificateIssued => &[
                ("expiry.mtls-expired-certificate-refused", "does not certify the CSR's key"),
                (
                    "fail-closed.issued-certificate-chains-to-the-published-ca",
                    "not signed by the published CA",
                ),
                ("fail-closed.mtls-agent-calls-require-the-certificate", "does not certify the CSR's key"),
                ("fail-closed.mtls-certificate-bound-to-its-agent", "does not certify the CSR's key"),
                ("fail-closed.mtls-revoked-certificate-refused", "does not certify the CSR's key"),
                ("expiry.mtls-superseded-certificate-refused-after-grace", "does not certify the CSR's key"),
            ],
            Self::RelayMarksUnsent => {
                &[("redaction.broker-events-match-the-outbox", "events never arrived on the broker")]
            }
            Self::CrlOmitsRevoked => {
                &[("fail-closed.revoked-certificate-listed-in-the-crl", "serial is not in the CRL")]
            }
            Self::MtlsPolicyIgnored => &[
                (
                    "fail-closed.mtls-agent-calls-require-the-certificate",
                    "expected 200 , got 401 unauthenticated",
                ),
                ("fail-closed.mtls-certificate-bound-to-its-agent", "expected 403 actor_mismatch, got 401"),
                ("fail-closed.mtls-revoked-certificate-refused", "expected 200 , got 401 unauthenticated"),
                (
                    "expiry.mtls-superseded-certificate-refused-after-grace",
                    "rotation by certificate answered 401",
                ),
            ],
            Self::AgentFromCertificate => {
                &[("fail-closed.mtls-certificate-bound-to-its-agent", "expected 403 actor_mismatch, got 200")]
            }
            Self::MtlsClockBehind => {
                &[("expiry.mtls-expired-certificate-refused", "an expired certificate was answered")]
            }
            Self::RlsNotForced => &[(
                "tenant-isolation.row-level-security-forced",
                "audit_events: row-level security is not forced",
            )],
        }
    }

    /// The platform policy this fault runs with.
    pub fn policy(self, policy: Policy) -> Policy {
        match self {
            Self::GraceNeverEnds => Policy { rotation_grace: chrono::Duration::hours(5), ..policy },
            Self::StaleNeverJudged => Policy { stale_after: chrono::Duration::days(7 * 365), ..policy },
            Self::LimiterNeverTrips => Policy { failure_limit: u32::MAX, ..policy },
            Self::MtlsPolicyIgnored => {
                Policy { agent_auth: oneprotect_server::service::AgentAuth::Bearer, ..policy }
            }
            _ => policy,
        }
    }
}

/// A clock a fixed time behind another (the `MtlsClockBehind` fault).
pub struct ClockBehind(pub Arc<dyn Clock>, pub chrono::Duration);

impl Clock for ClockBehind {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.now() - self.1
    }
}

/// Faults of the agent, by their name in the agent's fault-injection build
/// (`agent/src/faults.rs`), with the checks each fails and a fragment of
/// the message.
pub const AGENT_FAULTS: &[(&str, &[(&str, &str)])] = &[
    (
        "follows-redirects",
        &[("fail-closed.agent-refuses-redirects", "followed the redirect to another origin")],
    ),
    ("reads-whole-body", &[("fail-closed.agent-caps-response-bodies", "the body was read whole")]),
    (
        "renewal-ignores-certificate",
        &[("fail-closed.agent-renews-its-certificate-before-expiry", "no renewal of a 20 s certificate")],
    ),
    (
        "no-client-certificate",
        &[("fail-closed.agent-presents-its-certificate", "presented no client certificate")],
    ),
    (
        "request-never-times-out",
        &[("fail-closed.agent-times-out-a-hung-platform", "did not end at request_timeout")],
    ),
    ("certificate-world-readable", &[("redaction.agent-files-owner-only", "certificate.json has mode 644")]),
    (
        "token-left-in-config",
        &[("redaction.agent-token-removed-from-config", "the enrollment token is still in the config")],
    ),
    ("nonce-logged", &[("redaction.agent-logs-hold-no-secret", "appears in the agent's output")]),
    (
        "nonce-reused-on-retry",
        &[
            ("replay.agent-fresh-nonce-per-attempt", "a nonce was reused across attempts"),
            ("fail-closed.agent-enrollment-honours-retry-after", "the retry reused the nonce"),
        ],
    ),
    ("exits-1-on-401", &[("fail-closed.agent-exits-3-on-401", "exit code Some(1), expected 3")]),
    ("exits-3-on-403", &[("fail-closed.agent-exits-4-on-403", "exit code Some(3), expected 4")]),
    ("heartbeat-ignores-retry-after", &[("fail-closed.agent-honours-retry-after", "before Retry-After: 2")]),
    ("exits-on-5xx", &[("fail-closed.agent-backs-off-on-5xx", "the agent exited on a 5xx")]),
    (
        "sigterm-exits-1",
        &[
            ("fail-closed.agent-stops-cleanly-on-sigterm", "exit code Some(1) after SIGTERM"),
            ("fail-closed.agent-stops-at-once-while-waiting", "exit code Some(1) after SIGTERM"),
            ("fail-closed.agent-renews-before-expiry", "did not stop cleanly after renewal"),
            ("fail-closed.agent-times-out-a-hung-platform", "exit code Some(1) after SIGTERM"),
        ],
    ),
    ("cpu-usage-summed-over-cores", &[("fail-closed.agent-bodies-match-contract", "heartbeat body")]),
    (
        "renewal-never-fires",
        &[
            ("fail-closed.agent-renews-before-expiry", "no renewal of a 3 s runtime token"),
            ("fail-closed.agent-renews-its-certificate-before-expiry", "no renewal of a 20 s certificate"),
        ],
    ),
    (
        "renewed-key-world-readable",
        &[("fail-closed.agent-renews-before-expiry", "the renewed key has mode 644")],
    ),
    (
        "sigterm-ignored-while-waiting",
        &[("fail-closed.agent-stops-at-once-while-waiting", "still running 1 s after SIGTERM")],
    ),
    (
        "sequence-restarts-at-one",
        &[("replay.agent-sequence-continues-across-restarts", "after a restart the sequence went back to 1")],
    ),
    (
        "enroll-ignores-retry-after",
        &[("fail-closed.agent-enrollment-honours-retry-after", "before Retry-After: 2")],
    ),
];

pub fn sign_runtime(secret: &[u8], claims: &RuntimeClaims) -> String {
    RuntimeKeyring::new(Some(secret.to_vec()), vec![])
        .ok()
        .and_then(|r| r.issue(claims))
        .map(|t| t.token.expose_secret().to_owned())
        .unwrap_or_default()
}

/// Runtime claims for the identity an exchange answer describes, issued at
/// `now` for one hour (to forge tokens only an insider with the secret could make).
pub fn claims_from_enrollment(enrolled: &Value, now: DateTime<Utc>) -> Result<RuntimeClaims, String> {
    let id = |p: &str| {
        Uuid::parse_str(enrolled.pointer(p).and_then(|v| v.as_str()).unwrap_or_default())
            .map_err(|e| format!("{p}: {e}"))
    };
    let tenant = enrolled.pointer("/agent/tenant_id").and_then(|v| v.as_str()).unwrap_or_default();
    Ok(oneprotect_server::runtime_token::claims_for(
        tenant,
        id("/agent/agent_id")?,
        id("/agent/collector_id")?,
        id("/agent/asset_id")?,
        id("/agent/certificate_id")?,
        now,
        chrono::Duration::hours(1),
    ))
}

pub fn mint_admin(ctx: &Ctx, secret: &[u8], tenant: &str, role: &str, exp: DateTime<Utc>) -> String {
    mint_admin_with(ctx, secret, tenant, role, exp, None)
}

pub fn mint_admin_with(
    ctx: &Ctx,
    secret: &[u8],
    tenant: &str,
    role: &str,
    exp: DateTime<Utc>,
    nbf: Option<DateTime<Utc>>,
) -> String {
    let claims = AdminClaims {
        sub: format!("{}@conformance", ctx.run_id),
        tenant_id: tenant.into(),
        roles: vec![role.into()],
        exp: exp.timestamp(),
        iss: ctx.local.admin_issuer.clone(),
        aud: ctx.local.admin_audience.clone(),
        nbf: nbf.map(|t| t.timestamp()),
    };
    let token = oneprotect_server::admin_auth::mint_hs256(secret, &claims).unwrap_or_default();
    ctx.remember(&token);
    token
}

/// What the faulty HTTP layer saw that the faulty store needs.
#[derive(Default)]
pub struct Observed {
    nonce: Option<String>,
    fingerprint: Option<String>,
    /// token id → secret, learnt from issue answers.
    issued: BTreeMap<String, String>,
}

pub type Shared = Arc<Mutex<Observed>>;

fn observed(shared: &Shared) -> std::sync::MutexGuard<'_, Observed> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}
