//! The PostgreSQL store. Every method runs in one transaction that first
//! sets `oneprotect.tenant_id` with `set_config(…, true)`; row-level
//! security (ENABLE + FORCE) then confines every statement to that tenant.
//! Statements still carry the tenant predicate, so a policy mistake is not
//! the only line of defence.

mod heartbeat;
mod rows;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use uuid::Uuid;

use self::heartbeat::{apply_heartbeat_alone, apply_heartbeat_batch};
use self::rows::*;
use super::batch::{HeartbeatBatcher, ShardedBatcher, WriteQueueSnapshot, WriteQueueStats};
use super::{EventClaim, Pruned, RelayEvent, RetentionCutoffs, Store, StoreError, StoreResult, TABLES};
use crate::error::TokenFailure;
use crate::model::*;
use crate::store::sql;

/// Parallel heartbeat writers (each holds one pooled connection per batch).
/// A batch costs PostgreSQL about a millisecond of CPU besides its rows
/// (statement start-up, the commit), so fewer writers with larger batches
/// cost it less per heartbeat: under HTTP load 2 writers measured 137-165
/// us of database CPU per heartbeat against 236-301 us with 4, and 20-30%
/// more heartbeats per second; 1 writer cost less still but committed
/// fewer per second.
const HEARTBEAT_SHARDS: usize = 2;

pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../../migrations/postgres/0001_init.sql")),
    (2, "heartbeat_fillfactor", include_str!("../../../migrations/postgres/0002_heartbeat_fillfactor.sql")),
    (3, "outbox_payload_json", include_str!("../../../migrations/postgres/0003_outbox_payload_json.sql")),
    (4, "issued_certificates", include_str!("../../../migrations/postgres/0004_issued_certificates.sql")),
    (
        5,
        "shared_failure_counters",
        include_str!("../../../migrations/postgres/0005_shared_failure_counters.sql"),
    ),
    (6, "event_relay", include_str!("../../../migrations/postgres/0006_event_relay.sql")),
    (7, "retention", include_str!("../../../migrations/postgres/0007_retention.sql")),
];

/// Serializes concurrent migrators.
const MIGRATION_LOCK: i64 = 0x0AE0_11E5;
/// Held by the one replica whose relay is publishing (transaction-scoped).
const RELAY_LOCK: i64 = 0x0AE0_7E1A;

/// A PostgreSQL claim: the transaction holding the relay lock and the
/// claimed rows' locks until the events are marked.
struct PgEventClaim {
    tx: Option<Tx>,
    events: Vec<RelayEvent>,
}

#[async_trait]
impl EventClaim for PgEventClaim {
    fn events(&self) -> &[RelayEvent] {
        &self.events
    }

