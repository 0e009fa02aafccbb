//! The PostgreSQL store. Every method runs in one transaction that first
//! sets `oneprotect.tenant_id` with `set_config(…, true)`; row-level
//! security (ENABLE + FORCE) then confines every statement to that tenant.
//! Statements still carry the tenant predicate, so a policy mistake is not
//! the only line of defence.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::batch::{HeartbeatBatcher, ShardedBatcher};

/// Parallel heartbeat writers (each holds one pooled connection per batch).
/// 2, 4 and 8 measured within 7% of each other on two cores; 4 leaves a
/// larger database server room to commit batches in parallel.
const HEARTBEAT_SHARDS: usize = 4;
use super::{Store, StoreError, StoreResult, TABLES};
use crate::error::TokenFailure;
use crate::model::*;

pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
    (2, "heartbeat_fillfactor", include_str!("../../migrations/postgres/0002_heartbeat_fillfactor.sql")),
];

/// Serializes concurrent migrators.
const MIGRATION_LOCK: i64 = 0x0AE0_11E5;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    batcher: std::sync::Arc<tokio::sync::OnceCell<ShardedBatcher>>,
    /// A privileged connection used only to dump rows for inspection.
    inspection: Option<PgPool>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => StoreError::Unavailable(e.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

fn u32_of(v: i32, what: &str) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(what.into()))
}

fn token_of(r: &PgRow) -> StoreResult<(i64, EnrollmentTokenRecord)> {
    Ok((
        r.try_get("seq").map_err(backend)?,
        EnrollmentTokenRecord {
            id: r.try_get("id").map_err(backend)?,
            tenant_id: r.try_get("tenant_id").map_err(backend)?,
            token_hash: r.try_get("token_hash").map_err(backend)?,
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

fn identity_of(r: &PgRow) -> StoreResult<(i64, AgentIdentityRecord)> {
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
            fingerprint_hash: r.try_get("fingerprint_hash").map_err(backend)?,
            enrolled_at: r.try_get("enrolled_at").map_err(backend)?,
            last_seen_at: r.try_get("last_seen_at").map_err(backend)?,
            last_sequence: r.try_get("last_sequence").map_err(backend)?,
            revoked_at: r.try_get("revoked_at").map_err(backend)?,
        },
    ))
}

fn page<T>(mut rows: Vec<(i64, T)>, limit: u32) -> Page<T> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_after = if more { rows.last().map(|(seq, _)| *seq) } else { None };
    Page { items: rows.into_iter().map(|(_, t)| t).collect(), next_after }
}

type Tx = Transaction<'static, Postgres>;

