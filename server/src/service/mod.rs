//! The rules. Each public method is one use case; it takes typed input,
//! checks every rule (fail closed), and asks the store for one atomic write.
//! Nothing here knows HTTP or SQL.

mod agents;
mod certificates;
mod enrollment;

use oneprotect_contracts::contract::OperationId;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use chrono::Duration;
use oneprotect_contracts::events::{self, EventData};
use uuid::Uuid;

pub use agents::{AgentCaller, HeartbeatInput, HeartbeatResult, RotationResult};
pub use enrollment::{ExchangeInput, ExchangeResult, IssueInput, IssuedToken};

use crate::admin_auth::{AdminAuthFailure, AdminPrincipal, AdminVerifier};
use crate::clock::Clock;
use crate::error::Rejection;
use crate::metrics::Metrics;
use crate::model::*;
use crate::pki::PlatformCa;
use crate::ratelimit::ExchangeLimiter;
use crate::runtime_token::RuntimeKeyring;
use crate::secrets::HashKey;
use crate::source::TrustedProxies;
use crate::store::Store;

pub const EVENT_SOURCE: &str = "/oneprotect/platform";
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 200;

/// Bounds and durations of the rules.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_enrollment_token_ttl: Duration,
    pub max_enrollment_token_uses: u32,
    pub runtime_token_ttl: Duration,
    /// How long a runtime token issued before a rotation keeps working.
    pub rotation_grace: Duration,
    /// Silence after which an identity is stale.
    pub stale_after: Duration,
    pub certificate_validity: Duration,
    /// Failed exchanges allowed per source address, and per token id from
    /// one source, in `failure_window`.
    pub failure_limit: u32,
    pub failure_window: Duration,
    /// Proxies whose `X-Forwarded-For` names the source.
    pub trusted_proxies: TrustedProxies,
    /// The credentials agent calls (heartbeat, rotation) must present.
    pub agent_auth: AgentAuth,
    /// The header (lowercase) in which a TLS-terminating proxy among
    /// `trusted_proxies` forwards the client certificate, if any.
    pub client_certificate_header: Option<String>,
}

/// How agent calls authenticate (`ONEPROTECT_AGENT_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAuth {
    /// The verified client certificate, which must be the identity's current
    /// one (or the previous one inside the rotation grace, for heartbeats).
    Mtls,
    /// Both, and the runtime token must be bound to the same certificate.
    MtlsAndBearer,
    /// The runtime token alone: the runtime-lite compatibility path.
    Bearer,
}

impl AgentAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mtls => "mtls",
            Self::MtlsAndBearer => "mtls+bearer",
            Self::Bearer => "bearer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Mtls, Self::MtlsAndBearer, Self::Bearer].into_iter().find(|a| a.as_str() == s)
    }

    pub fn needs_certificate(self) -> bool {
        self != Self::Bearer
    }

    pub fn needs_bearer(self) -> bool {
        self != Self::Mtls
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_enrollment_token_ttl: Duration::days(30),
            max_enrollment_token_uses: 10_000,
            runtime_token_ttl: Duration::hours(24),
            rotation_grace: Duration::minutes(5),
            stale_after: Duration::days(7),
            certificate_validity: Duration::days(30),
            failure_limit: 20,
            failure_window: Duration::minutes(1),
            trusted_proxies: TrustedProxies::default(),
            agent_auth: AgentAuth::Bearer,
            client_certificate_header: None,
        }
    }
}

/// Who is asking and how to correlate the request.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
    /// Whether the caller chose `request_id` (recorded so in audit).
    pub request_id_from_caller: bool,
    pub remote_addr: Option<SocketAddr>,
    /// The source address (`source::source_address`): the peer, or the
    /// client a trusted proxy names. Telemetry, never identity.
    pub source: Option<IpAddr>,
}

pub struct Platform {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    hash_key: HashKey,
    runtime_keys: RuntimeKeyring,
    admin: AdminVerifier,
    policy: Policy,
    limiter: ExchangeLimiter,
    metrics: Arc<Metrics>,
    /// The issuing CA; without one, exchange and rotation fail closed (503).
    ca: Option<Arc<PlatformCa>>,
    /// The last CRL signed, reused while it is fresh (see `certificate_revocation_list`).
    crl_cache: std::sync::Mutex<Option<certificates::SignedCrl>>,
    /// Agent certificates already verified and bound (mutual TLS).
    certificates: certificates::VerifiedCertificates,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("store", &self.store.backend())
            .field("runtime_keys", &self.runtime_keys)
            .field("policy", &self.policy)
            .finish()
    }
}

/// An event payload as its generated type; a mismatch is our bug, so the
/// request fails closed rather than emitting a malformed event.
pub(super) fn data<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Rejection> {
    serde_json::from_value(value).map_err(|e| {
        tracing::error!(error = %e, "event payload does not fit its generated type");
        Rejection::Internal
    })
}

