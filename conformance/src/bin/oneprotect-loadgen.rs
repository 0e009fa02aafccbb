//! `oneprotect-loadgen`: benchmarks the platform in-process on loopback.
//! Bounded: at most 100,000 agents and 120 s per phase.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use oneprotect_conformance::bench::{self, BenchResult, MAX_AGENTS, MAX_DURATION, RoundRates, Samples};

/// The same allocator as the server binary, so the in-process platform
/// is measured as it is shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "oneprotect-loadgen",
    version,
    about = "Loopback load generator: enrollment storm, heartbeat ingest and their baselines"
)]
struct Cli {
    /// Backends: `sqlite` and/or a `postgres://` URL allowed to create databases.
    #[arg(long, default_values_t = vec!["sqlite".to_owned()])]
    backend: Vec<String>,
    /// Simulated agents to enroll (real CSRs, made before timing starts).
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Concurrent requests.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds each timed measure runs in all, split evenly over the rounds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds: each runs a slice of every timed measure in turn, so that
    /// ratios compare figures taken seconds apart.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=60))]
    rounds: u32,
    /// Agents of the mutual TLS comparison (each with its own connection);
    /// 0 skips it.
    #[arg(long, default_value_t = 256)]
    mtls_agents: usize,
    /// Measure events and storage: a nats-server of the benchmark's own
    /// (from PATH) receives the relay's events; pruning and bytes per agent
    /// are measured beside it.
    #[arg(long)]
    events: bool,
    /// Directory for results.md and results.json.
    #[arg(long, default_value = "target/bench")]
    output: PathBuf,
}

