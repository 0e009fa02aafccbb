//! The embedded SQLite store: one connection in WAL mode, every statement
//! carrying the tenant predicate, each trait method one transaction run on
//! the blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use uuid::Uuid;

use super::batch::HeartbeatBatcher;
use super::{Store, StoreError, StoreResult, TABLES};
use crate::error::TokenFailure;
use crate::model::*;

/// Versioned migrations, applied in order inside a transaction each.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "init", include_str!("../../migrations/sqlite/0001_init.sql"))];

/// Read-only connections next to the writer: WAL lets readers proceed while
/// a batch is being committed.
const READERS: usize = 4;

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    batcher: Arc<tokio::sync::OnceCell<HeartbeatBatcher>>,
    checkpointer: Option<Arc<Checkpointer>>,
}

/// Pages the WAL may hold before the writer checkpoints it itself: a
/// backstop for when the background checkpointer falls behind.
const WAL_BACKSTOP_PAGES: u32 = 16_384;
/// How long commits accumulate between background checkpoints, so that a
/// page rewritten by many commits is copied into the database file once.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Copies committed WAL frames into the database file on a thread and
/// connection of its own (a PASSIVE checkpoint blocks neither the writer
/// nor readers), so the writer, which every write waits for, never stops
/// to do it.
struct Checkpointer {
    committed: std::sync::mpsc::SyncSender<()>,
}

impl Checkpointer {
    fn spawn(path: &Path) -> StoreResult<Self> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch("PRAGMA busy_timeout = 5000;").map_err(backend)?;
        let (committed, commits) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("oneprotect-sqlite-checkpoint".into())
            .spawn(move || Self::run(&conn, &commits))
            .map_err(|e| StoreError::Unavailable(format!("could not start the checkpointer: {e}")))?;
        Ok(Self { committed })
    }

    /// Ends when the store is dropped (the channel disconnects).
    fn run(conn: &Connection, commits: &std::sync::mpsc::Receiver<()>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut last = std::time::Instant::now();
        while commits.recv().is_ok() {
            while let Some(left) = CHECKPOINT_INTERVAL.checked_sub(last.elapsed()) {
                if let Err(RecvTimeoutError::Disconnected) = commits.recv_timeout(left) {
                    return;
                }
            }
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "background WAL checkpoint failed; the writer's backstop will checkpoint");
            }
            last = std::time::Instant::now();
        }
    }

    /// Tells the checkpointer a transaction committed; never blocks.
    fn note_commit(&self) {
        let _ = self.committed.try_send(());
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(err, _)
            if matches!(err.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked | rusqlite::ErrorCode::CannotOpen) =>
        {
            StoreError::Unavailable(err.to_string())
        }
        other => StoreError::Backend(other.to_string()),
    }
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(v: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| StoreError::Corrupt(format!("timestamp {v} out of range")))
}

fn opt_time(v: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    v.map(time).transpose()
}

fn uuid_of(s: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| StoreError::Corrupt("malformed uuid".into()))
}

fn opt_uuid(s: Option<String>) -> StoreResult<Option<Uuid>> {
    s.as_deref().map(uuid_of).transpose()
}

const TOKEN_COLUMNS: &str =
    "seq, id, tenant_id, token_hash, label, site_id, collector_id, max_uses, use_count, created_at, expires_at, last_used_at, revoked_at, created_by";