async fn insert_audit(tx: &mut Tx, a: &AuditRecord) -> StoreResult<()> {
    let details = serde_json::to_value(&a.details).map_err(|e| StoreError::Backend(e.to_string()))?;
    sqlx::query(
        "INSERT INTO audit_events (audit_id, tenant_id, occurred_at, actor_type, actor_id, action, target_type, target_id, outcome, reason_code, request_id, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(a.audit_id)
    .bind(&a.tenant_id)
    .bind(a.occurred_at)
    .bind(&a.actor_type)
    .bind(&a.actor_id)
    .bind(&a.action)
    .bind(&a.target_type)
    .bind(&a.target_id)
    .bind(&a.outcome)
    .bind(&a.reason_code)
    .bind(&a.request_id)
    .bind(details)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

async fn insert_event(tx: &mut Tx, e: &OutboxEvent) -> StoreResult<()> {
    sqlx::query("INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at, payload) VALUES ($1, $2, $3, $4, $5::jsonb)")
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

async fn insert_certificate(tx: &mut Tx, c: &CertificateRecord) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO agent_device_certificates (certificate_id, tenant_id, agent_id, public_key_algorithm, public_key_sha256, subject, serial_number, not_before, not_after, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(c.certificate_id)
    .bind(&c.tenant_id)
    .bind(c.agent_id)
    .bind(&c.public_key_algorithm)
    .bind(&c.public_key_sha256)
    .bind(&c.subject)
    .bind(&c.serial_number)
    .bind(c.not_before)
    .bind(c.not_after)
    .bind(&c.status)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

async fn insert_nonce(tx: &mut Tx, tenant_id: &str, nonce_hash: &str, now: DateTime<Utc>) -> StoreResult<bool> {
    let r = sqlx::query("INSERT INTO agent_enrollment_nonces (tenant_id, nonce_hash, used_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(tenant_id)
        .bind(nonce_hash)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    Ok(r.rows_affected() == 1)
}

async fn select_identity(tx: &mut Tx, tenant_id: &str, agent_id: Uuid, lock: bool) -> StoreResult<Option<AgentIdentityRecord>> {
    let sql = if lock {
        "SELECT * FROM agent_identities WHERE tenant_id = $1 AND agent_id = $2 FOR UPDATE"
    } else {
        "SELECT * FROM agent_identities WHERE tenant_id = $1 AND agent_id = $2"
    };
    let row = sqlx::query(sql).bind(tenant_id).bind(agent_id).fetch_optional(&mut **tx).await.map_err(backend)?;
    row.map(|r| identity_of(&r).map(|(_, i)| i)).transpose()
}

/// One heartbeat in a transaction of its own, statement by statement: the
/// naive write the benchmark compares batches against, and the retry path
/// of a failed batch. The set-based batch write run with a batch of one
/// measured 1,404 heartbeats/s against 3,300/s for this one, so it would
/// make a weaker baseline and a slower retry.
async fn apply_heartbeat_alone(pool: &PgPool, c: &HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
    let mut tx = pool.begin().await.map_err(backend)?;
    sqlx::query("SELECT set_config('oneprotect.tenant_id', $1, true)").bind(&c.tenant_id).execute(&mut *tx).await.map_err(backend)?;
    let outcome = apply_heartbeat(&mut tx, c).await?;
    tx.commit().await.map_err(backend)?;
    Ok(outcome)
}

/// One heartbeat inside an open transaction whose tenant is set. The
/// identity row is locked and the rules judged on it here, so a committed
/// revocation or rotation is seen.
async fn apply_heartbeat(tx: &mut Tx, c: &HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
    let stored = select_identity(tx, &c.tenant_id, c.agent_id, true).await?;
    let effects = match judge_heartbeat(stored.as_ref(), c) {
        Ok(effects) => effects,
        Err(outcome) => return Ok(outcome),
    };
    sqlx::query(
            "UPDATE agent_identities SET status = 'active', last_seen_at = $3, last_sequence = $4, hostname = $5, agent_version = $6, os_family = COALESCE($7, os_family) \
             WHERE tenant_id = $1 AND agent_id = $2",
        )
        .bind(&c.tenant_id)
        .bind(c.agent_id)
        .bind(c.now)
        .bind(c.sequence)
        .bind(&c.hostname)
        .bind(&c.agent_version)
        .bind(&c.os_family)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    if let Some(audit) = effects.activation_audit {
        insert_audit(tx, audit).await?;
    }
    let created = match effects.discovered_event {
        Some(_) => {
            sqlx::query(
                "INSERT INTO assets (asset_id, tenant_id, agent_id, hostname, os_family, os_version, first_seen_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                 ON CONFLICT (asset_id) DO NOTHING",
            )
            .bind(effects.asset_id)
            .bind(&c.tenant_id)
            .bind(c.agent_id)
            .bind(&c.hostname)
            .bind(&c.os_family)
            .bind(&c.os_version)
            .bind(c.now)
            .execute(&mut **tx)
            .await
            .map_err(backend)?
            .rows_affected()
                == 1
        }
        None => false,
    };
    match effects.discovered_event {
        Some(discovered) if created => insert_event(tx, discovered).await?,
        _ => {
            sqlx::query(
                "UPDATE assets SET hostname = $3, os_family = COALESCE($4, os_family), os_version = COALESCE($5, os_version), last_seen_at = $6 WHERE tenant_id = $1 AND asset_id = $2",
            )
            .bind(&c.tenant_id)
            .bind(effects.asset_id)
            .bind(&c.hostname)
            .bind(&c.os_family)
            .bind(&c.os_version)
            .bind(c.now)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        }
    }
    insert_event(tx, &c.telemetry_event).await?;
    Ok(HeartbeatOutcome::Accepted)
}

/// Accepted heartbeats written per statement. Keeps each message to
/// the server small (about 8 KiB): sqlx 0.9.0 does not set TCP_NODELAY
/// (transact-rs/sqlx#4335), so a message the kernel splits waits ~40 ms
/// for the server's delayed ACK; measured as p95 > 100 ms with 32-heartbeat
/// statements, gone at 8.
const WRITE_CHUNK: usize = 8;

/// An accepted heartbeat of a batch and what it changes beyond itself.
struct Accepted<'a> {
    commit: &'a HeartbeatCommit,
    effects: HeartbeatEffects<'a>,
}

/// One agent's accepted heartbeats within a chunk, folded in order into
/// the values its identity and asset rows end up with.
struct AgentWrite<'a> {
    asset_id: Uuid,
    last: &'a HeartbeatCommit,
    os_family: Option<&'a str>,
    os_version: Option<&'a str>,
    first_ever: bool,
}

/// A batch of heartbeats in one transaction with a few statements per
/// tenant instead of several per heartbeat: per tenant, the identity rows
/// are locked and read at once, the rules (`model::admit`) and duplicate
/// checks run here in queue order, then identities, assets, audit records
/// and events are written with one statement per chunk of `WRITE_CHUNK`.
/// Any error rolls the whole batch back; the
/// caller then retries each heartbeat in a transaction of its own, so one
/// bad heartbeat cannot fail its neighbours.
async fn apply_heartbeat_batch(pool: &PgPool, commits: &[HeartbeatCommit]) -> StoreResult<Vec<StoreResult<HeartbeatOutcome>>> {
    let mut tenants: Vec<&str> = commits.iter().map(|c| c.tenant_id.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let mut outcomes: Vec<Option<HeartbeatOutcome>> = vec![None; commits.len()];
    let mut tx = pool.begin().await.map_err(backend)?;
    for tenant in tenants {
        // Batched statements take arrays of ids. Planning them for every
        // execution costs more than running them, and the planner's
        // generic guess for an array of unknown length may scan the whole
        // tenant; so this transaction uses one cached generic plan and
        // rules out sequential scans and hash/merge joins: the plan is
        // then index lookups for exactly the ids given, at any table size.
        sqlx::query("SELECT set_config('oneprotect.tenant_id', $1, true), set_config('plan_cache_mode', 'force_generic_plan', true), set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)")
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let members: Vec<usize> = (0..commits.len()).filter(|&i| commits[i].tenant_id == tenant).collect();
        let mut agent_ids: Vec<Uuid> = members.iter().map(|&i| commits[i].agent_id).collect();
        agent_ids.sort_unstable();
        agent_ids.dedup();
        // One index probe per agent, in id order (so concurrent lockers
        // queue instead of deadlocking). The OFFSET 0 fence keeps the
        // planner from folding the probes into one scan of the tenant's
        // (tenant_id, seq) index filtered by agent, which a generic plan
        // picks whenever the table's statistics understate the tenant's
        // size (a new table, a fast-growing tenant): then a batch would
        // cost as much as the tenant is large.
        let rows = sqlx::query(
            "SELECT a.* FROM unnest($2::uuid[]) AS k(agent_id) \
             CROSS JOIN LATERAL (SELECT * FROM agent_identities WHERE tenant_id = $1 AND agent_id = k.agent_id OFFSET 0 FOR UPDATE) a",
        )
        .bind(tenant)
        .bind(&agent_ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let mut identities = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let (_, identity) = identity_of(row)?;
            identities.insert(identity.agent_id, identity);
        }
        let mut accepted: Vec<Accepted<'_>> = Vec::new();
        for &i in &members {
            let c = &commits[i];
            // Judged against the identity as the batch's earlier heartbeats
            // of the same agent leave it (updated below).
            let stored = identities.get_mut(&c.agent_id);
            match judge_heartbeat(stored.as_deref(), c) {
                Err(outcome) => outcomes[i] = Some(outcome),
                Ok(effects) => {
                    accepted.push(Accepted { commit: c, effects });
                    if let Some(identity) = stored {
                        identity.status = AgentStatus::Active;
                        identity.last_sequence = Some(c.sequence);
                        identity.last_seen_at = Some(c.now);
                    }
                    outcomes[i] = Some(HeartbeatOutcome::Accepted);
                }
            }
        }
        for chunk in accepted.chunks(WRITE_CHUNK) {
            write_heartbeats(&mut tx, tenant, chunk).await?;
        }
    }
    tx.commit().await.map_err(backend)?;
    outcomes.into_iter().map(|o| o.ok_or_else(|| StoreError::Backend("a heartbeat of the batch got no outcome".into()))).map(Ok).collect()
}

/// Writes accepted heartbeats of one tenant (in queue order) with one
/// statement: identities, assets, activation audits and events.
async fn write_heartbeats(tx: &mut Tx, tenant: &str, accepted: &[Accepted<'_>]) -> StoreResult<()> {
    let mut by_agent: std::collections::BTreeMap<Uuid, AgentWrite<'_>> = std::collections::BTreeMap::new();
    for a in accepted {
        let c = a.commit;
        let write =
            by_agent.entry(c.agent_id).or_insert(AgentWrite { asset_id: a.effects.asset_id, last: c, os_family: None, os_version: None, first_ever: false });
        write.last = c;
        write.os_family = c.os_family.as_deref().or(write.os_family);
        write.os_version = c.os_version.as_deref().or(write.os_version);
        write.first_ever |= a.effects.first_ever;
    }
    let writes: Vec<&AgentWrite<'_>> = by_agent.values().collect();
    // Events in queue order, each discovery just before the telemetry of
    // the heartbeat that may create the asset; a discovery is kept only if
    // this statement did create it (the `created` rows).
    let mut events: Vec<(&OutboxEvent, Option<Uuid>)> = Vec::with_capacity(accepted.len() * 2);
    for a in accepted {
        if let Some(discovered) = a.effects.discovered_event.filter(|_| a.effects.first_ever) {
            events.push((discovered, Some(a.effects.asset_id)));
        }
        events.push((&a.commit.telemetry_event, None));
    }
    let activations: Vec<&AuditRecord> = accepted.iter().filter_map(|a| a.effects.activation_audit).collect();
    let details: Vec<serde_json::Value> =
        activations.iter().map(|a| serde_json::to_value(&a.details)).collect::<Result<_, _>>().map_err(|e| StoreError::Backend(e.to_string()))?;
    // Identity rows are found as the batch's locked read found them (one
    // probe per agent behind a fence) and updated by row address. An
    // identity's first heartbeat inserts its asset (a conflict means the
    // row exists); the others update it.
    sqlx::query(
        "WITH input AS ( \
           SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::timestamptz[], $5::int8[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bool[]) \
             AS t(agent_id, asset_id, seen_at, seq, hostname, agent_version, os_family, os_version, first_ever)), \
         identities AS ( \
           UPDATE agent_identities a SET status = 'active', last_seen_at = i.seen_at, last_sequence = i.seq, hostname = i.hostname, \
             agent_version = i.agent_version, os_family = COALESCE(i.os_family, a.os_family) \
           FROM (SELECT input.*, t.tid FROM input CROSS JOIN LATERAL \
             (SELECT ctid AS tid FROM agent_identities WHERE tenant_id = $1 AND agent_id = input.agent_id OFFSET 0) t) i \
           WHERE a.ctid = i.tid), \
         created AS ( \
           INSERT INTO assets (asset_id, tenant_id, agent_id, hostname, os_family, os_version, first_seen_at, last_seen_at) \
           SELECT asset_id, $1, agent_id, hostname, os_family, os_version, seen_at, seen_at FROM input WHERE first_ever \
           ON CONFLICT (asset_id) DO NOTHING RETURNING asset_id), \
         updated AS ( \
           UPDATE assets s SET hostname = i.hostname, os_family = COALESCE(i.os_family, s.os_family), os_version = COALESCE(i.os_version, s.os_version), \
             last_seen_at = i.seen_at \
           FROM input i WHERE s.tenant_id = $1 AND s.asset_id = ANY($3) AND s.asset_id = i.asset_id), \
         audits AS ( \
           INSERT INTO audit_events (audit_id, tenant_id, occurred_at, actor_type, actor_id, action, target_type, target_id, outcome, reason_code, request_id, details) \
           SELECT * FROM unnest($17::uuid[], $18::text[], $19::timestamptz[], $20::text[], $21::text[], $22::text[], $23::text[], $24::text[], $25::text[], \
             $26::text[], $27::text[], $28::jsonb[])) \
         INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at, payload) \
         SELECT event_id, tenant_id, event_type, occurred_at, payload \
         FROM unnest($11::text[], $12::text[], $13::text[], $14::timestamptz[], $15::text[]::jsonb[], $16::uuid[]) \
           WITH ORDINALITY AS e(event_id, tenant_id, event_type, occurred_at, payload, announces, n) \
         WHERE e.announces IS NULL OR e.announces IN (SELECT asset_id FROM created) \
         ORDER BY n",
    )
    .bind(tenant)
    .bind(writes.iter().map(|w| w.last.agent_id).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.asset_id).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.last.now).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.last.sequence).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.last.hostname.as_str()).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.last.agent_version.as_str()).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.os_family).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.os_version).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.first_ever).collect::<Vec<_>>())
    .bind(events.iter().map(|(e, _)| e.event_id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|(e, _)| e.tenant_id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|(e, _)| e.event_type.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|(e, _)| e.occurred_at).collect::<Vec<_>>())
    .bind(events.iter().map(|(e, _)| e.payload.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|(_, announces)| *announces).collect::<Vec<_>>())
    .bind(activations.iter().map(|a| a.audit_id).collect::<Vec<_>>())
    .bind(activations.iter().map(|a| a.tenant_id.as_str()).collect::<Vec<_>>())
    .bind(activations.iter().map(|a| a.occurred_at).collect::<Vec<_>>())
    .bind(activations.iter().map(|a| a.actor_type.as_str()).collect::<Vec<_>>())
    .bind(activations.iter().map(|a| a.actor_id.as_str()).collect::<Vec<_>>())
    .bind(activations.iter().map(|a| a.action.as_str()).collect::<Vec<_>>())
    .bind(activations.iter().map(|a| a.target_type.as_str()).collect::<Vec<_>>())
    .bind(activations.iter().map(|a| a.target_id.as_deref()).collect::<Vec<_>>())
    .bind(activations.iter().map(|a| a.outcome.as_str()).collect::<Vec<_>>())
    .bind(activations.iter().map(|a| a.reason_code.as_deref()).collect::<Vec<_>>())
    .bind(activations.iter().map(|a| a.request_id.as_str()).collect::<Vec<_>>())
    .bind(details)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}

