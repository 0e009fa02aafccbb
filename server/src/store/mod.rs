//! Storage behind one trait, with an embedded SQLite and a PostgreSQL
//! (row-level security) implementation. Each method is one transaction;
//! the store enforces atomicity and tenant scoping, the rules live in
//! `service`.

pub mod batch;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::*;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Backend(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store is reachable but set up so that the server must not use it
    /// (a privileged PostgreSQL role): a configuration error, exit code 2.
    #[error("{0}")]
    Misconfigured(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A stored text value read back as its domain type; anything else is
/// corrupt data.
pub(crate) fn stored<T>(parsed: Option<T>, what: &str) -> StoreResult<T> {
    parsed.ok_or_else(|| StoreError::Corrupt(what.to_owned()))
}

/// Storage failures never leak their text to callers: an unreachable store
/// is 503 `store_unavailable` (retried), anything else 500.
impl From<StoreError> for crate::error::Rejection {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Self::StoreUnavailable,
            StoreError::Backend(_) | StoreError::Corrupt(_) | StoreError::Misconfigured(_) => Self::Internal,
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// The write queue's depth and batch sizes (SQLite: every write;
    /// PostgreSQL: heartbeats, the only batched write).
    fn write_queue(&self) -> batch::WriteQueueSnapshot;

    /// Reachable and migrated to the latest version.
    async fn ready(&self) -> StoreResult<()>;

    async fn insert_enrollment_token(
        &self,
        token: &EnrollmentTokenRecord,
        audit: &AuditRecord,
        event: &OutboxEvent,
    ) -> StoreResult<()>;
    async fn list_enrollment_tokens(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<EnrollmentTokenRecord>>;
    /// Writes `audit` and `event` only when this call revokes the token.
    async fn revoke_enrollment_token(
        &self,
        tenant_id: &str,
        id: Uuid,
        audit: &AuditRecord,
        event: &OutboxEvent,
    ) -> StoreResult<RevokeOutcome<EnrollmentTokenRecord>>;
    /// Looks a token up by id alone, for the public exchange. On PostgreSQL
    /// this goes through a narrow SECURITY DEFINER function that only maps
    /// an id to its tenant.
    async fn find_enrollment_token(&self, id: Uuid) -> StoreResult<Option<EnrollmentTokenRecord>>;
    /// Redeems one use (conditionally, atomically), records the nonce and
    /// writes identity, certificate, audit and event — or nothing.
    async fn commit_enrollment(&self, commit: &EnrollmentCommit) -> StoreResult<EnrollmentOutcome>;

    async fn get_identity(&self, tenant_id: &str, agent_id: Uuid)
    -> StoreResult<Option<AgentIdentityRecord>>;
    async fn list_identities(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<AgentIdentityRecord>>;
    async fn revoke_identity(
        &self,
        tenant_id: &str,
        agent_id: Uuid,
        revoked_by: &str,
        reason: Option<&str>,
        audit: &AuditRecord,
        event: &OutboxEvent,
    ) -> StoreResult<RevokeOutcome<AgentIdentityRecord>>;
    async fn mark_identity_stale(
        &self,
        tenant_id: &str,
        agent_id: Uuid,
        audit: &AuditRecord,
    ) -> StoreResult<()>;
    /// Judges the heartbeat (`model::judge_heartbeat`) on the identity as
    /// the write transaction sees it and writes what it decides.
    /// Group-committed: answered only after the batch holding this heartbeat
    /// committed (see `batch`).
    async fn commit_heartbeat(&self, commit: HeartbeatCommit) -> StoreResult<HeartbeatOutcome>;
    /// The same write in a transaction of its own, no batching: the naive
    /// rate that benchmarks compare group commit against.
    async fn commit_heartbeat_unbatched(&self, commit: HeartbeatCommit) -> StoreResult<HeartbeatOutcome>;
    async fn commit_rotation(&self, commit: &RotationCommit) -> StoreResult<RotationOutcome>;
    /// The asset read model's row.
    async fn get_asset(&self, tenant_id: &str, asset_id: Uuid) -> StoreResult<Option<AssetRecord>>;
    async fn get_certificate(
        &self,
        tenant_id: &str,
        certificate_id: Uuid,
    ) -> StoreResult<Option<CertificateRecord>>;
    /// The certificate record with this fingerprint in the tenant, and the
    /// identity it belongs to (mutual TLS authentication).
    async fn certificate_binding(
        &self,
        tenant_id: &str,
        certificate_sha256: &str,
    ) -> StoreResult<Option<CertificateBinding>>;
    /// The CRL's entries, across every tenant: unexpired certificates the
    /// platform CA issued that were revoked, or superseded at or before
    /// `superseded_before`. Serials and times only.
    async fn revoked_certificates(
        &self,
        now: DateTime<Utc>,
        superseded_before: DateTime<Utc>,
    ) -> StoreResult<Vec<crate::pki::RevokedSerial>>;

    /// Whether this store keeps the failed-exchange counters for every
    /// replica on it (`ratelimit::ExchangeLimiter::Shared`). SQLite serves
    /// one process, whose memory keeps them.
    fn shares_failure_counters(&self) -> bool;
    /// Takes one slot on every key or none, deciding with
    /// `ratelimit::take_slots` on the counters as this transaction locked
    /// them: the window start of each key, or the seconds to wait.
    async fn take_failure_slots(
        &self,
        keys: &[String],
        limit: u32,
        window: chrono::Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<Vec<DateTime<Utc>>, u32>>;
    /// Settles the slots an exchange took (`ratelimit::settle_slot`): given
    /// back, and counted as failures when it failed.
    async fn settle_failure_slots(&self, slots: &[(String, DateTime<Utc>)], failed: bool) -> StoreResult<()>;

    /// Claims up to `limit` events not yet published, oldest first, for
    /// the relay. On PostgreSQL one replica's relay holds the claim at a
    /// time (the claim is empty for the others), and its rows stay locked
    /// until [`EventClaim::mark_published`].
    async fn claim_unpublished_events(&self, limit: u32) -> StoreResult<Box<dyn EventClaim>>;

    /// Bytes the database occupies (SQLite: the pages in use, free pages
    /// not counted; PostgreSQL: the database's files), for the storage
    /// benchmark and capacity planning.
    async fn stored_bytes(&self) -> StoreResult<u64>;

    /// Deletes at most `limit` rows per table that are past their window
    /// (`retention::cutoffs`), oldest first, in one transaction.
    async fn prune(&self, cutoffs: &RetentionCutoffs, limit: u32) -> StoreResult<Pruned>;

    /// An audit record, and optionally an event, in one transaction.
    async fn append_audit(&self, audit: &AuditRecord, event: Option<&OutboxEvent>) -> StoreResult<()>;
    async fn list_audit(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<AuditRecord>>;
    async fn list_events(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<OutboxEvent>>;

    /// Every stored row of every table, as text, across tenants (tests and
    /// the conformance harness scan it for secrets). Needs an inspection
    /// connection on PostgreSQL.
    async fn dump_all_rows(&self) -> StoreResult<Vec<String>>;
}

/// An outbox event as the relay sees it: its commit-order sequence number
/// and the event.
#[derive(Debug, Clone)]
pub struct RelayEvent {
    pub seq: i64,
    pub event: OutboxEvent,
}

/// Unpublished events claimed by the relay, oldest first.
#[async_trait]
pub trait EventClaim: Send {
    fn events(&self) -> &[RelayEvent];
    /// Marks the first `n` claimed events published at `at` and releases
    /// the claim; the others are claimed again by the next call.
    async fn mark_published(self: Box<Self>, n: usize, at: DateTime<Utc>) -> StoreResult<()>;
}

/// What is old enough to delete (`retention::cutoffs` decides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionCutoffs {
    pub events_before: DateTime<Utc>,
    /// Only events the relay published may go (the relay is on).
    pub events_published_only: bool,
    pub audit_before: DateTime<Utc>,
    pub nonces_before: DateTime<Utc>,
    pub tokens_before: DateTime<Utc>,
    pub failure_windows_before: DateTime<Utc>,
}

/// Rows deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub audit: u64,
    pub nonces: u64,
    pub tokens: u64,
    pub failure_windows: u64,
}

impl Pruned {
    pub fn add(&mut self, other: &Pruned) {
        self.events += other.events;
        self.audit += other.audit;
        self.nonces += other.nonces;
        self.tokens += other.tokens;
        self.failure_windows += other.failure_windows;
    }

    /// The most rows one table lost.
    pub fn largest(&self) -> u64 {
        [self.events, self.audit, self.nonces, self.tokens, self.failure_windows]
            .into_iter()
            .max()
            .unwrap_or(0)
    }
}

/// The tables every backend has, in creation order.
pub const TABLES: [&str; 9] = [
    "agent_enrollment_tokens",
    "agent_identities",
    "agent_device_certificates",
    "agent_revocations",
    "agent_enrollment_nonces",
    "audit_events",
    "event_outbox",
    "assets",
    "schema_migrations",
];
