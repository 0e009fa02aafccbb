//! Events and storage under the heartbeat load, in the same run as the
//! heartbeat rate they are compared with (`make bench`):
//!
//! - heartbeats per second with nothing else running, with the pruner
//!   deleting continuously, and with the relay publishing to NATS
//!   JetStream, in alternating slices (same-run ratios);
//! - the relay's publish rate beside the rate events are produced, and the
//!   age of the oldest unpublished event (lag) during the load, then the
//!   time it takes to drain what is left;
//! - the bytes the database occupies per agent after each round while the
//!   pruner keeps a short outbox window: bounded however many heartbeats
//!   accumulate.
//!
//! The broker is a `nats-server -js` the benchmark launches itself on a
//! free loopback port with its own store directory, and stops at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oneprotect_server::clock::{Clock, ManualClock};
use oneprotect_server::metrics::{Metrics, RELAY_LAG, RELAY_PUBLISHED};
use oneprotect_server::relay::{Relay, RelayConfig};
use oneprotect_server::retention::{self, Retention};
use oneprotect_server::store::Store;

use crate::bench::Workload;
pub use crate::nats::OwnNats;

/// The outbox window the pruner keeps during the storage measure.
pub const BENCH_OUTBOX_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, serde::Serialize)]
pub struct EventsRound {
    /// Heartbeats per second with nothing else running.
    pub plain: f64,
    /// Heartbeats per second while the pruner deletes continuously.
    pub pruning: f64,
    /// Rows the pruner deleted in that slice.
    pub pruned_rows: u64,
    /// Heartbeats per second while the relay publishes.
    pub relaying: f64,
    /// Events the relay published per second in that slice.
    pub published: f64,
    /// The oldest unpublished event's age at its worst in that slice.
    pub max_lag_seconds: f64,
    /// Database bytes per agent at the end of the round.
    pub bytes_per_agent: f64,
    /// Heartbeats accepted so far in the run.
    pub heartbeats_so_far: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EventsFigures {
    pub backend: String,
    /// Whether a VACUUM ran between rounds (PostgreSQL).
    pub vacuumed: bool,
    pub agents: usize,
    pub rounds: Vec<EventsRound>,
    /// Events left unpublished after the load, and the seconds to drain them.
    pub backlog: u64,
    pub drain_seconds: f64,
}

/// Runs the relay until `stop`, sampling its lag; returns the worst lag.
async fn relay_slice(relay: &Relay, metrics: &Metrics, stop: tokio::sync::watch::Receiver<bool>) -> f64 {
    let mut worst: f64 = 0.0;
    while !*stop.borrow() {
        match relay.round().await {
            Ok(r) if r.claimed == 0 => tokio::time::sleep(Duration::from_millis(5)).await,
            Ok(_) => {}
            Err(e) => {
                eprintln!("relay round failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        worst = worst.max(metrics.gauge(RELAY_LAG));
    }
    worst
}

/// The production retention with the benchmark's short outbox window.
fn bench_retention() -> Retention {
    Retention {
        outbox: chrono::Duration::from_std(BENCH_OUTBOX_WINDOW).unwrap_or(chrono::Duration::seconds(2)),
        ..Retention::default()
    }
}

/// Prunes everything older than [`BENCH_OUTBOX_WINDOW`] until `stop`.
async fn prune_slice(store: &dyn Store, clock: &dyn Clock, stop: tokio::sync::watch::Receiver<bool>) -> u64 {
    let retention = bench_retention();
    let mut deleted = 0;
    while !*stop.borrow() {
        match retention::prune(store, &retention::cutoffs(&retention, clock.now())).await {
            Ok(p) => deleted += p.events + p.audit,
            Err(e) => eprintln!("prune failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    deleted
}

/// What the events measures run against.
pub struct Under<'a> {
    pub backend: &'a str,
    pub workload: &'a Workload,
    pub store: Arc<dyn Store>,
    pub agents: usize,
    /// The platform's clock (made to follow the wall clock while measuring).
    pub clock: Arc<ManualClock>,
    /// PostgreSQL: a superuser URL of the platform's database, to do
    /// between rounds the work autovacuum does over minutes.
    pub vacuum: Option<String>,
}

/// The events and storage measures of one backend, `rounds` rounds of
/// three heartbeat slices each.
pub async fn measure(
    under: Under<'_>,
    nats_url: &str,
    slice: Duration,
    rounds: u32,
) -> anyhow::Result<EventsFigures> {
    // The platform's clock follows the wall clock during these measures, so
    // event times, the relay's lag and the pruner's windows are real.
    let (stop_ticking, mut ticking) = tokio::sync::watch::channel(false);
    let ticker = {
        let clock = under.clock.clone();
        tokio::spawn(async move {
            loop {
                clock.set(chrono::Utc::now().max(clock.now()));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(2)) => {}
                    _ = ticking.changed() => return,
                }
            }
        })
    };
    let figures = measure_ticking(&under, nats_url, slice, rounds).await;
    let _ = stop_ticking.send(true);
    let _ = ticker.await;
    figures
}

async fn measure_ticking(
    under: &Under<'_>,
    nats_url: &str,
    slice: Duration,
    rounds: u32,
) -> anyhow::Result<EventsFigures> {
    let Under { backend, workload, store, agents, clock, vacuum } = under;
    let (backend, workload, agents) = (*backend, *workload, *agents);
    let config = RelayConfig {
        stream: format!("ONEPROTECT_BENCH_{}", std::process::id()),
        ..RelayConfig::new(nats_url)
    };
    let client = oneprotect_server::relay::connect(&config).await.map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(Metrics::default());
    let relay = Relay::new(store.clone(), client, clock.clone(), metrics.clone());
    oneprotect_server::relay::ensure_stream(relay.jetstream(), &config).await.map_err(anyhow::Error::msg)?;
    // What earlier measures left in the outbox is published first, so the
    // slices measure the relay keeping up, not a backlog.
    drain(&relay).await?;
    let mut out = Vec::new();
    let mut heartbeats = 0u64;
    for round in 1..=rounds {
        let plain = workload.heartbeats(slice).await;

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let pruner = {
            let (store, clock) = (store.clone(), clock.clone());
            tokio::spawn(async move { prune_slice(store.as_ref(), clock.as_ref(), stopped).await })
        };
        let pruning = workload.heartbeats(slice).await;
        let _ = stop.send(true);
        let pruned_rows = pruner.await.unwrap_or(0);

        // The relay starts level with the outbox: its lag is what it lets
        // build up under the load, not what the slices before left.
        drain(&relay).await?;
        let before = metrics.counter(RELAY_PUBLISHED);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let (relaying, max_lag_seconds) = tokio::join!(
            async {
                let s = workload.heartbeats(slice).await;
                let _ = stop.send(true);
                s
            },
            relay_slice(&relay, &metrics, stopped)
        );
        let published = (metrics.counter(RELAY_PUBLISHED) - before) as f64 / started.elapsed().as_secs_f64();
        drain(&relay).await?;
        // The storage a steady state keeps: the short window pruned last.
        retention::prune(store.as_ref(), &retention::cutoffs(&bench_retention(), clock.now())).await?;
        if let Some(url) = vacuum {
            // Deleted and updated rows become reusable space only after a
            // VACUUM; autovacuum does it within minutes, longer than a round.
            use sqlx::{Connection, Executor};
            let mut conn = sqlx::PgConnection::connect(url).await?;
            conn.execute("VACUUM event_outbox, audit_events, agent_identities, assets").await?;
        }
        heartbeats += (plain.ok_count() + pruning.ok_count() + relaying.ok_count()) as u64;
        let bytes_per_agent = store.stored_bytes().await? as f64 / agents.max(1) as f64;
        let r = EventsRound {
            plain: plain.rate(),
            pruning: pruning.rate(),
            pruned_rows,
            relaying: relaying.rate(),
            published,
            max_lag_seconds,
            bytes_per_agent,
            heartbeats_so_far: heartbeats,
        };
        eprintln!(
            "[{backend}] events round {round}: {:.0} heartbeats/s alone, {:.0} while pruning ({} rows), {:.0} while relaying ({:.0} events/s published, lag ≤ {:.2} s); {:.0} bytes/agent after {} heartbeats",
            r.plain,
            r.pruning,
            r.pruned_rows,
            r.relaying,
            r.published,
            r.max_lag_seconds,
            r.bytes_per_agent,
            r.heartbeats_so_far
        );
        out.push(r);
    }
    // The backlog a burst leaves: heartbeats with no relay, then drained.
    workload.heartbeats(slice).await;
    let started = Instant::now();
    let backlog = drain(&relay).await?;
    let drain_seconds = started.elapsed().as_secs_f64();
    let _ = relay.jetstream().delete_stream(&config.stream).await;
    Ok(EventsFigures {
        backend: backend.to_owned(),
        vacuumed: vacuum.is_some(),
        agents,
        rounds: out,
        backlog,
        drain_seconds,
    })
}

/// Rounds until nothing waits; the events published.
async fn drain(relay: &Relay) -> anyhow::Result<u64> {
    let mut published = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        anyhow::ensure!(Instant::now() < deadline, "the relay did not drain the outbox within 120 s");
        let round = relay.round().await.map_err(anyhow::Error::msg)?;
        if round.claimed == 0 {
            return Ok(published);
        }
        published += round.published as u64;
    }
}

pub fn markdown(f: &EventsFigures) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "### Events and storage — {}, {} agents\n", f.backend, f.agents);
    let _ = writeln!(
        out,
        "| round | heartbeats/s alone | while pruning | while relaying | events published/s | max relay lag s | bytes/agent | heartbeats so far |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (i, r) in f.rounds.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {} |",
            i + 1,
            r.plain,
            r.pruning,
            r.relaying,
            r.published,
            r.max_lag_seconds,
            r.bytes_per_agent,
            r.heartbeats_so_far
        );
    }
    let ratio = |g: fn(&EventsRound) -> f64| {
        let (m, lo, hi) = crate::bench::spread(f.rounds.iter().map(g).collect());
        format!("**{m:.2}** (rounds {lo:.2}–{hi:.2})")
    };
    let _ =
        writeln!(out, "\n- heartbeats while pruning / alone: {}", ratio(|r| r.pruning / r.plain.max(1.0)));
    let _ =
        writeln!(out, "- heartbeats while relaying / alone: {}", ratio(|r| r.relaying / r.plain.max(1.0)));
    let _ = writeln!(
        out,
        "- events published / heartbeats accepted, same slice (≥ 1.0: the relay keeps up): {}",
        ratio(|r| r.published / r.relaying.max(1.0))
    );
    let first = f.rounds.first().map_or(0.0, |r| r.bytes_per_agent);
    let last = f.rounds.last().map_or(0.0, |r| r.bytes_per_agent);
    let _ = writeln!(
        out,
        "- bytes per agent with a {} s outbox window{}: {first:.0} after round 1, {last:.0} after round {} (heartbeats grew {:.1}×)",
        BENCH_OUTBOX_WINDOW.as_secs(),
        if f.vacuumed { " and a VACUUM between rounds (autovacuum's work)" } else { "" },
        f.rounds.len(),
        f.rounds.last().map_or(0.0, |r| r.heartbeats_so_far as f64)
            / f.rounds.first().map_or(1.0, |r| r.heartbeats_so_far.max(1) as f64)
    );
    let _ = writeln!(
        out,
        "- a burst of one slice with the relay stopped left {} events, drained in {:.2} s ({:.0} events/s)\n",
        f.backlog,
        f.drain_seconds,
        f.backlog as f64 / f.drain_seconds.max(1e-9)
    );
    out
}