/// A string as a generated event type that bounds it (length, pattern);
/// a value the request schema admitted but the event schema does not is
/// our bug, so the request fails closed.
pub(super) fn bounded<'a, T>(value: &'a str) -> Result<T, Rejection>
where
    T: TryFrom<&'a str>,
    T::Error: std::fmt::Display,
{
    T::try_from(value).map_err(|e| {
        tracing::error!(error = %e, "a request value does not fit its event field");
        Rejection::Internal
    })
}

/// A fresh id for an audit record or event made at `at`: a version 7 UUID
/// (RFC 9562) of that time and random bits. Records are written in time
/// order, so their primary-key index grows at its right edge instead of
/// dirtying a random page per insert.
fn record_id(at: chrono::DateTime<chrono::Utc>) -> Uuid {
    let seconds = u64::try_from(at.timestamp()).unwrap_or(0);
    Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, seconds, at.timestamp_subsec_nanos()))
}

/// An opaque page cursor: the last sequence number seen.
pub fn encode_cursor(seq: i64) -> String {
    crate::secrets::b64(format!("v1:{seq}").as_bytes())
}

pub fn decode_cursor(cursor: &str) -> Result<i64, Rejection> {
    crate::secrets::unb64(cursor)
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("v1:").and_then(|n| n.parse::<i64>().ok()))
        .filter(|n| *n >= 0)
        .ok_or_else(|| Rejection::ParameterInvalid("the cursor is not one this server issued".into()))
}

/// A validated page request.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub after: Option<i64>,
    pub limit: u32,
}

impl PageRequest {
    pub fn parse(cursor: Option<&str>, limit: Option<std::num::NonZeroU32>) -> Result<Self, Rejection> {
        let after = cursor.map(decode_cursor).transpose()?;
        let limit = match limit.map(std::num::NonZeroU32::get) {
            None => DEFAULT_PAGE_SIZE,
            Some(l) if l <= MAX_PAGE_SIZE => l,
            Some(_) => return Err(Rejection::ParameterInvalid(format!("limit must be 1..={MAX_PAGE_SIZE}"))),
        };
        Ok(Self { after, limit })
    }
}

/// What an operation is to the audit trail and to the admin role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The audit action of the operation.
    pub action: AuditAction,
    /// Whether it changes anything (a `tenant_viewer` may not call it).
    pub writes: bool,
}

/// Which operations write and the audit action of each: declared here once,
/// for every operation of the contract (a new operation does not compile
/// until it is added).
pub fn access(op: OperationId) -> Access {
    let (action, writes) = match op {
        OperationId::IssueEnrollmentToken => (AuditAction::EnrollmentTokenIssue, true),
        OperationId::ListEnrollmentTokens => (AuditAction::EnrollmentTokenList, false),
        OperationId::RevokeEnrollmentToken => (AuditAction::EnrollmentTokenRevoke, true),
        OperationId::ExchangeEnrollmentToken => (AuditAction::AgentExchange, true),
        OperationId::ListAgents => (AuditAction::AgentList, false),
        OperationId::GetAgent => (AuditAction::AgentGet, false),
        OperationId::RevokeAgent => (AuditAction::AgentRevoke, true),
        OperationId::PostAgentHeartbeat => (AuditAction::AgentHeartbeat, true),
        OperationId::RotateAgentCertificate => (AuditAction::AgentRotate, true),
        OperationId::ListAuditEvents => (AuditAction::AuditList, false),
        OperationId::ListEvents => (AuditAction::EventList, false),
        OperationId::GetHealth
        | OperationId::GetReadiness
        | OperationId::GetMetrics
        | OperationId::GetOpenApiDocument
        | OperationId::GetAsyncApiDocument
        | OperationId::GetCaCertificates
        | OperationId::GetCertificateRevocationList => (AuditAction::OperationsRead, false),
    };
    Access { action, writes }
}

