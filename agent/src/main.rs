//! `oneprotect-agent`: the endpoint binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use oneprotect_agent::config::{Config, DEFAULT_CONFIG_PATH};
use oneprotect_agent::enroll::{EnrollOptions, enroll};
use oneprotect_agent::exit;
use oneprotect_agent::run::{run, shutdown_signal};
use oneprotect_agent::state::{self, StateDir};

#[derive(Parser)]
#[command(
    name = "oneprotect-agent",
    version,
    about = "The OneProtect endpoint agent: enroll once, then heartbeat host telemetry"
)]
#[command(
    after_help = "Exit codes:\n  0  clean stop (SIGINT/SIGTERM) or success\n  1  transient failure retries did not overcome\n  \
2  configuration or usage error\n  3  identity unknown to the platform (401): re-enroll\n  \
4  identity rejected (403): revoked, stale or forbidden\n  5  enrollment refused by the platform\n\
Environment overrides: ONEPROTECT_AGENT_PLATFORM_URL, _STATE_DIR, _HEARTBEAT_INTERVAL, _CA_BUNDLE, _LOG_LEVEL, _ENROLLMENT_TOKEN, _ENROLLMENT_TOKEN_FILE"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "ONEPROTECT_AGENT_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Exchange the enrollment token for an identity, store it (0600) and
    /// remove the token from the config or delete the token file.
    Enroll {
        /// Read the enrollment token from this file (deleted after success).
        #[arg(long, conflicts_with = "token_stdin")]
        token_file: Option<PathBuf>,
        /// Read the enrollment token from standard input.
        #[arg(long)]
        token_stdin: bool,
        /// Enroll again even if an identity exists (it is replaced).
        #[arg(long)]
        force: bool,
    },
    /// Heartbeat until SIGINT/SIGTERM or until the platform rejects the identity.
    Run,
    /// Print the stored identity (never a secret).
    Status,
    /// Print one telemetry sample as JSON.
    Collect,
}

fn init_logs(level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level: tracing::Level = level.parse().unwrap_or(tracing::Level::INFO);
    // Only the agent's own events at the chosen level: dependencies stay at
    // warn so that no HTTP library ever logs a header at trace level.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("oneprotect_agent", level)
        .with_default(tracing::Level::WARN);
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false))
        .with(filter)
        .try_init();
}

fn finish((code, message): (u8, String)) -> ExitCode {
    if code == exit::OK {
        eprintln!("{message}");
    } else {
        eprintln!("error: {message}");
    }
    ExitCode::from(code)
}

fn status(config: &Config) -> (u8, String) {
    let dir = StateDir::new(&config.state_dir);
    if !dir.is_enrolled() {
        return (exit::CONFIG, format!("not enrolled (no identity in {})", config.state_dir.display()));
    }
    match dir.load_identity() {
        Ok(identity) => {
            let files: Vec<_> = [
                state::IDENTITY_FILE,
                state::KEY_FILE,
                state::TOKEN_FILE,
                state::CERTIFICATE_FILE,
                state::CERTIFICATE_PEM_FILE,
                state::CA_CHAIN_FILE,
                state::SEQUENCE_FILE,
            ]
                .iter()
                .filter(|f| dir.file(f).exists())
                .map(|f| serde_json::json!({ "file": f, "owner_only": state::check_owner_only(&dir.file(f)).is_ok() }))
                .collect();
            // The certificate's public facts: serial, fingerprint, validity.
            let certificate = std::fs::read_to_string(dir.file(state::CERTIFICATE_FILE))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .map(|c| {
                    serde_json::json!({
                        "serial_number": c["serial_number"],
                        "sha256": c["certificate_sha256"],
                        "not_before": c["not_before"],
                        "not_after": c["not_after"],
                    })
                });
            let out = serde_json::json!({
                "identity": identity,
                "certificate": certificate,
                "state_dir": config.state_dir,
                "files": files,
                "last_accepted_heartbeat": dir.last_accepted_heartbeat(),
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            (exit::OK, "enrolled".into())
        }
        Err(e) => (exit::CONFIG, e.to_string()),
    }
}

fn collect() -> ExitCode {
    match oneprotect_agent::telemetry::Collector::new() {
        Ok(mut c) => {
            // Two samples so that CPU usage is a measured delta.
            let _ = c.sample(0, env!("CARGO_PKG_VERSION"));
            std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
            println!(
                "{}",
                serde_json::to_string_pretty(&c.sample(0, env!("CARGO_PKG_VERSION"))).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => finish((exit::RUNTIME, e)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Collect) {
        // Needs no configuration: useful before enrollment, and on any host.
        return collect();
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => return finish((exit::CONFIG, e.to_string())),
    };
    init_logs(&config.log_level);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return finish((exit::RUNTIME, format!("cannot start the runtime: {e}"))),
    };
    match cli.command {
        Command::Enroll { token_file, token_stdin, force } => {
            finish(runtime.block_on(enroll(&config, EnrollOptions { force, token_file, token_stdin })))
        }
        Command::Run => finish(runtime.block_on(run(&config, shutdown_signal()))),
        Command::Status => finish(status(&config)),
        Command::Collect => collect(),
    }
}
