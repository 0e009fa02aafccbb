//! Rows as SQLite stores them and the statements every write shares.
//! UUIDs are TEXT and times are microseconds since the epoch (INTEGER).

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use crate::model::*;
use crate::store::sql;
use crate::store::{StoreError, StoreResult, stored};

pub(super) fn backend(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(err, _)
            if matches!(
                err.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
            ) =>
        {
            StoreError::Unavailable(err.to_string())
        }
        other => StoreError::Backend(other.to_string()),
    }
}

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn time(v: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {v} out of range")))
}

pub(super) fn opt_time(v: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    v.map(time).transpose()
}

pub(super) fn uuid_of(s: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt("malformed uuid".into()))
}

pub(super) fn opt_uuid(s: Option<String>) -> StoreResult<Option<Uuid>> {
    s.as_deref().map(uuid_of).transpose()
}

pub(super) const TOKEN_COLUMNS: &str = "seq, id, tenant_id, token_hash, label, site_id, collector_id, max_uses, use_count, created_at, expires_at, last_used_at, revoked_at, created_by";

pub(super) fn token_row(row: &Row<'_>) -> rusqlite::Result<(i64, RawToken)> {
    Ok((
        row.get(0)?,
        RawToken {
            id: row.get(1)?,
            tenant_id: row.get(2)?,
            token_hash: row.get(3)?,
            label: row.get(4)?,
            site_id: row.get(5)?,
            collector_id: row.get(6)?,
            max_uses: row.get(7)?,
            use_count: row.get(8)?,
            created_at: row.get(9)?,
            expires_at: row.get(10)?,
            last_used_at: row.get(11)?,
            revoked_at: row.get(12)?,
            created_by: row.get(13)?,
        },
    ))
}

pub(super) struct RawToken {
    id: String,
    tenant_id: String,
    token_hash: String,
    label: Option<String>,
    site_id: Option<String>,
    collector_id: Option<String>,
    max_uses: i64,
    use_count: i64,
    created_at: i64,
    expires_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    created_by: String,
}

impl RawToken {
    pub(super) fn into_record(self) -> StoreResult<EnrollmentTokenRecord> {
        Ok(EnrollmentTokenRecord {
            id: uuid_of(&self.id)?,
            tenant_id: self.tenant_id,
            token_hash: KeyedHash::from_stored(self.token_hash),
            label: self.label,
            site_id: self.site_id,
            collector_id: opt_uuid(self.collector_id)?,
            max_uses: u32::try_from(self.max_uses).map_err(|_| StoreError::Corrupt("max_uses".into()))?,
            use_count: u32::try_from(self.use_count).map_err(|_| StoreError::Corrupt("use_count".into()))?,
            created_at: time(self.created_at)?,
            expires_at: time(self.expires_at)?,
            last_used_at: opt_time(self.last_used_at)?,
            revoked_at: opt_time(self.revoked_at)?,
            created_by: self.created_by,
        })
    }
}

pub(super) const IDENTITY_COLUMNS: &str = "seq, agent_id, tenant_id, collector_id, asset_id, site_id, status, hostname, agent_version, os_family, enrollment_token_id, certificate_id, previous_certificate_id, rotated_at, fingerprint_hash, enrolled_at, last_seen_at, last_sequence, revoked_at";

pub(super) struct RawIdentity {
    agent_id: String,
    tenant_id: String,
    collector_id: String,
    asset_id: String,
    site_id: Option<String>,
    status: String,
    hostname: Option<String>,
    agent_version: Option<String>,
    os_family: Option<String>,
    enrollment_token_id: String,
    certificate_id: String,
    previous_certificate_id: Option<String>,
    rotated_at: Option<i64>,
    fingerprint_hash: Option<String>,
    enrolled_at: i64,
    last_seen_at: Option<i64>,
    last_sequence: Option<i64>,
    revoked_at: Option<i64>,
}

pub(super) fn identity_row(row: &Row<'_>) -> rusqlite::Result<(i64, RawIdentity)> {
    Ok((
        row.get(0)?,
        RawIdentity {
            agent_id: row.get(1)?,
            tenant_id: row.get(2)?,
            collector_id: row.get(3)?,
            asset_id: row.get(4)?,
            site_id: row.get(5)?,
            status: row.get(6)?,
            hostname: row.get(7)?,
            agent_version: row.get(8)?,
            os_family: row.get(9)?,
            enrollment_token_id: row.get(10)?,
            certificate_id: row.get(11)?,
            previous_certificate_id: row.get(12)?,
            rotated_at: row.get(13)?,
            fingerprint_hash: row.get(14)?,
            enrolled_at: row.get(15)?,
            last_seen_at: row.get(16)?,
            last_sequence: row.get(17)?,
            revoked_at: row.get(18)?,
        },
    ))
}

