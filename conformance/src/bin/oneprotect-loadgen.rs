//! `oneprotect-loadgen`: benchmarks the platform in-process on loopback.
//! Bounded: at most 100,000 agents and 120 s per phase.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use oneprotect_conformance::bench::{self, BenchResult, MAX_AGENTS, MAX_DURATION};

/// The same allocator as the server binary, so the in-process platform
/// is measured as it is shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "oneprotect-loadgen", version, about = "Loopback load generator: enrollment storm, heartbeat ingest and their baselines")]
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
    /// Seconds per timed phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Directory for results.md and results.json.
    #[arg(long, default_value = "target/bench")]
    output: PathBuf,
}

async fn run_backend(backend: &str, cli: &Cli, duration: Duration) -> anyhow::Result<BenchResult> {
    let database = (backend != "sqlite").then_some(backend);
    let platform = oneprotect_conformance::local::start_with(database, None, false).await?;
    eprintln!("[{backend}] enrolling {} agents (concurrency {})", cli.agents, cli.concurrency);
    let (exchange, agents) = bench::enroll(&platform, cli.agents, cli.concurrency).await.map_err(anyhow::Error::msg)?;
    eprintln!("[{backend}] {:.0} exchanges/s; measuring /healthz", exchange.per_second);
    let healthz = bench::healthz(&platform, cli.concurrency, duration).await.map_err(anyhow::Error::msg)?;
    eprintln!("[{backend}] {:.0} healthz/s; measuring heartbeats", healthz.per_second);
    let heartbeat = bench::heartbeats(agents.clone(), cli.concurrency, duration).await;
    eprintln!("[{backend}] {:.0} heartbeats/s; measuring the group-committed store write", heartbeat.per_second);
    let grouped = bench::store_direct(&platform, agents.clone(), cli.concurrency, duration, true).await.map_err(anyhow::Error::msg)?;
    eprintln!("[{backend}] {:.0} group-committed store writes/s; measuring the naive store write", grouped.per_second);
    let direct = bench::store_direct(&platform, agents.clone(), cli.concurrency, duration, false).await.map_err(anyhow::Error::msg)?;
    eprintln!("[{backend}] {:.0} direct store writes/s", direct.per_second);
    let name = match database {
        None => "sqlite",
        // A percent-encoded path as the host is a Unix-socket directory.
        Some(url) if url.split_once('@').is_some_and(|(_, host)| host.starts_with("%2F") || host.starts_with("%2f")) => "postgres (Unix socket)",
        Some(_) => "postgres (TCP)",
    };
    Ok(BenchResult { backend: name.into(), agents: agents.len(), concurrency: cli.concurrency, measures: vec![healthz, heartbeat, grouped, direct, exchange] })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.agents == 0 || cli.agents > MAX_AGENTS || cli.concurrency == 0 || cli.concurrency > 1024 {
        eprintln!("error: --agents must be 1..={MAX_AGENTS} and --concurrency 1..=1024");
        return ExitCode::from(2);
    }
    let duration = Duration::from_secs(cli.seconds).min(MAX_DURATION);
    let mut results = Vec::new();
    for backend in &cli.backend {
        match run_backend(backend, &cli, duration).await {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("error: {backend}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let machine = format!("{} cores, {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), std::env::consts::ARCH);
    let mut md = format!("## OneProtect benchmark ({machine}, {} s per phase)\n\n", duration.as_secs());
    for r in &results {
        md.push_str(&bench::markdown(r));
    }
    print!("{md}");
    if std::fs::create_dir_all(&cli.output).is_ok() {
        let _ = std::fs::write(cli.output.join("results.md"), &md);
        let _ = std::fs::write(cli.output.join("results.json"), serde_json::to_string_pretty(&results).unwrap_or_default());
        eprintln!("wrote {}/results.md and results.json", cli.output.display());
    }
    ExitCode::SUCCESS
}
