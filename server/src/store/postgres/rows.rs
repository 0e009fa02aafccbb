//! Rows as PostgreSQL returns them and the statements every write shares.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::model::*;
use crate::store::sql;
use crate::store::{StoreError, StoreResult, stored};

/// A driver error as the service sees it: the database out of reach
/// (answered 503 `store_unavailable`, which callers retry) or a failure of
/// the statement itself (500).
pub(super) fn backend(e: sqlx::Error) -> StoreError {
    let unreachable = match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| sqlstate_means_unreachable(&code)),
        _ => false,
    };
    if unreachable { StoreError::Unavailable(e.to_string()) } else { StoreError::Backend(e.to_string()) }
}

/// SQLSTATEs that say the database, not the statement, failed: connection
/// exceptions (class 08), insufficient resources (53: too many connections,
/// disk full), operator intervention (57P01–57P05: shutdown, a terminated
/// connection, the server not accepting connections yet), a database that
/// no longer exists (3D000) and a login refused (28: the role's password or
/// its right to log in was taken away).
pub(super) fn sqlstate_means_unreachable(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("28")
        || code.starts_with("57P")
        || code == "3D000"
}

pub(super) fn u32_of(v: i32, what: &str) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(what.into()))
}

pub(super) fn token_of(r: &PgRow) -> StoreResult<(i64, EnrollmentTokenRecord)> {
    Ok((
        r.try_get("seq").map_err(backend)?,
        EnrollmentTokenRecord {
            id: r.try_get("id").map_err(backend)?,
            tenant_id: r.try_get("tenant_id").map_err(backend)?,
            token_hash: KeyedHash::from_stored(r.try_get("token_hash").map_err(backend)?),
            label: r.try_get("label").map_err(backend)?,
            site_id: r.try_get("site_id").map_err(backend)?,
            collector_id: r.try_get("collector_id").map_err(backend)?,
            max_uses: u32_of(r.try_get("max_uses").map_err(backend)?, "max_uses")?,
            use_count: u32_of(r.try_get("use_count").map_err(backend)?, "use_count")?,
            created_at: r.try_get("created_at").map_err(backend)?,
            expires_at: r.try_get("expires_at").map_err(backend)?,
            last_used_at: r.try_get("last_used_at").map_err(backend)?,
            revoked_at: r.try_get("revoked_at").map_err(backend)?,
            created_by: r.try_get("created_by").map_err(backend)?,
        },
    ))
}

pub(super) fn identity_of(r: &PgRow) -> StoreResult<(i64, AgentIdentityRecord)> {
    let status: String = r.try_get("status").map_err(backend)?;
    Ok((
        r.try_get("seq").map_err(backend)?,
        AgentIdentityRecord {
            agent_id: r.try_get("agent_id").map_err(backend)?,
            tenant_id: r.try_get("tenant_id").map_err(backend)?,
            collector_id: r.try_get("collector_id").map_err(backend)?,
            asset_id: r.try_get("asset_id").map_err(backend)?,
            site_id: r.try_get("site_id").map_err(backend)?,
            status: AgentStatus::parse(&status).ok_or_else(|| StoreError::Corrupt("agent status".into()))?,
            hostname: r.try_get("hostname").map_err(backend)?,
            agent_version: r.try_get("agent_version").map_err(backend)?,
            os_family: r.try_get("os_family").map_err(backend)?,
            enrollment_token_id: r.try_get("enrollment_token_id").map_err(backend)?,
            certificate_id: r.try_get("certificate_id").map_err(backend)?,
            previous_certificate_id: r.try_get("previous_certificate_id").map_err(backend)?,
            rotated_at: r.try_get("rotated_at").map_err(backend)?,
            fingerprint_hash: r
                .try_get::<Option<String>, _>("fingerprint_hash")
                .map_err(backend)?
                .map(KeyedHash::from_stored),
            enrolled_at: r.try_get("enrolled_at").map_err(backend)?,
            last_seen_at: r.try_get("last_seen_at").map_err(backend)?,
            last_sequence: r.try_get("last_sequence").map_err(backend)?,
            revoked_at: r.try_get("revoked_at").map_err(backend)?,
        },
    ))
}

