//! The embedded SQLite store in WAL mode: one writer connection owned by
//! the writer thread, which group-commits every write (`writer`),
//! read-only connections next to it, and a background checkpointer
//! (`checkpoint`). Every statement carries the tenant predicate.

mod checkpoint;
mod heartbeat;
mod rows;
mod schema;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use self::checkpoint::{Checkpointer, WAL_BACKSTOP_PAGES};
use self::heartbeat::apply_heartbeat;
use self::rows::*;
use self::schema::{MIGRATIONS, configure, connect, migrate};
use self::writer::Writer;
use super::{EventClaim, Pruned, RelayEvent, RetentionCutoffs, Store, StoreError, StoreResult, TABLES};
use crate::error::TokenFailure;
use crate::model::*;
use crate::store::sql;

/// Read-only connections next to the writer: WAL lets readers proceed while
/// a batch is being committed.
const READERS: usize = 4;

#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<Vec<Mutex<Connection>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, applies migrations
    /// and starts the writer, the readers and the checkpointer.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let mut conn = connect(path)?;
        migrate(&mut conn)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES).map_err(backend)?;
        let checkpointer = Checkpointer::spawn(path)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open(path).map_err(backend)?;
            reader.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;").map_err(backend)?;
            readers.push(Mutex::new(reader));
        }
        let writer = Writer::spawn(conn, move || checkpointer.note_commit())?;
        Ok(Self { writer, readers: Arc::new(readers) })
    }

    /// Applies pending migrations to the database file and returns how
    /// many ran, without starting the store.
    pub fn migrate_file(path: &Path) -> StoreResult<usize> {
        migrate(&mut connect(path)?)
    }

    /// A private in-memory database (tests); reads go through the writer.
    pub fn in_memory() -> StoreResult<Self> {
        let mut conn = Connection::open_in_memory().map_err(backend)?;
        configure(&conn)?;
        migrate(&mut conn)?;
        Ok(Self { writer: Writer::spawn(conn, || {})?, readers: Arc::default() })
    }

    /// Runs a read on a free reader connection (through the writer when
    /// there is none, as for in-memory databases).
    async fn read<T, F>(&self, mut f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        if self.readers.is_empty() {
            return self.writer.write(f).await;
        }
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let guard = readers.iter().find_map(|r| r.try_lock().ok());
            let guard = match guard {
                Some(g) => g,
                None => readers[std::process::id() as usize % readers.len()]
                    .lock()
                    .map_err(|_| StoreError::Backend("reader mutex poisoned".into()))?,
            };
            f(&guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blocking task failed: {e}")))?
    }

    /// One write, group-committed with whatever else is queued.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.writer.write(f).await
    }
}

/// A SQLite claim: the events read, marked through the writer.
struct SqliteEventClaim {
    store: SqliteStore,
    events: Vec<RelayEvent>,
}

#[async_trait]
impl EventClaim for SqliteEventClaim {
    fn events(&self) -> &[RelayEvent] {
        &self.events
    }

    async fn mark_published(self: Box<Self>, n: usize, at: DateTime<Utc>) -> StoreResult<()> {
        let seqs: Vec<i64> = self.events.iter().take(n).map(|e| e.seq).collect();
        if seqs.is_empty() {
            return Ok(());
        }
        self.store
            .write(move |tx| {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE event_outbox SET published_at = ?1 WHERE seq = ?2 AND published_at IS NULL",
                    )
                    .map_err(backend)?;
                for seq in &seqs {
                    stmt.execute(params![micros(at), seq]).map_err(backend)?;
                }
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn write_queue(&self) -> crate::store::batch::WriteQueueSnapshot {
        self.writer.stats().snapshot()
    }

    async fn ready(&self) -> StoreResult<()> {
        self.read(|conn| {
            let latest: Option<i64> =
                conn.query_row(sql::LATEST_MIGRATION.sqlite, [], |r| r.get(0)).map_err(backend)?;
            let expected = MIGRATIONS.last().map(|m| m.0);
            if latest == expected {
                Ok(())
            } else {
                Err(StoreError::Unavailable("migrations pending".into()))
            }
        })
        .await
    }

    async fn insert_enrollment_token(
        &self,
        t: &EnrollmentTokenRecord,
        audit: &AuditRecord,
        event: &OutboxEvent,
    ) -> StoreResult<()> {
        let (t, audit, event) = (t.clone(), audit.clone(), event.clone());
        self.write(move |tx| {
            tx.prepare_cached(sql::INSERT_TOKEN.sqlite)
                .and_then(|mut s| {
                    s.execute(params![
                        t.id.to_string(),
                        t.tenant_id,
                        t.token_hash.as_str(),
                        t.label,
                        t.site_id,
                        t.collector_id.map(|c| c.to_string()),
                        t.max_uses,
                        micros(t.created_at),
                        micros(t.expires_at),
                        t.created_by
                    ])
                })
                .map_err(backend)?;
            insert_audit(tx, &audit).map_err(backend)?;
            insert_event(tx, &event).map_err(backend)
        })
        .await
    }

    async fn list_enrollment_tokens(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<EnrollmentTokenRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM agent_enrollment_tokens WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"))
                .map_err(backend)?;
            let rows = stmt.query_map(params![tenant_id, after.unwrap_or(0), limit + 1], token_row).map_err(backend)?;
            let mut out = Vec::new();
            for r in rows {
                let (seq, raw) = r.map_err(backend)?;
                out.push((seq, raw.into_record()?));
            }
            Ok(Page::from_rows(out, limit))
        })
        .await
    }