    async fn mark_published(self: Box<Self>, n: usize, at: DateTime<Utc>) -> StoreResult<()> {
        let Some(mut tx) = self.tx else { return Ok(()) };
        let seqs: Vec<i64> = self.events.iter().take(n).map(|e| e.seq).collect();
        if !seqs.is_empty() {
            sqlx::query("SELECT oneprotect_mark_events_published($1, $2)")
                .bind(&seqs)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Heartbeats per batched write statement (see `heartbeat::write_chunk`).
    write_chunk: usize,
    batcher: std::sync::Arc<tokio::sync::OnceCell<ShardedBatcher>>,
    /// The heartbeat queue of every shard.
    write_stats: std::sync::Arc<WriteQueueStats>,
    /// A privileged connection used only to dump rows for inspection.
    inspection: Option<PgPool>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

/// The driver's text without its generic prefix: "connection refused (os
/// error 111)" rather than "error communicating with database: …".
fn plain_reason(reason: &str) -> String {
    let reason = reason.strip_prefix("error communicating with database: ").unwrap_or(reason);
    let mut chars = reason.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

impl PgStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        // A broken connection surfaces as an error on its first statement
        // (the request fails closed and the agent retries) instead of
        // costing every transaction a ping.
        let options: PgConnectOptions = url.parse().map_err(backend)?;
        let write_chunk =
            heartbeat::write_chunk(options.get_socket().is_some() || options.get_host().starts_with('/'));
        let at = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        // One connection first: the pool retries until its timeout and then
        // reports only "pool timed out", while this names the reason
        // (refused, unknown host, authentication) with the address, never
        // the credentials.
        let probe =
            <sqlx::PgConnection as sqlx::Connection>::connect_with(&options).await.map_err(
                |e| match backend(e) {
                    StoreError::Unavailable(reason) | StoreError::Backend(reason) => StoreError::Unavailable(
                        format!("cannot reach PostgreSQL at {at}: {}", plain_reason(&reason)),
                    ),
                    other => other,
                },
            )?;
        let _ = sqlx::Connection::close(probe).await;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(backend)?;
        Ok(Self {
            pool,
            write_chunk,
            batcher: std::sync::Arc::default(),
            write_stats: std::sync::Arc::default(),
            inspection: None,
        })
    }

    /// Adds a privileged connection used only by `dump_all_rows`.
    pub async fn with_inspection(mut self, url: &str) -> StoreResult<Self> {
        self.inspection = Some(PgPoolOptions::new().max_connections(1).connect(url).await.map_err(backend)?);
        Ok(self)
    }

    /// Refuses to run as a role that row-level security does not bind.
    pub async fn ensure_unprivileged(&self) -> StoreResult<()> {
        let row = sqlx::query("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        let (superuser, bypass): (bool, bool) =
            (row.try_get(0).map_err(backend)?, row.try_get(1).map_err(backend)?);
        let owned: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tableowner = current_user AND tablename = ANY($1)")
                .bind(TABLES.iter().map(|t| t.to_string()).collect::<Vec<_>>())
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        if superuser || bypass || owned > 0 {
            return Err(StoreError::Misconfigured(
                "the database role is a superuser, has BYPASSRLS or owns the tables, so row-level security would not apply to it; connect as an \
                 unprivileged application role (create it with `CREATE ROLE <name> LOGIN NOSUPERUSER NOBYPASSRLS`, then grant it with \
                 `oneprotect-server migrate --app-role <name>`)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// One page of a tenant table in `seq` order (one row more than asked,
    /// so `page` can tell whether another page follows).
    async fn page_rows(
        &self,
        table: &'static str,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<PgRow>> {
        let mut tx = self.begin(tenant_id).await?;
        // `table` is one of this module's table names, never input.
        let sql = format!("SELECT * FROM {table} WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(after.unwrap_or(0))
            .bind(i64::from(limit) + 1)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(rows)
    }

    async fn begin(&self, tenant_id: &str) -> StoreResult<Tx> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("SELECT set_config('oneprotect.tenant_id', $1, true)")
            .bind(tenant_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        Ok(tx)
    }
}

/// Applies pending migrations as the owning role and, when `app_role` is
/// given, grants it exactly what the application needs.
pub async fn migrate(owner_url: &str, app_role: Option<&str>) -> StoreResult<usize> {
    let pool = PgPoolOptions::new().max_connections(1).connect(owner_url).await.map_err(backend)?;
    let mut applied = 0;
    let mut tx = pool.begin().await.map_err(backend)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    for (version, name, sql) in MIGRATIONS {
        let done: Option<i64> = sqlx::query_scalar(sql::MIGRATION_APPLIED.postgres)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if done.is_none() {
            sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(backend)?;
            sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
                .bind(version)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            applied += 1;
        }
    }
    if let Some(role) = app_role {
        if !role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || role.is_empty() {
            return Err(StoreError::Backend("the application role name must be [A-Za-z0-9_]+".into()));
        }
        let grants = format!(
            "GRANT USAGE ON SCHEMA public TO {role};\
             GRANT SELECT, INSERT, UPDATE ON agent_enrollment_tokens, agent_identities, agent_device_certificates, agent_revocations, \
                agent_enrollment_nonces, audit_events, event_outbox, assets TO {role};\
             GRANT SELECT ON schema_migrations TO {role};\
             GRANT SELECT, INSERT, UPDATE, DELETE ON exchange_failure_windows TO {role};\
             GRANT EXECUTE ON FUNCTION oneprotect_enrollment_token_tenant(UUID) TO {role};\
             GRANT EXECUTE ON FUNCTION oneprotect_withdrawn_certificates(TIMESTAMPTZ, TIMESTAMPTZ) TO {role};\
             GRANT EXECUTE ON FUNCTION oneprotect_unpublished_events(INTEGER) TO {role};\
             GRANT EXECUTE ON FUNCTION oneprotect_mark_events_published(BIGINT[], TIMESTAMPTZ) TO {role};\
             GRANT EXECUTE ON FUNCTION oneprotect_prune(INTEGER, TIMESTAMPTZ, BOOLEAN, TIMESTAMPTZ, TIMESTAMPTZ, TIMESTAMPTZ) TO {role};"
        );
        // The role name was checked to be an identifier above.
        sqlx::raw_sql(sqlx::AssertSqlSafe(grants)).execute(&mut *tx).await.map_err(backend)?;
    }
    tx.commit().await.map_err(backend)?;
    pool.close().await;
    Ok(applied)
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn write_queue(&self) -> WriteQueueSnapshot {
        self.write_stats.snapshot()
    }

    async fn ready(&self) -> StoreResult<()> {
        let latest: Option<i64> = sqlx::query_scalar(sql::LATEST_MIGRATION.postgres)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        if latest == MIGRATIONS.last().map(|m| m.0) {
            Ok(())
        } else {
            Err(StoreError::Unavailable("migrations pending".into()))
        }
    }

    async fn insert_enrollment_token(
        &self,
        t: &EnrollmentTokenRecord,
        audit: &AuditRecord,
        event: &OutboxEvent,
    ) -> StoreResult<()> {
        let mut tx = self.begin(&t.tenant_id).await?;
        sqlx::query(sql::INSERT_TOKEN.postgres)
            .bind(t.id)
            .bind(&t.tenant_id)
            .bind(t.token_hash.as_str())
            .bind(&t.label)
            .bind(&t.site_id)
            .bind(t.collector_id)
            .bind(i32::try_from(t.max_uses).map_err(|_| StoreError::Backend("max_uses".into()))?)
            .bind(t.created_at)
            .bind(t.expires_at)
            .bind(&t.created_by)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        insert_audit(&mut tx, audit).await?;
        insert_event(&mut tx, event).await?;
        tx.commit().await.map_err(backend)
    }

    async fn list_enrollment_tokens(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<EnrollmentTokenRecord>> {
        let rows = self.page_rows("agent_enrollment_tokens", tenant_id, after, limit).await?;
        Ok(Page::from_rows(rows.iter().map(token_of).collect::<StoreResult<_>>()?, limit))
    }

    async fn revoke_enrollment_token(
        &self,
        tenant_id: &str,
        id: Uuid,
        audit: &AuditRecord,
        event: &OutboxEvent,
    ) -> StoreResult<RevokeOutcome<EnrollmentTokenRecord>> {
        let mut tx = self.begin(tenant_id).await?;
        let changed = sqlx::query(sql::REVOKE_TOKEN.postgres)
            .bind(tenant_id)
            .bind(id)
            .bind(audit.occurred_at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        let row = sqlx::query("SELECT * FROM agent_enrollment_tokens WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let Some(row) = row else { return Ok(RevokeOutcome::NotFound) };
        let (_, record) = token_of(&row)?;
        if changed == 1 {
            insert_audit(&mut tx, audit).await?;
            insert_event(&mut tx, event).await?;
            tx.commit().await.map_err(backend)?;
            Ok(RevokeOutcome::Revoked(record))
        } else {
            Ok(RevokeOutcome::AlreadyRevoked(record))
        }
    }

    async fn find_enrollment_token(&self, id: Uuid) -> StoreResult<Option<EnrollmentTokenRecord>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let tenant: Option<String> = sqlx::query_scalar("SELECT oneprotect_enrollment_token_tenant($1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let Some(tenant) = tenant else { return Ok(None) };
        sqlx::query("SELECT set_config('oneprotect.tenant_id', $1, true)")
            .bind(&tenant)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let row = sqlx::query("SELECT * FROM agent_enrollment_tokens WHERE tenant_id = $1 AND id = $2")
            .bind(&tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        row.map(|r| token_of(&r).map(|(_, t)| t)).transpose()
    }

    /// The token's use is redeemed last: the conditional UPDATE locks the
    /// token row until the commit, and every exchange of an enrollment
    /// storm (one token, many agents) waits for that lock, so it is held
    /// for the commit alone rather than for every insert. A token refusal
    /// still wins over a replayed nonce, as if the use were redeemed first.
    async fn commit_enrollment(&self, c: &EnrollmentCommit) -> StoreResult<EnrollmentOutcome> {
        let tenant = &c.identity.tenant_id;
        let mut tx = self.begin(tenant).await?;
        let fresh_nonce = insert_nonce(&mut tx, tenant, &c.nonce_hash, c.now).await?;
        if fresh_nonce {
            let i = &c.identity;
            sqlx::query(sql::INSERT_IDENTITY.postgres)
                .bind(i.agent_id)
                .bind(&i.tenant_id)
                .bind(i.collector_id)
                .bind(i.asset_id)
                .bind(&i.site_id)
                .bind(i.status.as_str())
                .bind(&i.hostname)
                .bind(&i.agent_version)
                .bind(&i.os_family)
                .bind(i.enrollment_token_id)
                .bind(i.certificate_id)
                .bind(i.fingerprint_hash.as_ref().map(KeyedHash::as_str))
                .bind(i.enrolled_at)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            insert_certificate(&mut tx, &c.certificate).await?;
            insert_audit(&mut tx, &c.audit).await?;
            insert_event(&mut tx, &c.event).await?;
        }
        let redeemed = sqlx::query(sql::REDEEM_TOKEN_USE.postgres)
            .bind(tenant)
            .bind(c.token_id)
            .bind(c.now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        if redeemed != 1 {
            let row = sqlx::query("SELECT * FROM agent_enrollment_tokens WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(c.token_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            let failure = match row {
                Some(r) => token_of(&r)?.1.failure_at(c.now).unwrap_or(TokenFailure::Exhausted),
                None => TokenFailure::Unknown,
            };
            return Ok(EnrollmentOutcome::TokenRejected(failure));
        }
        if !fresh_nonce {
            return Ok(EnrollmentOutcome::NonceReplayed);
        }
        tx.commit().await.map_err(backend)?;
        Ok(EnrollmentOutcome::Enrolled)
    }

    async fn get_identity(
        &self,
        tenant_id: &str,
        agent_id: Uuid,
    ) -> StoreResult<Option<AgentIdentityRecord>> {
        let mut tx = self.begin(tenant_id).await?;
        let out = select_identity(&mut tx, tenant_id, agent_id, false).await?;
        tx.commit().await.map_err(backend)?;
        Ok(out)
    }

    async fn list_identities(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<AgentIdentityRecord>> {
        let rows = self.page_rows("agent_identities", tenant_id, after, limit).await?;
        Ok(Page::from_rows(rows.iter().map(identity_of).collect::<StoreResult<_>>()?, limit))
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
        let mut tx = self.begin(tenant_id).await?;
        let changed = sqlx::query(sql::REVOKE_IDENTITY.postgres)
            .bind(tenant_id)
            .bind(agent_id)
            .bind(audit.occurred_at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        let Some(record) = select_identity(&mut tx, tenant_id, agent_id, false).await? else {
            return Ok(RevokeOutcome::NotFound);
        };
        if changed != 1 {
            return Ok(RevokeOutcome::AlreadyRevoked(record));
        }
        sqlx::query(sql::REVOKE_ACTIVE_CERTIFICATES.postgres)
            .bind(tenant_id)
            .bind(agent_id)
            .bind(audit.occurred_at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(sql::INSERT_REVOCATION.postgres)
            .bind(Uuid::new_v4())
            .bind(tenant_id)
            .bind(agent_id)
            .bind(revoked_by)
            .bind(reason)
            .bind(audit.occurred_at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        insert_audit(&mut tx, audit).await?;
        insert_event(&mut tx, event).await?;
        tx.commit().await.map_err(backend)?;
        Ok(RevokeOutcome::Revoked(record))
    }

    async fn mark_identity_stale(
        &self,
        tenant_id: &str,
        agent_id: Uuid,
        audit: &AuditRecord,
    ) -> StoreResult<()> {
        let mut tx = self.begin(tenant_id).await?;
        let changed = sqlx::query(sql::MARK_IDENTITY_STALE.postgres)
            .bind(tenant_id)
            .bind(agent_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        if changed == 1 {
            insert_audit(&mut tx, audit).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn commit_heartbeat(&self, c: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        let (pool, chunk, stats) = (self.pool.clone(), self.write_chunk, self.write_stats.clone());
        let batcher = self
            .batcher
            .get_or_init(|| async move {
                HeartbeatBatcher::spawn_sharded(HEARTBEAT_SHARDS, &stats, move |commits: Vec<HeartbeatCommit>| {
                    let pool = pool.clone();
                    async move {
                        match apply_heartbeat_batch(&pool, &commits, chunk).await {
                            Ok(outcomes) => Ok(outcomes),
                            Err(e) => {
                                tracing::warn!(error = %e, heartbeats = commits.len(), "heartbeat batch rolled back; applying its heartbeats one by one");
                                let mut outcomes = Vec::with_capacity(commits.len());
                                for c in &commits {
                                    outcomes.push(apply_heartbeat_alone(&pool, c).await);
                                }
                                Ok(outcomes)
                            }
                        }
                    }
                })
            })
            .await;
        batcher.submit(c).await
    }

    async fn commit_heartbeat_unbatched(&self, c: HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
        apply_heartbeat_alone(&self.pool, &c).await
    }

    async fn commit_rotation(&self, c: &RotationCommit) -> StoreResult<RotationOutcome> {
        let mut tx = self.begin(&c.tenant_id).await?;
        let locked = select_identity(&mut tx, &c.tenant_id, c.agent_id, true).await?;
        let identity = match judge_rotation_write(locked.as_ref(), c.presented_certificate_id) {
            Ok(identity) => identity,
            Err(refused) => return Ok(refused),
        };
        if !insert_nonce(&mut tx, &c.tenant_id, &c.nonce_hash, c.now).await? {
            return Ok(RotationOutcome::NonceReplayed);
        }
        sqlx::query(sql::SUPERSEDE_CERTIFICATE.postgres)
            .bind(&c.tenant_id)
            .bind(identity.certificate_id)
            .bind(c.now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        insert_certificate(&mut tx, &c.certificate).await?;
        sqlx::query(sql::ROTATE_IDENTITY_CERTIFICATE.postgres)
            .bind(&c.tenant_id)
            .bind(c.agent_id)
            .bind(c.certificate.certificate_id)
            .bind(identity.certificate_id)
            .bind(c.now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        insert_audit(&mut tx, &c.audit).await?;
        insert_event(&mut tx, &c.event).await?;
        tx.commit().await.map_err(backend)?;
        Ok(RotationOutcome::Rotated)
    }

    async fn get_asset(&self, tenant_id: &str, asset_id: Uuid) -> StoreResult<Option<AssetRecord>> {
        let mut tx = self.begin(tenant_id).await?;
        let row = sqlx::query("SELECT * FROM assets WHERE tenant_id = $1 AND asset_id = $2")
            .bind(tenant_id)
            .bind(asset_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        row.as_ref().map(asset_of).transpose()
    }

    async fn get_certificate(
        &self,
        tenant_id: &str,
        certificate_id: Uuid,
    ) -> StoreResult<Option<CertificateRecord>> {
        let mut tx = self.begin(tenant_id).await?;
        let row = sqlx::query(
            "SELECT * FROM agent_device_certificates WHERE tenant_id = $1 AND certificate_id = $2",
        )
        .bind(tenant_id)
        .bind(certificate_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        row.as_ref().map(certificate_of).transpose()
    }

    async fn certificate_binding(
        &self,
        tenant_id: &str,
        certificate_sha256: &str,
    ) -> StoreResult<Option<CertificateBinding>> {
        let mut tx = self.begin(tenant_id).await?;
        let row = sqlx::query(sql::CERTIFICATE_BINDING.postgres)
            .bind(tenant_id)
            .bind(certificate_sha256)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        row.map(|r| {
            Ok(CertificateBinding {
                certificate_id: r.try_get(0).map_err(backend)?,
                agent_id: r.try_get(1).map_err(backend)?,
                collector_id: r.try_get(2).map_err(backend)?,
                asset_id: r.try_get(3).map_err(backend)?,
            })
        })
        .transpose()
    }

    async fn revoked_certificates(
        &self,
        now: DateTime<Utc>,
        superseded_before: DateTime<Utc>,
    ) -> StoreResult<Vec<crate::pki::RevokedSerial>> {
        // Across tenants: the owner's function returns serials and times only.
        let rows = sqlx::query("SELECT * FROM oneprotect_withdrawn_certificates($1, $2)")
            .bind(now)
            .bind(superseded_before)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status").map_err(backend)?;
                Ok(crate::pki::RevokedSerial {
                    serial_hex: r.try_get("serial_number").map_err(backend)?,
                    revoked_at: r.try_get("status_changed_at").map_err(backend)?,
                    superseded: status == CertificateStatus::Superseded.as_str(),
                })
            })
            .collect()
    }

    async fn stored_bytes(&self) -> StoreResult<u64> {
        let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    async fn prune(&self, c: &RetentionCutoffs, limit: u32) -> StoreResult<Pruned> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let row = sqlx::query("SELECT * FROM oneprotect_prune($1, $2, $3, $4, $5, $6)")
            .bind(i32::try_from(limit).unwrap_or(i32::MAX))
            .bind(c.events_before)
            .bind(c.events_published_only)
            .bind(c.audit_before)
            .bind(c.nonces_before)
            .bind(c.tokens_before)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let count = |name: &str| -> StoreResult<u64> {
            Ok(u64::try_from(row.try_get::<i64, _>(name).map_err(backend)?).unwrap_or(0))
        };
        let mut pruned = Pruned {
            events: count("events")?,
            audit: count("audit")?,
            nonces: count("nonces")?,
            tokens: count("tokens")?,
            failure_windows: 0,
        };
        // The platform's own table: no row-level security.
        pruned.failure_windows = sqlx::query(
            "DELETE FROM exchange_failure_windows WHERE key IN \
             (SELECT key FROM exchange_failure_windows WHERE window_start < $1 LIMIT $2)",
        )
        .bind(c.failure_windows_before)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        tx.commit().await.map_err(backend)?;
        Ok(pruned)
    }

    fn shares_failure_counters(&self) -> bool {
        true
    }

    async fn claim_unpublished_events(&self, limit: u32) -> StoreResult<Box<dyn EventClaim>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // One relay at a time across replicas, so events leave in commit
        // order; the others find the claim held and wait for their next turn.
        let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if !ours {
            tx.rollback().await.map_err(backend)?;
            return Ok(Box::new(PgEventClaim { tx: None, events: Vec::new() }));
        }
        let rows = sqlx::query("SELECT * FROM oneprotect_unpublished_events($1)")
            .bind(i32::try_from(limit).unwrap_or(i32::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        let events = rows
            .iter()
            .map(|r| {
                Ok(RelayEvent {
                    seq: r.try_get("seq").map_err(backend)?,
                    event: OutboxEvent {
                        event_id: r.try_get("event_id").map_err(backend)?,
                        tenant_id: r.try_get("tenant_id").map_err(backend)?,
                        event_type: r.try_get("event_type").map_err(backend)?,
                        occurred_at: r.try_get("occurred_at").map_err(backend)?,
                        payload: r.try_get("payload").map_err(backend)?,
                    },
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Box::new(PgEventClaim { tx: Some(tx), events }))
    }

    async fn take_failure_slots(
        &self,
        keys: &[String],
        limit: u32,
        window: chrono::Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<Vec<DateTime<Utc>>, u32>> {
        let mut sorted: Vec<&String> = keys.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Rows are created and then locked in key order, so concurrent
        // attempts on the same keys queue instead of deadlocking.
        sqlx::query(
            "INSERT INTO exchange_failure_windows (key, window_start, failures, in_flight) \
             SELECT k, $2, 0, 0 FROM unnest($1::text[]) AS k ORDER BY k ON CONFLICT (key) DO NOTHING",
        )
        .bind(&sorted)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let rows = sqlx::query(
            "SELECT key, window_start, failures, in_flight FROM exchange_failure_windows \
             WHERE key = ANY($1) ORDER BY key FOR UPDATE",
        )
        .bind(&sorted)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let mut locked = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let key: String = r.try_get("key").map_err(backend)?;
            let count = |column: &str| -> StoreResult<u32> {
                Ok(u32::try_from(r.try_get::<i32, _>(column).map_err(backend)?).unwrap_or(0))
            };
            locked.insert(
                key,
                crate::ratelimit::Window {
                    start: r.try_get("window_start").map_err(backend)?,
                    failures: count("failures")?,
                    in_flight: count("in_flight")?,
                },
            );
        }
        let current: Vec<_> = keys.iter().map(|k| locked.get(k).copied()).collect();
        let taken = match crate::ratelimit::take_slots(&current, limit, window, now) {
            Ok(taken) => taken,
            Err(wait) => {
                tx.rollback().await.map_err(backend)?;
                return Ok(Err(wait));
            }
        };
        let starts: Vec<DateTime<Utc>> = taken.iter().map(|w| w.start).collect();
        let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let failures: Vec<i32> = taken.iter().map(|w| int(w.failures)).collect();
        let in_flight: Vec<i32> = taken.iter().map(|w| int(w.in_flight)).collect();
        sqlx::query(
            "UPDATE exchange_failure_windows w SET window_start = t.start, failures = t.failures, in_flight = t.in_flight \
             FROM unnest($1::text[], $2::timestamptz[], $3::int[], $4::int[]) AS t(key, start, failures, in_flight) \
             WHERE w.key = t.key",
        )
        .bind(keys)
        .bind(&starts)
        .bind(&failures)
        .bind(&in_flight)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(Ok(starts))
    }

    async fn settle_failure_slots(&self, slots: &[(String, DateTime<Utc>)], failed: bool) -> StoreResult<()> {
        let keys: Vec<&str> = slots.iter().map(|(k, _)| k.as_str()).collect();
        let starts: Vec<DateTime<Utc>> = slots.iter().map(|(_, s)| *s).collect();
        // `ratelimit::settle_slot`: only a slot of the window it was taken in.
        sqlx::query(
            "UPDATE exchange_failure_windows w \
             SET in_flight = GREATEST(w.in_flight - 1, 0), failures = w.failures + CASE WHEN $3 THEN 1 ELSE 0 END \
             FROM unnest($1::text[], $2::timestamptz[]) AS t(key, start) \
             WHERE w.key = t.key AND w.window_start = t.start",
        )
        .bind(&keys)
        .bind(&starts)
        .bind(failed)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn append_audit(&self, audit: &AuditRecord, event: Option<&OutboxEvent>) -> StoreResult<()> {
        let mut tx = self.begin(&audit.tenant_id).await?;
        insert_audit(&mut tx, audit).await?;
        if let Some(e) = event {
            insert_event(&mut tx, e).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn list_audit(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<AuditRecord>> {
        let rows = self.page_rows("audit_events", tenant_id, after, limit).await?;
        let items = rows.iter().map(audit_of).collect::<StoreResult<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit))
    }

    async fn list_events(
        &self,
        tenant_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Page<OutboxEvent>> {
        let rows = self.page_rows("event_outbox", tenant_id, after, limit).await?;
        let items = rows.iter().map(event_of).collect::<StoreResult<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit))
    }

    async fn dump_all_rows(&self) -> StoreResult<Vec<String>> {
        let pool = self
            .inspection
            .as_ref()
            .ok_or_else(|| StoreError::Backend("no inspection connection configured".into()))?;
        let mut out = Vec::new();
        for table in TABLES {
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT row_to_json(t)::text FROM {table} t"
            )))
            .fetch_all(pool)
            .await
            .map_err(backend)?;
            out.extend(rows.into_iter().map(|r| format!("{table}: {r}")));
        }
        Ok(out)
    }
}