impl RawIdentity {
    pub(super) fn into_record(self) -> StoreResult<AgentIdentityRecord> {
        Ok(AgentIdentityRecord {
            agent_id: uuid_of(&self.agent_id)?,
            tenant_id: self.tenant_id,
            collector_id: uuid_of(&self.collector_id)?,
            asset_id: uuid_of(&self.asset_id)?,
            site_id: self.site_id,
            status: AgentStatus::parse(&self.status)
                .ok_or_else(|| StoreError::Corrupt("agent status".into()))?,
            hostname: self.hostname,
            agent_version: self.agent_version,
            os_family: self.os_family,
            enrollment_token_id: uuid_of(&self.enrollment_token_id)?,
            certificate_id: uuid_of(&self.certificate_id)?,
            previous_certificate_id: opt_uuid(self.previous_certificate_id)?,
            rotated_at: opt_time(self.rotated_at)?,
            fingerprint_hash: self.fingerprint_hash.map(KeyedHash::from_stored),
            enrolled_at: time(self.enrolled_at)?,
            last_seen_at: opt_time(self.last_seen_at)?,
            last_sequence: self.last_sequence,
            revoked_at: opt_time(self.revoked_at)?,
        })
    }
}

pub(super) fn insert_audit(tx: &Connection, a: &AuditRecord) -> rusqlite::Result<()> {
    let details = serde_json::to_string(&a.details).unwrap_or_else(|_| "{}".into());
    tx.prepare_cached(sql::INSERT_AUDIT.sqlite)?.execute(params![
        a.audit_id.to_string(),
        a.tenant_id,
        micros(a.occurred_at),
        a.actor_type.as_str(),
        a.actor_id,
        a.action.as_str(),
        a.target_type,
        a.target_id,
        a.outcome.as_str(),
        a.reason_code,
        a.request_id,
        details
    ])?;
    Ok(())
}

pub(super) fn insert_event(tx: &Connection, e: &OutboxEvent) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at, payload) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![
        e.event_id,
        e.tenant_id,
        e.event_type,
        micros(e.occurred_at),
        e.payload
    ])?;
    Ok(())
}

pub(super) fn insert_certificate(tx: &Connection, c: &CertificateRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(sql::INSERT_CERTIFICATE.sqlite)?.execute(params![
        c.certificate_id.to_string(),
        c.tenant_id,
        c.agent_id.to_string(),
        c.public_key_algorithm,
        c.public_key_sha256,
        c.subject,
        c.serial_number,
        micros(c.not_before),
        micros(c.not_after),
        c.status.as_str(),
        c.certificate_sha256
    ])?;
    Ok(())
}

pub(super) fn insert_nonce(
    tx: &Connection,
    tenant_id: &str,
    nonce_hash: &KeyedHash,
    now: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    let n = tx.prepare_cached(sql::INSERT_NONCE.sqlite)?.execute(params![
        tenant_id,
        nonce_hash.as_str(),
        micros(now)
    ])?;
    Ok(n == 1)
}

pub(super) fn select_identity(
    tx: &Connection,
    tenant_id: &str,
    agent_id: Uuid,
) -> StoreResult<Option<AgentIdentityRecord>> {
    let raw = tx
        .prepare_cached(&format!(
            "SELECT {IDENTITY_COLUMNS} FROM agent_identities WHERE tenant_id = ?1 AND agent_id = ?2"
        ))
        .map_err(backend)?
        .query_row(params![tenant_id, agent_id.to_string()], identity_row)
        .optional()
        .map_err(backend)?;
    raw.map(|(_, r)| r.into_record()).transpose()
}

/// What a heartbeat judges of an identity (`model::IdentityState`), with
/// the row id its update then goes to.
pub(super) fn select_identity_state(
    tx: &Connection,
    tenant_id: &str,
    agent_id: Uuid,
) -> StoreResult<Option<(i64, IdentityState)>> {
    let row = tx
        .prepare_cached(
            "SELECT seq, collector_id, asset_id, status, certificate_id, previous_certificate_id, rotated_at, enrolled_at, last_seen_at, last_sequence \
             FROM agent_identities WHERE tenant_id = ?1 AND agent_id = ?2",
        )
        .map_err(backend)?
        .query_row(params![tenant_id, agent_id.to_string()], |r| Ok(identity_state_row(r)))
        .optional()
        .map_err(backend)?;
    row.transpose()
}

fn identity_state_row(r: &Row<'_>) -> StoreResult<(i64, IdentityState)> {
    let text = |i: usize| r.get_ref(i).and_then(|v| Ok(v.as_str_or_null()?)).map_err(backend);
    let uuid = |i: usize| {
        text(i)?.map(uuid_of).transpose()?.ok_or_else(|| StoreError::Corrupt("missing uuid".into()))
    };
    let int = |i: usize| r.get::<_, Option<i64>>(i).map_err(backend);
    let state = IdentityState {
        collector_id: uuid(1)?,
        asset_id: uuid(2)?,
        status: text(3)?
            .and_then(AgentStatus::parse)
            .ok_or_else(|| StoreError::Corrupt("agent status".into()))?,
        certificate_id: uuid(4)?,
        previous_certificate_id: text(5)?.map(uuid_of).transpose()?,
        rotated_at: opt_time(int(6)?)?,
        enrolled_at: time(int(7)?.ok_or_else(|| StoreError::Corrupt("enrolled_at".into()))?)?,
        last_seen_at: opt_time(int(8)?)?,
        last_sequence: int(9)?,
    };
    Ok((r.get(0).map_err(backend)?, state))
}