fn token_row(row: &Row<'_>) -> rusqlite::Result<(i64, RawToken)> {
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

struct RawToken {
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
    fn into_record(self) -> StoreResult<EnrollmentTokenRecord> {
        Ok(EnrollmentTokenRecord {
            id: uuid_of(&self.id)?,
            tenant_id: self.tenant_id,
            token_hash: self.token_hash,
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

const IDENTITY_COLUMNS: &str = "seq, agent_id, tenant_id, collector_id, asset_id, site_id, status, hostname, agent_version, os_family, enrollment_token_id, certificate_id, previous_certificate_id, rotated_at, fingerprint_hash, enrolled_at, last_seen_at, last_sequence, revoked_at";

struct RawIdentity {
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

fn identity_row(row: &Row<'_>) -> rusqlite::Result<(i64, RawIdentity)> {
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
    fn into_record(self) -> StoreResult<AgentIdentityRecord> {
        Ok(AgentIdentityRecord {
            agent_id: uuid_of(&self.agent_id)?,
            tenant_id: self.tenant_id,
            collector_id: uuid_of(&self.collector_id)?,
            asset_id: uuid_of(&self.asset_id)?,
            site_id: self.site_id,
            status: AgentStatus::parse(&self.status).ok_or_else(|| StoreError::Corrupt("agent status".into()))?,
            hostname: self.hostname,
            agent_version: self.agent_version,
            os_family: self.os_family,
            enrollment_token_id: uuid_of(&self.enrollment_token_id)?,
            certificate_id: uuid_of(&self.certificate_id)?,
            previous_certificate_id: opt_uuid(self.previous_certificate_id)?,
            rotated_at: opt_time(self.rotated_at)?,
            fingerprint_hash: self.fingerprint_hash,
            enrolled_at: time(self.enrolled_at)?,
            last_seen_at: opt_time(self.last_seen_at)?,
            last_sequence: self.last_sequence,
            revoked_at: opt_time(self.revoked_at)?,
        })
    }
}

fn insert_audit(tx: &Connection, a: &AuditRecord) -> rusqlite::Result<()> {
    let details = serde_json::to_string(&a.details).unwrap_or_else(|_| "{}".into());
    tx.prepare_cached(
        "INSERT INTO audit_events (audit_id, tenant_id, occurred_at, actor_type, actor_id, action, target_type, target_id, outcome, reason_code, request_id, details) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        a.audit_id.to_string(),
        a.tenant_id,
        micros(a.occurred_at),
        a.actor_type,
        a.actor_id,
        a.action,
        a.target_type,
        a.target_id,
        a.outcome,
        a.reason_code,
        a.request_id,
        details
    ])?;
    Ok(())
}

fn insert_event(tx: &Connection, e: &OutboxEvent) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at, payload) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![
        e.event_id,
        e.tenant_id,
        e.event_type,
        micros(e.occurred_at),
        e.payload
    ])?;
    Ok(())
}

fn insert_certificate(tx: &Connection, c: &CertificateRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO agent_device_certificates (certificate_id, tenant_id, agent_id, public_key_algorithm, public_key_sha256, subject, serial_number, not_before, not_after, status) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        c.certificate_id.to_string(),
        c.tenant_id,
        c.agent_id.to_string(),
        c.public_key_algorithm,
        c.public_key_sha256,
        c.subject,
        c.serial_number,
        micros(c.not_before),
        micros(c.not_after),
        c.status
    ])?;
    Ok(())
}

fn insert_nonce(tx: &Connection, tenant_id: &str, nonce_hash: &str, now: DateTime<Utc>) -> rusqlite::Result<bool> {
    let n = tx
        .prepare_cached("INSERT INTO agent_enrollment_nonces (tenant_id, nonce_hash, used_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")?
        .execute(params![tenant_id, nonce_hash, micros(now)])?;
    Ok(n == 1)
}

fn select_identity(tx: &Connection, tenant_id: &str, agent_id: Uuid) -> StoreResult<Option<AgentIdentityRecord>> {
    let raw = tx
        .prepare_cached(&format!("SELECT {IDENTITY_COLUMNS} FROM agent_identities WHERE tenant_id = ?1 AND agent_id = ?2"))
        .map_err(backend)?
        .query_row(params![tenant_id, agent_id.to_string()], identity_row)
        .optional()
        .map_err(backend)?;
    raw.map(|(_, r)| r.into_record()).transpose()
}

fn page<T>(mut rows: Vec<(i64, T)>, limit: u32) -> Page<T> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_after = if more { rows.last().map(|(seq, _)| *seq) } else { None };
    Page { items: rows.into_iter().map(|(_, t)| t).collect(), next_after }
}