impl Platform {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        hash_key: HashKey,
        runtime_keys: RuntimeKeyring,
        admin: AdminVerifier,
        policy: Policy,
    ) -> Self {
        let limiter = ExchangeLimiter::for_store(&store, policy.failure_limit, policy.failure_window);
        Self {
            store,
            clock,
            hash_key,
            runtime_keys,
            admin,
            policy,
            limiter,
            metrics: Arc::default(),
            ca: None,
            crl_cache: std::sync::Mutex::default(),
            certificates: certificates::VerifiedCertificates::default(),
        }
    }

    /// The platform with its issuing CA.
    #[must_use]
    pub fn with_ca(mut self, ca: Arc<PlatformCa>) -> Self {
        self.ca = Some(ca);
        self
    }

    pub fn ca(&self) -> Option<&Arc<PlatformCa>> {
        self.ca.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Records the answer time of one HTTP request (see `metrics`).
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.metrics.observe_request(route, method, status, seconds);
    }

    /// The platform's metrics (the relay reports into them).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn metrics_text(&self) -> String {
        self.metrics.render(&self.store.write_queue())
    }

    pub async fn ready(&self) -> Result<(), Rejection> {
        self.store.ready().await.map_err(|e| {
            tracing::warn!(error = %e, "readiness check failed");
            Rejection::StoreUnavailable
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn audit(
        &self,
        tenant_id: &str,
        actor: (ActorType, &str),
        action: AuditAction,
        target: (&str, Option<String>),
        rejection: Option<&Rejection>,
        meta: &RequestMeta,
        mut details: BTreeMap<String, String>,
    ) -> AuditRecord {
        let now = self.clock.now();
        // Telemetry for tracing abuse, never identity.
        if let Some(source) = meta.source {
            details.insert("source_address".to_owned(), source.to_string());
        }
        if meta.request_id_from_caller {
            details.insert("request_id_origin".to_owned(), "caller".to_owned());
        }
        AuditRecord {
            audit_id: record_id(now),
            tenant_id: tenant_id.to_owned(),
            occurred_at: now,
            actor_type: actor.0,
            actor_id: actor.1.to_owned(),
            action,
            target_type: target.0.to_owned(),
            target_id: target.1,
            outcome: if rejection.is_some() { AuditOutcome::Failure } else { AuditOutcome::Success },
            reason_code: rejection.map(|r| r.reason().to_owned()),
            request_id: meta.request_id.clone(),
            details,
        }
    }

    /// Builds an event and validates it against its schema; an event that
    /// does not validate is never written (the request fails instead).
    fn event<D: EventData>(&self, tenant_id: &str, subject: &str, data: D) -> Result<OutboxEvent, Rejection> {
        let now = self.clock.now();
        let id = record_id(now).to_string();
        let envelope = events::Envelope::new(id.clone(), EVENT_SOURCE, now, subject, tenant_id, data);
        let value = serde_json::to_value(&envelope).map_err(|_| Rejection::Internal)?;
        if let Err(e) = events::validate(&value) {
            tracing::error!(event_type = D::EVENT_TYPE, error = %e, "refusing to emit an event that does not match its schema");
            return Err(Rejection::Internal);
        }
        let payload = serde_json::to_string(&value).map_err(|_| Rejection::Internal)?;
        Ok(OutboxEvent {
            event_id: id,
            tenant_id: tenant_id.to_owned(),
            event_type: D::EVENT_TYPE.to_owned(),
            occurred_at: now,
            payload,
        })
    }

    /// Records a rejection in the audit trail; a failure to record is logged,
    /// the caller's answer stays the rejection.
    async fn audit_rejection(&self, record: AuditRecord, event: Option<OutboxEvent>) {
        self.metrics.inc(
            "oneprotect_rejections_total",
            "reason",
            record.reason_code.as_deref().unwrap_or("unknown"),
        );
        if let Err(e) = self.store.append_audit(&record, event.as_ref()).await {
            tracing::error!(error = %e, action = %record.action, "could not write the audit record of a rejection");
        }
    }

    /// The source of a request from `peer` carrying `forwarded_for`.
    pub fn source_of(&self, peer: Option<SocketAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        crate::source::source_address(peer.map(|p| p.ip()), forwarded_for, &self.policy.trusted_proxies)
    }

    /// The credential of an admin operation, judged before anything else of
    /// the request: a valid admin token, with the `tenant_admin` role when
    /// the operation writes. Every failure is audited under the operation's
    /// action.
    pub async fn authenticate_admin(
        &self,
        bearer: &str,
        op: OperationId,
        meta: &RequestMeta,
    ) -> Result<AdminPrincipal, Rejection> {
        let Access { action, writes } = access(op);
        match self.admin.verify(bearer, self.clock.now()) {
            Ok(p) if writes && !p.can_write => {
                let rejection = Rejection::Forbidden("this operation requires the tenant_admin role");
                let record = self.audit(
                    &p.tenant_id,
                    (ActorType::TenantAdmin, &p.subject),
                    action,
                    ("tenant", Some(p.tenant_id.clone())),
                    Some(&rejection),
                    meta,
                    BTreeMap::new(),
                );
                self.audit_rejection(record, None).await;
                Err(rejection)
            }
            Ok(p) => Ok(p),
            Err(failure) => {
                let rejection = Rejection::Unauthenticated(match failure {
                    AdminAuthFailure::Expired => "the admin token has expired",
                    AdminAuthFailure::NoRole => "the admin token grants no tenant role",
                    AdminAuthFailure::Invalid => "the admin token is not valid",
                });
                let mut details = BTreeMap::new();
                details.insert("failure".to_owned(), format!("{failure:?}").to_ascii_lowercase());
                let record = self.audit(
                    UNATTRIBUTED_TENANT,
                    (ActorType::Anonymous, "anonymous"),
                    action,
                    ("tenant", None),
                    Some(&rejection),
                    meta,
                    details,
                );
                self.audit_rejection(record, None).await;
                Err(rejection)
            }
        }
    }

    pub async fn list_audit(
        &self,
        admin: &AdminPrincipal,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>, Rejection> {
        Ok(self.store.list_audit(&admin.tenant_id, page.after, page.limit).await?)
    }

    pub async fn list_events(
        &self,
        admin: &AdminPrincipal,
        page: PageRequest,
    ) -> Result<Page<OutboxEvent>, Rejection> {
        Ok(self.store.list_events(&admin.tenant_id, page.after, page.limit).await?)
    }
}