/// The first row `stmt` answers, mapped; `None` when there is none.
pub(super) fn first_row<T>(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    map: fn(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let mut rows = stmt.query(params).map_err(backend)?;
    rows.next().map_err(backend)?.map(map).transpose()
}

/// Every row `stmt` answers, mapped.
pub(super) fn all_rows<T>(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    map: fn(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut rows = stmt.query(params).map_err(backend)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        out.push(map(row)?);
    }
    Ok(out)
}

pub(super) const ASSET_COLUMNS: &str =
    "asset_id, tenant_id, agent_id, hostname, os_family, os_version, first_seen_at, last_seen_at";

pub(super) fn asset_of(r: &Row<'_>) -> StoreResult<AssetRecord> {
    Ok(AssetRecord {
        asset_id: uuid_of(&r.get::<_, String>(0).map_err(backend)?)?,
        tenant_id: r.get(1).map_err(backend)?,
        agent_id: uuid_of(&r.get::<_, String>(2).map_err(backend)?)?,
        hostname: r.get(3).map_err(backend)?,
        os_family: r.get(4).map_err(backend)?,
        os_version: r.get(5).map_err(backend)?,
        first_seen_at: time(r.get(6).map_err(backend)?)?,
        last_seen_at: time(r.get(7).map_err(backend)?)?,
    })
}

pub(super) const CERTIFICATE_COLUMNS: &str = "certificate_id, tenant_id, agent_id, public_key_algorithm, \
     public_key_sha256, subject, serial_number, not_before, not_after, status, certificate_sha256";

pub(super) fn certificate_of(r: &Row<'_>) -> StoreResult<CertificateRecord> {
    let status: String = r.get(9).map_err(backend)?;
    Ok(CertificateRecord {
        certificate_id: uuid_of(&r.get::<_, String>(0).map_err(backend)?)?,
        tenant_id: r.get(1).map_err(backend)?,
        agent_id: uuid_of(&r.get::<_, String>(2).map_err(backend)?)?,
        public_key_algorithm: r.get(3).map_err(backend)?,
        public_key_sha256: r.get(4).map_err(backend)?,
        subject: r.get(5).map_err(backend)?,
        serial_number: r.get(6).map_err(backend)?,
        not_before: time(r.get(7).map_err(backend)?)?,
        not_after: time(r.get(8).map_err(backend)?)?,
        status: stored(CertificateStatus::parse(&status), "certificate status")?,
        certificate_sha256: r.get(10).map_err(backend)?,
    })
}

pub(super) const AUDIT_COLUMNS: &str = "seq, audit_id, tenant_id, occurred_at, actor_type, actor_id, action, \
     target_type, target_id, outcome, reason_code, request_id, details";

/// An audit row and its sequence number (the page cursor).
pub(super) fn audit_of(r: &Row<'_>) -> StoreResult<(i64, AuditRecord)> {
    let text = |i: usize| r.get::<_, String>(i).map_err(backend);
    Ok((
        r.get(0).map_err(backend)?,
        AuditRecord {
            audit_id: uuid_of(&text(1)?)?,
            tenant_id: text(2)?,
            occurred_at: time(r.get(3).map_err(backend)?)?,
            actor_type: stored(ActorType::parse(&text(4)?), "audit actor type")?,
            actor_id: text(5)?,
            action: stored(AuditAction::parse(&text(6)?), "audit action")?,
            target_type: text(7)?,
            target_id: r.get(8).map_err(backend)?,
            outcome: stored(AuditOutcome::parse(&text(9)?), "audit outcome")?,
            reason_code: r.get(10).map_err(backend)?,
            request_id: text(11)?,
            details: serde_json::from_str(&text(12)?)
                .map_err(|_| StoreError::Corrupt("audit details".into()))?,
        },
    ))
}

pub(super) const EVENT_COLUMNS: &str = "seq, event_id, tenant_id, event_type, occurred_at, payload";

/// An outbox row and its sequence number (the page cursor).
pub(super) fn event_of(r: &Row<'_>) -> StoreResult<(i64, OutboxEvent)> {
    Ok((
        r.get(0).map_err(backend)?,
        OutboxEvent {
            event_id: r.get(1).map_err(backend)?,
            tenant_id: r.get(2).map_err(backend)?,
            event_type: r.get(3).map_err(backend)?,
            occurred_at: time(r.get(4).map_err(backend)?)?,
            payload: r.get(5).map_err(backend)?,
        },
    ))
}