async fn run_backend(
    backend: &str,
    cli: &Cli,
    duration: Duration,
    nats: Option<&oneprotect_conformance::bench_events::OwnNats>,
) -> anyhow::Result<(BenchResult, Option<oneprotect_conformance::bench_events::EventsFigures>)> {
    let database = (backend != "sqlite").then_some(backend);
    // Every simulated agent connects from 127.0.0.1, standing in for as many
    // addresses as agents. The failed-exchange limit counts per address and
    // holds a slot for every attempt in flight, so at the production limit
    // (20) only 20 of the 64 concurrent exchanges from this one address
    // would be let through: it is raised here so that the storm measures the
    // exchange, not the limiter (tested on its own in the server's suite).
    let policy = oneprotect_server::service::Policy { failure_limit: 1_000_000, ..Default::default() };
    let platform = oneprotect_conformance::local::start_full(database, None, false, policy, false).await?;
    eprintln!("[{backend}] enrolling {} agents (concurrency {})", cli.agents, cli.concurrency);
    let (exchange, agents) =
        bench::enroll(&platform, cli.agents, cli.concurrency).await.map_err(anyhow::Error::msg)?;
    eprintln!(
        "[{backend}] {:.0} exchanges/s; {} rounds of /healthz, heartbeats, group-committed and naive store writes",
        exchange.per_second, cli.rounds
    );
    let workload =
        bench::Workload::new(&platform, agents.clone(), cli.concurrency).map_err(anyhow::Error::msg)?;
    let slice = duration / cli.rounds;
    let (mut healthz, mut heartbeat, mut grouped, mut naive) = Default::default();
    let mut rounds = Vec::new();
    for round in 1..=cli.rounds {
        let h = workload.healthz(slice).await;
        let b = workload.heartbeats(slice).await;
        let g = workload.store_direct(slice, true).await;
        let n = workload.store_direct(slice, false).await;
        let rates = RoundRates { healthz: h.rate(), heartbeat: b.rate(), grouped: g.rate(), naive: n.rate() };
        eprintln!(
            "[{backend}] round {round}: {:.0} healthz/s, {:.0} heartbeats/s, {:.0} group-committed and {:.0} naive store writes/s",
            rates.healthz, rates.heartbeat, rates.grouped, rates.naive
        );
        rounds.push(rates);
        Samples::merge(&mut healthz, h);
        Samples::merge(&mut heartbeat, b);
        Samples::merge(&mut grouped, g);
        Samples::merge(&mut naive, n);
    }
    let name = match database {
        None => "sqlite",
        // A percent-encoded path as the host is a Unix-socket directory.
        Some(url)
            if url
                .split_once('@')
                .is_some_and(|(_, host)| host.starts_with("%2F") || host.starts_with("%2f")) =>
        {
            "postgres (Unix socket)"
        }
        Some(_) => "postgres (TCP)",
    };
    let measures = vec![
        healthz.into_measure("GET /healthz (HTTP ceiling)"),
        heartbeat.into_measure("POST heartbeat (HTTP)"),
        grouped.into_measure("store.commit_heartbeat direct (group commit)"),
        naive.into_measure("store.commit_heartbeat direct (1 tx/heartbeat)"),
        exchange,
    ];
    let events = match nats {
        Some(nats) => {
            let store = platform.ctx.local.store.clone().ok_or_else(|| anyhow::anyhow!("no store"))?;
            Some(
                oneprotect_conformance::bench_events::measure(
                    oneprotect_conformance::bench_events::Under {
                        backend: name,
                        workload: &workload,
                        store,
                        agents: agents.len(),
                        clock: platform.ctx.local.clock.clone().ok_or_else(|| anyhow::anyhow!("no clock"))?,
                        vacuum: platform.ctx.local.postgres_inspection.clone(),
                    },
                    &nats.url,
                    slice,
                    cli.rounds,
                )
                .await?,
            )
        }
        None => None,
    };
    Ok((
        BenchResult {
            backend: name.into(),
            agents: agents.len(),
            concurrency: cli.concurrency,
            measures,
            rounds,
        },
        events,
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.agents == 0 || cli.agents > MAX_AGENTS || cli.concurrency == 0 || cli.concurrency > 1024 {
        eprintln!("error: --agents must be 1..={MAX_AGENTS} and --concurrency 1..=1024");
        return ExitCode::from(2);
    }
    let duration = Duration::from_secs(cli.seconds).min(MAX_DURATION);
    let launched =
        if cli.events { Some(oneprotect_conformance::bench_events::OwnNats::launch().await) } else { None };
    let nats = match launched.transpose() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: --events needs nats-server on PATH: {e}");
            return ExitCode::from(1);
        }
    };
    let mut results = Vec::new();
    let mut events = Vec::new();
    for backend in &cli.backend {
        match run_backend(backend, &cli, duration, nats.as_ref()).await {
            Ok((r, e)) => {
                results.push(r);
                events.extend(e);
            }
            Err(e) => {
                eprintln!("error: {backend}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        std::env::consts::ARCH
    );
    let mut md = format!(
        "## OneProtect benchmark ({machine}, {} s per measure in {} rounds)\n\n",
        duration.as_secs(),
        cli.rounds
    );
    for r in &results {
        md.push_str(&bench::markdown(r));
    }
    for e in &events {
        md.push_str(&oneprotect_conformance::bench_events::markdown(e));
    }
    let mut mtls = None;
    if cli.mtls_agents > 0 {
        eprintln!(
            "[mtls] enrolling {} agents over TLS; bearer and mTLS heartbeats in {} rounds, then full handshakes",
            cli.mtls_agents, cli.rounds
        );
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        match oneprotect_conformance::bench_mtls::compare(
            dir.path(),
            cli.mtls_agents,
            cli.concurrency,
            duration,
            cli.rounds,
        )
        .await
        {
            Ok(f) => {
                md.push_str(&oneprotect_conformance::bench_mtls::markdown(&f));
                mtls = Some(f);
            }
            Err(e) => {
                eprintln!("error: mtls: {e:#}");
                return ExitCode::from(1);
            }
        }
    }
    print!("{md}");
    if std::fs::create_dir_all(&cli.output).is_ok() {
        let _ = std::fs::write(cli.output.join("results.md"), &md);
        let _ = std::fs::write(
            cli.output.join("results.json"),
            serde_json::to_string_pretty(
                &serde_json::json!({"backends": results, "events": events, "mtls": mtls}),
            )
            .unwrap_or_default(),
        );
        eprintln!("wrote {}/results.md and results.json", cli.output.display());
    }
    ExitCode::SUCCESS
}