/// The agent id and the columns of `model::IdentityState`, in the order
/// `identity_state_of` reads them (a macro, so statements stay `'static`).
macro_rules! identity_state_columns {
    () => {
        "agent_id, collector_id, asset_id, status, certificate_id, previous_certificate_id, rotated_at, enrolled_at, last_seen_at, last_sequence"
    };
}
pub(super) use identity_state_columns;

/// An agent id and what a heartbeat judges of its identity.
pub(super) fn identity_state_of(r: &PgRow) -> StoreResult<(Uuid, IdentityState)> {
    let status: &str = r.try_get(3).map_err(backend)?;
    Ok((
        r.try_get(0).map_err(backend)?,
        IdentityState {
            collector_id: r.try_get(1).map_err(backend)?,
            asset_id: r.try_get(2).map_err(backend)?,
            status: AgentStatus::parse(status).ok_or_else(|| StoreError::Corrupt("agent status".into()))?,
            certificate_id: r.try_get(4).map_err(backend)?,
            previous_certificate_id: r.try_get(5).map_err(backend)?,
            rotated_at: r.try_get(6).map_err(backend)?,
            enrolled_at: r.try_get(7).map_err(backend)?,
            last_seen_at: r.try_get(8).map_err(backend)?,
            last_sequence: r.try_get(9).map_err(backend)?,
        },
    ))
}

pub(super) fn asset_of(r: &PgRow) -> StoreResult<AssetRecord> {
    Ok(AssetRecord {
        asset_id: r.try_get("asset_id").map_err(backend)?,
        tenant_id: r.try_get("tenant_id").map_err(backend)?,
        agent_id: r.try_get("agent_id").map_err(backend)?,
        hostname: r.try_get("hostname").map_err(backend)?,
        os_family: r.try_get("os_family").map_err(backend)?,
        os_version: r.try_get("os_version").map_err(backend)?,
        first_seen_at: r.try_get("first_seen_at").map_err(backend)?,
        last_seen_at: r.try_get("last_seen_at").map_err(backend)?,
    })
}

pub(super) fn certificate_of(r: &PgRow) -> StoreResult<CertificateRecord> {
    Ok(CertificateRecord {
        certificate_id: r.try_get("certificate_id").map_err(backend)?,
        tenant_id: r.try_get("tenant_id").map_err(backend)?,
        agent_id: r.try_get("agent_id").map_err(backend)?,
        public_key_algorithm: r.try_get("public_key_algorithm").map_err(backend)?,
        public_key_sha256: r.try_get("public_key_sha256").map_err(backend)?,
        subject: r.try_get("subject").map_err(backend)?,
        serial_number: r.try_get("serial_number").map_err(backend)?,
        certificate_sha256: r.try_get("certificate_sha256").map_err(backend)?,
        not_before: r.try_get("not_before").map_err(backend)?,
        not_after: r.try_get("not_after").map_err(backend)?,
        status: stored(
            CertificateStatus::parse(r.try_get("status").map_err(backend)?),
            "certificate status",
        )?,
    })
}

/// An audit row and its sequence number (the page cursor).
pub(super) fn audit_of(r: &PgRow) -> StoreResult<(i64, AuditRecord)> {
    let details: serde_json::Value = r.try_get("details").map_err(backend)?;
    Ok((
        r.try_get("seq").map_err(backend)?,
        AuditRecord {
            audit_id: r.try_get("audit_id").map_err(backend)?,
            tenant_id: r.try_get("tenant_id").map_err(backend)?,
            occurred_at: r.try_get("occurred_at").map_err(backend)?,
            actor_type: stored(
                ActorType::parse(r.try_get("actor_type").map_err(backend)?),
                "audit actor type",
            )?,
            actor_id: r.try_get("actor_id").map_err(backend)?,
            action: stored(AuditAction::parse(r.try_get("action").map_err(backend)?), "audit action")?,
            target_type: r.try_get("target_type").map_err(backend)?,
            target_id: r.try_get("target_id").map_err(backend)?,
            outcome: stored(AuditOutcome::parse(r.try_get("outcome").map_err(backend)?), "audit outcome")?,
            reason_code: r.try_get("reason_code").map_err(backend)?,
            request_id: r.try_get("request_id").map_err(backend)?,
            details: serde_json::from_value(details)
                .map_err(|_| StoreError::Corrupt("audit details".into()))?,
        },
    ))
}

