//! The records the rules work on and the store keeps, and the closed sets
//! of values they hold.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::error::TokenFailure;

/// A keyed hash (HMAC-SHA-256 under the token hash key, hex) of a value
/// the platform must never store: an enrollment token, a nonce, a hardware
/// fingerprint. Made by `secrets`, compared there in constant time; a
/// store keeps and returns it as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedHash(String);

impl KeyedHash {
    /// A hash as stored: read back from a row, or made by `secrets`.
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Audit records whose tenant cannot be known (a forged token, an unknown
/// enrollment token) are kept under this bucket, which no tenant id can name.
pub const UNATTRIBUTED_TENANT: &str = "_unattributed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTokenRecord {
    pub id: Uuid,
    pub tenant_id: String,
    /// Keyed hash of the secret; never the secret.
    pub token_hash: KeyedHash,
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

/// A closed set of values stored as text: `as_str` is the stored (and
/// wire) spelling, `parse` its inverse (`None` for anything else, which a
/// store reports as corrupt data).
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// Where an agent identity stands.
    AgentStatus { Enrolled => "enrolled", Active => "active", Stale => "stale", Revoked => "revoked" }
);

text_enum!(
    /// Where a certificate record stands: the identity's current one, one a
    /// rotation replaced, or one revoked with its identity.
    CertificateStatus { Active => "active", Superseded => "superseded", Revoked => "revoked" }
);

text_enum!(
    /// Who acted, as an audit record names them.
    ActorType { TenantAdmin => "tenant_admin", Agent => "agent", Anonymous => "anonymous", System => "system" }
);

text_enum!(
    /// What an audit record records: one action per operation of the
    /// contract (`service::access`) and the platform's own actions.
    AuditAction {
        EnrollmentTokenIssue => "enrollment_token.issue",
        EnrollmentTokenList => "enrollment_token.list",
        EnrollmentTokenRevoke => "enrollment_token.revoke",
        AgentExchange => "agent.exchange",
        AgentList => "agent.list",
        AgentGet => "agent.get",
        AgentRevoke => "agent.revoke",
        AgentHeartbeat => "agent.heartbeat",
        AgentRotate => "agent.rotate",
        AgentActivate => "agent.activate",
        AgentMarkStale => "agent.mark_stale",
        AuditList => "audit.list",
        EventList => "event.list",
        OperationsRead => "operations.read"
    }
);

text_enum!(
    /// How an audited action ended.
    AuditOutcome { Success => "success", Failure => "failure" }
);

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
    pub fingerprint_hash: Option<KeyedHash>,
    pub enrolled_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub last_sequence: Option<i64>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl AgentIdentityRecord {
    /// Stored status, with silence past `stale_after` turning an enrolled or
    /// active identity stale.
    pub fn effective_status(&self, now: DateTime<Utc>, stale_after: Duration) -> AgentStatus {
        self.facts().effective_status(now, stale_after)
    }
}

/// What the identity rules read of a stored identity, and all that a
/// heartbeat's write transaction reads of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityState {
    pub collector_id: Uuid,
    pub asset_id: Uuid,
    pub status: AgentStatus,
    pub certificate_id: Uuid,
    pub previous_certificate_id: Option<Uuid>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub enrolled_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub last_sequence: Option<i64>,
}

impl IdentityState {
    /// Stored status, with silence past `stale_after` turning an enrolled or
    /// active identity stale.
    pub fn effective_status(&self, now: DateTime<Utc>, stale_after: Duration) -> AgentStatus {
        match self.status {
            AgentStatus::Enrolled | AgentStatus::Active
                if self.last_seen_at.unwrap_or(self.enrolled_at) + stale_after <= now =>
            {
                AgentStatus::Stale
            }
            s => s,
        }
    }
}

/// A stored identity as the rules see it: the full record or only the
/// state a write transaction read.
pub trait IdentityFacts {
    fn facts(&self) -> IdentityState;
}

impl IdentityFacts for IdentityState {
    fn facts(&self) -> IdentityState {
        *self
    }
}

impl IdentityFacts for AgentIdentityRecord {
    fn facts(&self) -> IdentityState {
        IdentityState {
            collector_id: self.collector_id,
            asset_id: self.asset_id,
            status: self.status,
            certificate_id: self.certificate_id,
            previous_certificate_id: self.previous_certificate_id,
            rotated_at: self.rotated_at,
            enrolled_at: self.enrolled_at,
            last_seen_at: self.last_seen_at,
            last_sequence: self.last_sequence,
        }
    }
}

/// The asset read model: what an identity's heartbeats say about its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetRecord {
    pub asset_id: Uuid,
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub hostname: Option<String>,
    pub os_family: Option<String>,
    pub os_version: Option<String>,
    pub first_seen_at: DateTime<Utc>,
    /// Refreshed when the facts change, otherwise at most once per
    /// `ASSET_LAST_SEEN_RESOLUTION`.
    pub last_seen_at: DateTime<Utc>,
}

/// How stale an unchanged asset row's `last_seen_at` may grow before a
/// heartbeat refreshes it. Heartbeats keep the asset's facts (hostname,
/// OS) current at once, but an unchanged asset then costs one row write
/// per this period instead of one per heartbeat (a random page per
/// heartbeat in the write-ahead log). The identity's `last_seen_at`, which
/// the staleness rule reads, stays exact.
pub const ASSET_LAST_SEEN_RESOLUTION: Duration = Duration::minutes(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub certificate_id: Uuid,
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub public_key_algorithm: String,
    pub public_key_sha256: String,
    pub subject: String,
    pub serial_number: String,
    /// Hex SHA-256 of the DER certificate; `None` on records made before
    /// the platform CA issued certificates.
    pub certificate_sha256: Option<String>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub status: CertificateStatus,
}

/// Whom a certificate the platform issued binds: its record, the agent and
/// the agent's collector and asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateBinding {
    pub certificate_id: Uuid,
    pub agent_id: Uuid,
    pub collector_id: Uuid,
    pub asset_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub audit_id: Uuid,
    pub tenant_id: String,
    pub occurred_at: DateTime<Utc>,
    pub actor_type: ActorType,
    pub actor_id: String,
    pub action: AuditAction,
    pub target_type: String,
    pub target_id: Option<String>,
    pub outcome: AuditOutcome,
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
    /// The whole CloudEvent (envelope and data) as JSON text, serialized
    /// once when the event is built and validated, and stored as it is.
    pub payload: String,
}

/// A page of results and the cursor (a sequence number) of the next page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<i64>,
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` rows in sequence order, each with its
    /// sequence number: the extra row only says that another page follows,
    /// whose cursor is the last kept row's sequence.
    pub fn from_rows(mut rows: Vec<(i64, T)>, limit: u32) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_after = if more { rows.last().map(|(seq, _)| *seq) } else { None };
        Page { items: rows.into_iter().map(|(_, t)| t).collect(), next_after }
    }
}
