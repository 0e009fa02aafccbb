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
            Self::GraceNeverEnds => &[(
                "expiry.rotated-token-superseded-after-grace",
                "expected 401 runtime_token_invalid, got 200",
            )],
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
            Self::RevokeIdentityNotWritten => {
                &[("fail-closed.revoked-identity-refused", "expected 403 identity_revoked, got 200")]
            }
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
            _ => policy,
        }
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
        &[("fail-closed.agent-renews-before-expiry", "no renewal of a 3 s runtime token")],
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

/// The real store with one fault.
pub struct FaultyStore {
    pub inner: Arc<dyn Store>,
    pub fault: Fault,
    pub tenants: Vec<String>,
    pub seen: Shared,
}

impl FaultyStore {
    fn other_tenant(&self, tenant: &str) -> Option<&String> {
        self.tenants.iter().find(|t| t.as_str() != tenant)
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn write_queue(&self) -> oneprotect_server::store::batch::WriteQueueSnapshot {
        self.inner.write_queue()
    }
    async fn ready(&self) -> StoreResult<()> {
        self.inner.ready().await
    }
    async fn insert_enrollment_token(
        &self,
        t: &EnrollmentTokenRecord,
        a: &AuditRecord,
        e: &OutboxEvent,
    ) -> StoreResult<()> {
        let mut t = t.clone();
        match self.fault {
            Fault::IssueOneUseTooMany => t.max_uses += 1,
            Fault::TokenTtlIgnored => t.expires_at += chrono::Duration::days(1),
            Fault::TokenExpiryInclusive => t.expires_at += chrono::Duration::microseconds(1),
            _ => {}
        }
        self.inner.insert_enrollment_token(&t, a, e).await
    }
    async fn list_enrollment_tokens(
        &self,
        tenant: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<EnrollmentTokenRecord>> {
        self.inner.list_enrollment_tokens(tenant, after, limit).await
    }
    async fn revoke_enrollment_token(
        &self,
        tenant: &str,
        id: Uuid,
        a: &AuditRecord,
        e: &OutboxEvent,
    ) -> StoreResult<RevokeOutcome<EnrollmentTokenRecord>> {
        match self.fault {
            Fault::RevokeTokenNotWritten => {
                return Ok(match self.inner.find_enrollment_token(id).await? {
                    Some(mut t) if t.tenant_id == tenant => {
                        t.revoked_at = Some(a.occurred_at);
                        RevokeOutcome::Revoked(t)
                    }
                    _ => RevokeOutcome::NotFound,
                });
            }
            Fault::RevokeAcrossTenants => {
                let outcome = self.inner.revoke_enrollment_token(tenant, id, a, e).await?;
                if matches!(outcome, RevokeOutcome::NotFound)
                    && let Some(other) = self.other_tenant(tenant)
                {
                    return self.inner.revoke_enrollment_token(other, id, a, e).await;
                }
                Ok(outcome)
            }
            _ => self.inner.revoke_enrollment_token(tenant, id, a, e).await,
        }
    }
    async fn find_enrollment_token(&self, id: Uuid) -> StoreResult<Option<EnrollmentTokenRecord>> {
        self.inner.find_enrollment_token(id).await
    }
    async fn commit_enrollment(&self, c: &EnrollmentCommit) -> StoreResult<EnrollmentOutcome> {
        let mut c = c.clone();
        let (nonce, fingerprint) = {
            let seen = observed(&self.seen);
            (seen.nonce.clone().unwrap_or_default(), seen.fingerprint.clone())
        };
        match self.fault {
            Fault::SkipNonceCheck => c.nonce_hash = KeyedHash::from_stored(Uuid::new_v4().to_string()),
            Fault::NonceScopedPerToken => {
                c.nonce_hash = KeyedHash::from_stored(format!("{}:{}", c.token_id, c.nonce_hash.as_str()))
            }
            Fault::RawNonceStored => c.nonce_hash = KeyedHash::from_stored(nonce),
            Fault::NonceInAuditDetails => {
                c.audit.details.insert("nonce".into(), nonce);
            }
            Fault::RawFingerprintStored => {
                c.identity.fingerprint_hash = fingerprint.map(KeyedHash::from_stored)
            }
            _ => {}
        }
        self.inner.commit_enrollment(&c).await
    }
    async fn get_identity(&self, tenant: &str, agent_id: Uuid) -> StoreResult<Option<AgentIdentityRecord>> {
        if self.fault == Fault::SkipTenantPredicate {
            for t in &self.tenants {
                if let Some(i) = self.inner.get_identity(t, agent_id).await? {
                    return Ok(Some(i));
                }
            }
        }
        self.inner.get_identity(tenant, agent_id).await
    }
    async fn list_identities(
        &self,
        tenant: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<AgentIdentityRecord>> {
        self.inner.list_identities(tenant, after, limit).await
    }
    async fn revoke_identity(
        &self,
        tenant: &str,
        agent_id: Uuid,
        by: &str,
        reason: Option<&str>,
        a: &AuditRecord,
        e: &OutboxEvent,
    ) -> StoreResult<RevokeOutcome<AgentIdentityRecord>> {
        match self.fault {
            Fault::RevokeIdentityNotWritten => Ok(match self.inner.get_identity(tenant, agent_id).await? {
                Some(mut i) => {
                    i.status = AgentStatus::Revoked;
                    i.revoked_at = Some(a.occurred_at);
                    RevokeOutcome::Revoked(i)
                }
                None => RevokeOutcome::NotFound,
            }),
            Fault::RevokeAcrossTenants => {
                let outcome = self.inner.revoke_identity(tenant, agent_id, by, reason, a, e).await?;
                if matches!(outcome, RevokeOutcome::NotFound)
                    && let Some(other) = self.other_tenant(tenant)
                {
                    return self.inner.revoke_identity(other, agent_id, by, reason, a, e).await;
                }
                Ok(outcome)
            }
            _ => self.inner.revoke_identity(tenant, agent_id, by, reason, a, e).await,
        }
    }
    async fn mark_identity_stale(&self, tenant: &str, agent_id: Uuid, a: &AuditRecord) -> StoreResult<()> {
        self.inner.mark_identity_stale(tenant, agent_id, a).await
    }
    async fn commit_heartbeat(&self, c: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        match self.fault {
            Fault::EqualSequenceAccepted => {
                let retry = c.clone();
                match self.inner.commit_heartbeat(c).await? {
                    HeartbeatOutcome::Duplicate => {
                        self.inner
                            .commit_heartbeat(HeartbeatCommit { sequence: retry.sequence + 1, ..retry })
                            .await
                    }
                    other => Ok(other),
                }
            }
            Fault::CollectorCheckRemoved => {
                let mut c = c;
                if let Some(stored) = self.inner.get_identity(&c.tenant_id, c.agent_id).await? {
                    c.binding.collector_id = stored.collector_id;
                    c.binding.asset_id = stored.asset_id;
                }
                self.inner.commit_heartbeat(c).await
            }
            _ => self.inner.commit_heartbeat(c).await,
        }
    }
    async fn commit_heartbeat_unbatched(&self, c: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        self.inner.commit_heartbeat_unbatched(c).await
    }
    async fn get_asset(&self, tenant: &str, asset_id: Uuid) -> StoreResult<Option<AssetRecord>> {
        self.inner.get_asset(tenant, asset_id).await
    }
    async fn commit_rotation(&self, c: &RotationCommit) -> StoreResult<RotationOutcome> {
        if self.fault == Fault::SkipRotationNonce {
            let mut c = c.clone();
            c.nonce_hash = KeyedHash::from_stored(Uuid::new_v4().to_string());
            return self.inner.commit_rotation(&c).await;
        }
        self.inner.commit_rotation(c).await
    }
    async fn get_certificate(&self, tenant: &str, id: Uuid) -> StoreResult<Option<CertificateRecord>> {
        self.inner.get_certificate(tenant, id).await
    }
    async fn append_audit(&self, a: &AuditRecord, e: Option<&OutboxEvent>) -> StoreResult<()> {
        if self.fault == Fault::RefusalAuditedUnderOtherTenant
            && a.outcome == oneprotect_server::model::AuditOutcome::Failure
            && a.actor_type == oneprotect_server::model::ActorType::TenantAdmin
            && let Some(other) = self.other_tenant(&a.tenant_id)
        {
            let mut moved = a.clone();
            moved.tenant_id = other.clone();
            return self.inner.append_audit(&moved, e).await;
        }
        self.inner.append_audit(a, e).await
    }
    async fn list_audit(
        &self,
        tenant: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<AuditRecord>> {
        self.inner.list_audit(tenant, after, limit).await
    }
    async fn list_events(
        &self,
        tenant: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<OutboxEvent>> {
        if self.fault == Fault::ListEventsAcrossTenants {
            let mut items = Vec::new();
            for t in &self.tenants {
                items.extend(self.inner.list_events(t, None, 200).await?.items);
            }
            return Ok(Page { items, next_after: None });
        }
        self.inner.list_events(tenant, after, limit).await
    }
    async fn dump_all_rows(&self) -> StoreResult<Vec<String>> {
        self.inner.dump_all_rows().await
    }
}

/// What the faulty HTTP layer works with.
#[derive(Clone)]
pub struct HttpFaultState {
    pub fault: Fault,
    /// True on the second platform, the one without a runtime secret.
    pub secretless: bool,
    pub runtime_secret: Vec<u8>,
    pub admin_secret: Vec<u8>,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    pub seen: Shared,
}

fn bearer_of(req: &Request) -> Option<String> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

fn set_bearer(req: &mut Request, token: &str) {
    if let Ok(v) = format!("Bearer {token}").parse() {
        req.headers_mut().insert("authorization", v);
    }
}

fn json_part(part: &str) -> Option<Value> {
    oneprotect_server::secrets::unb64(part.trim_end_matches('='))
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// An admin JWT's header and claims, unverified.
fn admin_parts(token: &str) -> Option<(Value, AdminClaims)> {
    let mut parts = token.split('.');
    let header = json_part(parts.next()?)?;
    let claims = serde_json::from_value(json_part(parts.next()?)?).ok()?;
    Some((header, claims))
}

/// A runtime token's claims and MAC, unverified.
fn runtime_parts(token: &str) -> Option<(RuntimeClaims, String)> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 5 || parts[0] != "oprt" {
        return None;
    }
    let claims = serde_json::from_value(json_part(parts[3])?).ok()?;
    Some((claims, parts[4].to_owned()))
}

fn problem(status: u16, code: ProblemCode) -> Response {
    let body = json!({"type": format!("urn:oneprotect:problem:{code}"), "title": code, "status": status, "code": code, "detail": "faulty variant", "request_id": "faulty-variant"});
    let status =
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("content-type", "application/problem+json")], body.to_string()).into_response()
}

async fn read_json(req: Request) -> (axum::http::request::Parts, Option<Value>, axum::body::Bytes) {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let json = serde_json::from_slice(&bytes).ok();
    (parts, json, bytes)
}

fn rebuild(mut parts: axum::http::request::Parts, body: Vec<u8>) -> Request {
    parts.headers.remove("content-length");
    if let Ok(v) = body.len().to_string().parse() {
        parts.headers.insert("content-length", v);
    }
    Request::from_parts(parts, Body::from(body))
}

async fn response_json(
    response: Response,
) -> (axum::http::response::Parts, Option<Value>, axum::body::Bytes) {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let json = serde_json::from_slice(&bytes).ok();
    (parts, json, bytes)
}

fn respond(mut parts: axum::http::response::Parts, body: Vec<u8>) -> Response {
    parts.headers.remove("content-length");
    Response::from_parts(parts, Body::from(body))
}

fn is_heartbeat(req: &Request) -> bool {
    req.method() == axum::http::Method::POST && req.uri().path().ends_with("/telemetry/heartbeat")
}

fn remint(state: &HttpFaultState, claims: &AdminClaims) -> Option<String> {
    oneprotect_server::admin_auth::mint_hs256(&state.admin_secret, claims).ok()
}

fn known_path(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    oneprotect_contracts::contract::OPERATIONS.iter().any(|op| {
        let template: Vec<&str> = op.path.split('/').collect();
        template.len() == segments.len()
            && template.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s)
    }) || ["/healthz", "/readyz", "/metrics"].contains(&path)
}

/// The protected operation a request is for, by method and path template.
fn protected_operation(
    method: &str,
    path: &str,
) -> Option<&'static oneprotect_contracts::contract::OperationSpec> {
    let segments: Vec<&str> = path.split('/').collect();
    oneprotect_contracts::contract::OPERATIONS.iter().find(|op| {
        let template: Vec<&str> = op.path.split('/').collect();
        op.security.is_some()
            && op.method == method
            && template.len() == segments.len()
            && template.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s)
    })
}

