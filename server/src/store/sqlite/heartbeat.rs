//! The heartbeat write: the rules judged on the identity row inside the
//! write transaction (the writer batches it with other writes).

use rusqlite::{Connection, params};

use super::rows::{backend, insert_audit, insert_event, micros, select_identity_state};
use crate::model::*;
use crate::store::sql;
use crate::store::{StoreError, StoreResult};

/// One heartbeat inside the writer's open transaction (or savepoint). The
/// rules are judged here on the identity row as this transaction sees it,
/// so a revocation or rotation queued before it, in this batch or an
/// earlier one, is seen.
pub(super) fn apply_heartbeat(tx: &Connection, c: &HeartbeatCommit) -> StoreResult<HeartbeatOutcome> {
    let stored = select_identity_state(tx, &c.tenant_id, c.agent_id)?;
    let effects = match judge_heartbeat(stored.as_ref().map(|(_, state)| state), c) {
        Ok(effects) => effects,
        Err(outcome) => return Ok(outcome),
    };
    let now = micros(c.now);
    // By the row id just read (no second descent of the agent_id index);
    // an admitted identity is exactly one row.
    let updated = tx
        .prepare_cached(
            "UPDATE agent_identities SET status = 'active', last_seen_at = ?3, last_sequence = ?4, hostname = ?5, agent_version = ?6, os_family = COALESCE(?7, os_family) \
             WHERE seq = ?2 AND tenant_id = ?1",
        )
        .and_then(|mut s| s.execute(params![c.tenant_id, stored.map(|(row, _)| row), now, c.sequence, c.hostname, c.agent_version, c.os_family]))
        .map_err(backend)?;
    if updated != 1 {
        return Err(StoreError::Backend(format!("an admitted heartbeat updated {updated} identity rows")));
    }
    if let Some(audit) = effects.activation_audit {
        insert_audit(tx, audit).map_err(backend)?;
    }
    // The identity's first heartbeat creates its asset row and announces
    // it; every other heartbeat refreshes the row only if its facts changed
    // or its last_seen_at is older than ASSET_LAST_SEEN_RESOLUTION.
    let asset_id = effects.asset_id.to_string();
    let created = match effects.discovered_event.filter(|_| effects.first_ever) {
        Some(discovered) => {
            let inserted = tx
                .prepare_cached(sql::INSERT_ASSET.sqlite)
                .and_then(|mut s| {
                    s.execute(params![
                        asset_id,
                        c.tenant_id,
                        c.agent_id.to_string(),
                        c.hostname,
                        c.os_family,
                        c.os_version,
                        now
                    ])
                })
                .map_err(backend)?
                == 1;
            if inserted {
                insert_event(tx, discovered).map_err(backend)?;
            }
            inserted
        }
        None => false,
    };
    if !created {
        tx.prepare_cached(
            "UPDATE assets SET hostname = ?3, os_family = COALESCE(?4, os_family), os_version = COALESCE(?5, os_version), last_seen_at = ?6 \
             WHERE tenant_id = ?1 AND asset_id = ?2 \
             AND (hostname IS NOT ?3 OR os_family IS NOT COALESCE(?4, os_family) OR os_version IS NOT COALESCE(?5, os_version) OR last_seen_at <= ?7)",
        )
        .and_then(|mut s| s.execute(params![c.tenant_id, asset_id, c.hostname, c.os_family, c.os_version, now, micros(c.now - ASSET_LAST_SEEN_RESOLUTION)]))
        .map_err(backend)?;
    }
    insert_event(tx, &c.telemetry_event).map_err(backend)?;
    Ok(HeartbeatOutcome::Accepted)
}