/// One heartbeat inside an open write transaction (or savepoint). The
/// rules are judged here on the identity row as this transaction sees it,
/// so a revocation or rotation committed before this batch is seen.
fn apply_heartbeat(tx: &Connection, c: &HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
    let stored = select_identity(tx, &c.tenant_id, c.agent_id)?;
    let effects = match judge_heartbeat(stored.as_ref(), c) {
        Ok(effects) => effects,
        Err(outcome) => return Ok(outcome),
    };
    let now = micros(c.now);
    let asset_id = effects.asset_id.to_string();
    let update_asset = || {
        tx.prepare_cached("UPDATE assets SET hostname = ?3, os_family = COALESCE(?4, os_family), os_version = COALESCE(?5, os_version), last_seen_at = ?6 WHERE tenant_id = ?1 AND asset_id = ?2")
            .and_then(|mut s| s.execute(params![c.tenant_id, asset_id, c.hostname, c.os_family, c.os_version, now]))
            .map_err(backend)
    };
    // The asset row is written with the identity's first heartbeat, so an
    // identity that has been heard from only needs the update. Should its
    // row be missing, it is created again, with its discovery event.
    let asset_updated = !effects.first_ever && update_asset()? == 1;
    let discovery = match (asset_updated, effects.discovered_event) {
        (true, _) => None,
        (false, Some(event)) => Some(event),
        (false, None) => return Ok(HeartbeatOutcome::FirstContactRequired),
    };
    tx.prepare_cached(
        "UPDATE agent_identities SET status = 'active', last_seen_at = ?3, last_sequence = ?4, hostname = ?5, agent_version = ?6, os_family = COALESCE(?7, os_family) \
         WHERE tenant_id = ?1 AND agent_id = ?2",
    )
    .and_then(|mut s| s.execute(params![c.tenant_id, c.agent_id.to_string(), now, c.sequence, c.hostname, c.agent_version, c.os_family]))
    .map_err(backend)?;
    if let Some(audit) = effects.activation_audit {
        insert_audit(tx, audit).map_err(backend)?;
    }
    if let Some(discovered) = discovery {
        let inserted = tx
            .prepare_cached(
                "INSERT INTO assets (asset_id, tenant_id, agent_id, hostname, os_family, os_version, first_seen_at, last_seen_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
                 ON CONFLICT (asset_id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![asset_id, c.tenant_id, c.agent_id.to_string(), c.hostname, c.os_family, c.os_version, now]))
            .map_err(backend)?;
        if inserted == 1 {
            insert_event(tx, discovered).map_err(backend)?;
        } else {
            update_asset()?;
        }
    }
    insert_event(tx, &c.telemetry_event).map_err(backend)?;
    Ok(HeartbeatOutcome::Accepted)
}