/// The faulty HTTP layer: wraps the real router.
pub async fn http_fault(state: HttpFaultState, req: Request, next: Next) -> Response {
    let now = state.clock.now();
    let fault = state.fault;
    if state.secretless {
        let response = next.run(req).await;
        if fault == Fault::SecretlessAnswers500 && response.status().as_u16() == 503 {
            return problem(500, ProblemCode::InternalError);
        }
        return response;
    }
    let path = req.uri().path().to_owned();
    let is_exchange = req.method() == axum::http::Method::POST && path == "/api/v1/agent-enrollment/exchange";
    let mut req = req;

    // Requests: what the exchange carried, and credentials the fault accepts.
    if is_exchange {
        let (parts, json, bytes) = read_json(req).await;
        let mut body = bytes.to_vec();
        if let Some(mut json) = json {
            {
                let mut seen = observed(&state.seen);
                seen.nonce = json["nonce"].as_str().map(str::to_owned);
                seen.fingerprint = json["hardware_fingerprint_hash"].as_str().map(str::to_owned);
            }
            if fault == Fault::CsrCheckedAfterRedeem
                && oneprotect_server::csr::verify_csr_pem(json["csr_pem"].as_str().unwrap_or_default())
                    .is_err()
            {
                json["csr_pem"] = json!(crate::ctx::p256_csr());
                body = json.to_string().into_bytes();
                let response = next.run(rebuild(parts, body)).await;
                return if response.status().as_u16() == 201 {
                    problem(400, ProblemCode::CsrInvalid)
                } else {
                    response
                };
            }
            if fault == Fault::EchoRejectedValue {
                let submitted = json["enrollment_token"].as_str().unwrap_or_default().to_owned();
                let response = next.run(rebuild(parts, body)).await;
                if response.status().as_u16() != 400 {
                    return response;
                }
                let (rparts, rjson, rbytes) = response_json(response).await;
                let Some(mut rjson) = rjson else { return respond(rparts, rbytes.to_vec()) };
                rjson["detail"] = json!(format!("enrollment_token {submitted:?} is invalid"));
                return respond(rparts, rjson.to_string().into_bytes());
            }
        }
        req = rebuild(parts, body);
    }
    let bearer = bearer_of(&req);
    match fault {
        Fault::LogBearer => {
            tracing::info!(authorization = %bearer.clone().unwrap_or_default(), "faulty variant: request received");
        }
        Fault::DefaultPrincipal
            if bearer.is_none()
                && path.starts_with("/api/v1/")
                && !is_exchange
                && !path.contains("/telemetry/")
                && !path.contains("/certificate/") =>
        {
            let claims = AdminClaims {
                sub: "default@faulty".into(),
                tenant_id: crate::local::TENANT_A.into(),
                roles: vec!["tenant_admin".into()],
                exp: now.timestamp() + 3600,
                iss: crate::local::ISSUER.into(),
                aud: crate::local::AUDIENCE.into(),
                nbf: None,
            };
            if let Some(t) = remint(&state, &claims) {
                set_bearer(&mut req, &t);
            }
        }
        Fault::AcceptAlgNone
        | Fault::AcceptAnySignature
        | Fault::AdminExpIgnored
        | Fault::AdminNbfIgnored
        | Fault::ViewerMayRevoke => {
            if let Some((header, mut claims)) = bearer.as_deref().and_then(admin_parts) {
                let alg = header["alg"].as_str().unwrap_or_default().to_ascii_lowercase();
                let verifies = oneprotect_server::admin_auth::AdminVerifier::hs256(
                    &state.admin_secret,
                    &claims.iss,
                    &claims.aud,
                )
                .ok()
                .is_some_and(|v| {
                    v.verify(
                        bearer.as_deref().unwrap_or_default(),
                        DateTime::from_timestamp(claims.exp - 60, 0).unwrap_or(now),
                    )
                    .is_ok()
                });
                let replace = match fault {
                    Fault::AcceptAlgNone => alg == "none",
                    Fault::AcceptAnySignature => alg == "hs256" && !verifies,
                    Fault::AdminExpIgnored if verifies && claims.exp < now.timestamp() => {
                        claims.exp = now.timestamp() + 3600;
                        true
                    }
                    Fault::AdminNbfIgnored if claims.nbf.is_some_and(|n| n > now.timestamp()) => {
                        claims.nbf = None;
                        true
                    }
                    Fault::ViewerMayRevoke
                        if path.ends_with("/revoke") && claims.roles.iter().any(|r| r == "tenant_viewer") =>
                    {
                        claims.roles = vec!["tenant_admin".into()];
                        true
                    }
                    _ => false,
                };
                if replace && let Some(t) = remint(&state, &claims) {
                    set_bearer(&mut req, &t);
                }
            }
        }
        Fault::AcceptTamperedRuntimeToken
        | Fault::TruncatedMacAccepted
        | Fault::ScopeIgnored
        | Fault::RuntimeExpiryIgnored => {
            if let Some((mut claims, mac)) = bearer.as_deref().and_then(runtime_parts) {
                let ring = RuntimeKeyring::new(Some(state.runtime_secret.clone()), vec![]).ok();
                let verifies_at = |at: DateTime<Utc>| {
                    ring.as_ref().is_some_and(|r| r.verify(bearer.as_deref().unwrap_or_default(), at).is_ok())
                };
                let correct = sign_runtime(&state.runtime_secret, &claims);
                let correct_mac = correct.rsplit('.').next().unwrap_or_default().to_owned();
                let replace = match fault {
                    Fault::AcceptTamperedRuntimeToken => !verifies_at(now),
                    Fault::TruncatedMacAccepted => {
                        mac.len() < correct_mac.len() && correct_mac.starts_with(&mac)
                    }
                    Fault::ScopeIgnored if claims.scope != "agent_heartbeat" => {
                        claims.scope = "agent_heartbeat".into();
                        true
                    }
                    Fault::RuntimeExpiryIgnored
                        if !verifies_at(now)
                            && verifies_at(DateTime::from_timestamp(claims.iat, 0).unwrap_or(now)) =>
                    {
                        claims.exp = now.timestamp() + 3600;
                        true
                    }
                    _ => false,
                };
                if replace {
                    set_bearer(&mut req, &sign_runtime(&state.runtime_secret, &claims));
                }
            }
        }
        Fault::AdminAcceptedAsAgent if is_heartbeat(&req) => {
            let agent = path.split('/').nth(4).and_then(|s| Uuid::parse_str(s).ok());
            if let (Some((_, claims)), Some(agent)) = (bearer.as_deref().and_then(admin_parts), agent)
                && let Ok(Some(identity)) = state.store.get_identity(&claims.tenant_id, agent).await
            {
                let runtime = oneprotect_server::runtime_token::claims_for(
                    &identity.tenant_id,
                    identity.agent_id,
                    identity.collector_id,
                    identity.asset_id,
                    identity.certificate_id,
                    now,
                    chrono::Duration::hours(1),
                );
                set_bearer(&mut req, &sign_runtime(&state.runtime_secret, &runtime));
            }
        }
        Fault::AgentFromToken if is_heartbeat(&req) => {
            if let Some((claims, _)) = bearer.as_deref().and_then(runtime_parts) {
                let segments: Vec<String> = path.split('/').map(str::to_owned).collect();
                if segments.len() > 4 && segments[4] != claims.agent_id.to_string() {
                    let rewritten = format!("/api/v1/agents/{}/telemetry/heartbeat", claims.agent_id);
                    if let Ok(uri) = rewritten.parse() {
                        *req.uri_mut() = uri;
                    }
                }
            }
        }
        // The old stubs checked that a bearer was present, then the body, then the credential.
        Fault::BodyJudgedBeforeCredential
            if req.method() != axum::http::Method::GET
                && req.headers().contains_key(axum::http::header::AUTHORIZATION) =>
        {
            let op = protected_operation(req.method().as_str(), &path);
            let (parts, json, bytes) = read_json(req).await;
            if let Some(schema) = op.and_then(|o| o.request_schema) {
                if json
                    .as_ref()
                    .is_some_and(|v| oneprotect_contracts::contract::forbidden_property(schema, v).is_some())
                {
                    return problem(400, ProblemCode::IdentityOverrideRejected);
                }
                let valid = json
                    .as_ref()
                    .is_some_and(|v| oneprotect_contracts::contract::validate_schema(schema, v).is_ok());
                if !valid {
                    return problem(400, ProblemCode::RequestInvalid);
                }
            }
            req = rebuild(parts, bytes.to_vec());
        }
        Fault::IdentityFieldsIgnored if is_heartbeat(&req) => {
            let (parts, json, bytes) = read_json(req).await;
            let body = match json {
                Some(Value::Object(mut map)) => {
                    for field in ["tenant_id", "agent_id", "collector_id", "asset_id", "site_id"] {
                        map.remove(field);
                    }
                    Value::Object(map).to_string().into_bytes()
                }
                _ => bytes.to_vec(),
            };
            req = rebuild(parts, body);
        }
        _ => {}
    }

    let is_list = req.method() == axum::http::Method::GET && path == "/api/v1/agent-enrollment/tokens";
    let is_issue = req.method() == axum::http::Method::POST && path == "/api/v1/agent-enrollment/tokens";
    let is_rotation = path.ends_with("/certificate/rotate");
    let response = next.run(req).await;

    // Responses.
    match fault {
        Fault::OversizeAs400 if response.status().as_u16() == 413 => {
            problem(400, ProblemCode::RequestInvalid)
        }
        Fault::PlainTextNotFound if response.status().as_u16() == 404 && !known_path(&path) => {
            (axum::http::StatusCode::NOT_FOUND, "Not Found").into_response()
        }
        Fault::LogRotationAnswer if is_rotation => {
            let (parts, _, bytes) = response_json(response).await;
            tracing::debug!(answer = %String::from_utf8_lossy(&bytes), "faulty variant: rotation answered");
            respond(parts, bytes.to_vec())
        }
        Fault::LeakSecretInList if (is_list || is_issue) && response.status().is_success() => {
            let (parts, json, bytes) = response_json(response).await;
            let Some(mut json) = json else { return respond(parts, bytes.to_vec()) };
            if is_issue {
                if let (Some(id), Some(secret)) =
                    (json["token"]["enrollment_token_id"].as_str(), json["enrollment_token"].as_str())
                {
                    observed(&state.seen).issued.insert(id.to_owned(), secret.to_owned());
                }
            } else if let Some(items) = json["items"].as_array_mut() {
                let seen = observed(&state.seen);
                for item in items {
                    if let Some(secret) =
                        item["enrollment_token_id"].as_str().and_then(|id| seen.issued.get(id))
                    {
                        item["label"] = Value::String(secret.clone());
                    }
                }
            }
            respond(parts, json.to_string().into_bytes())
        }
        _ => response,
    }
}
