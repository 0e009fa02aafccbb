//! Storage that does not grow with every heartbeat: what each table keeps,
//! and the pruner that deletes the rest in bounded batches.
//!
//! - **Outbox events** older than the outbox window (default 7 days) are
//!   deleted once published; with the relay off, once older than the
//!   window (the events API pages what is left). An event the relay has
//!   not published is never deleted.
//! - **Audit records** older than the audit window (default 365 days).
//! - **Used nonces** once no token they could have been used with can
//!   still be valid: the longest enrollment token lifetime plus a day.
//! - **Enrollment tokens** a window (default 30 days) after they stopped
//!   being usable: expired, revoked, or exhausted at their last use.
//! - **Failed-exchange counters** (PostgreSQL) once their window ended.
//!
//! Each batch deletes at most [`BATCH`] rows per table in one short
//! transaction, oldest first, and the pruner yields between batches, so a
//! backlog never holds locks that heartbeats wait on.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};

use crate::clock::Clock;
use crate::store::{Pruned, RetentionCutoffs, Store, StoreResult};

/// Rows deleted per table per batch.
pub const BATCH: u32 = 2_000;

/// How long each kind of record is kept (`ONEPROTECT_*_RETENTION_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub outbox: Duration,
    pub audit: Duration,
    pub tokens: Duration,
    /// The longest enrollment token lifetime the policy allows.
    pub max_token_ttl: Duration,
    /// The failed-exchange window.
    pub failure_window: Duration,
    /// Whether events must have been published before they may go (the
    /// relay is on).
    pub relay: bool,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            outbox: Duration::days(7),
            audit: Duration::days(365),
            tokens: Duration::days(30),
            max_token_ttl: Duration::days(30),
            failure_window: Duration::minutes(1),
            relay: false,
        }
    }
}

/// The rule: what is old enough to delete at `now`.
pub fn cutoffs(retention: &Retention, now: DateTime<Utc>) -> RetentionCutoffs {
    RetentionCutoffs {
        events_before: now - retention.outbox,
        events_published_only: retention.relay,
        audit_before: now - retention.audit,
        nonces_before: now - retention.max_token_ttl - Duration::days(1),
        tokens_before: now - retention.tokens,
        failure_windows_before: now - retention.failure_window,
    }
}

/// Batches until every table is within its window; what was deleted.
pub async fn prune(store: &dyn Store, cutoffs: &RetentionCutoffs) -> StoreResult<Pruned> {
    let mut total = Pruned::default();
    loop {
        let batch = store.prune(cutoffs, BATCH).await?;
        total.add(&batch);
        if batch.largest() < u64::from(BATCH) {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Prunes every `interval` until `stop` turns true.
pub async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Retention,
    interval: StdDuration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match prune(store.as_ref(), &cutoffs(&retention, clock.now())).await {
            Ok(p) if p.largest() > 0 => tracing::info!(
                events = p.events,
                audit = p.audit,
                nonces = p.nonces,
                tokens = p.tokens,
                failure_windows = p.failure_windows,
                "pruned records past their retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning failed; retrying at the next interval"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_window_counts_back_from_now_and_nonces_outlive_every_token() {
        let now = DateTime::from_timestamp(1_790_000_000, 0).expect("fixture time");
        let r = Retention { relay: true, ..Retention::default() };
        let c = cutoffs(&r, now);
        assert_eq!(c.events_before, now - Duration::days(7));
        assert!(c.events_published_only);
        assert_eq!(c.audit_before, now - Duration::days(365));
        assert_eq!(c.tokens_before, now - Duration::days(30));
        assert_eq!(c.nonces_before, now - Duration::days(31), "a day past the longest token lifetime");
        assert_eq!(c.failure_windows_before, now - Duration::minutes(1));
        assert!(!cutoffs(&Retention::default(), now).events_published_only);
    }
}
