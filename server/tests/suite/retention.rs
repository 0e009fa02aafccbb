//! Storage that does not grow with every heartbeat: with a manual clock,
//! the outbox, the audit trail, used nonces and spent tokens return to a
//! bounded size once their windows pass, in bounded batches, on both stores.

use chrono::Duration;
use oneprotect_server::retention::{Retention, cutoffs, prune};
use reqwest::StatusCode;

use crate::harness::*;

/// Rows per table, from every stored row.
async fn rows(h: &Harness, table: &str) -> usize {
    let prefix = format!("{table}:");
    h.store.dump_all_rows().await.expect("dump").iter().filter(|r| r.starts_with(&prefix)).count()
}

/// `agents` agents of tenant A, each with `heartbeats` heartbeats.
async fn traffic(h: &Harness, agents: usize, heartbeats: u64) {
    for _ in 0..agents {
        let (agent, token, _) = h.enroll(TENANT_A).await;
        for seq in 1..=heartbeats {
            assert_eq!(h.heartbeat(&agent, &token, seq).await.0, StatusCode::OK);
        }
    }
}

async fn table_sizes(h: &Harness) -> [usize; 4] {
    [
        rows(h, "event_outbox").await,
        rows(h, "audit_events").await,
        rows(h, "agent_enrollment_nonces").await,
        rows(h, "agent_enrollment_tokens").await,
    ]
}

async fn each_table_returns_to_a_bounded_size_once_its_window_passes(backend: Backend) {
    let h = Harness::start(backend).await;
    let retention = Retention::default();
    let store = h.store.as_ref();
    // A tenant that already holds thousands of records.
    traffic(&h, 20, 60).await;
    let [events, audit, nonces, tokens] = table_sizes(&h).await;
    assert!(
        events >= 20 * 62 && audit >= 20 * 2 && nonces == 20 && tokens == 20,
        "{events} {audit} {nonces} {tokens}"
    );

    // Nothing is past its window yet: nothing goes.
    let nothing = prune(store, &cutoffs(&retention, h.clock_now())).await.expect("prune");
    assert_eq!(nothing.largest(), 0, "{nothing:?}");

    // One batch deletes at most its limit, oldest first.
    h.clock.advance(Duration::days(7) + Duration::seconds(1));
    let batch = store.prune(&cutoffs(&retention, h.clock_now()), 100).await.expect("batch");
    assert_eq!(batch.events, 100, "a batch is bounded: {batch:?}");
    assert_eq!(rows(&h, "event_outbox").await, events - 100);

    // Past the outbox window (relay off): every event goes, nothing else.
    let week = prune(store, &cutoffs(&retention, h.clock_now())).await.expect("prune");
    assert_eq!(week.events as usize, events - 100);
    assert_eq!((week.audit, week.nonces, week.tokens), (0, 0, 0), "{week:?}");
    if backend == Backend::Postgres {
        assert!(
            batch.failure_windows + week.failure_windows > 0,
            "ended failed-exchange windows go too: {batch:?}"
        );
    }
    assert_eq!(table_sizes(&h).await, [0, audit, nonces, tokens]);

    // A second round of traffic, a week after the first.
    traffic(&h, 2, 5).await;
    let second_round = h.clock_now();
    let audit_now = rows(&h, "audit_events").await;
    let at = |offset: Duration| {
        let target = t0() + offset;
        h.clock.advance(target - h.clock_now());
    };
    // The first round's tokens were used up at t0: kept 30 days to the second.
    at(Duration::days(30));
    let kept = prune(store, &cutoffs(&retention, h.clock_now())).await.expect("prune");
    assert_eq!((kept.tokens, kept.nonces), (0, 0), "at the window's end the tokens stay: {kept:?}");
    at(Duration::days(30) + Duration::seconds(1));
    let spent = prune(store, &cutoffs(&retention, h.clock_now())).await.expect("prune");
    assert_eq!((spent.tokens as usize, spent.nonces), (tokens, 0), "{spent:?}");
    // Nonces outlive the longest token lifetime (30 days) by a day.
    at(Duration::days(31));
    assert_eq!(prune(store, &cutoffs(&retention, h.clock_now())).await.expect("prune").nonces, 0);
    at(Duration::days(31) + Duration::seconds(1));
    let used = prune(store, &cutoffs(&retention, h.clock_now())).await.expect("prune");
    assert_eq!(used.nonces as usize, nonces, "{used:?}");
    // A month after the second round only its nonces and the audit trail remain.
    h.clock.advance(second_round + Duration::days(30) + Duration::seconds(1) - h.clock_now());
    prune(store, &cutoffs(&retention, h.clock_now())).await.expect("prune");
    assert_eq!(table_sizes(&h).await, [0, audit_now, 2, 0], "the audit trail keeps a year");
    assert!(audit_now > audit, "the second round was audited");

    // A year later the audit trail is empty too; twice in a row changes nothing.
    h.clock.advance(Duration::days(366));
    prune(store, &cutoffs(&retention, h.clock_now())).await.expect("prune");
    assert_eq!(table_sizes(&h).await, [0, 0, 0, 0]);
    let again = prune(store, &cutoffs(&retention, h.clock_now())).await.expect("prune");
    assert_eq!(again.largest(), 0);
}

async fn with_the_relay_on_only_published_events_leave_the_outbox(backend: Backend) {
    let h = Harness::start(backend).await;
    let retention = Retention { relay: true, ..Retention::default() };
    traffic(&h, 3, 10).await;
    let events = rows(&h, "event_outbox").await;
    // The relay published the oldest ten.
    let claim = h.store.claim_unpublished_events(10).await.expect("claim");
    claim.mark_published(10, h.clock_now()).await.expect("mark");
    h.clock.advance(Duration::days(8));
    let pruned = prune(h.store.as_ref(), &cutoffs(&retention, h.clock_now())).await.expect("prune");
    assert_eq!(pruned.events, 10, "unpublished events are never deleted");
    assert_eq!(rows(&h, "event_outbox").await, events - 10);
}

crate::both_backends!(
    each_table_returns_to_a_bounded_size_once_its_window_passes,
    with_the_relay_on_only_published_events_leave_the_outbox,
);