    async fn revoke_enrollment_token(
        &self,
        tenant_id: &str,
        id: Uuid,
        audit: &AuditRecord,
        event: &OutboxEvent,
    ) -> StoreResult<RevokeOutcome<EnrollmentTokenRecord>> {
        let (tenant_id, audit, event) = (tenant_id.to_owned(), audit.clone(), event.clone());
        self.write(move |tx| {
            let changed = tx
                .prepare_cached(sql::REVOKE_TOKEN.sqlite)
                .and_then(|mut s| s.execute(params![tenant_id, id.to_string(), micros(audit.occurred_at)]))
                .map_err(backend)?;
            let row = tx
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM agent_enrollment_tokens WHERE tenant_id = ?1 AND id = ?2"
                ))
                .and_then(|mut s| s.query_row(params![tenant_id, id.to_string()], token_row).optional())
                .map_err(backend)?;
            let Some((_, raw)) = row else { return Ok(RevokeOutcome::NotFound) };
            let record = raw.into_record()?;
            if changed == 1 {
                insert_audit(tx, &audit).map_err(backend)?;
                insert_event(tx, &event).map_err(backend)?;
                Ok(RevokeOutcome::Revoked(record))
            } else {
                Ok(RevokeOutcome::AlreadyRevoked(record))
            }
        })
        .await
    }

    async fn find_enrollment_token(&self, id: Uuid) -> StoreResult<Option<EnrollmentTokenRecord>> {
        self.read(move |conn| {
            let row = conn
                .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM agent_enrollment_tokens WHERE id = ?1"))
                .and_then(|mut s| s.query_row(params![id.to_string()], token_row).optional())
                .map_err(backend)?;
            row.map(|(_, raw)| raw.into_record()).transpose()
        })
        .await
    }

    async fn commit_enrollment(&self, c: &EnrollmentCommit) -> StoreResult<EnrollmentOutcome> {
        let c = c.clone();
        // Every refusal is decided before anything is written (see
        // `writer`): the token first, so a token refusal wins over a
        // replayed nonce, then the nonce, then the use is redeemed.
        self.write(move |tx| {
            let tenant = c.identity.tenant_id.as_str();
            let token = tx
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM agent_enrollment_tokens WHERE tenant_id = ?1 AND id = ?2"
                ))
                .and_then(|mut s| s.query_row(params![tenant, c.token_id.to_string()], token_row).optional())
                .map_err(backend)?;
            let Some((_, raw)) = token else {
                return Ok(EnrollmentOutcome::TokenRejected(TokenFailure::Unknown));
            };
            if let Some(failure) = raw.into_record()?.failure_at(c.now) {
                return Ok(EnrollmentOutcome::TokenRejected(failure));
            }
            if !insert_nonce(tx, tenant, &c.nonce_hash, c.now).map_err(backend)? {
                return Ok(EnrollmentOutcome::NonceReplayed);
            }
            let redeemed = tx
                .prepare_cached(sql::REDEEM_TOKEN_USE.sqlite)
                .and_then(|mut s| s.execute(params![tenant, c.token_id.to_string(), micros(c.now)]))
                .map_err(backend)?;
            if redeemed != 1 {
                // The token was judged redeemable in this same transaction.
                return Err(StoreError::Backend(
                    "the enrollment token changed inside its write transaction".into(),
                ));
            }
            let i = &c.identity;
            tx.prepare_cached(sql::INSERT_IDENTITY.sqlite)
                .and_then(|mut s| {
                    s.execute(params![
                        i.agent_id.to_string(),
                        i.tenant_id,
                        i.collector_id.to_string(),
                        i.asset_id.to_string(),
                        i.site_id,
                        i.status.as_str(),
                        i.hostname,
                        i.agent_version,
                        i.os_family,
                        i.enrollment_token_id.to_string(),
                        i.certificate_id.to_string(),
                        i.fingerprint_hash.as_ref().map(KeyedHash::as_str),
                        micros(i.enrolled_at)
                    ])
                })
                .map_err(backend)?;
            insert_certificate(tx, &c.certificate).map_err(backend)?;
            insert_audit(tx, &c.audit).map_err(backend)?;
            insert_event(tx, &c.event).map_err(backend)?;
            Ok(EnrollmentOutcome::Enrolled)
        })
        .await
    }

    async fn get_identity(
        &self,
        tenant_id: &str,
        agent_id: Uuid,
    ) -> StoreResult<Option<AgentIdentityRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |conn| select_identity(conn, &tenant_id, agent_id)).await
    }

    async fn list_identities(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<AgentIdentityRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {IDENTITY_COLUMNS} FROM agent_identities WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"))
                .map_err(backend)?;
            let rows = stmt.query_map(params![tenant_id, after.unwrap_or(0), limit + 1], identity_row).map_err(backend)?;
            let mut out = Vec::new();
            for r in rows {
                let (seq, raw) = r.map_err(backend)?;
                out.push((seq, raw.into_record()?));
            }
            Ok(Page::from_rows(out, limit))
        })
        .await
    }

    async fn revoke_identity(
        &self,
        tenant_id: &str,
        agent_id: Uuid,
        revoked_by: &str,
        reason: Option<&str>,
        audit: &AuditRecord,
        event: &OutboxEvent,
    ) -> StoreResult<RevokeOutcome<AgentIdentityRecord>> {
        let (tenant_id, revoked_by, reason, audit, event) = (
            tenant_id.to_owned(),
            revoked_by.to_owned(),
            reason.map(str::to_owned),
            audit.clone(),
            event.clone(),
        );
        self.write(move |tx| {
            let now = micros(audit.occurred_at);
            let changed = tx
                .prepare_cached(sql::REVOKE_IDENTITY.sqlite)
                .and_then(|mut s| s.execute(params![tenant_id, agent_id.to_string(), now]))
                .map_err(backend)?;
            let Some(record) = select_identity(tx, &tenant_id, agent_id)? else {
                return Ok(RevokeOutcome::NotFound);
            };
            if changed != 1 {
                return Ok(RevokeOutcome::AlreadyRevoked(record));
            }
            tx.prepare_cached(sql::REVOKE_ACTIVE_CERTIFICATES.sqlite)
                .and_then(|mut s| s.execute(params![tenant_id, agent_id.to_string(), now]))
                .map_err(backend)?;
            tx.prepare_cached(sql::INSERT_REVOCATION.sqlite)
                .and_then(|mut s| {
                    s.execute(params![
                        Uuid::new_v4().to_string(),
                        tenant_id,
                        agent_id.to_string(),
                        revoked_by,
                        reason,
                        now
                    ])
                })
                .map_err(backend)?;
            insert_audit(tx, &audit).map_err(backend)?;
            insert_event(tx, &event).map_err(backend)?;
            Ok(RevokeOutcome::Revoked(record))
        })
        .await
    }

    async fn mark_identity_stale(
        &self,
        tenant_id: &str,
        agent_id: Uuid,
        audit: &AuditRecord,
    ) -> StoreResult<()> {
        let (tenant_id, audit) = (tenant_id.to_owned(), audit.clone());
        self.write(move |tx| {
            let changed = tx
                .prepare_cached(sql::MARK_IDENTITY_STALE.sqlite)
                .and_then(|mut s| s.execute(params![tenant_id, agent_id.to_string()]))
                .map_err(backend)?;
            if changed == 1 {
                insert_audit(tx, &audit).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn commit_heartbeat(&self, c: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        self.write(move |tx| apply_heartbeat(tx, &c)).await
    }

    async fn commit_heartbeat_unbatched(&self, c: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        self.writer.write_alone(move |tx| apply_heartbeat(tx, &c)).await
    }

    async fn commit_rotation(&self, c: &RotationCommit) -> StoreResult<RotationOutcome> {
        let c = c.clone();
        self.write(move |tx| {
            let locked = select_identity(tx, &c.tenant_id, c.agent_id)?;
            let identity = match judge_rotation_write(locked.as_ref(), c.presented_certificate_id) {
                Ok(identity) => identity,
                Err(refused) => return Ok(refused),
            };
            if !insert_nonce(tx, &c.tenant_id, &c.nonce_hash, c.now).map_err(backend)? {
                return Ok(RotationOutcome::NonceReplayed);
            }
            tx.prepare_cached(sql::SUPERSEDE_CERTIFICATE.sqlite)
                .and_then(|mut s| {
                    s.execute(params![c.tenant_id, identity.certificate_id.to_string(), micros(c.now)])
                })
                .map_err(backend)?;
            insert_certificate(tx, &c.certificate).map_err(backend)?;
            tx.prepare_cached(sql::ROTATE_IDENTITY_CERTIFICATE.sqlite)
                .and_then(|mut s| {
                    s.execute(params![
                        c.tenant_id,
                        c.agent_id.to_string(),
                        c.certificate.certificate_id.to_string(),
                        identity.certificate_id.to_string(),
                        micros(c.now)
                    ])
                })
                .map_err(backend)?;
            insert_audit(tx, &c.audit).map_err(backend)?;
            insert_event(tx, &c.event).map_err(backend)?;
            Ok(RotationOutcome::Rotated)
        })
        .await
    }

    async fn get_asset(&self, tenant_id: &str, asset_id: Uuid) -> StoreResult<Option<AssetRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |conn| {
            let sql = format!("SELECT {ASSET_COLUMNS} FROM assets WHERE tenant_id = ?1 AND asset_id = ?2");
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            first_row(&mut stmt, params![tenant_id, asset_id.to_string()], asset_of)
        })
        .await
    }

    async fn get_certificate(
        &self,
        tenant_id: &str,
        certificate_id: Uuid,
    ) -> StoreResult<Option<CertificateRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {CERTIFICATE_COLUMNS} FROM agent_device_certificates WHERE tenant_id = ?1 AND certificate_id = ?2"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            first_row(&mut stmt, params![tenant_id, certificate_id.to_string()], certificate_of)
        })
        .await
    }

    async fn certificate_binding(
        &self,
        tenant_id: &str,
        certificate_sha256: &str,
    ) -> StoreResult<Option<CertificateBinding>> {
        let (tenant_id, sha256) = (tenant_id.to_owned(), certificate_sha256.to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(sql::CERTIFICATE_BINDING.sqlite).map_err(backend)?;
            first_row(&mut stmt, params![tenant_id, sha256], |r| {
                Ok(CertificateBinding {
                    certificate_id: uuid_of(&r.get::<_, String>(0).map_err(backend)?)?,
                    agent_id: uuid_of(&r.get::<_, String>(1).map_err(backend)?)?,
                    collector_id: uuid_of(&r.get::<_, String>(2).map_err(backend)?)?,
                    asset_id: uuid_of(&r.get::<_, String>(3).map_err(backend)?)?,
                })
            })
        })
        .await
    }

    async fn revoked_certificates(
        &self,
        now: DateTime<Utc>,
        superseded_before: DateTime<Utc>,
    ) -> StoreResult<Vec<crate::pki::RevokedSerial>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(sql::WITHDRAWN_CERTIFICATES).map_err(backend)?;
            let rows = stmt
                .query_map(params![micros(now), micros(superseded_before)], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(backend)?;
            rows.map(|row| {
                let (serial_hex, status, at) = row.map_err(backend)?;
                Ok(crate::pki::RevokedSerial {
                    serial_hex,
                    revoked_at: time(at)?,
                    superseded: status == CertificateStatus::Superseded.as_str(),
                })
            })
            .collect()
        })
        .await
    }

    async fn stored_bytes(&self) -> StoreResult<u64> {
        self.read(|conn| {
            // Pages in use: pages freed by deletes are reused, not returned.
            let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).map_err(backend)?;
            let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0)).map_err(backend)?;
            let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(backend)?;
            Ok(u64::try_from((pages - free) * size).unwrap_or(0))
        })
        .await
    }

    async fn prune(&self, c: &RetentionCutoffs, limit: u32) -> StoreResult<Pruned> {
        let c = c.clone();
        self.write(move |tx| {
            let mut pruned = Pruned::default();
            let run = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> StoreResult<u64> {
                tx.prepare_cached(sql).and_then(|mut s| s.execute(args)).map(|n| n as u64).map_err(backend)
            };
            pruned.events = run(
                "DELETE FROM event_outbox WHERE seq IN (SELECT o.seq FROM \
                 (SELECT seq, occurred_at, published_at FROM event_outbox ORDER BY seq LIMIT ?1) o \
                 WHERE o.occurred_at < ?2 AND (o.published_at IS NOT NULL OR ?3 = 0))",
                &[&limit, &micros(c.events_before), &c.events_published_only],
            )?;
            pruned.audit = run(
                "DELETE FROM audit_events WHERE seq IN (SELECT o.seq FROM \
                 (SELECT seq, occurred_at FROM audit_events ORDER BY seq LIMIT ?1) o WHERE o.occurred_at < ?2)",
                &[&limit, &micros(c.audit_before)],
            )?;
            pruned.nonces = run(
                "DELETE FROM agent_enrollment_nonces WHERE rowid IN \
                 (SELECT rowid FROM agent_enrollment_nonces WHERE used_at < ?2 LIMIT ?1)",
                &[&limit, &micros(c.nonces_before)],
            )?;
            pruned.tokens = run(
                "DELETE FROM agent_enrollment_tokens WHERE seq IN (SELECT seq FROM agent_enrollment_tokens \
                 WHERE expires_at < ?2 OR revoked_at < ?2 OR (use_count >= max_uses AND last_used_at < ?2) LIMIT ?1)",
                &[&limit, &micros(c.tokens_before)],
            )?;
            Ok(pruned)
        })
        .await
    }

    /// One process: the rate limiter keeps its counters in memory.
    fn shares_failure_counters(&self) -> bool {
        false
    }

    async fn take_failure_slots(
        &self,
        _keys: &[String],
        _limit: u32,
        _window: chrono::Duration,
        _now: DateTime<Utc>,
    ) -> StoreResult<Result<Vec<DateTime<Utc>>, u32>> {
        Err(StoreError::Backend("the SQLite store keeps no shared failure counters".into()))
    }

    async fn settle_failure_slots(
        &self,
        _slots: &[(String, DateTime<Utc>)],
        _failed: bool,
    ) -> StoreResult<()> {
        Err(StoreError::Backend("the SQLite store keeps no shared failure counters".into()))
    }

    async fn claim_unpublished_events(&self, limit: u32) -> StoreResult<Box<dyn EventClaim>> {
        // One process: its relay is the only one, nothing to lock.
        let events = self
            .read(move |conn| {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM event_outbox WHERE published_at IS NULL ORDER BY seq LIMIT ?1"
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
                all_rows(&mut stmt, params![limit], event_of)
            })
            .await?;
        let events = events.into_iter().map(|(seq, event)| RelayEvent { seq, event }).collect();
        Ok(Box::new(SqliteEventClaim { store: self.clone(), events }))
    }

    async fn append_audit(&self, audit: &AuditRecord, event: Option<&OutboxEvent>) -> StoreResult<()> {
        let (audit, event) = (audit.clone(), event.cloned());
        self.write(move |tx| {
            insert_audit(tx, &audit).map_err(backend)?;
            if let Some(e) = &event {
                insert_event(tx, e).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_audit(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<AuditRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = all_rows(&mut stmt, params![tenant_id, after.unwrap_or(0), limit + 1], audit_of)?;
            Ok(Page::from_rows(rows, limit))
        })
        .await
    }

    async fn list_events(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<OutboxEvent>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM event_outbox WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = all_rows(&mut stmt, params![tenant_id, after.unwrap_or(0), limit + 1], event_of)?;
            Ok(Page::from_rows(rows, limit))
        })
        .await
    }

    async fn dump_all_rows(&self) -> StoreResult<Vec<String>> {
        self.read(|conn| {
            let mut out = Vec::new();
            for table in TABLES {
                let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).map_err(backend)?;
                let columns = stmt.column_count();
                let mut rows = stmt.query([]).map_err(backend)?;
                while let Some(row) = rows.next().map_err(backend)? {
                    let mut cells = Vec::with_capacity(columns);
                    for i in 0..columns {
                        let cell = match row.get_ref(i).map_err(backend)? {
                            rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                            rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                            rusqlite::types::ValueRef::Real(v) => v.to_string(),
                            rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                                String::from_utf8_lossy(t).into_owned()
                            }
                        };
                        cells.push(cell);
                    }
                    out.push(format!("{table}: {}", cells.join(" | ")));
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_database_and_its_wal_and_shm_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("owner-only.db");
        let store = SqliteStore::open(&path).expect("open");
        for file in ["owner-only.db", "owner-only.db-wal", "owner-only.db-shm"] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        drop(store);
        // A database someone made world-readable is narrowed when opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        drop(SqliteStore::open(&path).expect("reopen"));
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn migrating_a_file_reports_what_it_applied_and_then_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("migrate.db");
        assert_eq!(SqliteStore::migrate_file(&path).expect("first"), MIGRATIONS.len());
        assert_eq!(SqliteStore::migrate_file(&path).expect("second"), 0, "a current database needs nothing");
        drop(SqliteStore::open(&path).expect("a migrated file opens"));
        assert_eq!(SqliteStore::migrate_file(&path).expect("after open"), 0);
    }
}