/// A batch of heartbeats in one write transaction. Every heartbeat is
/// applied directly; should one fail, the transaction is rolled back and
/// the batch applied again with a savepoint per heartbeat, so the failure
/// stays that heartbeat's own. Failures are rare, savepoints are not free.
fn apply_heartbeat_batch(conn: &mut Connection, commits: &[HeartbeatCommit]) -> StoreResult<Vec<StoreResult<HeartbeatOutcome>>> {
    {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        if let Ok(outcomes) = commits.iter().map(|c| apply_heartbeat(&tx, c)).collect::<StoreResult<Vec<_>>>() {
            tx.commit().map_err(backend)?;
            return Ok(outcomes.into_iter().map(Ok).collect());
        }
    }
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let mut outcomes = Vec::with_capacity(commits.len());
    for c in commits {
        let sp = tx.savepoint().map_err(backend)?;
        match apply_heartbeat(&sp, c) {
            Ok(o) => {
                sp.commit().map_err(backend)?;
                outcomes.push(Ok(o));
            }
            Err(e) => {
                drop(sp);
                outcomes.push(Err(e));
            }
        }
    }
    tx.commit().map_err(backend)?;
    Ok(outcomes)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let conn = Connection::open(path).map_err(backend)?;
        let mut store = Self::init(conn)?;
        store
            .conn
            .lock()
            .map_err(|_| StoreError::Backend("poisoned".into()))?
            .pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)
            .map_err(backend)?;
        store.checkpointer = Some(Arc::new(Checkpointer::spawn(path)?));
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open(path).map_err(backend)?;
            reader.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;").map_err(backend)?;
            readers.push(Mutex::new(reader));
        }
        store.readers = Arc::new(readers);
        Ok(store)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> StoreResult<Self> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(conn: Connection) -> StoreResult<Self> {
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;").map_err(backend)?;
        let store = Self { conn: Arc::new(Mutex::new(conn)), readers: Arc::default(), batcher: Arc::default(), checkpointer: None };
        store.migrate()?;
        Ok(store)
    }

    /// Applies every migration not yet recorded; returns how many ran.
    pub fn migrate(&self) -> StoreResult<usize> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Backend("poisoned".into()))?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
            .map_err(backend)?;
        let mut applied = 0;
        for (version, name, sql) in MIGRATIONS {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let done: Option<i64> =
                tx.query_row("SELECT version FROM schema_migrations WHERE version = ?1", [version], |r| r.get(0)).optional().map_err(backend)?;
            if done.is_none() {
                tx.execute_batch(sql).map_err(backend)?;
                tx.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)", params![version, name, micros(Utc::now())])
                    .map_err(backend)?;
                applied += 1;
            }
            tx.commit().map_err(backend)?;
        }
        Ok(applied)
    }

    async fn with<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let (conn, checkpointer) = (self.conn.clone(), self.checkpointer.clone());
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| StoreError::Backend("connection mutex poisoned".into()))?;
            let out = f(&mut guard);
            if let Some(c) = checkpointer {
                c.note_commit();
            }
            out
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blocking task failed: {e}")))?
    }

    /// Runs a read on a free reader connection (the writer when there is
    /// none, as for in-memory databases).
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        if self.readers.is_empty() {
            return self.with(move |conn| f(conn)).await;
        }
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let guard = readers.iter().find_map(|r| r.try_lock().ok());
            let guard = match guard {
                Some(g) => g,
                None => readers[std::process::id() as usize % readers.len()].lock().map_err(|_| StoreError::Backend("reader mutex poisoned".into()))?,
            };
            f(&guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("blocking task failed: {e}")))?
    }

    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let out = f(&tx)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ready(&self) -> StoreResult<()> {
        self.with(|conn| {
            let latest: Option<i64> = conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| r.get(0)).map_err(backend)?;
            let expected = MIGRATIONS.last().map(|m| m.0);
            if latest == expected { Ok(()) } else { Err(StoreError::Unavailable("migrations pending".into())) }
        })
        .await
    }

    async fn insert_enrollment_token(&self, t: &EnrollmentTokenRecord, audit: &AuditRecord, event: &OutboxEvent) -> StoreResult<()> {
        let (t, audit, event) = (t.clone(), audit.clone(), event.clone());
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO agent_enrollment_tokens (id, tenant_id, token_hash, label, site_id, collector_id, max_uses, use_count, created_at, expires_at, created_by) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    t.id.to_string(),
                    t.tenant_id,
                    t.token_hash,
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

    async fn list_enrollment_tokens(&self, tenant_id: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<EnrollmentTokenRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM agent_enrollment_tokens WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"))
                .map_err(backend)?;
            let rows = stmt.query_map(params![tenant_id, after.unwrap_or(0), limit + 1], token_row).map_err(backend)?;
            let mut out = Vec::new();
            for r in rows {
                let (seq, raw) = r.map_err(backend)?;
                out.push((seq, raw.into_record()?));
            }
            Ok(page(out, limit))
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
                .prepare_cached("UPDATE agent_enrollment_tokens SET revoked_at = ?3 WHERE tenant_id = ?1 AND id = ?2 AND revoked_at IS NULL")
                .and_then(|mut s| s.execute(params![tenant_id, id.to_string(), micros(audit.occurred_at)]))
                .map_err(backend)?;
            let row = tx
                .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM agent_enrollment_tokens WHERE tenant_id = ?1 AND id = ?2"))
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
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let tenant = c.identity.tenant_id.clone();
            let redeemed = tx
                .prepare_cached(
                    "UPDATE agent_enrollment_tokens SET use_count = use_count + 1, last_used_at = ?3 \
                     WHERE tenant_id = ?1 AND id = ?2 AND revoked_at IS NULL AND expires_at > ?3 AND use_count < max_uses",
                )
                .and_then(|mut s| s.execute(params![tenant, c.token_id.to_string(), micros(c.now)]))
                .map_err(backend)?;
            if redeemed != 1 {
                let row = tx
                    .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM agent_enrollment_tokens WHERE tenant_id = ?1 AND id = ?2"))
                    .and_then(|mut s| s.query_row(params![tenant, c.token_id.to_string()], token_row).optional())
                    .map_err(backend)?;
                let failure = match row {
                    Some((_, raw)) => raw.into_record()?.failure_at(c.now).unwrap_or(TokenFailure::Exhausted),
                    None => TokenFailure::Unknown,
                };
                return Ok(EnrollmentOutcome::TokenRejected(failure));
            }
            if !insert_nonce(&tx, &tenant, &c.nonce_hash, c.now).map_err(backend)? {
                return Ok(EnrollmentOutcome::NonceReplayed);
            }
            let i = &c.identity;
            tx.prepare_cached(
                "INSERT INTO agent_identities (agent_id, tenant_id, collector_id, asset_id, site_id, status, hostname, agent_version, os_family, enrollment_token_id, certificate_id, fingerprint_hash, enrolled_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
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
                    i.fingerprint_hash,
                    micros(i.enrolled_at)
                ])
            })
            .map_err(backend)?;
            insert_certificate(&tx, &c.certificate).map_err(backend)?;
            insert_audit(&tx, &c.audit).map_err(backend)?;
            insert_event(&tx, &c.event).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(EnrollmentOutcome::Enrolled)
        })
        .await
    }

    async fn get_identity(&self, tenant_id: &str, agent_id: Uuid) -> StoreResult<Option<AgentIdentityRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.read(move |conn| select_identity(conn, &tenant_id, agent_id)).await
    }

    async fn list_identities(&self, tenant_id: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<AgentIdentityRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {IDENTITY_COLUMNS} FROM agent_identities WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"))
                .map_err(backend)?;
            let rows = stmt.query_map(params![tenant_id, after.unwrap_or(0), limit + 1], identity_row).map_err(backend)?;
            let mut out = Vec::new();
            for r in rows {
                let (seq, raw) = r.map_err(backend)?;
                out.push((seq, raw.into_record()?));
            }
            Ok(page(out, limit))
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
        let (tenant_id, revoked_by, reason, audit, event) =
            (tenant_id.to_owned(), revoked_by.to_owned(), reason.map(str::to_owned), audit.clone(), event.clone());
        self.write(move |tx| {
            let now = micros(audit.occurred_at);
            let changed = tx
                .prepare_cached(
                    "UPDATE agent_identities SET status = 'revoked', revoked_at = ?3 WHERE tenant_id = ?1 AND agent_id = ?2 AND status <> 'revoked'",
                )
                .and_then(|mut s| s.execute(params![tenant_id, agent_id.to_string(), now]))
                .map_err(backend)?;
            let Some(record) = select_identity(tx, &tenant_id, agent_id)? else { return Ok(RevokeOutcome::NotFound) };
            if changed != 1 {
                return Ok(RevokeOutcome::AlreadyRevoked(record));
            }
            tx.prepare_cached("UPDATE agent_device_certificates SET status = 'revoked' WHERE tenant_id = ?1 AND agent_id = ?2 AND status = 'active'")
                .and_then(|mut s| s.execute(params![tenant_id, agent_id.to_string()]))
                .map_err(backend)?;
            tx.prepare_cached(
                "INSERT INTO agent_revocations (revocation_id, tenant_id, agent_id, revoked_by, reason, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| s.execute(params![Uuid::new_v4().to_string(), tenant_id, agent_id.to_string(), revoked_by, reason, now]))
            .map_err(backend)?;
            insert_audit(tx, &audit).map_err(backend)?;
            insert_event(tx, &event).map_err(backend)?;
            Ok(RevokeOutcome::Revoked(record))
        })
        .await
    }

    async fn mark_identity_stale(&self, tenant_id: &str, agent_id: Uuid, audit: &AuditRecord) -> StoreResult<()> {
        let (tenant_id, audit) = (tenant_id.to_owned(), audit.clone());
        self.write(move |tx| {
            let changed = tx
                .prepare_cached("UPDATE agent_identities SET status = 'stale' WHERE tenant_id = ?1 AND agent_id = ?2 AND status IN ('enrolled', 'active')")
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
        let (conn, checkpointer) = (self.conn.clone(), self.checkpointer.clone());
        let batcher = self
            .batcher
            .get_or_try_init(|| async move {
                HeartbeatBatcher::spawn_thread("oneprotect-heartbeat-writer", move |commits: Vec<HeartbeatCommit>| {
                    let mut guard = conn.lock().map_err(|_| StoreError::Backend("connection mutex poisoned".into()))?;
                    let outcomes = apply_heartbeat_batch(&mut guard, &commits);
                    if let Some(c) = &checkpointer {
                        c.note_commit();
                    }
                    outcomes
                })
                .map_err(|e| StoreError::Unavailable(format!("could not start the heartbeat writer: {e}")))
            })
            .await?;
        batcher.submit(c).await
    }

    async fn commit_heartbeat_unbatched(&self, c: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        self.write(move |tx| apply_heartbeat(tx, &c)).await
    }

    async fn commit_rotation(&self, c: &RotationCommit) -> StoreResult<RotationOutcome> {
        let c = c.clone();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let Some(identity) = select_identity(&tx, &c.tenant_id, c.agent_id)? else { return Ok(RotationOutcome::NotAllowed(None)) };
            if !matches!(identity.status, AgentStatus::Enrolled | AgentStatus::Active) {
                return Ok(RotationOutcome::NotAllowed(Some(identity.status)));
            }
            if identity.certificate_id != c.presented_certificate_id {
                return Ok(RotationOutcome::Superseded);
            }
            if !insert_nonce(&tx, &c.tenant_id, &c.nonce_hash, c.now).map_err(backend)? {
                return Ok(RotationOutcome::NonceReplayed);
            }
            tx.prepare_cached("UPDATE agent_device_certificates SET status = 'superseded' WHERE tenant_id = ?1 AND certificate_id = ?2")
                .and_then(|mut s| s.execute(params![c.tenant_id, identity.certificate_id.to_string()]))
                .map_err(backend)?;
            insert_certificate(&tx, &c.certificate).map_err(backend)?;
            tx.prepare_cached(
                "UPDATE agent_identities SET certificate_id = ?3, previous_certificate_id = ?4, rotated_at = ?5 WHERE tenant_id = ?1 AND agent_id = ?2",
            )
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
            insert_audit(&tx, &c.audit).map_err(backend)?;
            insert_event(&tx, &c.event).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(RotationOutcome::Rotated)
        })
        .await
    }

    async fn get_certificate(&self, tenant_id: &str, certificate_id: Uuid) -> StoreResult<Option<CertificateRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.with(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT certificate_id, tenant_id, agent_id, public_key_algorithm, public_key_sha256, subject, serial_number, not_before, not_after, status \
                     FROM agent_device_certificates WHERE tenant_id = ?1 AND certificate_id = ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![tenant_id, certificate_id.to_string()], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?))
                    })
                    .optional()
                })
                .map_err(backend)?;
            row.map(|(id, tenant, agent, alg, sha, subject, serial, nb, na, status)| {
                Ok(CertificateRecord {
                    certificate_id: uuid_of(&id)?,
                    tenant_id: tenant,
                    agent_id: uuid_of(&agent)?,
                    public_key_algorithm: alg,
                    public_key_sha256: sha,
                    subject,
                    serial_number: serial,
                    not_before: time(nb)?,
                    not_after: time(na)?,
                    status,
                })
            })
            .transpose()
        })
        .await
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

    async fn list_audit(&self, tenant_id: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<AuditRecord>> {
        let tenant_id = tenant_id.to_owned();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, audit_id, tenant_id, occurred_at, actor_type, actor_id, action, target_type, target_id, outcome, reason_code, request_id, details \
                     FROM audit_events WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![tenant_id, after.unwrap_or(0), limit + 1], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                        r.get::<_, Option<String>>(8)?,
                        r.get::<_, String>(9)?,
                        r.get::<_, Option<String>>(10)?,
                        r.get::<_, String>(11)?,
                        r.get::<_, String>(12)?,
                    ))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for r in rows {
                let (seq, id, tenant, at, actor_type, actor_id, action, target_type, target_id, outcome, reason_code, request_id, details) = r.map_err(backend)?;
                out.push((
                    seq,
                    AuditRecord {
                        audit_id: uuid_of(&id)?,
                        tenant_id: tenant,
                        occurred_at: time(at)?,
                        actor_type,
                        actor_id,
                        action,
                        target_type,
                        target_id,
                        outcome,
                        reason_code,
                        request_id,
                        details: serde_json::from_str(&details).map_err(|_| StoreError::Corrupt("audit details".into()))?,
                    },
                ));
            }
            Ok(page(out, limit))
        })
        .await
    }

    async fn list_events(&self, tenant_id: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<OutboxEvent>> {
        let tenant_id = tenant_id.to_owned();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT seq, event_id, tenant_id, event_type, occurred_at, payload FROM event_outbox WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![tenant_id, after.unwrap_or(0), limit + 1], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, i64>(4)?, r.get::<_, String>(5)?))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for r in rows {
                let (seq, event_id, tenant, event_type, at, payload) = r.map_err(backend)?;
                out.push((seq, OutboxEvent { event_id, tenant_id: tenant, event_type, occurred_at: time(at)?, payload }));
            }
            Ok(page(out, limit))
        })
        .await
    }

    async fn dump_all_rows(&self) -> StoreResult<Vec<String>> {
        self.with(|conn| {
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
                            rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
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
