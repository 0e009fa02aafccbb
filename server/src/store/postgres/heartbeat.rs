//! The heartbeat write: one heartbeat statement by statement (the naive
//! baseline and the retry path), and set-based batches per tenant.

use sqlx::postgres::PgPool;
use uuid::Uuid;

use super::rows::{Tx, backend, identity_state_columns, identity_state_of, insert_audit, insert_event};
use crate::model::*;
use crate::store::sql;
use crate::store::{StoreError, StoreResult};

/// One heartbeat in a transaction of its own, statement by statement: the
/// naive write the benchmark compares batches against, and the retry path
/// of a failed batch. The set-based batch write run with a batch of one
/// measured 1,404 heartbeats/s against 3,300/s for this one, so it would
/// make a weaker baseline and a slower retry.
pub(super) async fn apply_heartbeat_alone(
    pool: &PgPool,
    c: &HeartbeatCommit,
) -> StoreResult<HeartbeatOutcome> {
    let mut tx = pool.begin().await.map_err(backend)?;
    sqlx::query("SELECT set_config('oneprotect.tenant_id', $1, true)")
        .bind(&c.tenant_id)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let outcome = apply_heartbeat(&mut tx, c).await?;
    tx.commit().await.map_err(backend)?;
    Ok(outcome)
}

/// One heartbeat inside an open transaction whose tenant is set. The
/// identity row is locked and the rules judged on it here, so a committed
/// revocation or rotation is seen.
async fn apply_heartbeat(tx: &mut Tx, c: &HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
    let row = sqlx::query(concat!(
        "SELECT ",
        identity_state_columns!(),
        " FROM agent_identities WHERE tenant_id = $1 AND agent_id = $2 FOR UPDATE"
    ))
    .bind(&c.tenant_id)
    .bind(c.agent_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(backend)?;
    let stored = row.as_ref().map(identity_state_of).transpose()?.map(|(_, state)| state);
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
    // The identity's first heartbeat creates its asset row and announces
    // it; every other heartbeat refreshes the row only if its facts changed
    // or its last_seen_at is older than ASSET_LAST_SEEN_RESOLUTION.
    let created = match effects.discovered_event.filter(|_| effects.first_ever) {
        Some(discovered) => {
            let inserted = sqlx::query(sql::INSERT_ASSET.postgres)
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
                == 1;
            if inserted {
                insert_event(tx, discovered).await?;
            }
            inserted
        }
        None => false,
    };
    if !created {
        sqlx::query(
            "UPDATE assets SET hostname = $3, os_family = COALESCE($4, os_family), os_version = COALESCE($5, os_version), last_seen_at = $6 \
             WHERE tenant_id = $1 AND asset_id = $2 \
             AND (hostname IS DISTINCT FROM $3 OR os_family IS DISTINCT FROM COALESCE($4, os_family) OR os_version IS DISTINCT FROM COALESCE($5, os_version) \
               OR last_seen_at <= $7)",
        )
        .bind(&c.tenant_id)
        .bind(effects.asset_id)
        .bind(&c.hostname)
        .bind(&c.os_family)
        .bind(&c.os_version)
        .bind(c.now)
        .bind(c.now - ASSET_LAST_SEEN_RESOLUTION)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
    }
    insert_event(tx, &c.telemetry_event).await?;
    Ok(HeartbeatOutcome::Accepted)
}

/// Accepted heartbeats written per statement. Each statement has a fixed
/// cost in the database (executor start-up of its data-modifying CTEs,
/// ~0.4 ms measured), so larger is cheaper per heartbeat. Over TCP each
/// message to the server stays small (about 8 KiB): sqlx 0.9.0 does not
/// set TCP_NODELAY (transact-rs/sqlx#4335), so a message the kernel splits
/// waits ~40 ms for the server's delayed ACK (measured as p95 > 100 ms
/// with 32-heartbeat statements, gone at 8). A Unix socket has no such
/// delay.
pub(super) fn write_chunk(unix_socket: bool) -> usize {
    if unix_socket { 64 } else { 8 }
}

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
/// and events are written with one statement per chunk of `chunk`.
/// Any error rolls the whole batch back; the
/// caller then retries each heartbeat in a transaction of its own, so one
/// bad heartbeat cannot fail its neighbours.
pub(super) async fn apply_heartbeat_batch(
    pool: &PgPool,
    commits: &[HeartbeatCommit],
    chunk: usize,
) -> StoreResult<Vec<StoreResult<HeartbeatOutcome>>> {
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
        let rows = sqlx::query(concat!(
            "SELECT a.* FROM unnest($2::uuid[]) AS k(agent_id) \
             CROSS JOIN LATERAL (SELECT ",
            identity_state_columns!(),
            " FROM agent_identities WHERE tenant_id = $1 AND agent_id = k.agent_id OFFSET 0 FOR UPDATE) a"
        ))
        .bind(tenant)
        .bind(&agent_ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let mut identities = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let (agent_id, state) = identity_state_of(row)?;
            identities.insert(agent_id, state);
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
        for heartbeats in accepted.chunks(chunk.max(1)) {
            write_heartbeats(&mut tx, tenant, heartbeats).await?;
        }
    }
    tx.commit().await.map_err(backend)?;
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| StoreError::Backend("a heartbeat of the batch got no outcome".into())))
        .map(Ok)
        .collect()
}

/// Writes accepted heartbeats of one tenant (in queue order) with one
/// statement: identities, assets, activation audits and events.
async fn write_heartbeats(tx: &mut Tx, tenant: &str, accepted: &[Accepted<'_>]) -> StoreResult<()> {
    let mut by_agent: std::collections::BTreeMap<Uuid, AgentWrite<'_>> = std::collections::BTreeMap::new();
    for a in accepted {
        let c = a.commit;
        let write = by_agent.entry(c.agent_id).or_insert(AgentWrite {
            asset_id: a.effects.asset_id,
            last: c,
            os_family: None,
            os_version: None,
            first_ever: false,
        });
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
    let details: Vec<serde_json::Value> = activations
        .iter()
        .map(|a| serde_json::to_value(&a.details))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Backend(e.to_string()))?;
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
           FROM input i WHERE s.tenant_id = $1 AND s.asset_id = ANY($3) AND s.asset_id = i.asset_id \
             AND (s.hostname IS DISTINCT FROM i.hostname OR s.os_family IS DISTINCT FROM COALESCE(i.os_family, s.os_family) \
               OR s.os_version IS DISTINCT FROM COALESCE(i.os_version, s.os_version) OR s.last_seen_at <= i.seen_at - $29::interval)), \
         audits AS ( \
           INSERT INTO audit_events (audit_id, tenant_id, occurred_at, actor_type, actor_id, action, target_type, target_id, outcome, reason_code, request_id, details) \
           SELECT * FROM unnest($17::uuid[], $18::text[], $19::timestamptz[], $20::text[], $21::text[], $22::text[], $23::text[], $24::text[], $25::text[], \
             $26::text[], $27::text[], $28::jsonb[])) \
         INSERT INTO event_outbox (event_id, tenant_id, event_type, occurred_at, payload) \
         SELECT event_id, tenant_id, event_type, occurred_at, payload \
         FROM unnest($11::text[], $12::text[], $13::text[], $14::timestamptz[], $15::text[]::json[], $16::uuid[]) \
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
    .bind(ASSET_LAST_SEEN_RESOLUTION)
    .execute(&mut **tx)
    .await
    .map_err(backend)?;
    Ok(())
}
