//! Records the rules work on and the store keeps. No HTTP, no SQL.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::error::TokenFailure;

/// Audit records whose tenant cannot be known (a forged token, an unknown
/// enrollment token) are kept under this bucket, which no tenant id can name.
pub const UNATTRIBUTED_TENANT: &str = "_unattributed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTokenRecord {
    pub id: Uuid,
    pub tenant_id: String,
    /// Keyed hash of the secret; never the secret.
    pub token_hash: String,
    pub label: Option<String>,
    pub site_id: Option<String>,
    pub collector_id: Option<Uuid>,
    pub max_uses: u32,
    pub use_count: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    Active,
    Revoked,
    Expired,
    Exhausted,
}

impl EnrollmentTokenRecord {
    /// Revoked wins over expired, which wins over exhausted.
    pub fn failure_at(&self, now: DateTime<Utc>) -> Option<TokenFailure> {
        if self.revoked_at.is_some() {
            Some(TokenFailure::Revoked)
        } else if now >= self.expires_at {
            Some(TokenFailure::Expired)
        } else if self.use_count >= self.max_uses {
            Some(TokenFailure::Exhausted)
        } else {
            None
        }
    }

    pub fn status_at(&self, now: DateTime<Utc>) -> TokenStatus {
        match self.failure_at(now) {
            None => TokenStatus::Active,
            Some(TokenFailure::Revoked) => TokenStatus::Revoked,
            Some(TokenFailure::Expired) => TokenStatus::Expired,
            Some(_) => TokenStatus::Exhausted,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    Enrolled,
    Active,
    Stale,
    Revoked,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrolled => "enrolled",
            Self::Active => "active",
            Self::Stale => "stale",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Enrolled, Self::Active, Self::Stale, Self::Revoked].into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentityRecord {
    pub agent_id: Uuid,
    pub tenant_id: String,
    pub collector_id: Uuid,
    pub asset_id: Uuid,
    pub site_id: Option<String>,
    pub status: AgentStatus,
    pub hostname: Option<String>,
    pub agent_version: Option<String>,
    pub os_family: Option<String>,
    pub enrollment_token_id: Uuid,
    pub certificate_id: Uuid,
    pub previous_certificate_id: Option<Uuid>,
    pub rotated_at: Option<DateTime<Utc>>,
    /// Keyed hash of the agent's fingerprint hash; never a raw fingerprint.
    pub fingerprint_hash: Option<String>,
    pub enrolled_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub last_sequence: Option<i64>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl AgentIdentityRecord {
    /// Stored status, with silence past `stale_after` turning an enrolled or
    /// active identity stale.
    pub fn effective_status(&self, now: DateTime<Utc>, stale_after: Duration) -> AgentStatus {
        match self.status {
            AgentStatus::Enrolled | AgentStatus::Active if self.last_seen_at.unwrap_or(self.enrolled_at) + stale_after <= now => AgentStatus::Stale,
            s => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub certificate_id: Uuid,
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub public_key_algorithm: String,
    pub public_key_sha256: String,
    pub subject: String,
    pub serial_number: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// active, superseded or revoked
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub audit_id: Uuid,
    pub tenant_id: String,
    pub occurred_at: DateTime<Utc>,
    /// tenant_admin, agent, anonymous or system
    pub actor_type: String,
    pub actor_id: String,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    /// success or failure
    pub outcome: String,
    pub reason_code: Option<String>,
    pub request_id: String,
    pub details: BTreeMap<String, String>,
}

/// A schema-validated CloudEvent waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub event_id: String,
    pub tenant_id: String,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// The whole CloudEvent (envelope and data).
    pub payload: serde_json::Value,
}

/// A page of results and the cursor (a sequence number) of the next page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<i64>,
}

/// Everything an accepted exchange writes, in one transaction.
#[derive(Debug, Clone)]
pub struct EnrollmentCommit {
    pub token_id: Uuid,
    pub now: DateTime<Utc>,
    pub nonce_hash: String,
    pub identity: AgentIdentityRecord,
    pub certificate: CertificateRecord,
    pub audit: AuditRecord,
    pub event: OutboxEvent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EnrollmentOutcome {
    Enrolled,
    TokenRejected(TokenFailure),
    NonceReplayed,
}

/// What an accepted heartbeat writes; the store decides which events apply.
#[derive(Debug, Clone)]
pub struct HeartbeatCommit {
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub now: DateTime<Utc>,
    pub sequence: i64,
    pub hostname: String,
    pub agent_version: String,
    pub os_family: Option<String>,
    pub os_version: Option<String>,
    /// Emitted when the asset is seen for the first time.
    pub discovered_event: OutboxEvent,
    /// Emitted for every non-duplicate heartbeat.
    pub telemetry_event: OutboxEvent,
    /// Written when the identity turns from enrolled to active.
    pub activation_audit: AuditRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    Accepted,
    Duplicate,
    /// The identity changed between the check and the write (revoked, gone).
    NotAllowed(Option<AgentStatus>),
}

#[derive(Debug, Clone)]
pub struct RotationCommit {
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub now: DateTime<Utc>,
    pub nonce_hash: String,
    /// The certificate the presented token was issued with.
    pub presented_certificate_id: Uuid,
    pub certificate: CertificateRecord,
    pub audit: AuditRecord,
    pub event: OutboxEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationOutcome {
    Rotated,
    NonceReplayed,
    /// The token's certificate is no longer current.
    Superseded,
    NotAllowed(Option<AgentStatus>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RevokeOutcome<T> {
    Revoked(T),
    AlreadyRevoked(T),
    NotFound,
}