impl PgStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        // A broken connection surfaces as an error on its first statement
        // (the request fails closed and the agent retries) instead of
        // costing every transaction a ping.
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(backend)?;
        Ok(Self { pool, batcher: std::sync::Arc::default(), inspection: None })
    }

    /// Adds a privileged connection used only by `dump_all_rows`.
    pub async fn with_inspection(mut self, url: &str) -> StoreResult<Self> {
        self.inspection = Some(PgPoolOptions::new().max_connections(1).connect(url).await.map_err(backend)?);
        Ok(self)
    }

    /// Refuses to run as a role that row-level security does not bind.
    pub async fn ensure_unprivileged(&self) -> StoreResult<()> {
        let row = sqlx::query("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user").fetch_one(&self.pool).await.map_err(backend)?;
        let (superuser, bypass): (bool, bool) = (row.try_get(0).map_err(backend)?, row.try_get(1).map_err(backend)?);
        let owned: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tableowner = current_user AND tablename = ANY($1)")
                .bind(TABLES.iter().map(|t| t.to_string()).collect::<Vec<_>>())
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        if superuser || bypass || owned > 0 {
            return Err(StoreError::Unavailable(
                "the database role is a superuser, has BYPASSRLS or owns the tables; connect as the application role created by `oneprotect-server migrate --app-role`".into(),
            ));
        }
        Ok(())
    }

    /// One page of a tenant table in `seq` order (one row more than asked,
    /// so `page` can tell whether another page follows).
    async fn page_rows(&self, table: &'static str, tenant_id: &str, after: Option<i64>, limit: u32) -> StoreResult<Vec<PgRow>> {
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
        sqlx::query("SELECT set_config('oneprotect.tenant_id', $1, true)").bind(tenant_id).execute(&mut *tx).await.map_err(backend)?;
        Ok(tx)
    }
}