/// An outbox row and its sequence number (the page cursor).
pub(super) fn event_of(r: &PgRow) -> StoreResult<(i64, OutboxEvent)> {
    Ok((
        r.try_get("seq").map_err(backend)?,
        OutboxEvent {
            event_id: r.try_get("event_id").map_err(backend)?,
            tenant_id: r.try_get("tenant_id").map_err(backend)?,
            event_type: r.try_get("event_type").map_err(backend)?,
            occurred_at: r.try_get("occurred_at").map_err(backend)?,
            payload: r.try_get::<serde_json::Value, _>("payload").map_err(backend)?.to_string(),
        },
    ))
}

pub(super) type Tx = Transaction<'static, Postgres>;

pub(super) async fn insert_audit(tx: &mut Tx, a: &AuditRecord) -> StoreResult<()> {
    let details = serde_json::to_value(&a.details).map_err(|e| StoreError::Backend(e.to_string()))?;
    sqlx::query(sql::INSERT_AUDIT.postgres)
        .bind(a.audit_id)
        .bind(&a.tenant_id)
        .bind(a.occurred_at)
        .bind(a.actor_type.as_str())
        .bind(&a.actor_id)
        .bind(a.action.as_str())
        .bind(&a.target_type)
        .bind(&a.target_id)
        .bind(a.outcome.as_str())
        .bind(&a.reason_code)
        .bind(&a.request_id)
        .bind(details)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

pub(super) async fn insert_event(tx: &mut Tx, e: &OutboxEvent) -> StoreResult<()> {
    sqlx::query("INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at, payload) VALUES ($1, $2, $3, $4, $5::json)")
        .bind(&e.event_id)
        .bind(&e.tenant_id)
        .bind(&e.event_type)
        .bind(e.occurred_at)
        .bind(&e.payload)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

pub(super) async fn insert_certificate(tx: &mut Tx, c: &CertificateRecord) -> StoreResult<()> {
    sqlx::query(sql::INSERT_CERTIFICATE.postgres)
        .bind(c.certificate_id)
        .bind(&c.tenant_id)
        .bind(c.agent_id)
        .bind(&c.public_key_algorithm)
        .bind(&c.public_key_sha256)
        .bind(&c.subject)
        .bind(&c.serial_number)
        .bind(c.not_before)
        .bind(c.not_after)
        .bind(c.status.as_str())
        .bind(&c.certificate_sha256)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(())
}

pub(super) async fn insert_nonce(
    tx: &mut Tx,
    tenant_id: &str,
    nonce_hash: &KeyedHash,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let r = sqlx::query(sql::INSERT_NONCE.postgres)
        .bind(tenant_id)
        .bind(nonce_hash.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(r.rows_affected() == 1)
}

pub(super) async fn select_identity(
    tx: &mut Tx,
    tenant_id: &str,
    agent_id: Uuid,
    lock: bool,
) -> StoreResult<Option<AgentIdentityRecord>> {
    let sql = if lock {
        "SELECT * FROM agent_identities WHERE tenant_id = $1 AND agent_id = $2 FOR UPDATE"
    } else {
        "SELECT * FROM agent_identities WHERE tenant_id = $1 AND agent_id = $2"
    };
    let row =
        sqlx::query(sql).bind(tenant_id).bind(agent_id).fetch_optional(&mut **tx).await.map_err(backend)?;
    row.map(|r| identity_of(&r).map(|(_, i)| i)).transpose()
}