/// Applies pending migrations as the owning role and, when `app_role` is
/// given, grants it exactly what the application needs.
pub async fn migrate(owner_url: &str, app_role: Option<&str>) -> StoreResult<usize> {
    let pool = PgPoolOptions::new().max_connections(1).connect(owner_url).await.map_err(backend)?;
    let mut applied = 0;
    let mut tx = pool.begin().await.map_err(backend)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(backend)?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    for (version, name, sql) in MIGRATIONS {
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1").bind(version).fetch_optional(&mut *tx).await.map_err(backend)?;
        if done.is_none() {
            sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(backend)?;
            sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)").bind(version).bind(name).execute(&mut *tx).await.map_err(backend)?;
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
             GRANT EXECUTE ON FUNCTION oneprotect_enrollment_token_tenant(UUID) TO {role};"
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

    async fn ready(&self) -> StoreResult<()> {
        let latest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations").fetch_one(&self.pool).await.map_err(backend)?;
        if latest == MIGRATIONS.last().map(|m| m.0) { Ok(()) } else { Err(StoreError::Unavailable("migrations pending".into())) }
    }

    async fn insert_enrollment_token(&self, t: &EnrollmentTokenRecord, audit: &AuditRecord, event: &OutboxEvent) -> StoreResult<()> {
        let mut tx = self.begin(&t.tenant_id).await?;
        sqlx::query(
            "INSERT INTO agent_enrollment_tokens (id, tenant_id, token_hash, label, site_id, collector_id, max_uses, use_count, created_at, expires_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10)",
        )
        .bind(t.id)
        .bind(&t.tenant_id)
        .bind(&t.token_hash)
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

    async fn list_enrollment_tokens(&self, tenant_id: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<EnrollmentTokenRecord>> {
        let rows = self.page_rows("agent_enrollment_tokens", tenant_id, after, limit).await?;
        Ok(page(rows.iter().map(token_of).collect::<StoreResult<_>>()?, limit))
    }

    async fn revoke_enrollment_token(
        &self,
        tenant_id: &str,
        id: Uuid,
        audit: &AuditRecord,
        event: &OutboxEvent,
    ) -> StoreResult<RevokeOutcome<EnrollmentTokenRecord>> {
        let mut tx = self.begin(tenant_id).await?;
        let changed = sqlx::query("UPDATE agent_enrollment_tokens SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL")
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
        let tenant: Option<String> = sqlx::query_scalar("SELECT oneprotect_enrollment_token_tenant($1)").bind(id).fetch_one(&mut *tx).await.map_err(backend)?;
        let Some(tenant) = tenant else { return Ok(None) };
        sqlx::query("SELECT set_config('oneprotect.tenant_id', $1, true)").bind(&tenant).execute(&mut *tx).await.map_err(backend)?;
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
            sqlx::query(
                "INSERT INTO agent_identities (agent_id, tenant_id, collector_id, asset_id, site_id, status, hostname, agent_version, os_family, enrollment_token_id, certificate_id, fingerprint_hash, enrolled_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
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
            .bind(&i.fingerprint_hash)
            .bind(i.enrolled_at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            insert_certificate(&mut tx, &c.certificate).await?;
            insert_audit(&mut tx, &c.audit).await?;
            insert_event(&mut tx, &c.event).await?;
        }
        let redeemed = sqlx::query(
            "UPDATE agent_enrollment_tokens SET use_count = use_count + 1, last_used_at = $3 \
             WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL AND expires_at > $3 AND use_count < max_uses",
        )
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

    async fn get_identity(&self, tenant_id: &str, agent_id: Uuid) -> StoreResult<Option<AgentIdentityRecord>> {
        let mut tx = self.begin(tenant_id).await?;
        let out = select_identity(&mut tx, tenant_id, agent_id, false).await?;
        tx.commit().await.map_err(backend)?;
        Ok(out)
    }

    async fn list_identities(&self, tenant_id: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<AgentIdentityRecord>> {
        let rows = self.page_rows("agent_identities", tenant_id, after, limit).await?;
        Ok(page(rows.iter().map(identity_of).collect::<StoreResult<_>>()?, limit))
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
        let changed =
            sqlx::query("UPDATE agent_identities SET status = 'revoked', revoked_at = $3 WHERE tenant_id = $1 AND agent_id = $2 AND status <> 'revoked'")
                .bind(tenant_id)
                .bind(agent_id)
                .bind(audit.occurred_at)
                .execute(&mut *tx)
                .await
                .map_err(backend)?
                .rows_affected();
        let Some(record) = select_identity(&mut tx, tenant_id, agent_id, false).await? else { return Ok(RevokeOutcome::NotFound) };
        if changed != 1 {
            return Ok(RevokeOutcome::AlreadyRevoked(record));
        }
        sqlx::query("UPDATE agent_device_certificates SET status = 'revoked' WHERE tenant_id = $1 AND agent_id = $2 AND status = 'active'")
            .bind(tenant_id)
            .bind(agent_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("INSERT INTO agent_revocations (revocation_id, tenant_id, agent_id, revoked_by, reason, revoked_at) VALUES ($1, $2, $3, $4, $5, $6)")
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

    async fn mark_identity_stale(&self, tenant_id: &str, agent_id: Uuid, audit: &AuditRecord) -> StoreResult<()> {
        let mut tx = self.begin(tenant_id).await?;
        let changed = sqlx::query("UPDATE agent_identities SET status = 'stale' WHERE tenant_id = $1 AND agent_id = $2 AND status IN ('enrolled', 'active')")
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
        let pool = self.pool.clone();
        let batcher = self
            .batcher
            .get_or_init(|| async move {
                HeartbeatBatcher::spawn_sharded(HEARTBEAT_SHARDS, move |commits: Vec<HeartbeatCommit>| {
                    let pool = pool.clone();
                    async move {
                        match apply_heartbeat_batch(&pool, &commits).await {
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
        let Some(identity) = select_identity(&mut tx, &c.tenant_id, c.agent_id, true).await? else { return Ok(RotationOutcome::NotAllowed(None)) };
        if !matches!(identity.status, AgentStatus::Enrolled | AgentStatus::Active) {
            return Ok(RotationOutcome::NotAllowed(Some(identity.status)));
        }
        if identity.certificate_id != c.presented_certificate_id {
            return Ok(RotationOutcome::Superseded);
        }
        if !insert_nonce(&mut tx, &c.tenant_id, &c.nonce_hash, c.now).await? {
            return Ok(RotationOutcome::NonceReplayed);
        }
        sqlx::query("UPDATE agent_device_certificates SET status = 'superseded' WHERE tenant_id = $1 AND certificate_id = $2")
            .bind(&c.tenant_id)
            .bind(identity.certificate_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        insert_certificate(&mut tx, &c.certificate).await?;
        sqlx::query("UPDATE agent_identities SET certificate_id = $3, previous_certificate_id = $4, rotated_at = $5 WHERE tenant_id = $1 AND agent_id = $2")
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

    async fn get_certificate(&self, tenant_id: &str, certificate_id: Uuid) -> StoreResult<Option<CertificateRecord>> {
        let mut tx = self.begin(tenant_id).await?;
        let row = sqlx::query("SELECT * FROM agent_device_certificates WHERE tenant_id = $1 AND certificate_id = $2")
            .bind(tenant_id)
            .bind(certificate_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        row.map(|r| {
            Ok(CertificateRecord {
                certificate_id: r.try_get("certificate_id").map_err(backend)?,
                tenant_id: r.try_get("tenant_id").map_err(backend)?,
                agent_id: r.try_get("agent_id").map_err(backend)?,
                public_key_algorithm: r.try_get("public_key_algorithm").map_err(backend)?,
                public_key_sha256: r.try_get("public_key_sha256").map_err(backend)?,
                subject: r.try_get("subject").map_err(backend)?,
                serial_number: r.try_get("serial_number").map_err(backend)?,
                not_before: r.try_get("not_before").map_err(backend)?,
                not_after: r.try_get("not_after").map_err(backend)?,
                status: r.try_get("status").map_err(backend)?,
            })
        })
        .transpose()
    }

    async fn append_audit(&self, audit: &AuditRecord, event: Option<&OutboxEvent>) -> StoreResult<()> {
        let mut tx = self.begin(&audit.tenant_id).await?;
        insert_audit(&mut tx, audit).await?;
        if let Some(e) = event {
            insert_event(&mut tx, e).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn list_audit(&self, tenant_id: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<AuditRecord>> {
        let rows = self.page_rows("audit_events", tenant_id, after, limit).await?;
        let items = rows
            .iter()
            .map(|r| {
                let details: serde_json::Value = r.try_get("details").map_err(backend)?;
                Ok((
                    r.try_get::<i64, _>("seq").map_err(backend)?,
                    AuditRecord {
                        audit_id: r.try_get("audit_id").map_err(backend)?,
                        tenant_id: r.try_get("tenant_id").map_err(backend)?,
                        occurred_at: r.try_get("occurred_at").map_err(backend)?,
                        actor_type: r.try_get("actor_type").map_err(backend)?,
                        actor_id: r.try_get("actor_id").map_err(backend)?,
                        action: r.try_get("action").map_err(backend)?,
                        target_type: r.try_get("target_type").map_err(backend)?,
                        target_id: r.try_get("target_id").map_err(backend)?,
                        outcome: r.try_get("outcome").map_err(backend)?,
                        reason_code: r.try_get("reason_code").map_err(backend)?,
                        request_id: r.try_get("request_id").map_err(backend)?,
                        details: serde_json::from_value(details).map_err(|_| StoreError::Corrupt("audit details".into()))?,
                    },
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(page(items, limit))
    }

    async fn list_events(&self, tenant_id: &str, after: Option<i64>, limit: u32) -> StoreResult<Page<OutboxEvent>> {
        let rows = self.page_rows("event_outbox", tenant_id, after, limit).await?;
        let items = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("seq").map_err(backend)?,
                    OutboxEvent {
                        event_id: r.try_get("event_id").map_err(backend)?,
                        tenant_id: r.try_get("tenant_id").map_err(backend)?,
                        event_type: r.try_get("event_type").map_err(backend)?,
                        occurred_at: r.try_get("occurred_at").map_err(backend)?,
                        payload: r.try_get::<serde_json::Value, _>("payload").map_err(backend)?.to_string(),
                    },
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(page(items, limit))
    }

    async fn dump_all_rows(&self) -> StoreResult<Vec<String>> {
        let pool = self.inspection.as_ref().ok_or_else(|| StoreError::Backend("no inspection connection configured".into()))?;
        let mut out = Vec::new();
        for table in TABLES {
            let rows: Vec<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT row_to_json(t)::text FROM {table} t"))).fetch_all(pool).await.map_err(backend)?;
            out.extend(rows.into_iter().map(|r| format!("{table}: {r}")));
        }
        Ok(out)
    }
}
